"""Keeping the portal's offers current: compute an appointment's offer timeline, and announce it.

A customer's change carries its offer: the gate computes it for the state it approves (`carry_offer`)
and it travels with `modify.approved`, `appointment.rescheduled` / `appointment.canceled` into the read
store, written with the change. Everything the gate cannot know in advance makes it recompute and
announce the offer (`appointment.offer_changed`) when it differs: the office's changes, a settings
layer, a project, and an approved change that failed."""

from dataclasses import dataclass
from datetime import datetime

import structlog
from pydantic import TypeAdapter

from contracts.envelope import Envelope
from contracts.events_v1 import (
    AppointmentOfferChanged,
    AppointmentOfferChangedPayload,
    AppointmentUpdated,
    CancelRules,
    ModifyFailed,
    OfferedAction,
    OfferSegment,
    PickRules,
    ProjectUpdated,
)
from contracts.internal_v1 import RefreshOffers, RefreshOffersPayload
from contracts.office_v2 import ScopeLevel, SettingsScope
from contracts.portal_v1 import ModifyChange
from workers.policy_gate import store
from workers.policy_gate.offers import ActionOffer, offer_timeline
from workers.policy_gate.offers import OfferSegment as TimelineSegment
from workers.policy_gate.rules import AppointmentFacts, facts_after, window_rules
from workers.policy_gate.settings import EffectiveSettings, resolve
from workers.runtime.database import UnitOfWork

log = structlog.get_logger(__name__)
# A stored change (JSON) back into its model.
CHANGE_ADAPTER: TypeAdapter = TypeAdapter(ModifyChange)


def _action(offer: ActionOffer) -> OfferedAction:
    return OfferedAction(
        offered=offer.offered,
        needs_approval=offer.needs_approval,
        reason_code=offer.reason_code,
        reason=offer.reason,
    )


def segments_of(timeline: list[TimelineSegment]) -> list[OfferSegment]:
    return [
        OfferSegment(
            valid_from=segment.valid_from,
            valid_until=segment.valid_until,
            reschedule=_action(segment.reschedule),
            cancel=_action(segment.cancel),
        )
        for segment in timeline
    ]


def pick_rules(facts, settings) -> PickRules:
    """What a new window must satisfy for this appointment, for the portal's list of free times."""
    rules = window_rules(facts, settings)
    return PickRules(
        business_unit=facts.business_unit,
        zone=facts.zone or None,
        min_lead_hours=rules.min_lead_hours,
        max_horizon_days=rules.max_horizon_days,
        not_before=rules.not_before,
        not_after=rules.not_after,
    )


def cancel_rules(settings) -> CancelRules:
    """What a cancel must say (the gate refuses a missing required reason or one off the list)."""
    allowed = settings.get("cancel.allowed_reasons")
    return CancelRules(
        reason_required=bool(settings.get("cancel.reason_required")),
        allowed_reasons=list(allowed) if allowed is not None else None,
    )


def contacts_of(facts) -> list[str]:
    """The project's named contacts: the gate lets them act on the appointment like its customer."""
    return sorted(facts.project.contacts) if facts.project is not None else []


@dataclass(frozen=True)
class ComputedOffer:
    """An appointment's offer as computed from its facts and settings at one moment."""

    segments: list[OfferSegment]
    pick: PickRules
    cancel_rules: CancelRules
    contacts: list[str]

    def documents(self) -> tuple[list[dict], dict, dict]:
        """As `policy.offers` keeps it: segments, pick rules, terms (JSON)."""
        segments = [segment.model_dump(mode="json") for segment in self.segments]
        terms = {"cancel_rules": self.cancel_rules.model_dump(mode="json"), "contacts": self.contacts}
        return segments, self.pick.model_dump(mode="json"), terms


def compute_offer(facts: AppointmentFacts, settings: EffectiveSettings, now: datetime) -> ComputedOffer:
    """What the portal offers for these facts from `now` on (pure)."""
    return ComputedOffer(
        segments=segments_of(offer_timeline(facts, settings, now)),
        pick=pick_rules(facts, settings),
        cancel_rules=cancel_rules(settings),
        contacts=contacts_of(facts),
    )


