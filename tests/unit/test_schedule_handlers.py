"""modify_handler's handlers on the in-memory store and unit of work: which events, with which payloads,
for which facts. No database, no broker (tests/integration and tests/e2e run them on the real ones)."""

from datetime import timedelta

import pytest

from contracts.common import AppointmentStatus, Confirmation, ContactRole, JobStatus, Project, ProjectContact
from contracts.events_v1 import (
    AppointmentCanceled,
    AppointmentRescheduled,
    AppointmentUpdated,
    CapacityWindowChanged,
    Initiator,
    JobStatusChanged,
    ModifyFailed,
    OfficeOutcome,
    ProjectUpdated,
)
from contracts.reasons import FailureCode, OfficeOutcomeCode
from tests import factories as f
from tests.fakes.schedule_store import FakeScheduleStore
from tests.fakes.unit_of_work import FakeUnitOfWork
from workers.modify_handler.handlers import HANDLERS

TENANT = f.TENANT
KEY = (TENANT, f.APPOINTMENT_ID)


@pytest.fixture
def store() -> FakeScheduleStore:
    return FakeScheduleStore()


@pytest.fixture
def uow(store: FakeScheduleStore) -> FakeUnitOfWork:
    return FakeUnitOfWork(store, producer="modify_handler")


async def handle(uow: FakeUnitOfWork, message) -> list:
    """The message through modify_handler's handler table, as the runtime dispatches it."""
    return await uow.handle(HANDLERS[type(message)], message)


def kinds(events: list) -> list[type]:
    return [type(e) for e in events]


def approved(change=None, *, version: int = 1, **request):
    return f.modify_approved(f.modify_requested(change=change, **request), decided_on_version=version)


def places_for(*windows, places: int = 1, version: int = 1):
    """The office's capacity message giving each window `places` places (UTC)."""
    return f.capacity_updated(
        windows=[
            {"date": w.start.date(), "start": w.start.time(), "end": w.end.time(), "places": places}
            for w in windows
        ],
        capacity_version=version,
    )


# --- the office's bookings ------------------------------------------------------------------------


async def test_a_new_booking_is_announced_with_its_new_job_and_applied(uow, store):
    booking = f.appointment_recorded()

    updated, job, outcome = await handle(uow, booking)

    assert isinstance(updated, AppointmentUpdated)
    assert updated.correlation_id == booking.correlation_id and updated.causation_id == booking.message_id
    assert updated.payload.appointment.version == 1
    assert updated.payload.appointment.window == booking.payload.window
    assert (updated.payload.initiated_by, updated.payload.based_on_version) == (Initiator.OFFICE, None)
    assert isinstance(job, JobStatusChanged)
    assert (job.payload.job_id, job.payload.customer_id, job.payload.status) == (
        f.JOB_ID,
        f.CUSTOMER_ID,
        JobStatus.SCHEDULED,
    )
    assert (job.payload.previous_status, job.payload.active_appointments, job.payload.version) == (None, 1, 1)
    assert isinstance(outcome, OfficeOutcome)
    assert (outcome.payload.status, outcome.payload.subject) == ("applied", f.APPOINTMENT_ID)
    assert outcome.payload.current == updated.payload.appointment
    assert store.appointments[KEY].office_version == 1


async def test_a_second_visit_of_a_job_changes_its_count_not_its_status(uow, store):
    await handle(uow, f.appointment_recorded())
    events = await handle(uow, f.appointment_recorded(appointment_id="appt-2", window=f.arrival_window(9)))
    job = next(e for e in events if isinstance(e, JobStatusChanged))
    assert (
        job.payload.status,
        job.payload.previous_status,
        job.payload.active_appointments,
        job.payload.version,
    ) == (
        JobStatus.SCHEDULED,
        JobStatus.SCHEDULED,
        2,
        2,
    )


async def test_an_office_change_of_a_booking_is_based_on_the_last_office_version(uow, store):
    await handle(uow, f.appointment_recorded())
    events = await handle(uow, f.appointment_recorded(confirmation=Confirmation.CONFIRMED, change_id="c-2"))
    assert kinds(events) == [AppointmentUpdated, OfficeOutcome]  # the job did not change
    updated = events[0]
    assert (updated.payload.appointment.version, updated.payload.based_on_version) == (2, 1)
    assert updated.payload.appointment.confirmation is Confirmation.CONFIRMED


