"""The scheduling store: appointments and jobs, locked and versioned, always scoped by tenant.

`ScheduleStore` is what modify_handler's handlers need (with the places of `places.Places`), as a
protocol; `PostgresSchedule` runs the statements below and those of `places` on a unit of work's
transaction, and `of(uow)` gives the handlers theirs (tests/fakes/schedule_store.py is the in-memory one,
held to the same behaviour by tests/integration/test_store_fakes.py)."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation, JobStatus, Project
from contracts.office_v1 import AppointmentRecordedPayload
from workers.modify_handler import places
from workers.modify_handler.domain import Appointment, Place
from workers.runtime.database import UnitOfWork


def _to_domain(row) -> Appointment:
    """A row (by column name) as the domain's appointment."""
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


_ENSURE_JOB = """
INSERT INTO scheduling.jobs (tenant_id, job_id, customer_id, status) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
RETURNING job_id
"""


async def ensure_job(driver: asyncpg.Connection, tenant_id: str, job_id: str, customer_id: str) -> bool:
    """Create the job the office booked against, if new; True when it was created."""
    created = await driver.fetchval(_ENSURE_JOB, tenant_id, job_id, customer_id, JobStatus.SCHEDULED.value)
    return created is not None


# The office's state overwrites the appointment; its version goes up, and is remembered as the version
# the office's last record produced (with the record's revision, if it has one).
_RECORD_OFFICE_APPOINTMENT = """
INSERT INTO scheduling.appointments AS a (tenant_id, appointment_id, job_id, customer_id, business_unit,
                                          job_type, project_id, window_start, window_end, status,
                                          confirmation, zone, holds_place, version, office_version,
                                          office_revision)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 1, 1, $14)
ON CONFLICT (tenant_id, appointment_id) DO UPDATE
   SET job_id = EXCLUDED.job_id, customer_id = EXCLUDED.customer_id, business_unit = EXCLUDED.business_unit,
       job_type = EXCLUDED.job_type, project_id = EXCLUDED.project_id,
       window_start = EXCLUDED.window_start, window_end = EXCLUDED.window_end, status = EXCLUDED.status,
       confirmation = EXCLUDED.confirmation, zone = EXCLUDED.zone, holds_place = EXCLUDED.holds_place,
       version = a.version + 1, office_version = a.version + 1,
       office_revision = coalesce(EXCLUDED.office_revision, a.office_revision), updated_at = now()
RETURNING tenant_id, appointment_id, job_id, customer_id, business_unit, job_type, project_id, window_start,
          window_end, status, confirmation, version, zone, holds_place, office_revision, office_version,
          customer_version
"""


async def record_office_appointment(
    driver: asyncpg.Connection,
    tenant_id: str,
    payload: AppointmentRecordedPayload,
    *,
    holds_place: bool,
    office_revision: int | None,
) -> Appointment:
    """Insert or overwrite the appointment with the office's state; bumps its version, and remembers it
    as the version the office's last record produced (with the record's revision, if it has one)."""
    row = await driver.fetchrow(
        _RECORD_OFFICE_APPOINTMENT,
        tenant_id,
        payload.appointment_id,
        payload.job_id,
        payload.customer_id,
        payload.business_unit,
        payload.job_type,
        payload.project.project_id if payload.project else None,
        payload.window.start,
        payload.window.end,
        payload.status.value,
        payload.confirmation.value,
        payload.zone or "",
        holds_place,
        office_revision,
    )
    if payload.project is not None:
        await record_project(driver, tenant_id, payload.project)
        await replace_project_contacts(driver, tenant_id, payload.project)
    return _to_domain(row)


_RECORD_PROJECT = """
INSERT INTO scheduling.projects (tenant_id, project_id, portal_locked, starts_at, ends_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant_id, project_id) DO UPDATE
   SET portal_locked = EXCLUDED.portal_locked, starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
       updated_at = now()
"""


async def record_project(driver: asyncpg.Connection, tenant_id: str, project) -> None:
    """The project's portal lock and dates, as the office last sent them."""
    await driver.execute(
        _RECORD_PROJECT,
        tenant_id,
        project.project_id,
        project.portal_locked,
        project.starts_at,
        project.ends_at,
    )


_DROP_OTHER_CONTACTS = """
DELETE FROM scheduling.project_contacts
 WHERE tenant_id = $1 AND project_id = $2 AND contact_id <> ALL($3::text[])
"""
_SAVE_CONTACTS = """
INSERT INTO scheduling.project_contacts (tenant_id, project_id, contact_id, role)
SELECT $1, $2, contact_id, role FROM unnest($3::text[], $4::text[]) AS c(contact_id, role)
ON CONFLICT (tenant_id, project_id, contact_id) DO UPDATE SET role = EXCLUDED.role
"""


