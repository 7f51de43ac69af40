"""Scheduling domain: reschedule, cancel, the version check, and how a job follows its appointments."""

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.common import AppointmentSnapshot, AppointmentStatus, ArrivalWindow, Confirmation, JobStatus
from contracts.reasons import FailureCode, OfficeOutcomeCode
from workers.modify_handler.domain import (
    ACTIVE_STATUSES,
    Appointment,
    Failure,
    cancel,
    check_unchanged,
    job_status,
    judge_office_record,
    reschedule,
)

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)

SCHEDULED = AppointmentStatus.SCHEDULED
DISPATCHED = AppointmentStatus.DISPATCHED
WORKING = AppointmentStatus.WORKING
DONE = AppointmentStatus.DONE
CANCELED = AppointmentStatus.CANCELED
NOT_SCHEDULED = [s for s in AppointmentStatus if s is not SCHEDULED]


def window(start: datetime, hours: float = 2) -> ArrivalWindow:
    return ArrivalWindow(start=start, end=start + timedelta(hours=hours))


CURRENT_WINDOW = window(NOW + timedelta(days=3))
NEW_WINDOW = window(NOW + timedelta(days=5))


def appointment(**overrides) -> Appointment:
    values = dict(
        tenant_id="acme-plumbing",
        appointment_id="appt-1",
        job_id="job-1",
        customer_id="cust-1",
        business_unit="plumbing",
        job_type="boiler-service",
        project_id="proj-1",
        window=CURRENT_WINDOW,
        status=SCHEDULED,
        confirmation=Confirmation.CONFIRMED,
        version=4,
    )
    values.update(overrides)
    return Appointment(**values)


# --- reschedule ----------------------------------------------------------------------------------


def test_reschedule_moves_the_window_and_bumps_the_version() -> None:
    before = appointment()
    after = reschedule(before, NEW_WINDOW, NOW)
    assert after == dataclasses.replace(before, window=NEW_WINDOW, version=5)
    assert before.window == CURRENT_WINDOW and before.version == 4, "the input is not mutated"


def test_reschedule_keeps_everything_but_window_and_version() -> None:
    before = appointment(confirmation=Confirmation.UNCONFIRMED, project_id=None, version=0)
    after = reschedule(before, NEW_WINDOW, NOW)
    assert isinstance(after, Appointment)
    changed = {
        f.name for f in dataclasses.fields(Appointment) if getattr(before, f.name) != getattr(after, f.name)
    }
    assert changed == {"window", "version"}
    assert after.version == 1


@pytest.mark.parametrize(
    "new_window",
    [
        pytest.param(window(NOW - timedelta(days=1)), id="yesterday"),
        pytest.param(window(NOW - timedelta(hours=1), hours=3), id="started-an-hour-ago"),
        pytest.param(window(NOW), id="starts-exactly-now"),
    ],
)
def test_reschedule_into_the_past_fails(new_window: ArrivalWindow) -> None:
    assert reschedule(appointment(), new_window, NOW) == Failure(FailureCode.NEW_WINDOW_IN_PAST)


def test_reschedule_just_after_now_succeeds() -> None:
    result = reschedule(appointment(), window(NOW + timedelta(microseconds=1)), NOW)
    assert isinstance(result, Appointment) and result.version == 5


@pytest.mark.parametrize("status", NOT_SCHEDULED, ids=[s.value for s in NOT_SCHEDULED])
def test_reschedule_of_an_appointment_no_longer_scheduled_fails(status: AppointmentStatus) -> None:
    assert reschedule(appointment(status=status), NEW_WINDOW, NOW) == Failure(FailureCode.APPOINTMENT_CHANGED)


def test_reschedule_reports_the_past_window_before_the_status() -> None:
    result = reschedule(appointment(status=CANCELED), window(NOW - timedelta(days=1)), NOW)
    assert result == Failure(FailureCode.NEW_WINDOW_IN_PAST)


# --- cancel --------------------------------------------------------------------------------------


def test_cancel_marks_canceled_and_bumps_the_version() -> None:
    before = appointment()
    after = cancel(before)
    assert after == dataclasses.replace(before, status=CANCELED, version=5)
    assert before.status is SCHEDULED, "the input is not mutated"


def test_cancel_works_even_when_the_window_has_passed() -> None:
    after = cancel(appointment(window=window(NOW - timedelta(days=2))))
    assert isinstance(after, Appointment) and after.status is CANCELED


@pytest.mark.parametrize("status", NOT_SCHEDULED, ids=[s.value for s in NOT_SCHEDULED])
def test_cancel_of_an_appointment_no_longer_scheduled_fails(status: AppointmentStatus) -> None:
    assert cancel(appointment(status=status)) == Failure(FailureCode.APPOINTMENT_CHANGED)


def test_canceling_twice_fails_the_second_time() -> None:
    once = cancel(appointment())
    assert isinstance(once, Appointment)
    assert cancel(once) == Failure(FailureCode.APPOINTMENT_CHANGED)


