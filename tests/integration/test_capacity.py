"""Capacity on real PostgreSQL: places taken and freed with the change, never overbooked under races.

The handlers run as the worker runs them (one unit of work each, conflicts retried), many at once on
RACE_CONNECTIONS connections; only the broker is left out, since what is under test is the transaction.
"""

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation
from contracts.portal_v1 import Cancel, Reschedule
from infra.db.tables import appointments, capacity_windows, outbox
from tests import factories as f
from tests.conftest import unique_tenant
from workers.modify_handler import handlers
from workers.runtime.database import UnitOfWork
from workers.runtime.errors import is_conflict

UNIT = f.BUSINESS_UNIT
RACE_ROUNDS = int(os.environ.get("APPT_RACE_ROUNDS", "100"))
RACERS = 50
# The racers share this many connections: enough transactions at once to race for every place, and
# within the suite's connection budget (README, Tests: at most 30 at any moment).
RACE_CONNECTIONS = 12
BASE = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=3)


def slot(n: int) -> ArrivalWindow:
    """The n-th 2-hour window from BASE on: four a day, 08:00 to 16:00 UTC (the windows are given in
    UTC local time here, and a window stays within its day)."""
    day, index = divmod(n, 4)
    return f.arrival_window(start=BASE + timedelta(days=day, hours=8 + 2 * index))


@pytest.fixture
async def wide_engine(database_url, engine):
    """An engine for the racers, on the migrated test database: RACE_CONNECTIONS transactions at once."""
    wide = create_async_engine(database_url, pool_size=RACE_CONNECTIONS, max_overflow=0)
    yield wide
    await wide.dispose()


async def forget_events(engine, tenant: str) -> None:
    """Remove the events these tests wrote: no relay runs here, and rows left unpublished in the shared
    test database would look like a stuck outbox to later tests (and be published into their namespace)."""
    async with engine.begin() as conn:
        await conn.execute(outbox.delete().where(outbox.c.tenant_id == tenant))


@pytest.fixture
async def tenant(engine):
    name = unique_tenant()
    yield name
    await forget_events(engine, name)


async def handle(engine, message) -> None:
    """One message through its handler in its own transaction, conflicts retried as the consumer does."""
    handler = handlers.HANDLERS[type(message)]
    for attempt in range(10):
        try:
            async with UnitOfWork(engine, producer="modify_handler") as uow:
                await handler(message, uow)
                await uow.commit()
            return
        except Exception as exc:
            if not is_conflict(exc) or attempt == 9:
                raise
            await asyncio.sleep(0.01 * attempt)


async def set_capacity(engine, tenant: str, windows: list[tuple[ArrivalWindow, int]], version: int) -> None:
    await handle(
        engine,
        f.capacity_updated(
            tenant=tenant,
            windows=[
                {"date": w.start.date(), "start": w.start.time(), "end": w.end.time(), "places": places}
                for w, places in windows
            ],
            capacity_version=version,
            change_id=f"cap-{version}",
        ),
    )


async def book(engine, tenant: str, appointment_id: str, window: ArrivalWindow, **fields) -> None:
    await handle(
        engine,
        f.appointment_recorded(
            tenant=tenant,
            appointment_id=appointment_id,
            job_id=f"job-{appointment_id}",
            window=window,
            change_id=f"rec-{uuid.uuid4().hex[:8]}",
            **fields,
        ),
    )


async def versions(engine, tenant: str) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(appointments.c.appointment_id, appointments.c.version).where(
                appointments.c.tenant_id == tenant
            )
        )
        return dict(rows.all())


def approved(tenant: str, appointment_id: str, change, version: int):
    request = f.modify_requested(
        tenant=tenant, appointment_id=appointment_id, change=change, request_id=f"req-{uuid.uuid4().hex[:10]}"
    )
    return f.modify_approved(request, decided_on_version=version)


