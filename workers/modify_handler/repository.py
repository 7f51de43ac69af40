"""The scheduling store: appointments and jobs, locked and versioned, always scoped by tenant."""

import asyncpg
from sqlalchemy import delete, func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation, JobStatus
from contracts.office_v1 import AppointmentRecordedPayload
from infra.db.tables import appointments, jobs, project_contacts, projects
from workers.modify_handler.domain import Appointment


def _to_domain(row) -> Appointment:
    """A row (SQLAlchemy or asyncpg, by column name) as the domain's appointment."""
    return Appointment(
        tenant_id=row["tenant_id"],
        appointment_id=row["appointment_id"],
        job_id=row["job_id"],
        customer_id=row["customer_id"],
        business_unit=row["business_unit"],
        job_type=row["job_type"],
        project_id=row["project_id"],
        # from the database, so already valid (window_end > window_start is a table constraint)
        window=ArrivalWindow.model_construct(start=row["window_start"], end=row["window_end"]),
        status=AppointmentStatus(row["status"]),
        confirmation=Confirmation(row["confirmation"]),
        version=row["version"],
        zone=row["zone"],
        holds_place=row["holds_place"],
        office_revision=row["office_revision"],
        office_version=row["office_version"],
        customer_version=row["customer_version"],
    )


# The hot statements of an approval, prepared on the driver (the unit of work's asyncpg connection).
_LOCK_APPOINTMENT = """
SELECT tenant_id, appointment_id, job_id, customer_id, business_unit, job_type, project_id, window_start,
       window_end, status, confirmation, version, zone, holds_place, office_revision, office_version,
       customer_version
  FROM scheduling.appointments WHERE tenant_id = $1 AND appointment_id = $2
   FOR UPDATE
"""


_GUARD_APPOINTMENT_ID = "SELECT pg_advisory_xact_lock(hashtext('appointment:' || $1 || ':' || $2))"


async def guard_appointment_id(driver: asyncpg.Connection, tenant_id: str, appointment_id: str) -> None:
    """Until commit, the only office record of this appointment in flight. A row lock cannot serialize
    two records of an appointment that does not exist yet: both would book it and take its place twice."""
    await driver.execute(_GUARD_APPOINTMENT_ID, tenant_id, appointment_id)


async def lock_appointment(
    driver: asyncpg.Connection, tenant_id: str, appointment_id: str
) -> Appointment | None:
    row = await driver.fetchrow(_LOCK_APPOINTMENT, tenant_id, appointment_id)
    return _to_domain(row) if row else None


_SAVE_APPOINTMENT = """
UPDATE scheduling.appointments
   SET window_start = $3, window_end = $4, status = $5, confirmation = $6, version = $7, holds_place = $8,
       updated_at = now(), customer_reschedules = customer_reschedules + $9,
       customer_version = CASE WHEN $10 THEN $7 ELSE customer_version END
 WHERE tenant_id = $1 AND appointment_id = $2
"""


async def save_appointment(
    driver: asyncpg.Connection,
    appointment: Appointment,
    *,
    customer_reschedule: bool = False,
    by_customer: bool = False,
) -> None:
    """Write the appointment's new state; a customer's reschedule also counts toward their limit, and a
    customer's change is remembered as the version an office record must have known of to undo it."""
    await driver.execute(
        _SAVE_APPOINTMENT,
        appointment.tenant_id,
        appointment.appointment_id,
        appointment.window.start,
        appointment.window.end,
        appointment.status.value,
        appointment.confirmation.value,
        appointment.version,
        appointment.holds_place,
        1 if customer_reschedule else 0,
        by_customer,
    )


_LOCK_JOB = "SELECT status, customer_id FROM scheduling.jobs WHERE tenant_id = $1 AND job_id = $2 FOR UPDATE"
# A statement of its own, after the lock: under READ COMMITTED each statement reads a fresh snapshot,
# so it sees the appointments of a concurrent change of the same job that committed while we waited
# for the lock. (In the locking statement itself, a subquery would read the snapshot from before the
# wait, and two cancels of a job's two visits would each count the other as still active.)
_JOB_APPOINTMENT_STATUSES = "SELECT status FROM scheduling.appointments WHERE tenant_id = $1 AND job_id = $2"


async def lock_job(driver: asyncpg.Connection, tenant_id: str, job_id: str) -> tuple[asyncpg.Record, list]:
    """The job, locked, then the statuses of all its appointments as committed by then."""
    job = await driver.fetchrow(_LOCK_JOB, tenant_id, job_id)
    rows = await driver.fetch(_JOB_APPOINTMENT_STATUSES, tenant_id, job_id)
    return job, [AppointmentStatus(row["status"]) for row in rows]


_SET_JOB_STATUS = """
UPDATE scheduling.jobs SET status = $3, version = version + 1, updated_at = now()
 WHERE tenant_id = $1 AND job_id = $2
RETURNING version
"""


async def set_job_status(driver: asyncpg.Connection, tenant_id: str, job_id: str, status: JobStatus) -> int:
    """Returns the job's new version."""
    return await driver.fetchval(_SET_JOB_STATUS, tenant_id, job_id, status.value)


async def ensure_job(conn: AsyncConnection, tenant_id: str, job_id: str, customer_id: str) -> bool:
    """Create the job the office booked against, if new; True when it was created."""
    result = await conn.execute(
        insert(jobs)
        .values(tenant_id=tenant_id, job_id=job_id, customer_id=customer_id, status=JobStatus.SCHEDULED.value)
        .on_conflict_do_nothing()
        .returning(jobs.c.job_id)
    )
    return result.first() is not None


async def record_office_appointment(
    conn: AsyncConnection,
    tenant_id: str,
    payload: AppointmentRecordedPayload,
    *,
    holds_place: bool,
    office_revision: int | None,
) -> Appointment:
    """Insert or overwrite the appointment with the office's state; bumps its version, and remembers it
    as the version the office's last record produced (with the record's revision, if it has one)."""
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
    statement = insert(appointments).values(
        **values, version=1, office_version=1, office_revision=office_revision
    )
    statement = statement.on_conflict_do_update(
        index_elements=[appointments.c.tenant_id, appointments.c.appointment_id],
        set_={
            **{k: statement.excluded[k] for k in values if k not in ("tenant_id", "appointment_id")},
            "version": appointments.c.version + 1,
            "office_version": appointments.c.version + 1,
            "office_revision": func.coalesce(
                statement.excluded.office_revision, appointments.c.office_revision
            ),
            "updated_at": func.now(),
        },
    ).returning(*appointments.c)
    row = (await conn.execute(statement)).one()._mapping
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
