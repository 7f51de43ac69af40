"""modify_handler's store in memory (`workers.modify_handler.repository.ScheduleStore`): appointments,
jobs, projects with their contacts, and the places of arrival windows, with the table's checks."""

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from contracts.common import AppointmentStatus, ArrivalWindow, JobStatus, Project
from contracts.office_v1 import AppointmentRecordedPayload
from workers.modify_handler.domain import Appointment, Place, office_state
from workers.modify_handler.places import ChangedPlace


class CheckViolation(ValueError):
    """A write the database's constraints would refuse (a foreign key, `booked <= capacity`, ...)."""


def _check(place: Place) -> Place:
    """scheduling.capacity_windows' CHECK constraints."""
    if place.places < 0 or not 0 <= place.booked <= place.capacity or place.capacity < place.places:
        raise CheckViolation(f"capacity window refuses {place}")
    return place


class FakeScheduleStore:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)  # the transaction's clock (FakeUnitOfWork sets it)
        self.appointments: dict[tuple[str, str], Appointment] = {}
        self.customer_reschedules: dict[tuple[str, str], int] = {}
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.projects: dict[tuple[str, str], dict[str, Any]] = {}
        self.contacts: dict[tuple[str, str], dict[str, str]] = {}  # contact id -> role
        self.windows: dict[
            tuple[str, str, str, datetime], dict[str, Any]
        ] = {}  # place, version, capacity_version

    # --- appointments and jobs ---

    async def guard_appointment_id(self, tenant_id: str, appointment_id: str) -> None:
        """One transaction at a time here: nothing to serialize."""

    async def lock_appointment(self, tenant_id: str, appointment_id: str) -> Appointment | None:
        return self.appointments.get((tenant_id, appointment_id))

    async def save_appointment(
        self, appointment: Appointment, *, customer_reschedule: bool = False, by_customer: bool = False
    ) -> None:
        key = (appointment.tenant_id, appointment.appointment_id)
        current = self.appointments.get(key)
        if current is None:
            return
        self.appointments[key] = replace(
            current,
            window=appointment.window,
            status=appointment.status,
            confirmation=appointment.confirmation,
            version=appointment.version,
            holds_place=appointment.holds_place,
            customer_version=appointment.version if by_customer else current.customer_version,
        )
        self.customer_reschedules[key] = self.customer_reschedules.get(key, 0) + (
            1 if customer_reschedule else 0
        )

    async def lock_job(
        self, tenant_id: str, job_id: str
    ) -> tuple[dict[str, Any] | None, list[AppointmentStatus]]:
        job = self.jobs.get((tenant_id, job_id))
        statuses = [
            a.status for (t, _), a in self.appointments.items() if t == tenant_id and a.job_id == job_id
        ]
        return (dict(job) if job is not None else None), statuses

    async def set_job_status(self, tenant_id: str, job_id: str, status: JobStatus) -> int:
        job = self.jobs[(tenant_id, job_id)]
        job.update(status=status.value, version=job["version"] + 1)
        return job["version"]

    async def ensure_job(self, tenant_id: str, job_id: str, customer_id: str) -> bool:
        if (tenant_id, job_id) in self.jobs:
            return False
        self.jobs[(tenant_id, job_id)] = {
            "status": JobStatus.SCHEDULED.value,
            "customer_id": customer_id,
            "version": 0,
        }
        return True

    async def record_office_appointment(
        self,
        tenant_id: str,
        payload: AppointmentRecordedPayload,
        *,
        holds_place: bool,
        office_revision: int | None,
    ) -> Appointment:
        if (tenant_id, payload.job_id) not in self.jobs:
            raise CheckViolation(f"no job {payload.job_id} (foreign key)")
        key = (tenant_id, payload.appointment_id)
        previous = self.appointments.get(key)
        version = previous.version + 1 if previous is not None else 1
        # The office's state over the row; the version counts on, the customer's stays.
        self.appointments[key] = replace(
            office_state(tenant_id, payload, version),
            holds_place=holds_place,
            office_revision=previous.office_revision
            if office_revision is None and previous
            else office_revision,
            office_version=version,
            customer_version=previous.customer_version if previous is not None else None,
        )
        self.customer_reschedules.setdefault(key, 0)
        if payload.project is not None:
            await self.record_project(tenant_id, payload.project)
            await self.replace_project_contacts(tenant_id, payload.project)
        return self.appointments[key]

    async def record_project(self, tenant_id: str, project: Project) -> None:
        self.projects[(tenant_id, project.project_id)] = {
            "portal_locked": project.portal_locked,
            "starts_at": project.starts_at,
            "ends_at": project.ends_at,
        }

    async def replace_project_contacts(self, tenant_id: str, project: Project) -> None:
        self.contacts[(tenant_id, project.project_id)] = {
            c.contact_id: c.role.value for c in project.contacts
        }

    # --- places (workers.modify_handler.places.Places) ---

    async def unit_uses_capacity(self, tenant_id: str, business_unit: str, zone: str) -> bool:
        return any(key[:3] == (tenant_id, business_unit, zone) for key in self.windows)

    async def lock_places(
        self, tenant_id: str, business_unit: str, zone: str, starts: list[datetime]
    ) -> dict[datetime, Place]:
        found = {
            start: self.windows.get((tenant_id, business_unit, zone, start)) for start in sorted(set(starts))
        }
        return {start: row["place"] for start, row in found.items() if row is not None}

    async def save_place(self, tenant_id: str, business_unit: str, zone: str, place: Place) -> ChangedPlace:
        row = self.windows.get((tenant_id, business_unit, zone, place.window.start))
        if row is None:
            raise LookupError(f"capacity window {business_unit}/{zone}/{place.window.start} is gone")
        # The statement sets the counts, not the window's end.
        row["place"] = _check(replace(place, window=row["place"].window))
        row["version"] += 1
        return ChangedPlace(business_unit, zone, place, row["version"])

    async def set_places(
        self,
        tenant_id: str,
        business_unit: str,
        zone: str,
        settings: list[tuple[ArrivalWindow, int]],
        capacity_version: int,
    ) -> list[ChangedPlace]:
        found: dict[datetime, Place] = {}
        versions: dict[datetime, int] = {}
        for window, places in sorted(settings, key=lambda item: item[0].start):
            key = (tenant_id, business_unit, zone, window.start)
            row = self.windows.get(key)
            if row is None:
                row = {"place": _check(Place(window, places, places, 0)), "version": 1}
            elif row["capacity_version"] < capacity_version:
                booked = row["place"].booked
                row = {
                    "place": _check(Place(window, places, max(places, booked), booked)),
                    "version": row["version"] + 1,
                }
            else:
                continue  # set by a newer capacity message
            self.windows[key] = {**row, "capacity_version": capacity_version}
            found[window.start], versions[window.start] = row["place"], row["version"]
        # Appointments in exactly one of these windows that hold no place now hold one.
        spans = {(place.window.start, place.window.end) for place in found.values()}
        counts: dict[datetime, int] = {}
        for key, appointment in self.appointments.items():
            if (
                key[0] == tenant_id
                and (appointment.business_unit, appointment.zone) == (business_unit, zone)
                and not appointment.holds_place
                and appointment.status is not AppointmentStatus.CANCELED
                and (appointment.window.start, appointment.window.end) in spans
            ):
                self.appointments[key] = replace(appointment, holds_place=True)
                counts[appointment.window.start] = counts.get(appointment.window.start, 0) + 1
        for start, count in counts.items():
            place = found[start]
            booked = place.booked + count
            found[start] = replace(place, booked=booked, capacity=max(place.places, booked))
            versions[start] = (await self.save_place(tenant_id, business_unit, zone, found[start])).version
        return [ChangedPlace(business_unit, zone, found[start], versions[start]) for start in sorted(found)]