async def outcomes(engine, tenant: str, request_ids: list[str]) -> dict[str, str]:
    """request id -> the result event type (and failure code) modify_handler wrote for it."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox.c.correlation_id, outbox.c.message_type, outbox.c.body).where(
                outbox.c.tenant_id == tenant,
                outbox.c.producer == "modify_handler",
                outbox.c.correlation_id.in_(request_ids),
                outbox.c.message_type.in_(
                    ["appointment.rescheduled", "appointment.canceled", "modify.failed"]
                ),
            )
        )
        found: dict[str, str] = {}
        for request_id, kind, body in rows:
            if kind == "modify.failed":
                kind += ":" + __import__("json").loads(body)["payload"]["reason_code"]
            assert request_id not in found, f"two outcomes for {request_id}"
            found[request_id] = kind
        return found


async def accounting(engine, tenant: str) -> list[tuple]:
    """Every window's booked count next to the appointments that hold a place in it."""
    async with engine.connect() as conn:
        held = (
            select(
                appointments.c.business_unit,
                appointments.c.zone,
                appointments.c.window_start,
                func.count().label("held"),
            )
            .where(appointments.c.tenant_id == tenant, appointments.c.holds_place)
            .group_by(appointments.c.business_unit, appointments.c.zone, appointments.c.window_start)
            .subquery()
        )
        rows = await conn.execute(
            select(
                capacity_windows.c.starts_at,
                capacity_windows.c.places,
                capacity_windows.c.capacity,
                capacity_windows.c.booked,
                func.coalesce(held.c.held, 0),
            )
            .select_from(
                capacity_windows.outerjoin(
                    held,
                    (held.c.business_unit == capacity_windows.c.business_unit)
                    & (held.c.zone == capacity_windows.c.zone)
                    & (held.c.window_start == capacity_windows.c.starts_at),
                )
            )
            .where(capacity_windows.c.tenant_id == tenant)
        )
        return [tuple(r) for r in rows]


def _window_at_its_start(tenant: str, *more):
    """The capacity window at an appointment's unit, zone and start (and `more` conditions)."""
    return select(capacity_windows.c.starts_at).where(
        capacity_windows.c.tenant_id == tenant,
        capacity_windows.c.business_unit == appointments.c.business_unit,
        capacity_windows.c.zone == appointments.c.zone,
        capacity_windows.c.starts_at == appointments.c.window_start,
        *more,
    )


async def assert_accounting_holds(engine, tenant: str) -> None:
    for starts_at, places, capacity, booked, held in await accounting(engine, tenant):
        assert booked == held, f"window {starts_at}: booked {booked} but {held} appointments hold it"
        assert capacity == max(places, booked), (starts_at, places, capacity, booked)
    async with engine.connect() as conn:
        # no appointment holds a place in a window that is not there
        orphans = await conn.execute(
            select(func.count())
            .select_from(appointments)
            .where(
                appointments.c.tenant_id == tenant,
                appointments.c.holds_place,
                ~_window_at_its_start(tenant).exists(),
            )
        )
        assert orphans.scalar_one() == 0
        ends, end = capacity_windows.c.ends_at, appointments.c.window_end
        # and only ever in a window of exactly its span (an office record changing the end frees it)
        misfits = await conn.execute(
            select(appointments.c.appointment_id, appointments.c.window_end).where(
                appointments.c.tenant_id == tenant,
                appointments.c.holds_place,
                _window_at_its_start(tenant, ends != end).exists(),
            )
        )
        assert misfits.all() == [], "appointments holding a place in a window of another span"
        # every appointment in a managed window holds its place there, whenever the window arrived
        unheld = await conn.execute(
            select(appointments.c.appointment_id, appointments.c.window_start).where(
                appointments.c.tenant_id == tenant,
                ~appointments.c.holds_place,
                appointments.c.status != "canceled",
                _window_at_its_start(tenant, ends == end).exists(),
            )
        )
        assert unheld.all() == [], "appointments in a managed window that hold no place"