# --- the version the gate decided on -------------------------------------------------------------


@pytest.mark.parametrize(
    ("decided_on", "expected"),
    [
        pytest.param(4, None, id="unchanged"),
        pytest.param(3, Failure(FailureCode.APPOINTMENT_CHANGED), id="office-changed-it-since"),
        pytest.param(5, Failure(FailureCode.APPOINTMENT_CHANGED), id="decided-on-a-newer-version"),
        pytest.param(0, Failure(FailureCode.APPOINTMENT_CHANGED), id="decided-on-first-version"),
    ],
)
def test_check_unchanged(decided_on: int, expected: Failure | None) -> None:
    assert check_unchanged(appointment(version=4), decided_on) == expected


# --- snapshot and activity -----------------------------------------------------------------------


def test_snapshot_carries_the_appointment_state() -> None:
    appt = appointment(status=DISPATCHED, project_id=None, version=9)
    snapshot = appt.snapshot()
    assert isinstance(snapshot, AppointmentSnapshot)
    expected = {
        f.name: getattr(appt, f.name)
        for f in dataclasses.fields(Appointment)
        # the snapshot is what portals see; the tenant is the envelope's, the place and the two writers'
        # bookkeeping are scheduling's own
        if f.name
        not in ("tenant_id", "zone", "holds_place", "office_revision", "office_version", "customer_version")
    }
    assert snapshot.model_dump() == {
        **expected,
        "window": CURRENT_WINDOW.model_dump(),
    }


@pytest.mark.parametrize(
    ("status", "active"),
    [(SCHEDULED, True), (DISPATCHED, True), (WORKING, True), (DONE, False), (CANCELED, False)],
    ids=lambda v: v.value if isinstance(v, AppointmentStatus) else str(v).lower(),
)
def test_is_active(status: AppointmentStatus, active: bool) -> None:
    assert appointment(status=status).is_active is active


# --- job status ----------------------------------------------------------------------------------


@pytest.mark.parametrize("current", list(JobStatus), ids=[j.value for j in JobStatus])
def test_job_without_appointments_keeps_its_status(current: JobStatus) -> None:
    assert job_status(current, []) is current


JOB_STATUS_TABLE = [
    pytest.param([SCHEDULED], JobStatus.SCHEDULED, id="one-scheduled"),
    pytest.param([DISPATCHED], JobStatus.SCHEDULED, id="one-dispatched"),
    pytest.param([SCHEDULED, DISPATCHED], JobStatus.SCHEDULED, id="scheduled-and-dispatched"),
    pytest.param([CANCELED, SCHEDULED], JobStatus.SCHEDULED, id="one-canceled-one-still-scheduled"),
    pytest.param([CANCELED, CANCELED, DISPATCHED], JobStatus.SCHEDULED, id="last-one-still-dispatched"),
    pytest.param([WORKING], JobStatus.IN_PROGRESS, id="working"),
    pytest.param([SCHEDULED, WORKING], JobStatus.IN_PROGRESS, id="working-and-scheduled"),
    pytest.param([DONE, SCHEDULED], JobStatus.IN_PROGRESS, id="first-visit-done-second-scheduled"),
    pytest.param([DONE, CANCELED, DISPATCHED], JobStatus.IN_PROGRESS, id="done-canceled-dispatched"),
    pytest.param([CANCELED], JobStatus.CANCELED, id="only-appointment-canceled"),
    pytest.param([CANCELED, CANCELED, CANCELED], JobStatus.CANCELED, id="all-canceled"),
    pytest.param([DONE], JobStatus.COMPLETED, id="done"),
    pytest.param([DONE, DONE], JobStatus.COMPLETED, id="all-done"),
    pytest.param([DONE, CANCELED], JobStatus.COMPLETED, id="some-done-rest-canceled"),
    pytest.param([CANCELED, DONE, CANCELED], JobStatus.COMPLETED, id="one-done-among-canceled"),
]


@pytest.mark.parametrize("current", list(JobStatus), ids=[f"was-{j.value}" for j in JobStatus])
@pytest.mark.parametrize(("statuses", "expected"), JOB_STATUS_TABLE)
def test_job_status_follows_its_appointments(
    current: JobStatus, statuses: list[AppointmentStatus], expected: JobStatus
) -> None:
    assert job_status(current, statuses) is expected


def test_canceling_the_last_active_appointment_cancels_the_job() -> None:
    first = appointment(appointment_id="appt-1", status=CANCELED)
    second = cancel(appointment(appointment_id="appt-2"))
    assert isinstance(second, Appointment)
    assert job_status(JobStatus.SCHEDULED, [first.status, second.status]) is JobStatus.CANCELED


