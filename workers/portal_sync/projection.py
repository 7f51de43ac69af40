"""Pure projection: event -> the read-store rows it sets. Stale-write protection is by version.

Request outcomes: `pending` is set when the request is seen; the first terminal outcome (rejected,
completed, failed) wins and is never overwritten, whatever order the events arrive in.
"""

from dataclasses import dataclass, replace

from contracts.common import AppointmentSnapshot
from contracts.events_v1 import (
    AppointmentCanceled,
    AppointmentOfferChanged,
    AppointmentOfferChangedPayload,
    AppointmentRescheduled,
    AppointmentUpdated,
    CapacityWindowChanged,
    JobStatusChanged,
    ModifyAwaitingApproval,
    ModifyFailed,
    ModifyRejected,
    OfficeOutcome,
)
from contracts.office_v1 import CapacityUpdated
from contracts.portal_v1 import ModifyRequested, Reschedule

TERMINAL_REQUEST_STATUSES = frozenset({"rejected", "completed", "failed"})
# How far along a request is; a status never moves to a lower rank, and the first terminal one is final.
REQUEST_RANK = {"pending": 0, "awaiting_approval": 1, "rejected": 2, "completed": 2, "failed": 2}


@dataclass(frozen=True)
class RequestOutcome:
    request_id: str
    appointment_id: str
    action: str
    status: str
    reason_code: str | None = None
    reason_text: str | None = None
    requester_id: str | None = None
    reply_to: str | None = None
    # the request's portal: request ids are per tenant and portal (None: an event from before the
    # producer travelled with it; the store then takes the one row with that id)
    producer: str | None = None


def business_unit_row(event) -> dict | None:
    """The business unit's time zone, from the office's capacity settings (given in its local time)."""
    if isinstance(event, CapacityUpdated):
        p = event.payload
        return dict(business_unit=p.business_unit, time_zone=p.timezone, capacity_version=p.capacity_version)
    return None


def appointment_row(snapshot: AppointmentSnapshot) -> dict:
    return dict(
        appointment_id=snapshot.appointment_id,
        job_id=snapshot.job_id,
        customer_id=snapshot.customer_id,
        project_id=snapshot.project_id,
        business_unit=snapshot.business_unit,
        job_type=snapshot.job_type,
        window_start=snapshot.window.start,
        window_end=snapshot.window.end,
        status=snapshot.status.value,
        confirmation=snapshot.confirmation.value,
        version=snapshot.version,
    )


def request_outcome(event) -> RequestOutcome | None:
    """What an event says about a portal request, if anything."""
    outcome = _request_outcome(event)
    return None if outcome is None else replace(outcome, producer=event.request_portal())


def _request_outcome(event) -> RequestOutcome | None:
    match event:
        case ModifyRequested(payload=p):
            return RequestOutcome(
                event.correlation_id,
                p.appointment_id,
                p.change.action,
                "pending",
                requester_id=p.requester_id,
                reply_to=p.reply_to,
            )
        case ModifyAwaitingApproval(payload=p):
            return RequestOutcome(
                p.request_id, p.appointment_id, p.action.value, "awaiting_approval", p.reason_code, p.reason
            )
        case ModifyRejected(payload=p):
            return RequestOutcome(
                p.request_id, p.appointment_id, p.action.value, "rejected", p.reason_code, p.reason
            )
        case ModifyFailed(payload=p):
            return RequestOutcome(
                p.request_id, p.appointment_id, p.action.value, "failed", p.reason_code, p.reason
            )
        case AppointmentRescheduled(payload=p) if p.request_id is not None:
            return RequestOutcome(p.request_id, p.appointment.appointment_id, "reschedule", "completed")
        case AppointmentCanceled(payload=p) if p.request_id is not None:
            return RequestOutcome(p.request_id, p.appointment.appointment_id, "cancel", "completed")
    return None


def appointment_snapshot(event) -> AppointmentSnapshot | None:
    if isinstance(event, AppointmentRescheduled | AppointmentCanceled | AppointmentUpdated):
        return event.payload.appointment
    return None


def job_row(event) -> dict | None:
    if isinstance(event, JobStatusChanged):
        p = event.payload
        return dict(
            job_id=p.job_id,
            customer_id=p.customer_id,
            status=p.status.value,
            active_appointments=p.active_appointments,
            version=p.version,
        )
    return None


def _pick_columns(pick) -> dict:
    if pick is None:
        return dict(
            business_unit=None,
            zone="",
            min_lead_hours=None,
            max_horizon_days=None,
            not_before=None,
            not_after=None,
        )
    return dict(
        business_unit=pick.business_unit,
        zone=pick.zone or "",
        min_lead_hours=pick.min_lead_hours,
        max_horizon_days=pick.max_horizon_days,
        not_before=pick.not_before,
        not_after=pick.not_after,
    )


