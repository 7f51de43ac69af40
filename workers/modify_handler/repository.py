"""The scheduling store: appointments and jobs, locked and versioned, always scoped by tenant."""

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation, JobStatus
from contracts.office_v1 import AppointmentRecordedPayload
from infra.db.tables import appointments, jobs, project_contacts, projects
from workers.modify_handler.domain import Appointment


def _to_domain(row) -> Appointment:
    return Appointment(
        tenant_id=row.tenant_id,
        appointment_id=row.appointment_id,
        job_id=row.job_id,
        customer_id=row.customer_id,
        business_unit=row.business_unit,
        job_type=row.job_type,
        project_id=row.project_id,
        window=ArrivalWindow(start=row.window_start, end=row.window_end),
        status=AppointmentStatus(row.status),
        confirmation=Confirmation(row.confirmation),
        version=row.version,
        zone=row.zone,
        holds_place=row.holds_place,
    )


async def lock_appointment(conn: AsyncConnection, tenant_id: str, appointment_id: str) -> Appointment | None:
    row = (
        await conn.execute(
            select(appointments)
            .where(appointments.c.tenant_id == tenant_id, appointments.c.appointment_id == appointment_id)
            .with_for_update()
        )
    ).first()
    return _to_domain(row) if row else None


async def save_appointment(
    conn: AsyncConnection, appointment: Appointment, *, customer_reschedule: bool = False
) -> None:
    """Write the appointment's new state; a customer's reschedule also counts toward their limit."""
    counted = {"customer_reschedules": appointments.c.customer_reschedules + 1} if customer_reschedule else {}
    await conn.execute(
        update(appointments)
        .where(
            appointments.c.tenant_id == appointment.tenant_id,
            appointments.c.appointment_id == appointment.appointment_id,
        )
        .values(
            window_start=appointment.window.start,
            window_end=appointment.window.end,
            status=appointment.status.value,
            confirmation=appointment.confirmation.value,
            version=appointment.version,
            holds_place=appointment.holds_place,
            updated_at=func.now(),
            **counted,
        )
    )


async def lock_job(conn: AsyncConnection, tenant_id: str, job_id: str):
    return (
        await conn.execute(
            select(jobs).where(jobs.c.tenant_id == tenant_id, jobs.c.job_id == job_id).with_for_update()
        )
    ).first()


async def job_appointment_statuses(
    conn: AsyncConnection, tenant_id: str, job_id: str
) -> list[AppointmentStatus]:
    rows = await conn.execute(
        select(appointments.c.status).where(
            appointments.c.tenant_id == tenant_id, appointments.c.job_id == job_id
        )
    )
    return [AppointmentStatus(s) for s in rows.scalars()]


async def set_job_status(conn: AsyncConnection, tenant_id: str, job_id: str, status: JobStatus) -> int:
    """Returns the job's new version."""
    return (
        await conn.execute(
            update(jobs)
            .where(jobs.c.tenant_id == tenant_id, jobs.c.job_id == job_id)
            .values(status=status.value, version=jobs.c.version + 1, updated_at=func.now())
            .returning(jobs.c.version)
        )
    ).scalar_one()


async def ensure_job(conn: AsyncConnection, tenant_id: str, job_id: str, customer_id: str) -> bool:
    """Create the job the office booked against, if new; True when it was created."""
    result = await conn.execute(
        insert(jobs)
        .values(tenant_id=tenant_id, job_id=job_id, customer_id=customer_id, status=JobStatus.SCHEDULED.value)
        .on_conflict_do_nothing()
        .returning(jobs.c.job_id)
    )
    return result.first() is not None


def office_state(tenant_id: str, payload: AppointmentRecordedPayload, version: int) -> Appointment:
    """The appointment as the office recorded it (before its place is decided)."""
    return Appointment(
        tenant_id=tenant_id,
        appointment_id=payload.appointment_id,
        job_id=payload.job_id,
        customer_id=payload.customer_id,
        business_unit=payload.business_unit,
        job_type=payload.job_type,
        project_id=payload.project.project_id if payload.project else None,
        window=payload.window,
        status=payload.status,
        confirmation=payload.confirmation,
        version=version,
        zone=payload.zone or "",
    )


async def record_office_appointment(
    conn: AsyncConnection, tenant_id: str, payload: AppointmentRecordedPayload, *, holds_place: bool
) -> Appointment:
    """Insert or overwrite the appointment with the office's state; bumps its version."""
    values = dict(
        tenant_id=tenant_id,
        appointment_id=payload.appointment_id,
        job_id=payload.job_id,
        customer_id=payload.customer_id,
        business_unit=payload.business_unit,
        job_type=payload.job_type,
        project_id=payload.project.project_id if payload.project else None,
        window_start=payload.window.start,
        window_end=payload.window.end,
        status=payload.status.value,
        confirmation=payload.confirmation.value,
        zone=payload.zone or "",
        holds_place=holds_place,
    )
    statement = insert(appointments).values(**values, version=1)
    statement = statement.on_conflict_do_update(
        index_elements=[appointments.c.tenant_id, appointments.c.appointment_id],
        set_={
            **{k: statement.excluded[k] for k in values if k not in ("tenant_id", "appointment_id")},
            "version": appointments.c.version + 1,
            "updated_at": func.now(),
        },
    ).returning(*appointments.c)
    row = (await conn.execute(statement)).one()
    if payload.project is not None:
        await record_project(conn, tenant_id, payload.project)
        await replace_project_contacts(conn, tenant_id, payload.project)
    return _to_domain(row)


async def record_project(conn: AsyncConnection, tenant_id: str, project) -> None:
    """The project's portal lock and dates, as the office last sent them."""
    values = dict(portal_locked=project.portal_locked, starts_at=project.starts_at, ends_at=project.ends_at)
    statement = insert(projects).values(tenant_id=tenant_id, project_id=project.project_id, **values)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[projects.c.tenant_id, projects.c.project_id],
            set_={**{k: statement.excluded[k] for k in values}, "updated_at": func.now()},
        )
    )


async def replace_project_contacts(conn: AsyncConnection, tenant_id: str, project) -> None:
    """Make the stored contacts equal the office's list. Upsert, not delete-then-insert: several bookings
    of one project may be recorded at the same time, and each must see the others' rows, not collide."""
    keep = [c.contact_id for c in project.contacts]
    await conn.execute(
        delete(project_contacts).where(
            project_contacts.c.tenant_id == tenant_id,
            project_contacts.c.project_id == project.project_id,
            project_contacts.c.contact_id.not_in(keep),
        )
    )
    if project.contacts:
        statement = insert(project_contacts).values(
            [
                dict(
                    tenant_id=tenant_id,
                    project_id=project.project_id,
                    contact_id=c.contact_id,
                    role=c.role.value,
                )
                for c in project.contacts
            ]
        )
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=list(project_contacts.primary_key.columns),
                set_={"role": statement.excluded.role},
            )
        )
