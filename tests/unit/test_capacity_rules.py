"""Capacity rules and tenant-local time, pure: places never overbooked, windows correct across DST."""

import json
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation
from contracts.decoding import DecodeFailure, decode, encode
from contracts.local_time import to_utc, zone
from contracts.office_v1 import CapacityUpdatedPayload
from contracts.reasons import DeadLetterReason, FailureCode
from tests import factories as f
from workers.modify_handler.domain import (
    Appointment,
    Failure,
    Place,
    PlacePlan,
    office_place_keys,
    office_places_to_lock,
    plan_move,
    plan_office_record,
    release,
    set_places,
    starts_to_lock,
    take_for_customer,
    take_for_office,
)

NEW_YORK = zone("America/New_York")
LOS_ANGELES = zone("America/Los_Angeles")
W = ArrivalWindow(start=datetime(2026, 6, 1, 14, tzinfo=UTC), end=datetime(2026, 6, 1, 16, tzinfo=UTC))


# --- tenant-local time ------------------------------------------------------------------------------


def test_a_tenant_west_of_utc_books_an_evening_window_that_is_tomorrow_in_utc() -> None:
    start = to_utc(date(2026, 6, 1), time(18), LOS_ANGELES)
    assert start == datetime(2026, 6, 2, 1, tzinfo=UTC)


def test_the_day_clocks_go_forward_keeps_wall_clock_windows_and_shortens_the_night() -> None:
    # 2026-03-08: New York goes from 02:00 EST to 03:00 EDT.
    assert to_utc(date(2026, 3, 8), time(1), NEW_YORK) == datetime(2026, 3, 8, 6, tzinfo=UTC)
    assert to_utc(date(2026, 3, 8), time(3), NEW_YORK) == datetime(2026, 3, 8, 7, tzinfo=UTC)
    assert to_utc(date(2026, 3, 8), time(8), NEW_YORK) == datetime(2026, 3, 8, 12, tzinfo=UTC)
    assert to_utc(date(2026, 3, 7), time(8), NEW_YORK) == datetime(2026, 3, 7, 13, tzinfo=UTC)


def test_a_time_the_clocks_skip_is_refused_with_a_sentence() -> None:
    with pytest.raises(ValueError, match="does not exist in America/New_York"):
        to_utc(date(2026, 3, 8), time(2, 30), NEW_YORK)


def test_a_time_that_happens_twice_means_its_first_occurrence() -> None:
    # 2026-11-01: New York goes from 02:00 EDT back to 01:00 EST; 01:30 happens twice.
    assert to_utc(date(2026, 11, 1), time(1, 30), NEW_YORK) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)


def test_a_window_across_the_fall_back_lasts_an_hour_longer_than_its_wall_clock() -> None:
    payload = CapacityUpdatedPayload(
        business_unit="hvac",
        timezone="America/New_York",
        windows=[{"date": "2026-11-01", "start": "00:00", "end": "04:00", "places": 1}],
        capacity_version=1,
        changed_by="d-1",
    )
    ((window, places),) = payload.utc_windows()
    assert window.end - window.start == timedelta(hours=5) and places == 1


@pytest.mark.parametrize("name", ["Mars/Olympus", "EST5EDT-ish", "local", "+02:00", ""])
def test_an_unknown_time_zone_is_refused(name: str) -> None:
    with pytest.raises(ValueError):
        CapacityUpdatedPayload(
            business_unit="hvac",
            timezone=name,
            windows=[{"date": "2026-06-01", "start": "08:00", "end": "10:00", "places": 1}],
            capacity_version=1,
            changed_by="d-1",
        )


@pytest.mark.parametrize(
    ("start", "end", "utc_start", "utc_end"),
    [
        ("22:00", "00:00", "2026-06-01T22:00:00+00:00", "2026-06-02T00:00:00+00:00"),
        ("23:00", "01:30", "2026-06-01T23:00:00+00:00", "2026-06-02T01:30:00+00:00"),
    ],
    ids=["ends-at-midnight", "ends-after-midnight"],
)
def test_an_end_before_the_start_is_on_the_next_day(start, end, utc_start, utc_end) -> None:
    payload = CapacityUpdatedPayload(
        business_unit="hvac",
        timezone="UTC",
        windows=[{"date": "2026-06-01", "start": start, "end": end, "places": 1}],
        capacity_version=1,
        changed_by="d-1",
    )
    [(window, places)] = payload.utc_windows()
    assert (window.start.isoformat(), window.end.isoformat(), places) == (utc_start, utc_end, 1)