def carried_offer(event) -> AppointmentOfferChangedPayload | None:
    """The offer an event brings: its own (`appointment.offer_changed`) or the one a customer's change
    carries (written in the same transaction as the change)."""
    match event:
        case AppointmentOfferChanged(payload=p):
            return p
        case AppointmentRescheduled(payload=p) | AppointmentCanceled(payload=p):
            return p.offer
    return None


def offer_row(event) -> dict | None:
    """The offer timeline the portal reads (through the view `portal.offers_now`); versioned by
    `offer_version`, so a carried offer and an announced one order alike."""
    p = carried_offer(event)
    if p is None:
        return None
    return dict(
        appointment_id=p.appointment_id,
        job_id=p.job_id,
        customer_id=p.customer_id,
        offer_version=p.offer_version,
        appointment_version=p.appointment_version,
        segments=[segment.model_dump(mode="json") for segment in p.segments],
        **_pick_columns(p.pick),
        cancel_reason_required=p.cancel_rules.reason_required if p.cancel_rules else False,
        cancel_reasons=p.cancel_rules.allowed_reasons if p.cancel_rules else None,
        contact_ids=list(p.contacts),
    )


def available_window_row(event) -> dict | None:
    """Free places of an arrival window, for the times the portal lets a customer pick."""
    if isinstance(event, CapacityWindowChanged):
        p = event.payload
        return dict(
            business_unit=p.business_unit,
            zone=p.zone or "",
            starts_at=p.window.start,
            ends_at=p.window.end,
            free=p.free,
            version=p.version,
        )
    return None


def audit_entry(event) -> dict | None:
    """One line of an appointment's audit trail, or None for events that are not about one change."""
    common = dict(message_id=event.message_id, occurred_at=event.occurred_at)
    match event:
        case ModifyRequested(payload=p):
            change = p.change
            return dict(
                **common,
                appointment_id=p.appointment_id,
                entry="requested",
                actor=p.requester_id,
                request_id=event.correlation_id,
                action=change.action,
                reason_text=getattr(change, "reason", None),
                window_start=change.new_window.start if isinstance(change, Reschedule) else None,
                window_end=change.new_window.end if isinstance(change, Reschedule) else None,
            )
        case ModifyRejected(payload=p) | ModifyAwaitingApproval(payload=p) | ModifyFailed(payload=p):
            entry = {"modify.rejected": "rejected", "modify.awaiting_approval": "awaiting_approval"}.get(
                event.type, "failed"
            )
            return dict(
                **common,
                appointment_id=p.appointment_id,
                entry=entry,
                actor=event.producer,
                request_id=p.request_id,
                action=p.action.value,
                reason_code=p.reason_code,
                reason_text=p.reason,
            )
        case (
            AppointmentRescheduled(payload=p) | AppointmentCanceled(payload=p) | AppointmentUpdated(payload=p)
        ):
            snapshot = p.appointment
            entry = {"appointment.rescheduled": "rescheduled", "appointment.canceled": "canceled"}.get(
                event.type, "office_recorded"
            )
            return dict(
                **common,
                appointment_id=snapshot.appointment_id,
                entry=entry,
                actor=p.initiated_by.value,
                request_id=getattr(p, "request_id", None),
                reason_text=getattr(p, "reason", None),
                window_start=snapshot.window.start,
                window_end=snapshot.window.end,
                previous_window_start=p.previous_window.start
                if isinstance(event, AppointmentRescheduled)
                else None,
                status=snapshot.status.value,
                version=snapshot.version,
            )
    return None


def office_outcome_row(event) -> dict | None:
    """What became of an office message, as the office integrator reads it (portal.office_outcomes)."""
    if not isinstance(event, OfficeOutcome):
        return None
    p = event.payload
    return dict(
        office_message_id=p.office_message_id,
        correlation_id=event.correlation_id,
        message_type=p.message_type,
        schema_version=p.schema_version,
        status=p.status.value,
        subject=p.subject,
        reason_code=p.reason_code,
        reason_text=p.reason,
        current_state=None if p.current is None else p.current.model_dump(mode="json"),
        occurred_at=event.occurred_at,
    )


def advances_from(status: str) -> frozenset[str]:
    """The stored statuses an incoming `status` replaces: those of a lower rank (the read store's SQL
    applies exactly this; a new row takes any status)."""
    return frozenset(s for s, rank in REQUEST_RANK.items() if rank < REQUEST_RANK[status])


def merge_request(current_status: str | None, incoming: RequestOutcome) -> str | None:
    """The status to store, or None to leave the row as it is."""
    if current_status is None or current_status in advances_from(incoming.status):
        return incoming.status
    return None