async def test_fifty_customers_race_for_one_place_and_exactly_one_wins_every_round(wide_engine, tenant):
    engine = wide_engine
    # Each racer starts in a window of its own, outside capacity; round r opens window r with one place.
    await set_capacity(engine, tenant, [(slot(1000), 1)], version=1)
    for n in range(RACERS):
        await book(engine, tenant, f"apt-{n}", slot(2000 + n))
    winners: list[str] = []
    for round_no in range(RACE_ROUNDS):
        target = slot(round_no)
        await set_capacity(engine, tenant, [(target, 1)], version=round_no + 2)
        current = await versions(engine, tenant)
        race = [approved(tenant, a, Reschedule(new_window=target), v) for a, v in sorted(current.items())]
        await asyncio.gather(*(handle(engine, message) for message in race))
        results = await outcomes(engine, tenant, [m.correlation_id for m in race])
        applied = [
            m.payload.appointment_id for m in race if results[m.correlation_id] == "appointment.rescheduled"
        ]
        assert len(applied) == 1, f"round {round_no}: {len(applied)} winners"
        losers = {results[m.correlation_id] for m in race if m.payload.appointment_id not in applied}
        assert losers == {"modify.failed:time_no_longer_available"}, f"round {round_no}: {losers}"
        winners += applied
    await assert_accounting_holds(engine, tenant)
    async with engine.connect() as conn:
        booked = dict(
            (
                await conn.execute(
                    select(capacity_windows.c.starts_at, capacity_windows.c.booked).where(
                        capacity_windows.c.tenant_id == tenant
                    )
                )
            ).all()
        )
    # Each winner holds the window of the last round it won; a win elsewhere freed its older place.
    assert sum(booked.values()) == len(set(winners))
    last_win = {appointment_id: round_no for round_no, appointment_id in enumerate(winners)}
    assert {slot(r).start for r in last_win.values()} == {start for start, n in booked.items() if n}


async def test_two_moves_of_one_appointment_at_once_apply_one(wide_engine, tenant):
    engine = wide_engine
    await set_capacity(engine, tenant, [(slot(0), 1), (slot(1), 1), (slot(2), 1)], version=1)
    await book(engine, tenant, "apt-1", slot(0))
    for _ in range(20):
        version = (await versions(engine, tenant))["apt-1"]
        async with engine.connect() as conn:
            at = (
                await conn.execute(
                    select(appointments.c.window_start).where(
                        appointments.c.tenant_id == tenant, appointments.c.appointment_id == "apt-1"
                    )
                )
            ).scalar_one()
        targets = [slot(n) for n in range(3) if slot(n).start != at]
        moves = [approved(tenant, "apt-1", Reschedule(new_window=w), version) for w in targets]
        await asyncio.gather(*(handle(engine, m) for m in moves))
        results = await outcomes(engine, tenant, [m.correlation_id for m in moves])
        assert sorted(results.values()) == ["appointment.rescheduled", "modify.failed:appointment_changed"]
        await assert_accounting_holds(engine, tenant)