def test_an_overnight_window_across_the_spring_forward_lasts_its_real_length() -> None:
    payload = CapacityUpdatedPayload(
        business_unit="hvac",
        timezone="America/New_York",
        windows=[{"date": "2026-03-07", "start": "23:00", "end": "04:00", "places": 1}],
        capacity_version=1,
        changed_by="d-1",
    )
    [(window, _)] = payload.utc_windows()
    assert window.end - window.start == timedelta(hours=4)


@pytest.mark.parametrize("hour", range(24))
def test_the_default_test_window_is_a_valid_capacity_window_at_every_hour_of_the_day(hour: int) -> None:
    start = datetime(2026, 12, 1, hour, tzinfo=UTC)
    window = f.arrival_window(start=start)
    message = f.capacity_updated(
        windows=[
            {"date": window.start.date(), "start": window.start.time(), "end": window.end.time(), "places": 1}
        ]
    )
    assert message.payload.utc_windows()[0][0] == window


def test_a_capacity_message_with_a_skipped_time_is_dead_lettered_with_the_reason() -> None:
    message = f.capacity_updated(timezone="America/New_York")
    body = json.loads(encode(message))
    body["payload"]["windows"] = [{"date": "2026-03-08", "start": "02:15", "end": "04:00", "places": 1}]
    failure = decode(json.dumps(body).encode(), content_type="application/json", property_type=message.type)
    assert isinstance(failure, DecodeFailure)
    assert failure.reason == DeadLetterReason.SCHEMA_VIOLATION
    assert "does not exist" in failure.detail


def test_a_capacity_message_survives_the_wire() -> None:
    message = f.capacity_updated(timezone="America/Chicago")
    decoded = decode(encode(message), content_type="application/json", property_type=message.type)
    assert decoded == message
    assert decoded.payload.utc_windows() == message.payload.utc_windows()


@pytest.mark.parametrize(
    "windows",
    [
        [{"date": "2026-06-01", "start": "10:00", "end": "10:00", "places": 1}],
        [{"date": "2026-06-01", "start": "08:00", "end": "10:00", "places": 1}] * 2,
        [{"date": "2026-06-01", "start": "08:00", "end": "10:00", "places": -1}],
    ],
    ids=["end-equals-start", "listed-twice", "negative-places"],
)
def test_bad_windows_are_refused(windows) -> None:
    with pytest.raises(ValueError):
        CapacityUpdatedPayload(
            business_unit="hvac", timezone="UTC", windows=windows, capacity_version=1, changed_by="d-1"
        )


# --- places --------------------------------------------------------------------------------------


def place(places: int, booked: int) -> Place:
    return Place(W, places, max(places, booked), booked)


def test_a_customer_takes_a_free_place_in_exactly_that_window() -> None:
    assert take_for_customer(place(2, 1), W) == place(2, 2)
    other = ArrivalWindow(start=W.start, end=W.end + timedelta(hours=1))
    assert take_for_customer(place(2, 1), other) == Failure(FailureCode.TIME_NO_LONGER_AVAILABLE)


@pytest.mark.parametrize(("places", "booked"), [(1, 1), (0, 0), (2, 3)])
def test_no_free_place_means_time_no_longer_available(places: int, booked: int) -> None:
    assert take_for_customer(place(places, booked), W) == Failure(FailureCode.TIME_NO_LONGER_AVAILABLE)
    assert take_for_customer(None, W) == Failure(FailureCode.TIME_NO_LONGER_AVAILABLE)


def test_the_office_books_beyond_places_and_customers_still_see_none() -> None:
    full = take_for_office(place(1, 1))
    assert (full.booked, full.capacity, full.free) == (2, 2, 0)
    assert (release(full).capacity, release(release(full)).capacity) == (1, 1)


def test_fewer_places_than_bookings_keep_the_bookings() -> None:
    reduced = set_places(place(3, 2), 1)
    assert (reduced.places, reduced.capacity, reduced.booked, reduced.free) == (1, 2, 2, 0)


operations = st.lists(st.sampled_from(["customer", "office", "release", "places"]), max_size=40)


