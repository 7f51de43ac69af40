"""AMQP_URL as a cluster's node list, on the real broker: nodes that do not answer are skipped."""

import aio_pika

from infra.nodes import connect_first
from workers.runtime.broker import Broker

DOWN = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1


async def test_a_worker_connects_to_the_first_node_of_the_list_that_answers(settings, topology):
    broker = Broker(f"{DOWN},{DOWN},{settings.amqp_url}", topology, name="node-list")
    await broker.connect()
    try:
        assert broker.connection is not None and broker.connection.url.port != 1
        queue = topology.queue_of("modify_handler").name
        await broker.publish(
            topology.exchange("internal"), "modify.approved", aio_pika.Message(b"{}", message_id="node-list")
        )
        connection = await connect_first(f"{DOWN},{settings.amqp_url}")
        async with connection:
            declared = await (await connection.channel()).declare_queue(queue, passive=True)
            assert declared.declaration_result.message_count == 1
    finally:
        await broker.close()
