"""The direct publisher's backpressure: while `max_pending` rows are queued or awaiting their confirms,
`submit` waits (a stand-in broker whose confirms the test releases; the real broker and database are in
tests/integration/test_runtime.py)."""

import asyncio
import uuid

from workers.runtime.outbox import DirectPublisher, OutboxRow


class SlowBroker:
    """Confirms nothing until `confirm` is set; counts what was published."""

    class topology:  # stands in for Topology
        @staticmethod
        def exchange(role: str) -> str:
            return f"t.{role}"

    def __init__(self) -> None:
        self.confirm = asyncio.Event()
        self.published: list[str] = []

    async def publish_body(self, exchange, routing_key, body, properties) -> None:
        self.published.append(properties.message_id)
        await self.confirm.wait()


def row(tenant: str = "acme") -> OutboxRow:
    return OutboxRow(uuid.uuid4(), "events", "x.happened", "x.happened", "req-1", tenant, {}, b"{}")


async def test_submit_waits_while_max_pending_rows_are_ahead_and_goes_on_once_they_are_confirmed():
    broker = SlowBroker()
    publisher = DirectPublisher(engine=None, broker=broker, producer="gate", max_pending=2)
    await publisher.submit([row(), row()])
    burst = asyncio.create_task(publisher.publish_queued())
    await asyncio.sleep(0.01)
    assert len(broker.published) == 2 and publisher.pending == 2  # both awaiting their confirms

    third = asyncio.create_task(publisher.submit([row()]))
    await asyncio.sleep(0.05)
    assert not third.done(), "a third row must wait for room"

    broker.confirm.set()
    assert await burst == 2
    await asyncio.wait_for(third, timeout=1)
    assert publisher.pending == 1 and publisher.published_total == 2


async def test_a_stopping_publisher_never_holds_a_delivery_back():
    broker = SlowBroker()
    publisher = DirectPublisher(engine=None, broker=broker, producer="gate", max_pending=1)
    await publisher.submit([row()])
    waiting = asyncio.create_task(publisher.submit([row()]))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    publisher.stop()  # a drain: what is queued is flushed (or left to the relay), nobody waits
    await asyncio.wait_for(waiting, timeout=1)
    assert publisher.pending == 2


async def test_a_tenants_backlog_holds_back_only_that_tenant_and_bursts_take_tenants_in_turn():
    broker = SlowBroker()
    publisher = DirectPublisher(engine=None, broker=broker, producer="gate", max_pending=3, burst=2)
    await publisher.submit([row("flood"), row("flood"), row("flood")])
    flood_more = asyncio.create_task(publisher.submit([row("flood")]))
    await asyncio.sleep(0.01)
    assert not flood_more.done(), "the flooding tenant waits for room"
    victim = row("victim")
    await asyncio.wait_for(publisher.submit([victim]), timeout=1)  # nothing of its own waiting: goes on
    burst = asyncio.create_task(publisher.publish_queued())
    await asyncio.sleep(0.01)
    assert str(victim.message_id) in broker.published, "the victim's row is in the next burst"
    assert len(broker.published) == 2
    broker.confirm.set()
    assert await burst == 2