@given(ops=operations, counts=st.lists(st.integers(0, 4), min_size=40, max_size=40))
def test_any_sequence_keeps_booked_within_capacity_and_capacity_covering_places(ops, counts) -> None:
    current, held = place(1, 0), 0
    for op, count in zip(ops, counts, strict=False):
        if op == "customer":
            taken = take_for_customer(current, W)
            if not isinstance(taken, Failure):
                current, held = taken, held + 1
        elif op == "office":
            current, held = take_for_office(current), held + 1
        elif op == "release" and held:
            current, held = release(current), held - 1
        elif op == "places":
            current = set_places(current, count)
        assert current.booked == held
        assert 0 <= current.booked <= current.capacity
        assert current.capacity == max(current.places, current.booked)
        assert current.free == max(current.places - current.booked, 0)


# --- plans: which places a change takes and frees --------------------------------------------------

W2 = ArrivalWindow(start=W.start + timedelta(days=1), end=W.end + timedelta(days=1))


def booked_at(window: ArrivalWindow, *, holds_place: bool = True, status=AppointmentStatus.SCHEDULED):
    return Appointment(
        tenant_id="t",
        appointment_id="apt-1",
        job_id="job-1",
        customer_id="cus-1",
        business_unit="bu",
        job_type="install",
        project_id=None,
        window=window,
        status=status,
        confirmation=Confirmation.UNCONFIRMED,
        version=1,
        zone="z",
        holds_place=holds_place,
    )


def test_a_move_in_a_managed_unit_takes_the_new_place_and_frees_the_old() -> None:
    current, moved = booked_at(W), booked_at(W2)
    assert starts_to_lock(current, moved, managed=True) == [W2.start, W.start]
    plan = plan_move(
        current, moved, managed=True, places={W.start: place(2, 2), W2.start: Place(W2, 1, 1, 0)}
    )
    assert plan == PlacePlan((("bu", "z", Place(W2, 1, 1, 1)), ("bu", "z", place(2, 1))), holds_place=True)


def test_a_move_into_the_window_whose_place_it_holds_keeps_the_place_and_changes_no_count() -> None:
    current = booked_at(W)
    assert plan_move(current, current, managed=True, places={W.start: place(2, 1)}) == PlacePlan(
        (), holds_place=True
    )


def test_a_move_to_a_full_window_fails_and_plans_nothing() -> None:
    plan = plan_move(booked_at(W), booked_at(W2), managed=True, places={W2.start: Place(W2, 1, 1, 1)})
    assert plan == Failure(FailureCode.TIME_NO_LONGER_AVAILABLE)


def test_a_move_in_an_unmanaged_unit_locks_nothing_and_holds_no_place() -> None:
    current, moved = booked_at(W, holds_place=False), booked_at(W2, holds_place=False)
    assert starts_to_lock(current, moved, managed=False) == []
    assert plan_move(current, moved, managed=False, places={}) == PlacePlan((), holds_place=False)


def test_an_office_record_moving_the_appointment_frees_the_old_place_and_takes_the_new() -> None:
    previous, recorded = booked_at(W), booked_at(W2, holds_place=False)
    old, new = office_place_keys(previous, recorded)
    assert (old, new) == (("bu", "z", W.start), ("bu", "z", W2.start))
    plan = plan_office_record(old, new, {old: place(1, 1), new: Place(W2, 1, 1, 1)}, recorded)
    assert plan == PlacePlan((("bu", "z", place(1, 0)), ("bu", "z", Place(W2, 1, 2, 2))), holds_place=True)


def test_a_canceled_record_frees_its_place_and_an_unchanged_one_keeps_it() -> None:
    previous = booked_at(W)
    canceled = booked_at(W, holds_place=False, status=AppointmentStatus.CANCELED)
    old, new = office_place_keys(previous, canceled)
    assert new is None
    assert plan_office_record(old, new, {old: place(1, 1)}, canceled) == PlacePlan(
        (("bu", "z", place(1, 0)),), holds_place=False
    )
    same = office_place_keys(previous, booked_at(W, holds_place=False))
    assert plan_office_record(*same, {}, booked_at(W)) == PlacePlan((), holds_place=True)


# --- an office record keeping unit, zone and start but changing the end -----------------------------

