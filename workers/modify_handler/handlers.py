"""modify_handler handlers: apply approved requests and office updates, emitting result events."""

from dataclasses import replace

import structlog

from contracts.catalog import MODIFY_HANDLER
from contracts.common import AppointmentSnapshot, JobStatus
from contracts.envelope import Envelope
from contracts.events_v1 import (
    AppointmentCanceled,
    AppointmentCanceledPayload,
    AppointmentRescheduled,
    AppointmentRescheduledPayload,
    AppointmentUpdated,
    AppointmentUpdatedPayload,
    CapacityWindowChanged,
    CapacityWindowChangedPayload,
    Initiator,
    JobStatusChanged,
    JobStatusChangedPayload,
    ModifyFailed,
    ModifyFailedPayload,
    ProjectUpdated,
    ProjectUpdatedPayload,
    office_outcome,
)
from contracts.internal_v1 import ModifyApproved
from contracts.office_v1 import AppointmentRecorded, CapacityUpdated, ProjectRecorded
from contracts.office_v2 import AppointmentRecordedV2
from contracts.portal_v1 import Reschedule
from contracts.reasons import FailureCode, OfficeOutcomeCode, customer_text
from workers.modify_handler import domain, places, repository
from workers.modify_handler.domain import Appointment, Failure
from workers.runtime.database import UnitOfWork

log = structlog.get_logger(__name__)
PRODUCER = MODIFY_HANDLER.name


async def apply_approved_change(message: ModifyApproved, uow: UnitOfWork) -> None:
    """Apply the gate's approval on the version it was decided on, or fail. The result event carries the
    portal's offer for the new state as the gate computed it (the gate no longer follows these events)."""
    request = message.payload
    now = await uow.now()
    current = await repository.of(uow).lock_appointment(message.tenant_id, request.appointment_id)
    if current is None:
        await _fail(message, uow, FailureCode.APPOINTMENT_CHANGED)
        return
    result: Appointment | Failure | None = domain.check_unchanged(current, request.decided_on_version)
    if result is None:
        if isinstance(request.change, Reschedule):
            result = domain.reschedule(current, request.change.new_window, now)
        else:
            result = domain.cancel(current)
    if isinstance(result, Failure):
        await _fail(message, uow, result.code)
        return
    if isinstance(request.change, Reschedule):
        moved = await places.move_for_customer(repository.of(uow), current, result)
        if isinstance(moved, Failure):
            await _fail(message, uow, moved.code)
            return
        result, changed_places = moved
    else:
        changed_places = await places.free_place(repository.of(uow), current)
        result = replace(result, holds_place=False)
    await repository.of(uow).save_appointment(
        result, customer_reschedule=isinstance(request.change, Reschedule), by_customer=True
    )
    if isinstance(request.change, Reschedule):
        await uow.follow(
            message,
            AppointmentRescheduled,
            AppointmentRescheduledPayload(
                appointment=result.snapshot(),
                previous_window=current.window,
                initiated_by=Initiator.CUSTOMER,
                request_id=message.correlation_id,
                offer=request.offer,
            ),
        )
    else:
        await uow.follow(
            message,
            AppointmentCanceled,
            AppointmentCanceledPayload(
                appointment=result.snapshot(),
                reason=request.change.reason,
                initiated_by=Initiator.CUSTOMER,
                request_id=message.correlation_id,
                offer=request.offer,
            ),
        )
    await _announce_places(message, uow, changed_places)
    await _follow_job_status(message, uow, result, count_changed=current.is_active != result.is_active)
    log.info("schedule.applied", action=request.change.action, version=result.version)


async def record_office_appointment(
    message: AppointmentRecorded | AppointmentRecordedV2, uow: UnitOfWork
) -> None:
    """Apply the office's record unless it is older than one applied or would undo a customer's change
    it did not know of (domain.judge_office_record); answer with an `office.outcome` either way."""
    payload = message.payload
    now = await uow.now()
    versioned = isinstance(message, AppointmentRecordedV2)
    await repository.of(uow).guard_appointment_id(message.tenant_id, payload.appointment_id)
    previous = await repository.of(uow).lock_appointment(message.tenant_id, payload.appointment_id)
    recorded = domain.office_state(message.tenant_id, payload, previous.version + 1 if previous else 1)
    not_applied = domain.judge_office_record(
        previous,
        recorded,
        based_on_version=payload.based_on_version if versioned else None,
        office_revision=payload.office_revision if versioned else None,
    )
    if not_applied is not None:
        assert previous is not None
        log.info(
            "schedule.office_record_not_applied", reason_code=not_applied.value, version=previous.version
        )
        await _office_outcome(
            message, uow, now, payload.appointment_id, not_applied, current=previous.snapshot()
        )
        return
    new_job = await repository.of(uow).ensure_job(message.tenant_id, payload.job_id, payload.customer_id)
    holds, changed_places = await places.follow_office_record(repository.of(uow), previous, recorded)
    appointment = await repository.of(uow).record_office_appointment(
        message.tenant_id,
        payload,
        holds_place=holds,
        office_revision=payload.office_revision if versioned else None,
    )
    await uow.follow(
        message,
        AppointmentUpdated,
        AppointmentUpdatedPayload(
            appointment=appointment.snapshot(),
            initiated_by=Initiator.OFFICE,
            based_on_version=(
                payload.based_on_version
                if versioned
                else (previous.office_version if previous is not None else None)
            ),
        ),
    )
    await _announce_places(message, uow, changed_places)
    count_changed = (
        previous is None
        or previous.job_id != appointment.job_id
        or previous.is_active != appointment.is_active
    )
    await _follow_job_status(message, uow, appointment, announce=new_job, count_changed=count_changed)
    await _office_outcome(message, uow, now, payload.appointment_id, None, current=appointment.snapshot())
    log.info("schedule.office_recorded", version=appointment.version, holds_place=holds)