async def test_an_older_office_revision_is_ignored(uow, store):
    await handle(uow, f.appointment_recorded(office_revision=2, based_on_version=None))
    before = store.appointments[KEY]

    (outcome,) = await handle(
        uow, f.appointment_recorded(office_revision=1, status=AppointmentStatus.CANCELED)
    )

    assert (outcome.payload.status, outcome.payload.reason_code) == (
        "ignored",
        OfficeOutcomeCode.OLDER_REVISION.value,
    )
    assert outcome.payload.current == before.snapshot()
    assert store.appointments[KEY] == before


async def test_a_stale_office_record_does_not_undo_the_customers_change(uow, store):
    booking = f.appointment_recorded(office_revision=1)
    await handle(uow, booking)
    new_window = f.arrival_window(10)
    await handle(uow, approved(f.reschedule(new_window)))
    moved = store.appointments[KEY]

    stale = f.appointment_recorded(office_revision=2, based_on_version=1, window=booking.payload.window)
    (outcome,) = await handle(uow, stale)

    assert (outcome.payload.status, outcome.payload.reason_code) == (
        "refused",
        OfficeOutcomeCode.STALE_RECORD.value,
    )
    assert outcome.payload.current == moved.snapshot()
    assert store.appointments[KEY].window == new_window

    # Built on the customer's version, the office's record applies.
    events = await handle(
        uow, f.appointment_recorded(office_revision=3, based_on_version=2, window=booking.payload.window)
    )
    assert kinds(events) == [AppointmentUpdated, OfficeOutcome]
    assert (events[0].payload.based_on_version, events[0].payload.appointment.version) == (2, 3)
    assert store.appointments[KEY].window == booking.payload.window


async def test_an_office_record_built_on_a_version_that_never_existed_is_refused(uow, store):
    await handle(uow, f.appointment_recorded(office_revision=1))
    (outcome,) = await handle(uow, f.appointment_recorded(office_revision=2, based_on_version=9))
    assert (outcome.payload.status, outcome.payload.reason_code) == (
        "refused",
        OfficeOutcomeCode.UNKNOWN_VERSION.value,
    )
    assert store.appointments[KEY].version == 1


async def test_a_booking_with_a_project_records_the_project_and_its_contacts(uow, store):
    project = f.project("proj-9", {"lead-1": ContactRole.PROJECT_LEAD})
    await handle(uow, f.appointment_recorded(project=project))
    assert store.appointments[KEY].project_id == "proj-9"
    assert store.contacts[(TENANT, "proj-9")] == {"lead-1": ContactRole.PROJECT_LEAD.value}


async def test_a_project_recorded_on_its_own_is_announced_and_applied(uow, store):
    project = Project(
        project_id="prj-1",
        portal_locked=True,
        contacts=[
            ProjectContact(contact_id="lead-1", role=ContactRole.PROJECT_LEAD),
            ProjectContact(contact_id="owner-1", role=ContactRole.SUBCONTRACTOR),
        ],
    )
    updated, outcome = await handle(uow, f.project_recorded(project))

    assert isinstance(updated, ProjectUpdated)
    assert (updated.payload.project_id, updated.payload.portal_locked, updated.payload.contacts) == (
        "prj-1",
        True,
        2,
    )
    assert (outcome.payload.status, outcome.payload.subject) == ("applied", "prj-1")
    assert store.projects[(TENANT, "prj-1")]["portal_locked"] is True
    assert set(store.contacts[(TENANT, "prj-1")]) == {"lead-1", "owner-1"}

    fewer = project.model_copy(update={"contacts": project.contacts[:1]})
    await handle(uow, f.project_recorded(fewer, change_id="project-2"))
    assert set(store.contacts[(TENANT, "prj-1")]) == {"lead-1"}


# --- approved customer changes --------------------------------------------------------------------


