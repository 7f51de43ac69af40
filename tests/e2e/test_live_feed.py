"""The live feed through the real workers: after each read-store change portal_sync publishes one small
event (v2) listing every view the change touched, routed by tenant, customer and job, so a board or
portal binds to exactly what it shows and re-reads once per change."""

import asyncio
import json

import aio_pika
import pytest

from contracts.feed_v2 import routing_word
from tests import factories as f
from tests.e2e.test_policy_engine import ALLOW, World, everything


@pytest.fixture
def world(workers, broker, engine) -> World:
    return World(broker, engine)


async def subscribe(service_urls, topology, binding_key: str):
    connection = await aio_pika.connect(service_urls.amqp)
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(topology.exchange("feed"), routing_key=binding_key)
    return connection, queue


async def drain(queue, settle_s: float = 1.5) -> list[tuple[str, dict]]:
    """Everything the queue got until it stayed quiet for `settle_s`."""
    seen: list[tuple[str, dict]] = []
    while True:
        try:
            message = await queue.get(timeout=settle_s, fail=True)
        except aio_pika.exceptions.QueueEmpty:
            return seen
        await message.ack()
        body = json.loads(message.body)
        assert (body["type"], body["schema_version"]) == ("portal.view_changed", 2)
        seen.append((message.routing_key, body["payload"]))


async def test_a_board_and_a_portal_each_see_exactly_their_part(world: World, service_urls, topology):
    board_connection, board = await subscribe(service_urls, topology, f"{world.tenant}.#")
    portal_connection, portal = await subscribe(service_urls, topology, f"{world.tenant}.{f.CUSTOMER_ID}.*")
    job_connection, one_job = await subscribe(service_urls, topology, f"{world.tenant}.*.job-apt-2")
    try:
        await world.settings({"settings": everything(ALLOW)})
        await world.book("apt-1")
        await world.book("apt-2", customer_id="cust-other")
        _, done = await world.ask("apt-1", f.cancel("moving away"))
        assert done.status == "completed"
        await asyncio.sleep(1)

        board_events = await drain(board)
        portal_events = await drain(portal)
        job_events = await drain(one_job)
    finally:
        for connection in (board_connection, portal_connection, job_connection):
            await connection.close()

    views = {
        (c["view"], c.get("appointment_id"), c.get("status")) for _, p in portal_events for c in p["changes"]
    }
    assert ("appointment", "apt-1", "scheduled") in views
    assert ("appointment", "apt-1", "canceled") in views
    assert ("request", "apt-1", "completed") in views
    assert ("job", None, "canceled") in views
    assert any(view == "offer" for view, _, _ in views)
    # One event per change: the cancel moved the appointment and completed the request in one delivery,
    # so one event lists both; no event names a view twice.
    assert any(
        {("appointment", "canceled"), ("request", "completed")}
        <= {(c["view"], c.get("status")) for c in p["changes"]}
        for _, p in portal_events
    )
    for _, p in portal_events:
        assert len({c["view"] for c in p["changes"]}) == len(p["changes"]), p
    requests = [c for _, p in portal_events for c in p["changes"] if c["view"] == "request"]
    # The request's two sightings (itself, its outcome), each with the row's status after it.
    assert len(requests) == 2 and requests[-1]["status"] == "completed"
    # The customer's portal hears nothing about the other customer; the board hears both.
    assert all(key == f"{world.tenant}.{f.CUSTOMER_ID}.job-apt-1" for key, _ in portal_events)
    assert all(p["customer_id"] == f.CUSTOMER_ID and p["job_id"] == "job-apt-1" for _, p in portal_events)
    assert {p.get("customer_id") for _, p in board_events} >= {f.CUSTOMER_ID, "cust-other"}
    assert job_events and all(p["job_id"] == "job-apt-2" for _, p in job_events)


def test_a_dot_in_an_id_cannot_split_a_routing_word() -> None:
    assert routing_word("cust.7") == "cust~7"
    assert routing_word(None) == "-"
