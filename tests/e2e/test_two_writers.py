"""Two writers, one appointment: the office never silently undoes a customer's change, and hears why.

Through the real pipeline (broker, three workers, database). The race of issue 12: the business denies
reschedules of confirmed appointments; a customer reschedules an unconfirmed appointment while the
office confirms it with a full-state record built before it knew of the move, sent 0-20 ms after the
request or before it (and 50, 100 ms after), as a version 1 record and as a versioned one.
`APPT_TWO_WRITERS_ROUNDS` rounds (default 200, under a minute), a few at a time.
"""

import asyncio
import collections
import os
import uuid

import pytest
from sqlalchemy import select

from apptctl import readstore, reconcile
from apptctl.scenario_runner import publish_all, wait_until
from contracts.common import Confirmation
from contracts.office_v2 import CancelSettings, RescheduleSettings, SettingsLayer
from infra.db.tables import appointments
from tests import factories as f
from tests.e2e.test_policy_engine import ALLOW, DENY, World

ROUNDS = int(os.environ.get("APPT_TWO_WRITERS_ROUNDS", "200"))
AT_ONCE = 8
# The office record is sent this long after the request (before it when negative); 50 and 100 ms make
# sure the customer wins some rounds even on a loaded machine, where the request takes longer.
GAPS_MS = (-20, -10, -5, -2, 0, 0, 2, 5, 10, 20, 50, 100)
OLD, NEW = f.arrival_window(7), f.arrival_window(9)
CONFIRMED_LOCKED = SettingsLayer(
    feature_enabled=True,
    reschedule=RescheduleSettings(confirmed=DENY, unconfirmed=ALLOW),
    cancel=CancelSettings(confirmed=ALLOW, unconfirmed=ALLOW),
)


@pytest.fixture
def world(workers, broker, engine) -> World:
    return World(broker, engine)


async def scheduled(world: World, appointment_id: str):
    async with world.engine.connect() as conn:
        return (
            await conn.execute(
                select(appointments).where(
                    appointments.c.tenant_id == world.tenant, appointments.c.appointment_id == appointment_id
                )
            )
        ).one()


async def office_answer(world: World, message_id: uuid.UUID):
    return await wait_until(lambda: readstore.office_outcome(world.engine, world.tenant, message_id), 20)


async def settled_view(world: World, appointment_id: str):
    """The read store's appointment once it shows the schedule's version (None if it never does)."""

    async def caught_up():
        row = await scheduled(world, appointment_id)
        view = (await readstore.appointments(world.engine, world.tenant, [appointment_id])).get(
            appointment_id
        )
        return (row, view) if view is not None and view.version == row.version else None

    return await wait_until(caught_up, 20)


async def one_round(world: World, round_no: int, versioned: bool, gap_ms: int) -> str:
    appointment_id = f"apt-{round_no}"
    booking = dict(
        tenant=world.tenant, appointment_id=appointment_id, job_id=f"job-{appointment_id}", window=OLD
    )
    first = f.appointment_recorded(
        **booking, change_id=f"book-{round_no}", **({"office_revision": 1} if versioned else {})
    )
    await publish_all(world.broker, [first])
    assert (await office_answer(world, first.message_id)).status == "applied"
    # The office confirms the appointment as it knows it: in the old window, built on version 1.
    confirm = f.appointment_recorded(
        **booking,
        confirmation=Confirmation.CONFIRMED,
        change_id=f"confirm-{round_no}",
        **({"office_revision": 2, "based_on_version": 1} if versioned else {}),
    )
    request = f.modify_requested(
        tenant=world.tenant,
        appointment_id=appointment_id,
        change=f.reschedule(NEW),
        request_id=f"req-{uuid.uuid4().hex[:10]}",
    )
    before, after = (confirm, request) if gap_ms < 0 else (request, confirm)
    await publish_all(world.broker, [before])
    await asyncio.sleep(abs(gap_ms) / 1000)
    await publish_all(world.broker, [after])

    outcome = await world.outcome(request.correlation_id)
    answer = await office_answer(world, confirm.message_id)
    assert outcome is not None and answer is not None, f"round {round_no}: no outcome"
    settled = await settled_view(world, appointment_id)
    assert settled is not None, f"round {round_no}: the read store never caught up with the schedule"
    row, view = settled
    # The read store equals the schedule.
    assert (view.window_start, view.window_end, view.status, view.confirmation) == (
        row.window_start,
        row.window_end,
        row.status,
        row.confirmation,
    ), f"round {round_no}"
    # The request's outcome tells the truth, and a customer's change is never undone without an office
    # outcome saying why (here: never undone at all, since the record did not know of it).
    if outcome.status == "completed":
        assert row.window_start == NEW.start, f"round {round_no}: completed but the move is gone"
        assert (answer.status, answer.reason_code) == ("refused", "stale_record"), f"round {round_no}"
        assert answer.current_state["window"]["start"] is not None
        assert answer.current_state["version"] == row.version
        assert row.confirmation == "unconfirmed"
    else:
        assert (outcome.status, outcome.reason_code) in (
            ("failed", "appointment_changed"),
            ("rejected", "confirmed_change_blocked"),
        ), f"round {round_no}: {outcome}"
        assert (answer.status, row.window_start, row.confirmation) == ("applied", OLD.start, "confirmed")
    return f"{outcome.status}/{answer.status}"


