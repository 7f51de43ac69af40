"""Scheduling rules, pure: what a reschedule or cancel does to an appointment and its job."""

from dataclasses import dataclass, replace
from datetime import datetime

from contracts.common import AppointmentSnapshot, AppointmentStatus, ArrivalWindow, Confirmation, JobStatus
from contracts.office_v1 import AppointmentRecordedPayload
from contracts.reasons import FailureCode, OfficeOutcomeCode

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
    office_revision: int | None = None  # the office's last applied revision (versioned records)
    office_version: int | None = None  # the version the last applied office record produced
    customer_version: int | None = None  # the version the last customer change produced

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


# --- the office's records: versioned writes ------------------------------------------------------


def undoes_customer_change(current: Appointment, recorded: Appointment) -> bool:
    """Would the record put back what a customer changed: the window they moved to, or a cancel?"""
    if recorded.window != current.window:
        return True
    return current.status is AppointmentStatus.CANCELED and recorded.status is not AppointmentStatus.CANCELED


def judge_office_record(
    current: Appointment | None,
    recorded: Appointment,
    *,
    based_on_version: int | None,
    office_revision: int | None,
) -> OfficeOutcomeCode | None:
    """Whether an office record applies (None) or why not (docs/scheduling.md, "Two writers").

    A revision not above the last applied one is older: ignored. The record is built on
    `based_on_version` (version 2) or, for a version 1 record, on the state the previous office record
    produced. Built before the last customer change, it applies only if it leaves that change as the
    customer left it; otherwise it is refused as stale, and the customer's change stands."""
    if current is None:
        return None
    if (
        office_revision is not None
        and current.office_revision is not None
        and office_revision <= current.office_revision
    ):
        return OfficeOutcomeCode.OLDER_REVISION
    if based_on_version is not None and based_on_version > current.version:
        return OfficeOutcomeCode.UNKNOWN_VERSION
    # A version 2 record always carries a revision; a version 1 record carries neither.
    base = based_on_version if office_revision is not None else current.office_version
    knew_of_customer = current.customer_version is None or (base or 0) >= current.customer_version
    if not knew_of_customer and undoes_customer_change(current, recorded):
        return OfficeOutcomeCode.STALE_RECORD
    return None


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


# Where a place is: the unit, the zone and the window's start.
PlaceKey = tuple[str, str, datetime]


@dataclass(frozen=True)
class PlacePlan:
    """What a change does to places: the places to save (with where they are, in lock order) and
    whether the appointment holds a place afterwards."""

    updates: tuple[tuple[str, str, Place], ...]
    holds_place: bool


def starts_to_lock(current: Appointment, moved: Appointment, *, managed: bool) -> list[datetime]:
    """The window starts (in the appointment's unit and zone) a customer's move must lock: none when the
    unit does not manage capacity and the appointment holds no place."""
    if not managed and not current.holds_place:
        return []
    return [moved.window.start] + ([current.window.start] if current.holds_place else [])


def plan_move(
    current: Appointment, moved: Appointment, *, managed: bool, places: dict[datetime, Place]
) -> PlacePlan | Failure:
    """A customer's reschedule: take a free place in the new window (if the unit manages capacity) and
    free the old one, given the locked places by start. Fails when the new window has no free place.

    A move into the very window whose place the appointment already holds keeps that place and changes
    no count: taking and releasing the same locked row would each start from the count as read, and the
    last write would win (the release, leaving the window booked one short of its holders)."""
    unit, zone = current.business_unit, current.zone
    if current.holds_place and moved.window.start == current.window.start:
        held = places.get(current.window.start)
        if held is not None and held.window == moved.window:
            return PlacePlan((), True)
    updates: list[tuple[str, str, Place]] = []
    if managed:
        taken = take_for_customer(places.get(moved.window.start), moved.window)
        if isinstance(taken, Failure):
            return taken
        updates.append((unit, zone, taken))
    if current.holds_place and current.window.start in places:
        updates.append((unit, zone, release(places[current.window.start])))
    return PlacePlan(tuple(updates), managed)


def plan_free(appointment: Appointment, place: Place | None) -> PlacePlan:
    """A cancel gives back the place the appointment held (if its window still exists)."""
    if not appointment.holds_place or place is None:
        return PlacePlan((), False)
    return PlacePlan(((appointment.business_unit, appointment.zone, release(place)),), False)


def office_place_keys(
    previous: Appointment | None, recorded: Appointment
) -> tuple[PlaceKey | None, PlaceKey | None]:
    """The place an appointment held before the office's record and the one the record wants (None: no
    place; it holds one unless canceled)."""
    old = (
        (previous.business_unit, previous.zone, previous.window.start)
        if previous is not None and previous.holds_place
        else None
    )
    wants = holds_a_place(recorded.status)
    new = (recorded.business_unit, recorded.zone, recorded.window.start) if wants else None
    return old, new


def office_places_to_lock(previous: Appointment | None, recorded: Appointment) -> list[PlaceKey]:
    """The places an office record must lock before `plan_office_record`, in one fixed order (unit, zone,
    start): the old and the new one when they differ; the one it keeps when only the end changes (whether
    it still holds it depends on that window's span); none when the window stays as it was."""
    old, new = office_place_keys(previous, recorded)
    if old != new:
        return sorted(k for k in (old, new) if k is not None)
    if old is not None and previous is not None and previous.window != recorded.window:
        return [old]
    return []


def plan_office_record(
    old: PlaceKey | None, new: PlaceKey | None, locked: dict[PlaceKey, Place], recorded: Appointment
) -> PlacePlan:
    """The office's state decides which place the appointment holds: free the old one if it moved,
    changed unit or zone, or was canceled; take the new window's place (always: the office decides),
    when a window of exactly the recorded span exists.

    A place is only ever held in a window of exactly the appointment's span (a customer takes one only
    there, and setting places counts only those). A record keeping unit, zone and start but changing the
    end therefore keeps the place only if the window there has the new span, and frees it otherwise.
    Same key and the place not locked (`office_places_to_lock`: the window did not change): kept."""
    if old == new:
        held = locked.get(old) if old is not None else None
        if old is None or held is None or held.window == recorded.window:
            return PlacePlan((), old is not None)
        return PlacePlan(((old[0], old[1], release(held)),), False)
    updates: list[tuple[str, str, Place]] = []
    if old is not None and old in locked:
        updates.append((old[0], old[1], release(locked[old])))
    holds = new is not None and new in locked and locked[new].window == recorded.window
    if holds:
        assert new is not None
        updates.append((new[0], new[1], take_for_office(locked[new])))
    return PlacePlan(tuple(updates), holds)


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