async def test_a_move_racing_an_office_confirmation_keeps_the_books_straight(wide_engine, tenant):
    engine = wide_engine
    await set_capacity(engine, tenant, [(slot(0), 2), (slot(1), 2)], version=1)
    for round_no in range(20):
        appointment_id = f"apt-{round_no}"
        await book(engine, tenant, appointment_id, slot(0))
        move = approved(tenant, appointment_id, Reschedule(new_window=slot(1)), 1)
        # The office confirms the appointment as it knew it: still in slot 0 (a version 1 record).
        confirm = f.appointment_recorded(
            tenant=tenant,
            appointment_id=appointment_id,
            job_id=f"job-{appointment_id}",
            window=slot(0),
            confirmation=Confirmation.CONFIRMED,
            change_id=f"confirm-{round_no}",
        )
        await asyncio.gather(handle(engine, move), handle(engine, confirm))
        result = (await outcomes(engine, tenant, [move.correlation_id]))[move.correlation_id]
        answer = (await office_answers(engine, tenant))[confirm.message_id]
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    select(appointments).where(
                        appointments.c.tenant_id == tenant, appointments.c.appointment_id == appointment_id
                    )
                )
            ).one()
        # Whichever came first, the customer's applied move is never undone by a record that did not
        # know of it: the office hears why its record was refused.
        if result == "appointment.rescheduled":
            assert answer == ("refused", "stale_record")
            assert (row.window_start, row.confirmation) == (slot(1).start, "unconfirmed")
        else:
            assert result == "modify.failed:appointment_changed"
            assert answer == ("applied", None)
            assert (row.window_start, row.confirmation) == (slot(0).start, "confirmed")
        await assert_accounting_holds(engine, tenant)
        # Free the places for the next round.
        await handle(engine, approved(tenant, appointment_id, Cancel(reason="done"), row.version))
    await assert_accounting_holds(engine, tenant)


