"""A portal that names a reply_to queue gets the final outcome there, once; a queue that is gone costs
nothing (the outcome is still in the read store and the outcome event)."""

import json
import uuid

import aio_pika
import pytest
from sqlalchemy import func, select

from apptctl.scenario_runner import publish_all
from infra.db.tables import outbox
from tests import factories as f
from tests.e2e.test_policy_engine import ALLOW, World, everything


@pytest.fixture
def world(workers, broker, engine) -> World:
    return World(broker, engine)


async def ask_with_reply(world: World, appointment_id: str, change, reply_to: str, requester=f.CUSTOMER_ID):
    request = f.modify_requested(
        tenant=world.tenant,
        requester_id=requester,
        appointment_id=appointment_id,
        change=change,
        request_id=f"req-{uuid.uuid4().hex[:10]}",
        reply_to=reply_to,
    )
    # The portal re-sends it too (same message id): still one reply.
    await publish_all(world.broker, [request, request])
    return request.correlation_id, await world.outcome(request.correlation_id)


async def test_the_outcome_arrives_on_the_portals_queue_once(world: World, service_urls):
    connection = await aio_pika.connect(service_urls.amqp)
    try:
        channel = await connection.channel()
        # a queue of the portal's own: `<namespace>.portal.<producer>.<name>`
        own = f"{world.broker.topology.portal_queue_prefix}portal-web.replies-{world.tenant}"
        queue = await channel.declare_queue(own, exclusive=True)
        # the portal binds its reply queue to the replies exchange, under its own name
        await queue.bind(world.broker.topology.exchange("reply"), routing_key=queue.name)
        await world.settings({"settings": everything(ALLOW)})
        await world.book("apt-1")
        await world.book("apt-2")
        done_id, done = await ask_with_reply(world, "apt-1", f.cancel("moving"), queue.name)
        assert done.status == "completed"
        refused_id, refused = await ask_with_reply(
            world, "apt-2", f.cancel("moving"), queue.name, requester="someone-else"
        )
        assert refused.status == "rejected"

        replies = {}
        while True:
            try:
                message = await queue.get(timeout=3, fail=True)
            except aio_pika.exceptions.QueueEmpty:
                break
            await message.ack()
            body = json.loads(message.body)
            assert message.type == "modify.outcome" and message.correlation_id == body["correlation_id"]
            assert body["payload"]["request_id"] not in replies, "a second reply"
            replies[body["payload"]["request_id"]] = body["payload"]
    finally:
        await connection.close()
    assert replies[done_id]["status"] == "completed" and replies[done_id]["action"] == "cancel"
    assert replies[refused_id]["status"] == "rejected"
    assert replies[refused_id]["reason_code"] == refused.reason_code
    assert replies[refused_id]["reason"] == refused.reason_text


async def test_a_reply_queue_that_is_gone_does_not_block_the_outbox(world: World):
    await world.settings({"settings": everything(ALLOW)})
    await world.book("apt-1")
    gone = f"{world.broker.topology.portal_queue_prefix}portal-web.gone-{uuid.uuid4().hex[:8]}"
    _, done = await ask_with_reply(world, "apt-1", f.cancel("moving"), gone)
    assert done.status == "completed"
    # Later events of portal_sync still flow: the next request's outcome and feed events are published.
    await world.book("apt-2")
    _, second = await world.ask("apt-2", f.cancel("moving"))
    assert second.status == "completed"

    async def unpublished() -> int:
        async with world.engine.connect() as conn:
            return (
                await conn.execute(
                    select(func.count())
                    .select_from(outbox)
                    .where(outbox.c.tenant_id == world.tenant, outbox.c.published_at.is_(None))
                )
            ).scalar_one()

    from apptctl.scenario_runner import wait_until

    assert await wait_until(lambda: _zero(unpublished), 15)


async def _zero(count) -> bool:
    return await count() == 0