async def replace_project_contacts(driver: asyncpg.Connection, tenant_id: str, project) -> None:
    """Make the stored contacts equal the office's list. Upsert, not delete-then-insert: several bookings
    of one project may be recorded at the same time, and each must see the others' rows, not collide."""
    keep = [c.contact_id for c in project.contacts]
    await driver.execute(_DROP_OTHER_CONTACTS, tenant_id, project.project_id, keep)
    if project.contacts:
        roles = [c.role.value for c in project.contacts]
        await driver.execute(_SAVE_CONTACTS, tenant_id, project.project_id, keep, roles)


class ScheduleStore(places.Places, Protocol):
    """The scheduling store as modify_handler's handlers use it, on one transaction (a unit of work's)."""

    async def guard_appointment_id(self, tenant_id: str, appointment_id: str) -> None: ...

    async def lock_appointment(self, tenant_id: str, appointment_id: str) -> Appointment | None: ...

    async def save_appointment(
        self, appointment: Appointment, *, customer_reschedule: bool = False, by_customer: bool = False
    ) -> None: ...

    async def lock_job(
        self, tenant_id: str, job_id: str
    ) -> tuple[Mapping[str, Any], list[AppointmentStatus]]: ...

    async def set_job_status(self, tenant_id: str, job_id: str, status: JobStatus) -> int: ...

    async def ensure_job(self, tenant_id: str, job_id: str, customer_id: str) -> bool: ...

    async def record_office_appointment(
        self,
        tenant_id: str,
        payload: AppointmentRecordedPayload,
        *,
        holds_place: bool,
        office_revision: int | None,
    ) -> Appointment: ...

    async def record_project(self, tenant_id: str, project: Project) -> None: ...

    async def replace_project_contacts(self, tenant_id: str, project: Project) -> None: ...

    async def set_places(
        self,
        tenant_id: str,
        business_unit: str,
        zone: str,
        settings: list[tuple[ArrivalWindow, int]],
        capacity_version: int,
    ) -> list[places.ChangedPlace]: ...


class PostgresSchedule:
    """`ScheduleStore` on a unit of work's transaction: the statements here and in `places`."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def guard_appointment_id(self, tenant_id: str, appointment_id: str) -> None:
        await guard_appointment_id(self._uow.driver, tenant_id, appointment_id)

    async def lock_appointment(self, tenant_id: str, appointment_id: str) -> Appointment | None:
        return await lock_appointment(self._uow.driver, tenant_id, appointment_id)

    async def save_appointment(self, appointment: Appointment, **kwargs) -> None:
        await save_appointment(self._uow.driver, appointment, **kwargs)

    async def lock_job(self, tenant_id: str, job_id: str):
        return await lock_job(self._uow.driver, tenant_id, job_id)

    async def set_job_status(self, tenant_id: str, job_id: str, status: JobStatus) -> int:
        return await set_job_status(self._uow.driver, tenant_id, job_id, status)

    async def ensure_job(self, tenant_id: str, job_id: str, customer_id: str) -> bool:
        return await ensure_job(self._uow.driver, tenant_id, job_id, customer_id)

    async def record_office_appointment(self, *args, **kwargs) -> Appointment:
        return await record_office_appointment(self._uow.driver, *args, **kwargs)

    async def record_project(self, tenant_id: str, project: Project) -> None:
        await record_project(self._uow.driver, tenant_id, project)

    async def replace_project_contacts(self, tenant_id: str, project: Project) -> None:
        await replace_project_contacts(self._uow.driver, tenant_id, project)

    async def unit_uses_capacity(self, tenant_id: str, business_unit: str, zone: str) -> bool:
        return await places.unit_uses_capacity(self._uow.driver, tenant_id, business_unit, zone)

    async def lock_places(
        self, tenant_id: str, business_unit: str, zone: str, starts: list[datetime]
    ) -> dict[datetime, Place]:
        return await places.lock_places(self._uow.driver, tenant_id, business_unit, zone, starts)

    async def save_place(
        self, tenant_id: str, business_unit: str, zone: str, place: Place
    ) -> places.ChangedPlace:
        return await places.save_place(self._uow.driver, tenant_id, business_unit, zone, place)

    async def set_places(self, *args, **kwargs) -> list[places.ChangedPlace]:
        return await places.set_places(self._uow.driver, *args, **kwargs)


def of(uow: UnitOfWork) -> ScheduleStore:
    """modify_handler's store in this unit of work: the one it carries (a test's `FakeUnitOfWork` holds an
    in-memory store), else PostgreSQL on its transaction."""
    carried = getattr(uow, "store", None)
    return carried if carried is not None else PostgresSchedule(uow)
