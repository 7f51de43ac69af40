"""A request id means one request, of one portal: reusing it for another change changes nothing anywhere
and is dead-lettered as `request_id_reused`; sending the same request again is a silent no-op."""

import uuid

import pytest
from sqlalchemy import select, text

from apptctl import readstore
from apptctl.scenario_runner import publish_all, take_dead_letters, wait_until
from infra.db.tables import appointments
from tests import factories as f
from tests.e2e.test_policy_engine import ALLOW, World, everything


@pytest.fixture
def world(workers, broker, engine) -> World:
    return World(broker, engine)


async def footprint(world: World, request_id: str) -> tuple:
    """Everything a request could have changed: the schedule, the request's row (requested_at too), the
    audit trail, the gate's decision."""
    async with world.engine.connect() as conn:
        schedule = (
            await conn.execute(select(appointments).where(appointments.c.tenant_id == world.tenant))
        ).all()
        request = (
            await conn.execute(
                text("SELECT * FROM portal.requests WHERE tenant_id = :t AND request_id = :r"),
                dict(t=world.tenant, r=request_id),
            )
        ).all()
        audit = (
            await conn.execute(
                text(
                    "SELECT entry, request_id, window_start, version, occurred_at FROM portal.audit_trail "
                    "WHERE tenant_id = :t ORDER BY occurred_at, entry"
                ),
                dict(t=world.tenant),
            )
        ).all()
        decision = (
            await conn.execute(
                text("SELECT * FROM policy.decisions WHERE tenant_id = :t AND request_id = :r"),
                dict(t=world.tenant, r=request_id),
            )
        ).all()
    return schedule, request, audit, decision


async def handled_by_both(workers, before: dict[str, int]) -> bool:
    """Each worker reading requests finished one more delivery (handled, duplicate or dead-lettered)."""

    async def done():
        return all(
            sum(workers[name].consumer.counts.values()) > before[name]
            for name in ("policy_gate", "portal_sync")
        )

    return await wait_until(done, 15)


def delivered(workers) -> dict[str, int]:
    return {name: sum(workers[name].consumer.counts.values()) for name in ("policy_gate", "portal_sync")}


async def settled_request(world: World, **fields):
    await world.settings({"settings": everything(ALLOW)})
    await world.book("apt-1")
    await world.book("apt-2")
    first = f.modify_requested(
        tenant=world.tenant,
        appointment_id="apt-1",
        change=f.reschedule(f.arrival_window(9)),
        request_id=f"req-{uuid.uuid4().hex[:10]}",
        **fields,
    )
    await publish_all(world.broker, [first])
    assert (await world.outcome(first.correlation_id)).status == "completed"

    async def audited():  # the request's lines are in (requested, rescheduled)
        lines = await readstore.audit_trail(world.engine, world.tenant, "apt-1")
        return len(lines) >= 3

    assert await wait_until(audited, 15)
    return first


@pytest.mark.parametrize(
    "reuse",
    ["another_window", "another_appointment", "another_portal"],
)
async def test_a_reused_request_id_changes_nothing_and_is_dead_lettered(world: World, workers, reuse):
    first = await settled_request(world)
    before = await footprint(world, first.correlation_id)
    change = {
        "another_window": dict(change=f.reschedule(f.arrival_window(11))),
        "another_appointment": dict(appointment_id="apt-2"),
        "another_portal": dict(producer="portal-app"),
    }[reuse]
    fields = dict(
        tenant=world.tenant,
        appointment_id="apt-1",
        change=first.payload.change,
        request_id=first.correlation_id,
        occurred_at=f.now(),
    )
    second = f.modify_requested(**{**fields, **change})
    counted = delivered(workers)
    await publish_all(world.broker, [second])

    letters = await take_dead_letters(world.broker, str(second.message_id), expected=1)
    assert [(letter.queue.split(".")[-2], letter.reason) for letter in letters] == [
        ("policy_gate", "request_id_reused")
    ]
    assert "new request id" in letters[0].detail
    assert await handled_by_both(workers, counted)
    assert await footprint(world, first.correlation_id) == before


async def test_the_same_request_sent_again_is_a_silent_no_op(world: World, workers):
    first = await settled_request(world)
    before = await footprint(world, first.correlation_id)
    again = first.model_copy(update={"message_id": uuid.uuid4(), "occurred_at": f.now()})
    counted = delivered(workers)
    await publish_all(world.broker, [again])
    assert await handled_by_both(workers, counted)
    assert "dead_lettered:request_id_reused" not in workers["policy_gate"].consumer.counts
    assert await footprint(world, first.correlation_id) == before