async def office_answers(engine, tenant: str) -> dict:
    """office message id -> (status, reason code) of the `office.outcome` modify_handler wrote for it."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox.c.body).where(
                outbox.c.tenant_id == tenant, outbox.c.message_type == "office.outcome"
            )
        )
        found = {}
        for (body,) in rows:
            payload = json.loads(body)["payload"]
            key = uuid.UUID(payload["office_message_id"])
            assert key not in found, f"two outcomes for office message {key}"
            found[key] = (payload["status"], payload["reason_code"])
        return found


async def test_a_cancel_frees_its_place_and_a_customer_can_take_it(engine, tenant):
    await set_capacity(engine, tenant, [(slot(0), 1), (slot(1), 1)], version=1)
    await book(engine, tenant, "apt-1", slot(0))
    await book(engine, tenant, "apt-2", slot(1))
    blocked = approved(tenant, "apt-2", Reschedule(new_window=slot(0)), 1)
    await handle(engine, blocked)
    assert (await outcomes(engine, tenant, [blocked.correlation_id]))[blocked.correlation_id] == (
        "modify.failed:time_no_longer_available"
    )
    await handle(engine, approved(tenant, "apt-1", Cancel(reason="moving"), 1))
    retry = approved(tenant, "apt-2", Reschedule(new_window=slot(0)), 1)
    await handle(engine, retry)
    assert (await outcomes(engine, tenant, [retry.correlation_id]))[
        retry.correlation_id
    ] == "appointment.rescheduled"
    await assert_accounting_holds(engine, tenant)


async def test_a_window_the_unit_does_not_offer_is_not_available(engine, tenant):
    await set_capacity(engine, tenant, [(slot(0), 3)], version=1)
    await book(engine, tenant, "apt-1", slot(0))
    nowhere = approved(tenant, "apt-1", Reschedule(new_window=slot(7)), 1)
    await handle(engine, nowhere)
    assert (await outcomes(engine, tenant, [nowhere.correlation_id]))[nowhere.correlation_id] == (
        "modify.failed:time_no_longer_available"
    )


async def test_a_unit_without_capacity_windows_takes_any_window(engine, tenant):
    await book(engine, tenant, "apt-1", slot(0))
    move = approved(tenant, "apt-1", Reschedule(new_window=slot(5)), 1)
    await handle(engine, move)
    assert (await outcomes(engine, tenant, [move.correlation_id]))[
        move.correlation_id
    ] == "appointment.rescheduled"


async def test_fewer_places_than_bookings_keeps_every_booking_and_offers_none(engine, tenant):
    await set_capacity(engine, tenant, [(slot(0), 2), (slot(1), 1)], version=1)
    await book(engine, tenant, "apt-1", slot(0))
    await book(engine, tenant, "apt-2", slot(0))
    await book(engine, tenant, "apt-3", slot(1))
    await set_capacity(engine, tenant, [(slot(0), 1)], version=2)
    await assert_accounting_holds(engine, tenant)
    late = approved(tenant, "apt-3", Reschedule(new_window=slot(0)), 1)
    await handle(engine, late)
    assert (await outcomes(engine, tenant, [late.correlation_id]))[late.correlation_id] == (
        "modify.failed:time_no_longer_available"
    )
    # An older capacity message arriving late changes nothing.
    await set_capacity(engine, tenant, [(slot(0), 9)], version=1)
    rows = {r[0]: r for r in await accounting(engine, tenant)}
    assert rows[slot(0).start][1:4] == (1, 2, 2)


async def test_bookings_made_before_the_window_existed_are_counted_when_it_arrives(engine, tenant):
    """Three bookings, then a window of three places: it is full, and a fourth customer cannot move in."""
    for n in range(3):
        await book(engine, tenant, f"apt-{n}", slot(0))
    await book(engine, tenant, "apt-3", slot(1))
    await set_capacity(engine, tenant, [(slot(0), 3), (slot(1), 3)], version=1)
    rows = {r[0]: r for r in await accounting(engine, tenant)}
    assert rows[slot(0).start][1:4] == (3, 3, 3)
    assert rows[slot(1).start][1:4] == (3, 3, 1)
    late = approved(tenant, "apt-3", Reschedule(new_window=slot(0)), 1)
    await handle(engine, late)
    assert (await outcomes(engine, tenant, [late.correlation_id]))[late.correlation_id] == (
        "modify.failed:time_no_longer_available"
    )
    await assert_accounting_holds(engine, tenant)


async def test_the_database_refuses_an_overbooking_write(engine, tenant):
    """The CHECK backs the code: a write that bypasses the rules cannot overbook."""
    from sqlalchemy import update
    from sqlalchemy.exc import IntegrityError

    await set_capacity(engine, tenant, [(slot(0), 1)], version=1)
    with pytest.raises(IntegrityError, match="capacity_never_overbooked"):
        async with engine.begin() as conn:
            await conn.execute(
                update(capacity_windows)
                .where(capacity_windows.c.tenant_id == tenant)
                .values(booked=capacity_windows.c.booked + 2)
            )


# --- property: capacity accounting always equals the appointments that hold places -------------------

APPOINTMENT_IDS = [f"apt-{n}" for n in range(4)]
SLOTS = [slot(n) for n in range(3)]
step = st.one_of(
    st.tuples(
        st.just("office"),
        st.sampled_from(APPOINTMENT_IDS),
        st.integers(0, 5),  # 4, 5: the start of window 0, 1 with another end
        st.sampled_from(
            [AppointmentStatus.SCHEDULED] * 3 + [AppointmentStatus.CANCELED, AppointmentStatus.DISPATCHED]
        ),
    ),
    st.tuples(st.just("move"), st.sampled_from(APPOINTMENT_IDS), st.integers(0, 3), st.none()),
    st.tuples(st.just("cancel"), st.sampled_from(APPOINTMENT_IDS), st.none(), st.none()),
    # Sets one window's places; the first time a window is named, it is created (possibly after
    # bookings in it: capacity must count them whatever the order).
    st.tuples(st.just("places"), st.none(), st.integers(0, 2), st.integers(0, 3)),
)
# Each round runs its steps at once (office messages are consumed concurrently), rounds in order.
rounds = st.lists(st.lists(step, min_size=1, max_size=3), min_size=1, max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(initial=st.sets(st.integers(0, 2)), steps=rounds)
@example(  # two records of a new appointment at once: both used to book it and take a place
    initial={0}, steps=[[("office", "apt-0", 0, AppointmentStatus.SCHEDULED)] * 2]
)
@example(  # bookings before the window, then the window with a move into it at the same time
    initial=set(),
    steps=[
        [
            ("office", "apt-0", 0, AppointmentStatus.SCHEDULED),
            ("office", "apt-1", 1, AppointmentStatus.SCHEDULED),
        ],
        [("places", None, 0, 1), ("move", "apt-1", 0, None)],
    ],
)
@example(  # as found: a booking, then its window created while the customer "moves" into the same window
    initial=set(),
    steps=[
        [("office", "apt-0", 0, AppointmentStatus.SCHEDULED)] * 2,
        [("move", "apt-0", 0, None), ("places", None, 0, 2)],
    ],
)
@example(  # the same in order: a move into the window whose place it holds used to leave it booked 0
    initial=set(),
    steps=[
        [("office", "apt-0", 0, AppointmentStatus.SCHEDULED)],
        [("places", None, 0, 2)],
        [("move", "apt-0", 0, None)],
    ],
)
@example(  # the office keeps the start and changes the end: the window no longer fits, its place is freed
    initial={0},
    steps=[
        [("office", "apt-0", 0, AppointmentStatus.SCHEDULED)],
        [("office", "apt-0", 4, AppointmentStatus.SCHEDULED)],
        [("office", "apt-1", 0, AppointmentStatus.SCHEDULED)],
    ],
)
async def test_capacity_accounting_never_depends_on_arrival_order(wide_engine, initial, steps):
    tenant = unique_tenant()
    try:
        await run_steps(wide_engine, tenant, sorted(initial), steps)
    finally:
        await forget_events(wide_engine, tenant)


def where_to(where: int | None) -> ArrivalWindow:
    """0-2: a window that may get capacity; 3: one outside capacity; 4, 5: the start of window 0, 1 with
    an end an hour later (the office keeps the start and changes the end)."""
    if where is None or where == 3:
        return slot(50)
    if where > 3:
        window = SLOTS[where - 4]
        return ArrivalWindow(start=window.start, end=window.end + timedelta(hours=1))
    return SLOTS[where]


async def run_steps(engine, tenant: str, initial: list[int], steps) -> None:
    capacity_version = 1
    if initial:
        await set_capacity(engine, tenant, [(SLOTS[n], 1) for n in initial], version=capacity_version)
    for group in steps:
        current = await versions(engine, tenant)
        work = []
        for kind, appointment_id, where, extra in group:
            window = where_to(where)
            if kind == "office":
                work.append(book(engine, tenant, appointment_id, window, status=extra))
            elif kind == "places":
                capacity_version += 1
                work.append(set_capacity(engine, tenant, [(SLOTS[where], extra)], version=capacity_version))
            elif appointment_id in current:
                change = Reschedule(new_window=window) if kind == "move" else Cancel(reason="x")
                work.append(handle(engine, approved(tenant, appointment_id, change, current[appointment_id])))
        await asyncio.gather(*work)
        await assert_accounting_holds(engine, tenant)


async def test_the_reconciler_checks_capacity_accounting(engine, tenant):
    """`apptctl reconcile` reads the windows: clean books pass, a counter off by one is reported."""
    from sqlalchemy import update

    from apptctl import reconcile

    await set_capacity(engine, tenant, [(slot(0), 2)], version=1)
    await book(engine, tenant, "apt-1", slot(0))

    def capacity_violations(report):
        return [v for v in report.violations if v.kind is reconcile.Kind.CAPACITY_MISMATCH]

    clean = await reconcile.check(engine, tenants=[tenant], dead_letters=[], dead_letters_required=False)
    assert not capacity_violations(clean)
    assert not any("capacity not checked" in note for note in clean.notes)
    async with engine.begin() as conn:
        await conn.execute(
            update(capacity_windows).where(capacity_windows.c.tenant_id == tenant).values(booked=0)
        )
    (found,) = capacity_violations(
        await reconcile.check(engine, tenants=[tenant], dead_letters=[], dead_letters_required=False)
    )
    assert "booked 0, held by 1 appointment(s)" in found.detail
