"""Pure projection: event -> the read-store rows it sets. Stale-write protection is by version.

Request outcomes: `pending` is set when the request is seen; the first terminal outcome (rejected,
completed, failed) wins and is never overwritten, whatever order the events arrive in.
"""

from dataclasses import dataclass

from contracts.common import AppointmentSnapshot
from contracts.events_v1 import (
    AppointmentCanceled,
    AppointmentRescheduled,
    AppointmentUpdated,
    JobStatusChanged,
    ModifyAwaitingApproval,
    ModifyFailed,
    ModifyRejected,
)
from contracts.portal_v1 import ModifyRequested

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
    match event:
        case ModifyRequested(payload=p):
            return RequestOutcome(
                event.correlation_id,
                p.appointment_id,
                p.change.action,
                "pending",
                requester_id=p.requester_id,
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


def merge_request(current_status: str | None, incoming: RequestOutcome) -> str | None:
    """The status to store, or None to leave the row as it is."""
    if current_status is None:
        return incoming.status
    if REQUEST_RANK[incoming.status] <= REQUEST_RANK[current_status]:
        return None
    return incoming.status