async def _office_outcome(
    message: Envelope,
    uow: UnitOfWork,
    now,
    subject: str | None,
    code: OfficeOutcomeCode | None,
    *,
    current: AppointmentSnapshot | None = None,
) -> None:
    """Tell the office what became of its message: applied (no code), ignored as older, or refused."""
    await uow.emit(office_outcome(message, now, subject, code, producer=PRODUCER, current=current))


async def record_office_project(message: ProjectRecorded, uow: UnitOfWork) -> None:
    """The office changed a project on its own (not with one of its appointments)."""
    project = message.payload.project
    now = await uow.now()
    await repository.of(uow).record_project(message.tenant_id, project)
    await repository.of(uow).replace_project_contacts(message.tenant_id, project)
    await uow.follow(
        message,
        ProjectUpdated,
        ProjectUpdatedPayload(
            project_id=project.project_id,
            portal_locked=project.portal_locked,
            starts_at=project.starts_at,
            ends_at=project.ends_at,
            contacts=len(project.contacts),
        ),
    )
    await _office_outcome(message, uow, now, project.project_id, None)
    log.info("schedule.project_recorded", project_id=project.project_id, locked=project.portal_locked)


async def set_office_capacity(message: CapacityUpdated, uow: UnitOfWork) -> None:
    payload = message.payload
    now = await uow.now()
    changed = await repository.of(uow).set_places(
        message.tenant_id,
        payload.business_unit,
        payload.zone or "",
        payload.utc_windows(),
        payload.capacity_version,
    )
    await _announce_places(message, uow, changed)
    # Nothing changed only when every window was already set by a newer capacity message.
    code = None if changed else OfficeOutcomeCode.OLDER_REVISION
    await _office_outcome(message, uow, now, payload.business_unit, code)
    log.info("schedule.capacity_set", windows=len(payload.windows), changed=len(changed))


async def _announce_places(cause: Envelope, uow: UnitOfWork, changed: list[places.ChangedPlace]) -> None:
    for item in changed:
        await uow.follow(
            cause,
            CapacityWindowChanged,
            CapacityWindowChangedPayload(
                business_unit=item.business_unit,
                zone=item.zone or None,
                window=item.place.window,
                places=item.place.places,
                booked=item.place.booked,
                free=item.place.free,
                version=item.version,
            ),
        )


async def _follow_job_status(
    cause: Envelope,
    uow: UnitOfWork,
    appointment: Appointment,
    *,
    announce: bool = False,
    count_changed: bool = False,
) -> None:
    """Derive the job's status from its appointments and announce it when the read store's job row
    changes: a new job (`announce`), a new status, or a new count of active appointments
    (`count_changed`: a second booking, or one canceled visit of two, changes it without changing the
    status). A reschedule changes neither, so it costs no job event."""
    job, statuses = await repository.of(uow).lock_job(appointment.tenant_id, appointment.job_id)
    previous = JobStatus(job["status"])
    new = domain.job_status(previous, statuses)
    if not (announce or count_changed or new is not previous):
        return
    version = await repository.of(uow).set_job_status(appointment.tenant_id, appointment.job_id, new)
    await uow.follow(
        cause,
        JobStatusChanged,
        JobStatusChangedPayload(
            job_id=appointment.job_id,
            customer_id=job["customer_id"],
            status=new,
            previous_status=None if announce else previous,
            active_appointments=sum(1 for s in statuses if s in domain.ACTIVE_STATUSES),
            version=version,
        ),
    )


async def _fail(message: ModifyApproved, uow: UnitOfWork, code: FailureCode) -> None:
    log.info("schedule.failed", reason_code=code.value)
    await uow.follow(
        message,
        ModifyFailed,
        ModifyFailedPayload(
            request_id=message.correlation_id,
            appointment_id=message.payload.appointment_id,
            action=message.payload.change.action,
            reason_code=code.value,
            reason=customer_text(code),
        ),
    )


HANDLERS = {
    ModifyApproved: apply_approved_change,
    AppointmentRecorded: record_office_appointment,
    AppointmentRecordedV2: record_office_appointment,
    CapacityUpdated: set_office_capacity,
    ProjectRecorded: record_office_project,
}
