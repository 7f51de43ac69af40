"""The topology spec on the real broker: idempotent, quorum queues, routes where the contract says."""

import aio_pika
import aiormq
import pytest

from infra import topology as topology_module
from tests.conftest import TEST_RETRY_DELAYS_S, unique_tenant


async def test_applying_twice_is_harmless(service_urls, topology):
    again = await topology_module.apply(service_urls.amqp, topology.namespace, TEST_RETRY_DELAYS_S)
    assert again == topology


async def test_applying_removes_a_binding_an_earlier_release_left(service_urls, topology, broker):
    """Until issue 14 the gate's queue was bound to a customer's change events; a broker set up then
    keeps those bindings through a plain declare, and the gate would dead-letter what they bring."""
    gate = topology.queue_of("policy_gate").name
    connection = await aio_pika.connect(service_urls.amqp)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(gate, passive=True)
        for retired in topology_module.RETIRED_BINDINGS["policy_gate"]:
            await queue.bind(topology.exchange(retired.exchange_role), retired.routing_key)
        await topology_module.apply(service_urls.amqp, topology.namespace, TEST_RETRY_DELAYS_S)
        await broker.publish(
            topology.exchange("events"), "appointment.rescheduled", aio_pika.Message(b"{}", message_id="m-1")
        )
        queue = await channel.declare_queue(gate, passive=True)
        assert queue.declaration_result.message_count == 0


async def test_every_work_queue_is_quorum_with_a_delivery_limit_and_dead_letter_route(topology):
    for worker in topology_module.WORKERS:
        spec = topology.queue_of(worker)
        assert spec.arguments["x-queue-type"] == "quorum"
        assert spec.arguments["x-delivery-limit"] == topology_module.DELIVERY_LIMIT
        assert spec.arguments["x-dead-letter-strategy"] == "at-least-once"
        assert spec.arguments["x-dead-letter-routing-key"] == spec.dead_letter_queue


async def test_redeclaring_a_queue_with_other_arguments_is_refused(service_urls, topology):
    # Queue arguments are part of the contract: the broker refuses a silent change.
    connection = await aio_pika.connect(service_urls.amqp)
    async with connection:
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await channel.declare_queue(
                topology.queue_of("policy_gate").name, durable=True, arguments={"x-queue-type": "classic"}
            )


@pytest.mark.parametrize(
    ("role", "routing_key", "expected_workers"),
    [
        ("requests", "modify.requested", {"policy_gate", "portal_sync"}),
        ("office", "office.portal_settings.updated", {"policy_gate"}),
        ("office", "office.appointment.recorded", {"modify_handler"}),
        ("internal", "modify.approved", {"modify_handler"}),
        # A customer's change carries its offer: the gate does not get it back (issue 14).
        ("events", "appointment.rescheduled", {"portal_sync"}),
        ("events", "appointment.canceled", {"portal_sync"}),
        ("events", "appointment.updated", {"policy_gate", "portal_sync"}),
        ("events", "modify.failed", {"policy_gate", "portal_sync"}),
        # The gate's own offers must not come back to it.
        ("events", "appointment.offer_changed", {"portal_sync"}),
        ("events", "job.status_changed", {"portal_sync"}),
    ],
)
async def test_routes_follow_the_subscriptions(
    service_urls, topology, broker, role, routing_key, expected_workers
):
    await broker.publish(
        topology.exchange(role), routing_key, aio_pika.Message(b"{}", message_id=unique_tenant())
    )
    connection = await aio_pika.connect(service_urls.amqp)
    async with connection:
        channel = await connection.channel()
        got = set()
        for worker in topology_module.WORKERS:
            queue = await channel.declare_queue(topology.queue_of(worker).name, passive=True)
            if queue.declaration_result.message_count:
                got.add(worker)
    assert got == expected_workers


async def test_unroutable_publish_raises_instead_of_vanishing(topology, broker):
    with pytest.raises(aio_pika.exceptions.PublishError):
        await broker.publish(topology.exchange("office"), "office.nobody.listens", aio_pika.Message(b"{}"))