def offer_payload(
    facts: AppointmentFacts, offer: ComputedOffer, offer_version: int
) -> AppointmentOfferChangedPayload:
    return AppointmentOfferChangedPayload(
        appointment_id=facts.appointment_id,
        job_id=facts.job_id,
        customer_id=facts.customer_id,
        offer_version=offer_version,
        appointment_version=facts.version,
        segments=offer.segments,
        pick=offer.pick,
        cancel_rules=offer.cancel_rules,
        contacts=offer.contacts,
    )


async def _save(
    uow: UnitOfWork,
    tenant_id: str,
    facts: AppointmentFacts,
    offer: ComputedOffer,
    offer_version: int,
    now: datetime,
    carried_request_id: str | None,
) -> None:
    segments, pick, terms = offer.documents()
    await store.of(uow).save_offer(
        tenant_id,
        facts.appointment_id,
        offer_version=offer_version,
        appointment_version=facts.version,
        segments=segments,
        pick=pick,
        terms=terms,
        computed_at=now,
        carried_request_id=carried_request_id,
    )


async def carry_offer(
    uow: UnitOfWork,
    tenant_id: str,
    request_id: str,
    appointment_id: str,
    change: ModifyChange,
    decided_on: int,
) -> AppointmentOfferChangedPayload | None:
    """The offer for the state an approved change leaves (`facts_after`), to travel with the approval:
    it reaches the portal with the change, in the same read-store transaction, or not at all. Saved as
    the gate's current offer, marked as carried by the request: until the gate recomputes it, it does not
    know whether the portal got it (the change may fail, or an office change get there first).

    The facts and settings are read again under the offer's lock, as `refresh_offers` reads them: a
    settings change that refreshed this offer while the request was decided is in them, and one still to
    come finds this carried offer. None when the appointment is no longer at the version the change was
    approved on: the change will fail, and the offer stays as it is."""
    stored = (await store.of(uow).lock_offers(tenant_id, [appointment_id]))[appointment_id]
    facts, layers = await store.of(uow).load_facts_and_layers(tenant_id, appointment_id)
    if facts is None or facts.version != decided_on:
        return None
    after = facts_after(facts, change)
    now = await uow.now()
    offer = compute_offer(after, resolve(layers), now)
    version = stored["offer_version"] + 1
    await _save(uow, tenant_id, after, offer, version, now, carried_request_id=request_id)
    return offer_payload(after, offer, version)


async def _in_flight(uow: UnitOfWork, tenant_id: str, stored, facts: AppointmentFacts, failed: str | None):
    """The request whose carried offer is stored, and the state it will leave, while its change is still
    on its way (approved on the facts' version, neither applied nor failed); else (None, facts)."""
    request_id = stored["carried_request_id"]
    if request_id is None or request_id == failed:
        return None, facts
    pending = await store.of(uow).approved_change(tenant_id, request_id, stored["appointment_id"])
    if pending is None or pending.decided_on_version != facts.version:
        return None, facts  # applied, or overtaken by an office change (then it fails)
    return request_id, facts_after(facts, CHANGE_ADAPTER.validate_python(pending.change))