LONGER = ArrivalWindow(start=W.start, end=W.end + timedelta(hours=1))
SHORTER = ArrivalWindow(start=W.start, end=W.end - timedelta(hours=1))


@pytest.mark.parametrize("end_moved_to", [LONGER, SHORTER], ids=["longer", "shorter"])
def test_an_office_record_changing_only_the_end_frees_the_place_of_the_window_it_no_longer_fits(
    end_moved_to: ArrivalWindow,
) -> None:
    previous, recorded = booked_at(W), booked_at(end_moved_to, holds_place=False)
    old, new = office_place_keys(previous, recorded)
    assert old == new == ("bu", "z", W.start)
    assert office_places_to_lock(previous, recorded) == [old]
    # The window there is still W: the appointment no longer fits it exactly, so its place is freed
    # (as a customer could never take W's place for that span, nor would setting W's places count it).
    assert plan_office_record(old, new, {old: place(2, 2)}, recorded) == PlacePlan(
        (("bu", "z", place(2, 1)),), holds_place=False
    )


def test_an_office_record_changing_the_end_to_the_windows_span_keeps_the_place() -> None:
    # The window's end was set to LONGER after the appointment took its place in it; the office now
    # records the appointment with that span: it keeps the place, no count changes.
    stored = Place(LONGER, 2, 2, 1)
    previous, recorded = booked_at(W), booked_at(LONGER, holds_place=False)
    old, new = office_place_keys(previous, recorded)
    assert plan_office_record(old, new, {old: stored}, recorded) == PlacePlan((), holds_place=True)


def test_an_office_record_changing_the_end_of_an_appointment_holding_no_place_takes_one_if_it_fits() -> None:
    previous = booked_at(LONGER, holds_place=False)  # outside any window of its span: holds no place
    recorded = booked_at(W, holds_place=False)
    old, new = office_place_keys(previous, recorded)
    assert (old, new) == (None, ("bu", "z", W.start))
    assert office_places_to_lock(previous, recorded) == [new]
    assert plan_office_record(old, new, {new: place(1, 1)}, recorded) == PlacePlan(
        (("bu", "z", Place(W, 1, 2, 2)),), holds_place=True
    )


def test_an_office_record_leaving_the_window_as_it_was_locks_nothing_and_keeps_the_place() -> None:
    previous = booked_at(W)
    recorded = replace(booked_at(W, holds_place=False), confirmation=Confirmation.CONFIRMED)
    assert office_places_to_lock(previous, recorded) == []
    assert plan_office_record(*office_place_keys(previous, recorded), {}, recorded) == PlacePlan(
        (), holds_place=True
    )


END_CHOICES = st.sampled_from([W, LONGER, SHORTER])


@given(
    before=END_CHOICES,
    after=END_CHOICES,
    stored=st.one_of(st.none(), END_CHOICES),
    held=st.booleans(),
    canceled=st.booleans(),
    places=st.integers(0, 3),
)
def test_an_office_record_holds_a_place_exactly_when_a_window_of_its_span_is_there(
    before, after, stored, held, canceled, places
) -> None:
    """Whatever the end before and after the record and the window stored at that start: afterwards the
    appointment holds a place iff it is not canceled and the window there has exactly its span, and the
    window's `booked` moves by exactly the change in holders."""
    held = held and stored is not None and stored == before  # one only ever holds a place of its span
    previous = booked_at(before, holds_place=held)
    status = AppointmentStatus.CANCELED if canceled else AppointmentStatus.SCHEDULED
    recorded = booked_at(after, holds_place=False, status=status)
    key = ("bu", "z", W.start)
    booked = 1 if held else 0
    window = None if stored is None else Place(stored, places, max(places, booked), booked)
    old, new = office_place_keys(previous, recorded)
    to_lock = office_places_to_lock(previous, recorded)
    locked = {key: window} if window is not None and key in to_lock else {}
    plan = plan_office_record(old, new, locked, recorded)
    assert plan.holds_place == (not canceled and stored == after)
    after_booked = booked
    for unit, zone_, saved in plan.updates:
        assert (unit, zone_, saved.window.start) == key
        after_booked = saved.booked
        assert saved.booked <= saved.capacity and saved.capacity == max(saved.places, saved.booked)
    assert after_booked == (1 if plan.holds_place else 0)
