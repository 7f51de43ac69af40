"""Scheduling rules, pure: what a reschedule or cancel does to an appointment and its job."""

from dataclasses import dataclass, replace
from datetime import datetime

from contracts.common import AppointmentSnapshot, AppointmentStatus, ArrivalWindow, Confirmation, JobStatus
from contracts.reasons import FailureCode

# Appointments that still hold the job open.
ACTIVE_STATUSES = frozenset(
    {AppointmentStatus.SCHEDULED, AppointmentStatus.DISPATCHED, AppointmentStatus.WORKING}
)


@dataclass(frozen=True)
class Appointment:
    tenant_id: str
    appointment_id: str
    job_id: str
    customer_id: str
    business_unit: str
    job_type: str
    project_id: str | None
    window: ArrivalWindow
    status: AppointmentStatus
    confirmation: Confirmation
    version: int
    zone: str = ""  # the zone or technician group whose capacity it uses; '' = the whole unit
    holds_place: bool = False  # counted in its arrival window's bookings

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def snapshot(self) -> AppointmentSnapshot:
        return AppointmentSnapshot(
            appointment_id=self.appointment_id,
            job_id=self.job_id,
            customer_id=self.customer_id,
            business_unit=self.business_unit,
            job_type=self.job_type,
            project_id=self.project_id,
            window=self.window,
            status=self.status,
            confirmation=self.confirmation,
            version=self.version,
        )


@dataclass(frozen=True)
class Failure:
    code: FailureCode


def check_unchanged(appointment: Appointment, decided_on_version: int) -> Failure | None:
    """The gate decided on one version; if the office changed the appointment since, don't apply blindly."""
    if appointment.version != decided_on_version:
        return Failure(FailureCode.APPOINTMENT_CHANGED)
    return None


def reschedule(appointment: Appointment, new_window: ArrivalWindow, now: datetime) -> Appointment | Failure:
    if new_window.start <= now:
        return Failure(FailureCode.NEW_WINDOW_IN_PAST)
    if appointment.status is not AppointmentStatus.SCHEDULED:
        return Failure(FailureCode.APPOINTMENT_CHANGED)
    return replace(appointment, window=new_window, version=appointment.version + 1)


def cancel(appointment: Appointment) -> Appointment | Failure:
    if appointment.status is not AppointmentStatus.SCHEDULED:
        return Failure(FailureCode.APPOINTMENT_CHANGED)
    return replace(appointment, status=AppointmentStatus.CANCELED, version=appointment.version + 1)


# --- capacity: places in arrival windows ---------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """An arrival window's places as stored. `capacity` is what it holds now: `places`, or more when
    the office booked beyond them; a customer only ever takes a place while `booked < places`."""

    window: ArrivalWindow
    places: int
    capacity: int
    booked: int

    @property
    def free(self) -> int:
        return max(self.places - self.booked, 0)


def take_for_customer(place: Place | None, wanted: ArrivalWindow) -> Place | Failure:
    """A customer takes a free place in exactly the window they picked, or fails: never overbooked."""
    if place is None or place.window != wanted or place.free == 0:
        return Failure(FailureCode.TIME_NO_LONGER_AVAILABLE)
    return replace(place, booked=place.booked + 1)


def take_for_office(place: Place) -> Place:
    """The office's booking always counts (it is the source of truth); beyond the places it raises
    what the window holds, so free places never go negative and customers still see none."""
    booked = place.booked + 1
    return replace(place, booked=booked, capacity=max(place.capacity, booked))


def release(place: Place) -> Place:
    booked = max(place.booked - 1, 0)
    return replace(place, booked=booked, capacity=max(place.places, booked))


def set_places(place: Place, places: int) -> Place:
    return replace(place, places=places, capacity=max(places, place.booked))


def holds_a_place(status: AppointmentStatus) -> bool:
    """Every appointment not canceled keeps its place (a done one keeps the record of its visit)."""
    return status is not AppointmentStatus.CANCELED


def job_status(current: JobStatus, statuses: list[AppointmentStatus]) -> JobStatus:
    """A job follows its appointments: any active one keeps it open; when none is left, it is completed
    if work was done, otherwise canceled (its last active appointment was canceled)."""
    if any(s in ACTIVE_STATUSES for s in statuses):
        if any(s in (AppointmentStatus.WORKING, AppointmentStatus.DONE) for s in statuses):
            return JobStatus.IN_PROGRESS
        return JobStatus.SCHEDULED
    if not statuses:
        return current
    if any(s is AppointmentStatus.DONE for s in statuses):
        return JobStatus.COMPLETED
    return JobStatus.CANCELED