async def refresh_offers(
    uow: UnitOfWork,
    cause: Envelope,
    tenant_id: str,
    appointment_ids: list[str],
    *,
    failed_request_id: str | None = None,
) -> int:
    """Recompute the offers of some appointments (locked in id order), as of the transaction's clock;
    emit one event per changed offer. Returns how many changed.

    An offer the gate sent with an approval (`carry_offer`) is handled apart: while that change is on its
    way, the offer is recomputed for the state it will leave (and sent now if it differs: the carried one
    would arrive older than this one); once it is not (applied, failed, or overtaken by the office), the
    offer for the facts is sent even when it equals the stored one, because the carried one may never have
    reached the portal. `failed_request_id`: a change that did not happen (`modify.failed`)."""
    changed = 0
    ids = sorted(set(appointment_ids))
    locked = await store.of(uow).lock_offers(tenant_id, ids)
    for appointment_id in ids:
        stored = locked[appointment_id]
        facts, layers = await store.of(uow).load_facts_and_layers(tenant_id, appointment_id)
        if facts is None:
            continue
        now = await uow.now()  # read with the facts
        carried_by, basis = await _in_flight(uow, tenant_id, stored, facts, failed_request_id)
        offer = compute_offer(basis, resolve(layers), now)
        unsure = stored["carried_request_id"] is not None and carried_by is None
        if not unsure and (*offer.documents(), basis.version) == (
            stored["segments"],
            stored["pick"],
            stored["terms"],
            stored["appointment_version"],
        ):
            continue
        version = stored["offer_version"] + 1
        await _save(uow, tenant_id, basis, offer, version, now, carried_request_id=carried_by)
        await uow.follow(cause, AppointmentOfferChanged, offer_payload(basis, offer, version))
        changed += 1
    return changed


async def follow_appointment(message: AppointmentUpdated, uow: UnitOfWork) -> None:
    """The office changed (or booked) an appointment: its offer may have changed. The office's record also
    carries the project (lock, dates), which every appointment of that project shares. (A customer's
    change brings its offer along: the gate computed it when it approved, `carry_offer`.)"""
    snapshot = message.payload.appointment
    ids = [snapshot.appointment_id]
    if snapshot.project_id is not None:
        ids += await store.of(uow).upcoming_appointments(
            message.tenant_id, await uow.now(), ScopeLevel.PROJECT, snapshot.project_id
        )
    changed = await refresh_offers(uow, message, message.tenant_id, ids)
    log.info("gate.offers", appointments=len(set(ids)), changed=changed)


async def follow_failed_change(message: ModifyFailed, uow: UnitOfWork) -> None:
    """An approved change did not happen: the offer the gate sent with it never reached the portal, and
    the one for the unchanged appointment must hold again."""
    p = message.payload
    changed = await refresh_offers(
        uow, message, message.tenant_id, [p.appointment_id], failed_request_id=p.request_id
    )
    log.info("gate.offers", appointments=1, changed=changed, failed_request_id=p.request_id)


# How many appointments one transaction recomputes when a settings layer or a project changes; a larger
# scope continues in `RefreshOffers` messages to the gate itself, a chunk each (a business-wide change
# at a million appointments is thousands of short transactions, not one that holds every offer's lock).
REFRESH_CHUNK = 200


async def follow_scope(
    uow: UnitOfWork, cause: Envelope, level: ScopeLevel, key: str | None, *, after_id: str | None = None
) -> None:
    """A settings layer or a project changed: every upcoming appointment it covers may offer something
    else now. The first chunk (after `after_id`) here; the rest in messages that follow this one."""
    now = await uow.now()
    ids = await store.of(uow).upcoming_appointments(
        cause.tenant_id, now, level, key, after_id=after_id, limit=REFRESH_CHUNK
    )
    changed = await refresh_offers(uow, cause, cause.tenant_id, ids)
    more = len(ids) == REFRESH_CHUNK
    log.info("gate.offers", appointments=len(ids), changed=changed, level=level.value, more=more)
    if more:
        await uow.follow(
            cause,
            RefreshOffers,
            RefreshOffersPayload(scope=SettingsScope(level=level, key=key), after_appointment_id=ids[-1]),
        )


async def continue_refresh(message: RefreshOffers, uow: UnitOfWork) -> None:
    """The next chunk of a large scope's offers (the inbox makes a redelivered chunk a no-op, so each
    chunk sends exactly one successor)."""
    scope = message.payload.scope
    await follow_scope(uow, message, scope.level, scope.key, after_id=message.payload.after_appointment_id)


async def follow_project(message: ProjectUpdated, uow: UnitOfWork) -> None:
    """A project's lock, dates or contacts changed: every upcoming appointment of it may offer something
    else (or to someone else)."""
    await follow_scope(uow, message, ScopeLevel.PROJECT, message.payload.project_id)