async def test_an_approved_reschedule_moves_the_appointment(uow, store):
    booking = f.appointment_recorded()
    await handle(uow, booking)
    new_window = f.arrival_window(10)
    change = approved(f.reschedule(new_window))

    (moved,) = await handle(uow, change)  # a move changes neither the job's status nor its count

    assert isinstance(moved, AppointmentRescheduled)
    assert moved.correlation_id == change.correlation_id
    assert (moved.payload.request_id, moved.payload.initiated_by) == (
        change.correlation_id,
        Initiator.CUSTOMER,
    )
    assert moved.payload.previous_window == booking.payload.window
    assert (moved.payload.appointment.window, moved.payload.appointment.version) == (new_window, 2)
    saved = store.appointments[KEY]
    assert (saved.window, saved.version, saved.customer_version) == (new_window, 2, 2)
    assert store.customer_reschedules[KEY] == 1


async def test_an_approved_cancel_cancels_the_appointment_and_its_job(uow, store):
    await handle(uow, f.appointment_recorded())

    canceled, job = await handle(uow, approved(f.cancel("moving away")))

    assert isinstance(canceled, AppointmentCanceled)
    assert (canceled.payload.reason, canceled.payload.appointment.status) == (
        "moving away",
        AppointmentStatus.CANCELED,
    )
    assert isinstance(job, JobStatusChanged)
    assert (job.payload.status, job.payload.previous_status, job.payload.active_appointments) == (
        JobStatus.CANCELED,
        JobStatus.SCHEDULED,
        0,
    )
    assert store.jobs[(TENANT, f.JOB_ID)]["status"] == "canceled"
    assert store.customer_reschedules[KEY] == 0


@pytest.mark.parametrize(
    ("booking", "change", "version", "code"),
    [
        (None, f.reschedule(), 1, FailureCode.APPOINTMENT_CHANGED),  # no such appointment
        ({}, f.reschedule(), 7, FailureCode.APPOINTMENT_CHANGED),  # the office changed it since
        ({"status": AppointmentStatus.DISPATCHED}, f.cancel(), 1, FailureCode.APPOINTMENT_CHANGED),
        ({}, "past", 1, FailureCode.NEW_WINDOW_IN_PAST),
    ],
)
async def test_an_approved_change_that_cannot_apply_fails_and_changes_nothing(
    uow, store, booking, change, version, code
):
    if booking is not None:
        await handle(uow, f.appointment_recorded(**booking))
    if change == "past":
        change = f.reschedule(f.arrival_window(start=uow.clock - timedelta(hours=1)))
    before = dict(store.appointments)
    message = approved(change, version=version)

    (failed,) = await handle(uow, message)

    assert isinstance(failed, ModifyFailed)
    assert failed.correlation_id == message.correlation_id
    assert (failed.payload.request_id, failed.payload.appointment_id, failed.payload.action) == (
        message.correlation_id,
        f.APPOINTMENT_ID,
        message.payload.change.action,
    )
    assert failed.payload.reason_code == code.value
    assert failed.payload.reason
    assert store.appointments == before


# --- capacity -------------------------------------------------------------------------------------


async def test_capacity_creates_windows_and_an_older_capacity_message_is_ignored(uow, store):
    window = f.arrival_window()

    changed, outcome = await handle(uow, places_for(window, places=2, version=2))

    assert isinstance(changed, CapacityWindowChanged)
    assert (changed.payload.business_unit, changed.payload.zone, changed.payload.window) == (
        f.BUSINESS_UNIT,
        None,
        window,
    )
    assert (
        changed.payload.places,
        changed.payload.booked,
        changed.payload.free,
        changed.payload.version,
    ) == (
        2,
        0,
        2,
        1,
    )
    assert (outcome.payload.status, outcome.payload.subject) == ("applied", f.BUSINESS_UNIT)

    (ignored,) = await handle(uow, places_for(window, places=5, version=1))
    assert (ignored.payload.status, ignored.payload.reason_code) == (
        "ignored",
        OfficeOutcomeCode.OLDER_REVISION.value,
    )


async def test_capacity_counts_the_appointments_booked_before_it(uow, store):
    window = f.arrival_window()
    await handle(uow, f.appointment_recorded(window=window))
    changed, _ = await handle(uow, places_for(window, places=1))
    assert (changed.payload.booked, changed.payload.free, changed.payload.version) == (1, 0, 2)
    assert store.appointments[KEY].holds_place