async def test_a_record_built_before_a_customer_move_never_undoes_it(world: World):
    await world.settings({"settings": CONFIRMED_LOCKED})
    tally: dict[tuple[str, int], collections.Counter] = collections.defaultdict(collections.Counter)
    plan = [(n, n % 2 == 1, GAPS_MS[(n // 2) % len(GAPS_MS)]) for n in range(ROUNDS)]
    for start in range(0, ROUNDS, AT_ONCE):
        batch = plan[start : start + AT_ONCE]
        results = await asyncio.gather(*(one_round(world, n, v, gap) for n, v, gap in batch))
        for (_, versioned, gap), result in zip(batch, results, strict=True):
            tally[("v2" if versioned else "v1", gap)][result] += 1
    print(f"\ntwo writers: {ROUNDS} rounds")
    for (kind, gap), counts in sorted(tally.items()):
        print(f"  {kind} office record {gap:+d} ms after the request: {dict(counts)}")
    await assert_no_lost_update(world)


async def assert_no_lost_update(world: World) -> None:
    """`apptctl reconcile` over the tenant: no completed request's effect is gone (and the schedule and
    the read store agree)."""
    report = await reconcile.check(
        world.engine, tenants=[world.tenant], dead_letters=[], dead_letters_required=False
    )
    assert not report.violations_of(
        reconcile.Kind.LOST_UPDATE,
        reconcile.Kind.READ_STORE_DIVERGED,
        reconcile.Kind.READ_STORE_BEHIND,
        reconcile.Kind.UNEXPLAINED_CHANGE,
        reconcile.Kind.OUTCOME_MISMATCH,
    ), report.violations[:5]


async def test_a_record_that_knew_of_the_move_changes_it_on_purpose(world: World):
    await world.settings({"settings": CONFIRMED_LOCKED})
    booking = dict(tenant=world.tenant, appointment_id="apt-1", job_id="job-apt-1", window=OLD)
    first = f.appointment_recorded(**booking, change_id="book", office_revision=1)
    await publish_all(world.broker, [first])
    await office_answer(world, first.message_id)
    _, moved = await world.ask("apt-1", f.reschedule(NEW))
    assert moved.status == "completed"
    # Built on the customer's version (2): the office moves it back on purpose, and that applies.
    back = f.appointment_recorded(**booking, change_id="back", office_revision=3, based_on_version=2)
    # An older revision arriving after it changes nothing.
    late = f.appointment_recorded(
        **{**booking, "window": NEW}, change_id="late", office_revision=2, based_on_version=2
    )
    await publish_all(world.broker, [back])
    assert (await office_answer(world, back.message_id)).status == "applied"
    await publish_all(world.broker, [late])
    answer = await office_answer(world, late.message_id)
    assert (answer.status, answer.reason_code) == ("ignored", "older_revision")
    row, view = await settled_view(world, "apt-1")
    assert row.window_start == OLD.start == view.window_start
    await assert_no_lost_update(world)  # moved back on purpose: no lost update


async def test_a_version_1_record_applies_once_it_agrees_with_the_customer_change(world: World):
    await world.settings({"settings": CONFIRMED_LOCKED})
    booking = dict(tenant=world.tenant, appointment_id="apt-1", job_id="job-apt-1")
    await world.book("apt-1", window=OLD)
    _, moved = await world.ask("apt-1", f.reschedule(NEW))
    assert moved.status == "completed"
    stale = f.appointment_recorded(**booking, window=OLD, confirmation=Confirmation.CONFIRMED, change_id="s")
    await publish_all(world.broker, [stale])
    refused = await office_answer(world, stale.message_id)
    assert (refused.status, refused.reason_code) == ("refused", "stale_record")
    assert refused.current_state["version"] == 2
    # Rebuilt on the state the outcome gave: applies; the next version 1 record is built on that.
    rebuilt = f.appointment_recorded(
        **booking, window=NEW, confirmation=Confirmation.CONFIRMED, change_id="r"
    )
    await publish_all(world.broker, [rebuilt])
    assert (await office_answer(world, rebuilt.message_id)).status == "applied"
    again = f.appointment_recorded(**booking, window=OLD, confirmation=Confirmation.CONFIRMED, change_id="a")
    await publish_all(world.broker, [again])
    assert (await office_answer(world, again.message_id)).status == "applied"
    row, view = await settled_view(world, "apt-1")
    assert (row.window_start, view.window_start, row.version) == (OLD.start, OLD.start, 4)
    await assert_no_lost_update(world)


async def test_every_office_message_gets_an_outcome(world: World):
    await world.settings({"settings": CONFIRMED_LOCKED})
    settings_again = f.settings_layer_updated(
        tenant=world.tenant, settings=CONFIRMED_LOCKED, settings_version=1
    )
    capacity = f.capacity_updated(tenant=world.tenant, capacity_version=3, change_id="cap-3")
    capacity_older = f.capacity_updated(tenant=world.tenant, capacity_version=2, change_id="cap-2")
    approval = f.approval_decided("req-nobody-asked", tenant=world.tenant)
    project = f.project_recorded(tenant=world.tenant)
    await publish_all(world.broker, [settings_again, capacity, approval, project])
    expected = {
        settings_again.message_id: ("ignored", "older_revision"),
        capacity.message_id: ("applied", None),
        approval.message_id: ("refused", "approval_not_pending"),
        project.message_id: ("applied", None),
    }
    for message_id, (status, code) in expected.items():
        answer = await office_answer(world, message_id)
        assert answer is not None, message_id
        assert (answer.status, answer.reason_code) == (status, code)
        assert (answer.reason_text is None) == (code is None)
    await publish_all(world.broker, [capacity_older])
    answer = await office_answer(world, capacity_older.message_id)
    assert (answer.status, answer.reason_code) == ("ignored", "older_revision")
