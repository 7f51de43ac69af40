"""A request id means one request of one portal: reusing it for another change changes nothing anywhere
and is dead-lettered as `request_id_reused`; sending the same request again is a silent no-op; another
portal's request under the same id is a request of its own (request ids are scoped by tenant and portal)."""

import json
import uuid

import aio_pika
import asyncpg
import pytest
from sqlalchemy import select, text

from apptctl import readstore
from apptctl.scenario_runner import publish_all, take_dead_letters, wait_until
from infra.db.tables import appointments
from tests import factories as f
from tests.e2e.test_policy_engine import ALLOW, World, everything
from workers.portal_sync import store as portal_store
from workers.portal_sync.projection import RequestOutcome
from workers.runtime.database import asyncpg_dsn


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
    ["another_window", "another_appointment"],
)
async def test_a_reused_request_id_changes_nothing_and_is_dead_lettered(world: World, workers, reuse):
    first = await settled_request(world)
    before = await footprint(world, first.correlation_id)
    change = {
        "another_window": dict(change=f.reschedule(f.arrival_window(11))),
        "another_appointment": dict(appointment_id="apt-2"),
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


async def replies_on(queue) -> list[dict]:
    """Every reply waiting on a portal's queue (bodies)."""
    replies = []
    while True:
        try:
            message = await queue.get(timeout=3, fail=True)
        except aio_pika.exceptions.QueueEmpty:
            return replies
        await message.ack()
        replies.append(json.loads(message.body))


async def test_another_portal_taking_a_request_id_first_squats_nothing(world: World, workers, service_urls):
    """The attack: portal-app (a key allowed for the same tenant) sends portal-web's request id first.
    Both requests are decided and answered, each to its own portal's queue; neither portal reads the
    other's outcome; a reused id within one portal is still refused."""
    await world.settings({"settings": everything(ALLOW)})
    await world.book("apt-1")
    await world.book("apt-2")
    request_id = f"req-{uuid.uuid4().hex[:10]}"
    prefix = world.broker.topology.portal_queue_prefix
    connection = await aio_pika.connect(service_urls.amqp)
    try:
        channel = await connection.channel()
        queues = {}
        for portal in ("portal-web", "portal-app"):
            queues[portal] = await channel.declare_queue(f"{prefix}{portal}.r-{world.tenant}", exclusive=True)
            await queues[portal].bind(
                world.broker.topology.exchange("reply"), routing_key=queues[portal].name
            )
        squat = f.modify_requested(
            tenant=world.tenant,
            appointment_id="apt-2",
            change=f.cancel("squatting"),
            request_id=request_id,
            producer="portal-app",
            reply_to=queues["portal-app"].name,
        )
        genuine = f.modify_requested(
            tenant=world.tenant,
            appointment_id="apt-1",
            change=f.reschedule(f.arrival_window(9)),
            request_id=request_id,
            producer="portal-web",
            reply_to=queues["portal-web"].name,
        )
        await publish_all(world.broker, [squat])
        squatted = await world.outcome(request_id)
        assert squatted is not None and squatted.status == "completed"
        await publish_all(world.broker, [genuine])

        async def both_final():
            views = [await readstore.request(world.engine, world.tenant, request_id, p) for p in queues]
            return views if all(v is not None and v.status == "completed" for v in views) else None

        assert await wait_until(both_final, 15), "both portals' requests are answered"
        web = await replies_on(queues["portal-web"])
        app = await replies_on(queues["portal-app"])
    finally:
        await connection.close()
    # each portal got exactly its own outcome, and its request is the one it sent
    assert [(r["payload"]["appointment_id"], r["payload"]["action"]) for r in web] == [
        ("apt-1", "reschedule")
    ]
    assert [(r["payload"]["appointment_id"], r["payload"]["action"]) for r in app] == [("apt-2", "cancel")]
    assert {r["request_producer"] for r in web} == {"portal-web"}
    assert {r["request_producer"] for r in app} == {"portal-app"}
    assert "dead_lettered:request_id_reused" not in workers["policy_gate"].consumer.counts
    async with world.engine.connect() as conn:
        decided = (
            await conn.execute(
                text(
                    "SELECT producer, appointment_id, outcome FROM policy.decisions "
                    "WHERE tenant_id = :t AND request_id = :r ORDER BY producer"
                ),
                dict(t=world.tenant, r=request_id),
            )
        ).all()
        statuses = dict(
            (
                await conn.execute(
                    select(appointments.c.appointment_id, appointments.c.status).where(
                        appointments.c.tenant_id == world.tenant
                    )
                )
            ).all()
        )
    assert [tuple(row) for row in decided] == [
        ("portal-app", "apt-2", "approved"),
        ("portal-web", "apt-1", "approved"),
    ]
    assert statuses["apt-2"] == "canceled" and statuses["apt-1"] != "canceled"

    # within one portal, an id still means one request
    before = await footprint(world, request_id)
    reused = f.modify_requested(
        tenant=world.tenant,
        appointment_id="apt-1",
        change=f.reschedule(f.arrival_window(11)),
        request_id=request_id,
        producer="portal-app",
        occurred_at=f.now(),
    )
    await publish_all(world.broker, [reused])
    letters = await take_dead_letters(world.broker, str(reused.message_id), expected=1)
    assert [(letter.queue.split(".")[-2], letter.reason) for letter in letters] == [
        ("policy_gate", "request_id_reused")
    ]
    assert "portal-app" in letters[0].detail
    assert await footprint(world, request_id) == before


async def test_an_outcome_from_before_the_upgrade_finds_its_request_without_naming_the_portal(settings):
    """An outcome event published before request_producer travelled (a worker not yet upgraded) updates
    the one request with that id, whatever its portal, and its reply is claimed for that portal."""
    tenant, request_id = f"legacy-{uuid.uuid4().hex[:8]}", "req-legacy"
    connection = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    transaction = connection.transaction()
    await transaction.start()
    try:
        pending = RequestOutcome(
            request_id, "apt-1", "cancel", "pending", producer="portal-app", reply_to="q"
        )
        await connection.execute("SELECT set_config('appt.tenant_id', $1, true)", tenant)
        written = await portal_store.write(
            connection, tenant, portal_store.Writes(request=pending, requested_at=f.now())
        )
        assert written.request is not None
        legacy = RequestOutcome(request_id, "apt-1", "cancel", "rejected", "x", "y")  # no producer
        # The same statement that records the outcome claims the reply, for the request's portal.
        recorded = (await portal_store.write(connection, tenant, portal_store.Writes(request=legacy))).request
        assert recorded is not None and recorded.producer == "portal-app"
        assert recorded.reply is not None and recorded.reply["status"] == "rejected"
        rows = await connection.fetch(
            "SELECT producer, status FROM portal.requests WHERE tenant_id = $1", tenant
        )
        assert [tuple(r) for r in rows] == [("portal-app", "rejected")]
    finally:
        await transaction.rollback()  # leaves nothing behind
        await connection.close()