def test_canceling_one_of_two_active_appointments_keeps_the_job_open() -> None:
    kept = appointment(appointment_id="appt-1")
    canceled = cancel(appointment(appointment_id="appt-2"))
    assert isinstance(canceled, Appointment)
    assert job_status(JobStatus.SCHEDULED, [kept.status, canceled.status]) is JobStatus.SCHEDULED


status_lists = st.lists(st.sampled_from(AppointmentStatus), max_size=8)


@given(current=st.sampled_from(JobStatus), statuses=status_lists)
def test_job_is_never_canceled_or_completed_while_an_appointment_is_active(
    current: JobStatus, statuses: list[AppointmentStatus]
) -> None:
    result = job_status(current, statuses)
    if any(s in ACTIVE_STATUSES for s in statuses):
        assert result in (JobStatus.SCHEDULED, JobStatus.IN_PROGRESS)
        assert result is not JobStatus.CANCELED


@given(current=st.sampled_from(JobStatus), statuses=status_lists.filter(bool), data=st.data())
def test_job_status_depends_only_on_the_set_of_appointment_statuses(
    current: JobStatus, statuses: list[AppointmentStatus], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(statuses))
    other_current = data.draw(st.sampled_from(JobStatus))
    assert job_status(current, statuses) is job_status(other_current, shuffled)
    assert job_status(current, statuses) is job_status(current, [*statuses, *statuses])


@given(current=st.sampled_from(JobStatus), statuses=status_lists.filter(bool))
def test_job_is_canceled_exactly_when_every_appointment_is(
    current: JobStatus, statuses: list[AppointmentStatus]
) -> None:
    assert (job_status(current, statuses) is JobStatus.CANCELED) == all(s is CANCELED for s in statuses)


# --- two writers: the office's versioned records ----------------------------------------------------

# The customer moved the appointment (version 5); the office's last record produced version 4.
MOVED_BY_CUSTOMER = dict(
    window=NEW_WINDOW, version=5, office_version=4, customer_version=5, office_revision=7
)


def judge(current, recorded, *, based_on=None, revision=None):
    return judge_office_record(current, recorded, based_on_version=based_on, office_revision=revision)


def test_a_new_booking_always_applies() -> None:
    assert judge(None, appointment(), based_on=None, revision=1) is None
    assert judge(None, appointment()) is None


@pytest.mark.parametrize("revision", [6, 7])
def test_a_revision_not_above_the_applied_one_is_ignored(revision: int) -> None:
    current = appointment(**MOVED_BY_CUSTOMER)
    assert judge(current, appointment(window=NEW_WINDOW), based_on=5, revision=revision) == (
        OfficeOutcomeCode.OLDER_REVISION
    )


def test_a_record_built_before_the_customer_move_that_puts_the_old_window_back_is_refused() -> None:
    current = appointment(**MOVED_BY_CUSTOMER)
    stale = appointment(window=CURRENT_WINDOW, confirmation=Confirmation.CONFIRMED)
    assert judge(current, stale, based_on=4, revision=8) == OfficeOutcomeCode.STALE_RECORD
    # The same record sent as version 1: read as built on the previous office record's state (4).
    assert judge(current, stale) == OfficeOutcomeCode.STALE_RECORD


def test_a_stale_record_that_leaves_the_customer_change_as_it_is_applies() -> None:
    current = appointment(**MOVED_BY_CUSTOMER)
    confirms = appointment(window=NEW_WINDOW, confirmation=Confirmation.CONFIRMED)
    assert judge(current, confirms, based_on=4, revision=8) is None
    assert judge(current, confirms) is None


def test_a_record_that_knew_of_the_customer_change_may_undo_it_on_purpose() -> None:
    current = appointment(**MOVED_BY_CUSTOMER)
    assert judge(current, appointment(window=CURRENT_WINDOW), based_on=5, revision=8) is None
    # version 1: after an office record that produced a version at or past the customer's change
    acknowledged = appointment(**{**MOVED_BY_CUSTOMER, "office_version": 6, "version": 6})
    assert judge(acknowledged, appointment(window=CURRENT_WINDOW)) is None


def test_a_record_cannot_bring_back_an_appointment_the_customer_canceled() -> None:
    current = appointment(status=CANCELED, version=5, office_version=4, customer_version=5)
    assert judge(current, appointment(status=SCHEDULED)) == OfficeOutcomeCode.STALE_RECORD
    assert judge(current, appointment(status=CANCELED, confirmation=Confirmation.CONFIRMED)) is None


def test_a_record_built_on_a_version_that_does_not_exist_is_refused() -> None:
    current = appointment(version=3)
    assert judge(current, appointment(), based_on=9, revision=1) == OfficeOutcomeCode.UNKNOWN_VERSION


def test_without_a_customer_change_every_record_applies_as_before() -> None:
    current = appointment(version=6, office_version=6)
    assert judge(current, appointment(window=NEW_WINDOW)) is None
    assert judge(current, appointment(window=NEW_WINDOW), based_on=2, revision=3) is None
