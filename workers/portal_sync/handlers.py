"""portal_sync handler: one entry for every event it projects."""

import structlog

from contracts.envelope import Envelope
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
from workers.portal_sync import projection, store
from workers.runtime.database import UnitOfWork

log = structlog.get_logger(__name__)


async def project_event(message: Envelope, uow: UnitOfWork) -> None:
    conn = uow.connection
    snapshot = projection.appointment_snapshot(message)
    if snapshot is not None:
        written = await store.upsert_appointment(
            conn, message.tenant_id, projection.appointment_row(snapshot)
        )
        log.info("portal.appointment", version=snapshot.version, written=written)
    job = projection.job_row(message)
    if job is not None:
        await store.upsert_job(conn, message.tenant_id, job)
    outcome = projection.request_outcome(message)
    if outcome is not None:
        requested_at = message.occurred_at if isinstance(message, ModifyRequested) else None
        await store.record_request(conn, message.tenant_id, outcome, requested_at)
        log.info("portal.request", request_id=outcome.request_id, status=outcome.status)


HANDLERS = {
    cls: project_event
    for cls in (
        ModifyRequested,
        ModifyRejected,
        ModifyAwaitingApproval,
        ModifyFailed,
        AppointmentRescheduled,
        AppointmentCanceled,
        AppointmentUpdated,
        JobStatusChanged,
    )
}
