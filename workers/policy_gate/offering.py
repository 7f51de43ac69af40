"""Keeping the portal's offers current: recompute and announce an appointment's offer timeline.

It is recomputed when a fact it rests on changes (the appointment itself, its project, a settings
layer) and announced when it differs."""

import structlog

from contracts.envelope import Envelope
from contracts.events_v1 import (
    AppointmentCanceled,
    AppointmentOfferChanged,
    AppointmentOfferChangedPayload,
    AppointmentRescheduled,
    AppointmentUpdated,
    CancelRules,
    OfferedAction,
    OfferSegment,
    PickRules,
    ProjectUpdated,
)
from contracts.internal_v1 import RefreshOffers, RefreshOffersPayload
from contracts.office_v2 import ScopeLevel, SettingsScope
from workers.policy_gate import store
from workers.policy_gate.offers import ActionOffer, offer_timeline
from workers.policy_gate.offers import OfferSegment as TimelineSegment
from workers.policy_gate.rules import window_rules
from workers.policy_gate.settings import resolve
from workers.runtime.database import UnitOfWork

log = structlog.get_logger(__name__)


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


async def refresh_offers(uow: UnitOfWork, cause: Envelope, tenant_id: str, appointment_ids: list[str]) -> int:
    """Recompute the offers of some appointments (locked in id order), as of the transaction's clock;
    emit one event per changed offer. Returns how many changed."""
    driver = uow.driver
    changed = 0
    ids = sorted(set(appointment_ids))
    locked = await store.lock_offers(driver, tenant_id, ids)
    for appointment_id in ids:
        stored = locked[appointment_id]
        facts, layers = await store.load_facts_and_layers(uow, tenant_id, appointment_id)
        if facts is None:
            continue
        now = await uow.now()  # read with the facts
        settings = resolve(layers)
        segments = segments_of(offer_timeline(facts, settings, now))
        pick = pick_rules(facts, settings)
        document = [segment.model_dump(mode="json") for segment in segments]
        pick_document = pick.model_dump(mode="json")
        rules, contacts = cancel_rules(settings), contacts_of(facts)
        terms = {"cancel_rules": rules.model_dump(mode="json"), "contacts": contacts}
        if (document, pick_document, terms, facts.version) == (
            stored["segments"],
            stored["pick"],
            stored["terms"],
            stored["appointment_version"],
        ):
            continue
        version = stored["offer_version"] + 1
        await store.save_offer(
            driver,
            tenant_id,
            appointment_id,
            offer_version=version,
            appointment_version=facts.version,
            segments=document,
            pick=pick_document,
            terms=terms,
            computed_at=now,
        )
        await uow.follow(
            cause,
            AppointmentOfferChanged,
            AppointmentOfferChangedPayload(
                appointment_id=appointment_id,
                job_id=facts.job_id,
                customer_id=facts.customer_id,
                offer_version=version,
                appointment_version=facts.version,
                segments=segments,
                pick=pick,
                cancel_rules=rules,
                contacts=contacts,
            ),
        )
        changed += 1
    return changed


async def follow_appointment(
    message: AppointmentRescheduled | AppointmentCanceled | AppointmentUpdated, uow: UnitOfWork
) -> None:
    """An appointment changed (or was booked): its offer may have. The office's record also carries the
    project (lock, dates), which every appointment of that project shares."""
    snapshot = message.payload.appointment
    ids = [snapshot.appointment_id]
    if snapshot.project_id is not None:
        ids += await store.upcoming_appointments(
            uow.driver, message.tenant_id, await uow.now(), ScopeLevel.PROJECT, snapshot.project_id
        )
    changed = await refresh_offers(uow, message, message.tenant_id, ids)
    log.info("gate.offers", appointments=len(set(ids)), changed=changed)


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
    ids = await store.upcoming_appointments(
        uow.driver, cause.tenant_id, now, level, key, after_id=after_id, limit=REFRESH_CHUNK
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