async def test_a_reschedule_takes_a_free_place_and_frees_the_old_one(uow, store):
    old, new = f.arrival_window(), f.arrival_window(10)
    await handle(uow, places_for(old, new))
    booked = await handle(uow, f.appointment_recorded(window=old))
    assert [(e.payload.window, e.payload.booked) for e in booked if isinstance(e, CapacityWindowChanged)] == [
        (old, 1)
    ]

    moved, taken, freed = await handle(uow, approved(f.reschedule(new)))

    assert isinstance(moved, AppointmentRescheduled)
    assert [(e.payload.window, e.payload.booked, e.payload.free) for e in (taken, freed)] == [
        (new, 1, 0),
        (old, 0, 1),
    ]
    assert store.appointments[KEY].holds_place


async def test_a_reschedule_into_a_full_window_fails_and_changes_nothing(uow, store):
    old, new = f.arrival_window(), f.arrival_window(10)
    await handle(uow, places_for(old, new))
    await handle(uow, f.appointment_recorded(window=old))
    await handle(
        uow, f.appointment_recorded(appointment_id="appt-2", job_id="job-2", window=new, change_id="b-2")
    )
    before = (dict(store.appointments), {k: dict(v) for k, v in store.windows.items()})

    (failed,) = await handle(uow, approved(f.reschedule(new)))

    assert failed.payload.reason_code == FailureCode.TIME_NO_LONGER_AVAILABLE.value
    assert (store.appointments, store.windows) == before


async def test_a_cancel_frees_its_place(uow, store):
    window = f.arrival_window()
    await handle(uow, places_for(window))
    await handle(uow, f.appointment_recorded(window=window))

    events = await handle(uow, approved(f.cancel()))

    assert kinds(events) == [AppointmentCanceled, CapacityWindowChanged, JobStatusChanged]
    assert (events[1].payload.booked, events[1].payload.free) == (0, 1)
    assert not store.appointments[KEY].holds_place


async def test_the_office_moving_a_booking_moves_its_place(uow, store):
    old, new = f.arrival_window(), f.arrival_window(10)
    await handle(uow, places_for(old, new))
    await handle(uow, f.appointment_recorded(window=old))

    events = await handle(uow, f.appointment_recorded(window=new, change_id="c-2"))

    assert kinds(events) == [AppointmentUpdated, CapacityWindowChanged, CapacityWindowChanged, OfficeOutcome]
    assert {(e.payload.window, e.payload.booked) for e in events[1:3]} == {(old, 0), (new, 1)}
    assert store.appointments[KEY].holds_place


async def test_the_office_canceling_the_last_visit_frees_its_place_and_cancels_the_job(uow, store):
    window = f.arrival_window()
    await handle(uow, places_for(window))
    await handle(uow, f.appointment_recorded(window=window))

    events = await handle(
        uow, f.appointment_recorded(window=window, status=AppointmentStatus.CANCELED, change_id="c-2")
    )

    assert kinds(events) == [AppointmentUpdated, CapacityWindowChanged, JobStatusChanged, OfficeOutcome]
    assert (events[1].payload.booked, events[1].payload.free) == (0, 1)
    assert (events[2].payload.status, events[2].payload.active_appointments) == (JobStatus.CANCELED, 0)
    assert not store.appointments[KEY].holds_place


async def test_the_office_may_book_beyond_the_places_customers_see_none_free(uow, store):
    window = f.arrival_window()
    await handle(uow, places_for(window))
    await handle(uow, f.appointment_recorded(window=window))
    events = await handle(
        uow, f.appointment_recorded(appointment_id="appt-2", window=window, change_id="b-2")
    )
    (changed,) = [e for e in events if isinstance(e, CapacityWindowChanged)]
    assert (changed.payload.places, changed.payload.booked, changed.payload.free) == (1, 2, 0)


async def test_a_zones_capacity_is_its_own(uow, store):
    window = f.arrival_window()
    capacity = f.capacity_updated(
        zone="north",
        windows=[
            {"date": window.start.date(), "start": window.start.time(), "end": window.end.time(), "places": 1}
        ],
    )
    (changed, _) = await handle(uow, capacity)
    assert changed.payload.zone == "north"
    # A booking of the whole unit (no zone) takes no place of the zone's window.
    events = await handle(uow, f.appointment_recorded(window=window))
    assert CapacityWindowChanged not in kinds(events)
    events = await handle(uow, f.appointment_recorded(appointment_id="appt-2", window=window, zone="north"))
    assert [e.payload.booked for e in events if isinstance(e, CapacityWindowChanged)] == [1]
