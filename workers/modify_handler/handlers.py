"""modify_handler handlers: apply approved requests and office updates, emitting result events."""

import structlog

from contracts.common import JobStatus
from contracts.envelope import Envelope
from contracts.events_v1 import (
    AppointmentCanceled,
    AppointmentCanceledPayload,
    AppointmentRescheduled,
    AppointmentRescheduledPayload,
    AppointmentUpdated,
    AppointmentUpdatedPayload,
    Initiator,
    JobStatusChanged,
    JobStatusChangedPayload,
    ModifyFailed,
    ModifyFailedPayload,
)
from contracts.internal_v1 import ModifyApproved
from contracts.office_v1 import AppointmentRecorded
from contracts.portal_v1 import Reschedule
from contracts.reasons import FailureCode, customer_text
from workers.modify_handler import domain, repository
from workers.modify_handler.domain import Appointment, Failure
from workers.runtime.database import UnitOfWork

log = structlog.get_logger(__name__)
PRODUCER = "modify_handler"


async def apply_approved_change(message: ModifyApproved, uow: UnitOfWork) -> None:
    request = message.payload
    conn = uow.connection
    now = await uow.now()
    current = await repository.lock_appointment(conn, message.tenant_id, request.appointment_id)
    if current is None:
        await _fail(message, uow, FailureCode.APPOINTMENT_CHANGED, now)
        return
    result: Appointment | Failure | None = domain.check_unchanged(current, request.decided_on_version)
    if result is None:
        if isinstance(request.change, Reschedule):
            result = domain.reschedule(current, request.change.new_window, now)
        else:
            result = domain.cancel(current)
    if isinstance(result, Failure):
        await _fail(message, uow, result.code, now)
        return
    await repository.save_appointment(
        conn, result, customer_reschedule=isinstance(request.change, Reschedule)
    )
    event: Envelope
    if isinstance(request.change, Reschedule):
        event = AppointmentRescheduled.follow(
            message,
            producer=PRODUCER,
            occurred_at=now,
            payload=AppointmentRescheduledPayload(
                appointment=result.snapshot(),
                previous_window=current.window,
                initiated_by=Initiator.CUSTOMER,
                request_id=message.correlation_id,
            ),
        )
    else:
        event = AppointmentCanceled.follow(
            message,
            producer=PRODUCER,
            occurred_at=now,
            payload=AppointmentCanceledPayload(
                appointment=result.snapshot(),
                reason=request.change.reason,
                initiated_by=Initiator.CUSTOMER,
                request_id=message.correlation_id,
            ),
        )
    await uow.emit(event)
    await _follow_job_status(message, uow, result, now)
    log.info("schedule.applied", action=request.change.action, version=result.version)


async def record_office_appointment(message: AppointmentRecorded, uow: UnitOfWork) -> None:
    payload = message.payload
    conn = uow.connection
    now = await uow.now()
    new_job = await repository.ensure_job(conn, message.tenant_id, payload.job_id, payload.customer_id)
    appointment = await repository.record_office_appointment(conn, message.tenant_id, payload)
    await uow.emit(
        AppointmentUpdated.follow(
            message,
            producer=PRODUCER,
            occurred_at=now,
            payload=AppointmentUpdatedPayload(
                appointment=appointment.snapshot(), initiated_by=Initiator.OFFICE
            ),
        )
    )
    await _follow_job_status(message, uow, appointment, now, announce=new_job)
    log.info("schedule.office_recorded", version=appointment.version)


async def _follow_job_status(
    cause: Envelope, uow: UnitOfWork, appointment: Appointment, now, *, announce: bool = False
) -> None:
    """Derive the job's status from its appointments; emit when it changed, or when the job is new
    (`announce`) so the read store lists every job."""
    conn = uow.connection
    job = await repository.lock_job(conn, appointment.tenant_id, appointment.job_id)
    statuses = await repository.job_appointment_statuses(conn, appointment.tenant_id, appointment.job_id)
    previous = JobStatus(job.status)
    new = domain.job_status(previous, statuses)
    if new is previous and not announce:
        return
    version = await repository.set_job_status(conn, appointment.tenant_id, appointment.job_id, new)
    await uow.emit(
        JobStatusChanged.follow(
            cause,
            producer=PRODUCER,
            occurred_at=now,
            payload=JobStatusChangedPayload(
                job_id=appointment.job_id,
                customer_id=job.customer_id,
                status=new,
                previous_status=None if announce else previous,
                active_appointments=sum(1 for s in statuses if s in domain.ACTIVE_STATUSES),
                version=version,
            ),
        )
    )


async def _fail(message: ModifyApproved, uow: UnitOfWork, code: FailureCode, now) -> None:
    log.info("schedule.failed", reason_code=code.value)
    await uow.emit(
        ModifyFailed.follow(
            message,
            producer=PRODUCER,
            occurred_at=now,
            payload=ModifyFailedPayload(
                request_id=message.correlation_id,
                appointment_id=message.payload.appointment_id,
                action=message.payload.change.action,
                reason_code=code.value,
                reason=customer_text(code),
            ),
        )
    )


HANDLERS = {
    ModifyApproved: apply_approved_change,
    AppointmentRecorded: record_office_appointment,
}
