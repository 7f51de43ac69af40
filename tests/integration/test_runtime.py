"""The shared worker runtime on the real broker and database: dead letters, dedupe, rollback, retries,
the outbox relay and graceful drain.

Each test consumes the policy_gate queue of a fresh topology with a QueueConsumer built here around
small test handlers that write into a scratch table, so every effect is a row we can count.
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.common import ModifyAction
from contracts.decoding import CONTENT_TYPE, decode, encode
from contracts.envelope import Envelope
from contracts.events_v1 import ModifyRejected, ModifyRejectedPayload
from contracts.office_v1 import PortalSettingsPayload, PortalSettingsUpdated
from contracts.portal_v1 import Cancel, ModifyRequested, ModifyRequestedPayload
from contracts.reasons import DeadLetterReason
from infra.db.tables import inbox, outbox
from infra.topology import RETRY_ROLE, Topology
from tests.conftest import unique_tenant
from tests.tcp_proxy import TcpProxy
from tests.waiting import eventually
from workers.runtime import outbox as outbox_module
from workers.runtime.broker import Broker
from workers.runtime.consumer import MAX_CONFLICT_RETRIES, DelayedRetry, QueueConsumer
from workers.runtime.database import UnitOfWork, create_engine
from workers.runtime.outbox import DirectPublisher, OutboxRelay

pytestmark = pytest.mark.integration

WAIT_S = 10.0


# --- waiting on real signals --------------------------------------------------------------------


async def settle() -> None:
    """A short pause before a negative check (something did NOT happen); never used to wait for work."""
    await asyncio.sleep(0.3)


# --- messages ---------------------------------------------------------------------------------------


def modify_requested(tenant: str | None = None) -> ModifyRequested:
    return ModifyRequested(
        message_id=uuid.uuid4(),
        tenant_id=tenant or unique_tenant(),
        correlation_id=f"req-{uuid.uuid4().hex[:12]}",
        occurred_at=datetime.now(UTC),
        producer="portal-web",
        payload=ModifyRequestedPayload(
            appointment_id=f"appt-{uuid.uuid4().hex[:8]}",
            requester_id="cust-1",
            change=Cancel(reason="running late"),
        ),
    )


def portal_settings_updated() -> PortalSettingsUpdated:
    return PortalSettingsUpdated(
        message_id=uuid.uuid4(),
        tenant_id=unique_tenant(),
        correlation_id=f"chg-{uuid.uuid4().hex[:12]}",
        occurred_at=datetime.now(UTC),
        producer="office",
        payload=PortalSettingsPayload(feature_enabled=True, settings_version=1, changed_by="admin"),
    )


def rejection_of(message: ModifyRequested, *, producer: str, occurred_at: datetime) -> ModifyRejected:
    return ModifyRejected.follow(
        message,
        producer=producer,
        occurred_at=occurred_at,
        payload=ModifyRejectedPayload(
            request_id=message.correlation_id,
            appointment_id=message.payload.appointment_id,
            action=ModifyAction.CANCEL,
            reason_code="same_window",
            reason="Your appointment is already at that time.",
        ),
    )


def raw(body: bytes, *, content_type: str | None = CONTENT_TYPE) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        content_type=content_type,
        message_id=str(uuid.uuid4()),
        headers={"x-test": "kept"},
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def unique_name() -> str:
    return f"rt_{uuid.uuid4().hex[:12]}"


# --- scratch effects table ----------------------------------------------------------------------


@dataclass
class Effects:
    """A scratch table the test handlers write to, inside the consumer's transaction."""

    engine: AsyncEngine
    table: str

    async def write(self, uow: UnitOfWork, message: Envelope, note: str = "handled") -> None:
        await uow.driver.execute(
            f"INSERT INTO public.{self.table} (message_id, note) VALUES ($1, $2)", message.message_id, note
        )

    async def count(self, message_id: uuid.UUID | None = None) -> int:
        query = f"SELECT count(*) FROM public.{self.table}"
        params: dict[str, Any] = {}
        if message_id is not None:
            query += " WHERE message_id = :id"
            params["id"] = message_id
        async with self.engine.connect() as connection:
            return (await connection.execute(text(query), params)).scalar_one()


@pytest.fixture
async def effects(engine: AsyncEngine) -> AsyncIterator[Effects]:
    table = f"effects_{uuid.uuid4().hex[:12]}"
    async with engine.begin() as connection:
        await connection.execute(
            text(f"CREATE TABLE IF NOT EXISTS public.{table} (message_id uuid, note text)")
        )
    yield Effects(engine, table)
    async with engine.begin() as connection:
        await connection.execute(text(f"DROP TABLE IF EXISTS public.{table}"))


async def inbox_rows(engine: AsyncEngine, consumer: str, message_id: uuid.UUID) -> int:
    async with engine.connect() as connection:
        return (
            await connection.execute(
                select(func.count())
                .select_from(inbox)
                .where(inbox.c.consumer == consumer, inbox.c.message_id == message_id)
            )
        ).scalar_one()


async def outbox_rows(engine: AsyncEngine, producer: str) -> list:
    async with engine.connect() as connection:
        return (
            await connection.execute(
                select(outbox).where(outbox.c.producer == producer).order_by(outbox.c.id)
            )
        ).all()


# --- consumers on their own connection (closing it hands unacked messages back) ------------------


@dataclass
class Running:
    consumer: QueueConsumer
    broker: Broker
    stopped: bool = False

    async def stop(self, drain_timeout_s: float = 2.0) -> None:
        """Drain, then close the consumer's own connection (the broker requeues anything unacked)."""
        if self.stopped:
            return
        self.stopped = True
        await self.consumer.drain(drain_timeout_s)
        await self.broker.close()


@pytest.fixture
async def start_consumer(service_urls, topology: Topology, engine: AsyncEngine):
    started: list[Running] = []
    spec = topology.queue_of("policy_gate")

    async def start(
        handlers: dict,
        *,
        name: str | None = None,
        prefetch: int = 10,
        amqp_url: str | None = None,
        publisher: Callable[[Broker], DirectPublisher] | None = None,
        batch_max: int = 1,
        batch_runners: int | None = None,
    ) -> QueueConsumer:
        """`publisher`: builds the consumer's direct publisher on its broker (none: the relay's job)."""
        broker = Broker(amqp_url or service_urls.amqp, topology, name="runtime-test-consumer")
        await broker.connect()
        consumer = QueueConsumer(
            name=name or unique_name(),
            queue_name=spec.name,
            dead_letter_routing_key=spec.dead_letter_queue or "",
            handlers=handlers,
            engine=engine,
            broker=broker,
            prefetch=prefetch,
            transient_retry_delay_s=0.05,
            # The policy gate's delay tiers and return exchange, as a worker has them (one retry mode).
            delayed_retry=DelayedRetry(
                exchange=topology.own_exchange(RETRY_ROLE, "policy_gate"),
                queues=tuple(q.name for q in topology.delay_queues_of("policy_gate")),
                delays_s=tuple(q.delay_s or 0.0 for q in topology.delay_queues_of("policy_gate")),
                limit=8,
            ),
            return_exchange=topology.return_exchange,
            publisher=publisher(broker) if publisher is not None else None,
            batch_max=batch_max,
            batch_runners=batch_runners,
        )
        await consumer.start()
        started.append(Running(consumer, broker))
        return consumer

    start.running = started  # type: ignore[attr-defined]
    yield start
    for running in started:
        try:
            await asyncio.wait_for(running.stop(), 3)
        except TimeoutError:  # never leave a test's connection behind, even if a drain misbehaves
            await running.broker.close()


def running_of(start_consumer, consumer: QueueConsumer) -> Running:
    return next(r for r in start_consumer.running if r.consumer is consumer)


@pytest.fixture
async def channel(broker: Broker) -> AsyncIterator[AbstractChannel]:
    assert broker.connection is not None
    channel = await broker.connection.channel()
    yield channel
    if not channel.is_closed:
        await channel.close()


async def ready_ids(channel: AbstractChannel, queue_name: str) -> list[str]:
    """The message ids ready in a queue, left in place (taken with basic.get, then requeued).

    Not the declare-ok message_count: for quorum queues RabbitMQ 3.10 reports it from periodically
    refreshed metrics, so it can say 0 for seconds while messages are ready.
    """
    queue = await channel.declare_queue(queue_name, passive=True)
    taken: list[AbstractIncomingMessage] = []
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        taken.append(message)
    for message in taken:
        await message.nack(requeue=True)
    return [message.message_id or "" for message in taken]


async def _has(channel: AbstractChannel, queue_name: str, message_id: str) -> bool:
    return message_id in await ready_ids(channel, queue_name)


async def take(queue: AbstractQueue, n: int, what: str, timeout_s: float = WAIT_S) -> list:
    """Get (and ack) `n` messages from `queue`, waiting for them to arrive."""
    got: list[AbstractIncomingMessage] = []

    async def more() -> bool:
        while len(got) < n:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                return False
            got.append(message)
        return True

    await eventually(more, f"{n} message(s) in {what}", timeout_s)
    return got


@pytest.fixture
async def dead_letters(channel: AbstractChannel, topology: Topology) -> AbstractQueue:
    return await channel.declare_queue(topology.queue_of("policy_gate").dead_letter_queue, passive=True)


@pytest.fixture
async def events_queue(channel: AbstractChannel, topology: Topology) -> AbstractQueue:
    """A temporary queue that sees every event published on the namespace's events exchange."""
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(topology.exchange("events"), routing_key="#")
    return queue


@pytest.fixture
async def start_relay(engine: AsyncEngine, broker: Broker, database_url: str):
    running: list[tuple[OutboxRelay, asyncio.Task]] = []

    def start(producer: str, **kwargs) -> OutboxRelay:
        relay = OutboxRelay(engine, broker, producer=producer, database_url=database_url, **kwargs)
        running.append((relay, asyncio.create_task(relay.run())))
        return relay

    async def stop_all() -> None:
        for relay, _ in running:
            relay.stop()
        for _, task in running:
            await asyncio.wait_for(task, timeout=5)
        running.clear()

    start.stop_all = stop_all  # type: ignore[attr-defined]
    yield start
    await stop_all()


def recording_handler(effects: Effects, calls: list) -> Callable[[Envelope, UnitOfWork], Awaitable[None]]:
    async def handle(message: Envelope, uow: UnitOfWork) -> None:
        calls.append(message.message_id)
        await effects.write(uow, message)

    return handle


# --- 1, 2: refusals go to the dead-letter queue, and the consumer carries on ---------------------


async def test_undecodable_messages_are_dead_lettered_with_why_and_where_and_the_next_one_is_handled(
    topology, broker, channel, dead_letters, effects, start_consumer
):
    calls: list = []
    consumer = await start_consumer({ModifyRequested: recording_handler(effects, calls)})
    requests, key = topology.exchange("requests"), ModifyRequested.routing_key
    bad = {
        DeadLetterReason.MALFORMED_JSON: raw(b"{not json at all"),
        DeadLetterReason.WRONG_CONTENT_TYPE: raw(encode(modify_requested()), content_type="text/plain"),
        DeadLetterReason.UNKNOWN_MESSAGE_TYPE: raw(json.dumps({"type": "no.such.thing"}).encode()),
    }
    for message in bad.values():
        await broker.publish(requests, key, message)

    dead = await take(dead_letters, len(bad), "the dead-letter queue")
    by_id = {message.message_id: message for message in dead}
    queue_name = topology.queue_of("policy_gate").name
    for reason, original in bad.items():
        letter = by_id[original.message_id]
        headers = letter.headers
        assert headers["x-dead-letter-reason"] == reason.value
        assert headers["x-dead-letter-detail"]
        assert headers["x-original-exchange"] == requests
        assert headers["x-original-routing-key"] == key
        assert headers["x-original-queue"] == queue_name
        assert headers["x-dead-lettered-by"] == consumer.name
        assert headers["x-test"] == "kept"  # the publisher's own headers survive
        assert letter.body == original.body
        assert letter.content_type == original.content_type

    valid = modify_requested()
    await broker.publish_message(valid)
    await eventually(lambda: effects.count(valid.message_id), "the valid message's effect")
    assert calls == [valid.message_id]
    assert consumer.counts == {
        f"dead_lettered:{DeadLetterReason.MALFORMED_JSON}": 1,
        f"dead_lettered:{DeadLetterReason.WRONG_CONTENT_TYPE}": 1,
        f"dead_lettered:{DeadLetterReason.UNKNOWN_MESSAGE_TYPE}": 1,
        "handled": 1,
    }

    # Closing the consumer's connection would hand back anything unacked: nothing comes back.
    await running_of(start_consumer, consumer).stop()
    await settle()
    assert await ready_ids(channel, queue_name) == []
    assert await ready_ids(channel, topology.queue_of("policy_gate").dead_letter_queue) == []


async def test_a_decodable_message_without_a_handler_is_dead_lettered_as_unexpected(
    topology, broker, dead_letters, effects, start_consumer
):
    calls: list = []
    consumer = await start_consumer({ModifyRequested: recording_handler(effects, calls)})
    message = portal_settings_updated()  # routed to the policy_gate queue, but no handler here
    await broker.publish_message(message)

    [letter] = await take(dead_letters, 1, "the dead-letter queue")
    assert letter.headers["x-dead-letter-reason"] == DeadLetterReason.UNEXPECTED_MESSAGE_TYPE.value
    assert PortalSettingsUpdated.model_fields["type"].default in letter.headers["x-dead-letter-detail"]
    assert letter.headers["x-original-exchange"] == topology.exchange("office")
    assert letter.headers["x-original-routing-key"] == PortalSettingsUpdated.routing_key
    assert decode(letter.body, content_type=letter.content_type) == message
    assert calls == []
    assert await inbox_rows(effects.engine, consumer.name, message.message_id) == 0


# --- 3, 4: the inbox dedupes, a handler bug rolls everything back -------------------------------


@pytest.mark.parametrize("prefetch", [1, 10], ids=["one-after-the-other", "both-in-flight"])
async def test_the_same_message_twice_has_one_effect(
    topology, broker, channel, effects, start_consumer, prefetch
):
    calls: list = []
    consumer = await start_consumer({ModifyRequested: recording_handler(effects, calls)}, prefetch=prefetch)
    message = modify_requested()
    await broker.publish_message(message)
    await broker.publish_message(message)

    await eventually(lambda: sum(consumer.counts.values()) == 2, "both deliveries")
    assert consumer.counts == {"handled": 1, "duplicate": 1}
    assert calls == [message.message_id]
    assert await effects.count(message.message_id) == 1
    assert await inbox_rows(effects.engine, consumer.name, message.message_id) == 1

    # Both deliveries were acked, the duplicate too.
    await running_of(start_consumer, consumer).stop()
    await settle()
    assert await ready_ids(channel, topology.queue_of("policy_gate").name) == []


async def test_a_handler_error_is_dead_lettered_and_its_writes_are_rolled_back(
    topology, broker, channel, dead_letters, effects, start_consumer
):
    name = unique_name()

    async def buggy(message: Envelope, uow: UnitOfWork) -> None:
        assert isinstance(message, ModifyRequested)
        await effects.write(uow, message, note="written before the bug")
        await uow.emit(rejection_of(message, producer=name, occurred_at=await uow.now()))
        raise ValueError("boom: the handler has a bug")

    consumer = await start_consumer({ModifyRequested: buggy}, name=name)
    message = modify_requested()
    await broker.publish_message(message)

    [letter] = await take(dead_letters, 1, "the dead-letter queue")
    assert letter.headers["x-dead-letter-reason"] == DeadLetterReason.HANDLER_ERROR.value
    assert "ValueError" in letter.headers["x-dead-letter-detail"]
    assert "boom" in letter.headers["x-dead-letter-detail"]
    assert letter.message_id == str(message.message_id)
    assert decode(letter.body, content_type=letter.content_type) == message
    assert consumer.counts == {f"dead_lettered:{DeadLetterReason.HANDLER_ERROR}": 1}
    assert await effects.count() == 0
    assert await outbox_rows(effects.engine, name) == []  # the event emitted before the bug went too
    assert await inbox_rows(effects.engine, consumer.name, message.message_id) == 0

    await running_of(start_consumer, consumer).stop()
    await settle()
    assert await ready_ids(channel, topology.queue_of("policy_gate").name) == []


# --- 5, 6: transient errors and lock conflicts are retried --------------------------------------


async def test_a_transient_error_is_retried_in_place_until_it_succeeds(
    topology, broker, channel, effects, start_consumer
):
    attempts: list = []

    async def flaky(message: Envelope, uow: UnitOfWork) -> None:
        attempts.append(message.message_id)
        await effects.write(uow, message, note=f"attempt {len(attempts)}")
        if len(attempts) <= 2:
            raise OSError("connection reset by peer")

    consumer = await start_consumer({ModifyRequested: flaky})
    message = modify_requested()
    await broker.publish_message(message)

    await eventually(lambda: consumer.counts.get("handled"), "the message handled")
    assert len(attempts) == 3
    assert consumer.counts == {"handled": 1}
    assert await effects.count(message.message_id) == 1  # the two failed attempts left nothing
    assert await inbox_rows(effects.engine, consumer.name, message.message_id) == 1
    assert await ready_ids(channel, topology.queue_of("policy_gate").dead_letter_queue) == []


class SerializationFailure(Exception):
    sqlstate = "40001"


async def test_a_lock_conflict_retries_the_whole_transaction(broker, effects, start_consumer):
    attempts: list = []

    async def conflicting_once(message: Envelope, uow: UnitOfWork) -> None:
        attempts.append(message.message_id)
        await effects.write(uow, message, note=f"attempt {len(attempts)}")
        if len(attempts) == 1:
            raise SerializationFailure("could not serialize access due to concurrent update")

    consumer = await start_consumer({ModifyRequested: conflicting_once})
    message = modify_requested()
    await broker.publish_message(message)

    await eventually(lambda: consumer.counts.get("handled"), "the message handled")
    assert len(attempts) == 2
    assert consumer.counts == {"handled": 1}
    assert await effects.count(message.message_id) == 1


async def test_a_conflict_that_never_clears_is_dead_lettered_after_bounded_retries(
    broker, dead_letters, effects, start_consumer
):
    attempts: list = []

    async def always_conflicting(message: Envelope, uow: UnitOfWork) -> None:
        attempts.append(message.message_id)
        await effects.write(uow, message)
        raise SerializationFailure("could not serialize access")

    consumer = await start_consumer({ModifyRequested: always_conflicting})
    message = modify_requested()
    await broker.publish_message(message)

    [letter] = await take(dead_letters, 1, "the dead-letter queue")
    assert letter.headers["x-dead-letter-reason"] == DeadLetterReason.HANDLER_ERROR.value
    assert "SerializationFailure" in letter.headers["x-dead-letter-detail"]
    assert len(attempts) == MAX_CONFLICT_RETRIES + 1
    assert await effects.count() == 0
    assert await inbox_rows(effects.engine, consumer.name, message.message_id) == 0


# --- 7: the outbox --------------------------------------------------------------------------------


def rejecting_handler(effects: Effects, producer: str):
    async def handle(message: Envelope, uow: UnitOfWork) -> None:
        assert isinstance(message, ModifyRequested)
        await effects.write(uow, message)
        await uow.emit(rejection_of(message, producer=producer, occurred_at=await uow.now()))

    return handle


async def listening_relays(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return (
            await connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    # each relay listens on its producer's channel, "outbox.<producer>"
                    "WHERE datname = current_database() AND query LIKE 'LISTEN \"outbox.%'"
                )
            )
        ).scalar_one()


async def test_an_emitted_event_is_published_by_the_relay_promptly_and_marked(
    engine, broker, events_queue, effects, start_consumer, start_relay
):
    name = unique_name()
    consumer = await start_consumer({ModifyRequested: rejecting_handler(effects, name)}, name=name)
    listening_before = await listening_relays(engine)
    # A long poll interval: only the commit's NOTIFY can wake the relay in time.
    start_relay(consumer.name, poll_interval_s=60)
    await eventually(lambda: _more_listening(engine, listening_before), "the relay listening")

    message = modify_requested()
    await broker.publish_message(message)
    [delivered] = await take(events_queue, 1, "the events queue")

    event = decode(delivered.body, content_type=delivered.content_type, property_type=delivered.type)
    assert isinstance(event, ModifyRejected)
    assert event.causation_id == message.message_id
    assert event.correlation_id == message.correlation_id
    assert event.tenant_id == message.tenant_id
    assert delivered.message_id == str(event.message_id)
    assert delivered.routing_key == ModifyRejected.routing_key
    assert delivered.headers["x-causation-id"] == str(message.message_id)
    assert delivered.headers["x-message-type"] == event.type

    async def marked() -> bool:
        rows = await outbox_rows(engine, consumer.name)
        return len(rows) == 1 and rows[0].published_at is not None

    await eventually(marked, "the outbox row marked published")
    [row] = await outbox_rows(engine, consumer.name)
    assert row.message_id == event.message_id


async def _more_listening(engine: AsyncEngine, before: int) -> bool:
    return await listening_relays(engine) > before


async def test_events_committed_while_no_relay_runs_are_published_when_one_starts(
    engine, broker, channel, events_queue, effects, start_consumer, start_relay
):
    name = unique_name()
    consumer = await start_consumer({ModifyRequested: rejecting_handler(effects, name)}, name=name)
    messages = [modify_requested() for _ in range(3)]
    for message in messages:
        await broker.publish_message(message)
    await eventually(lambda: consumer.counts.get("handled") == 3, "three messages handled")

    rows = await outbox_rows(engine, name)
    assert len(rows) == 3
    assert all(row.published_at is None for row in rows)
    await settle()
    assert await ready_ids(channel, events_queue.name) == []  # committed, not yet published

    start_relay(name, poll_interval_s=0.5)
    delivered = await take(events_queue, 3, "the events queue")
    events = [decode(d.body, content_type=d.content_type) for d in delivered]
    assert {event.causation_id for event in events} == {message.message_id for message in messages}

    async def all_marked() -> bool:
        return all(row.published_at is not None for row in await outbox_rows(engine, name))

    await eventually(all_marked, "every outbox row marked published")
    await settle()
    assert await ready_ids(channel, events_queue.name) == []  # each event published once


async def test_two_relays_on_the_same_rows_publish_each_and_mark_each_once(
    engine, channel, events_queue, start_relay
):
    producer = unique_name()
    cause = modify_requested()
    events = [rejection_of(cause, producer=producer, occurred_at=datetime.now(UTC)) for _ in range(40)]
    async with UnitOfWork(engine, producer, notify=False) as uow:
        for event in events:
            await uow.emit(event)
        await uow.commit()

    first = start_relay(producer, batch_size=5, poll_interval_s=0.2)
    second = start_relay(producer, batch_size=5, poll_interval_s=0.2)

    delivered = await take(events_queue, len(events), "the events queue")

    async def none_unpublished() -> bool:
        return all(row.published_at is not None for row in await outbox_rows(engine, producer))

    await eventually(none_unpublished, "every outbox row marked published")
    await start_relay.stop_all()

    assert {d.message_id for d in delivered} == {str(event.message_id) for event in events}
    # At least once on the wire, but each row claimed and marked by exactly one relay.
    assert first.published_total + second.published_total == len(events)
    rows = await outbox_rows(engine, producer)
    assert len(rows) == len(events)
    await settle()
    assert await ready_ids(channel, events_queue.name) == []  # no second copy followed


async def test_a_committed_event_is_published_directly_and_marked_with_no_relay_and_no_wake_up(
    engine, broker, events_queue, effects, start_consumer
):
    name = unique_name()
    publishers: list[DirectPublisher] = []
    tasks: list[asyncio.Task] = []

    def direct(consumer_broker: Broker) -> DirectPublisher:
        publisher = DirectPublisher(engine, consumer_broker, producer=name, mark_interval_s=0.01)
        publishers.append(publisher)
        tasks.append(asyncio.create_task(publisher.run()))
        return publisher

    await start_consumer({ModifyRequested: rejecting_handler(effects, name)}, name=name, publisher=direct)
    async with engine.connect() as connection:  # a relay would be woken through this channel
        raw = await connection.get_raw_connection()
        notified: list[str] = []
        await raw.driver_connection.add_listener(
            outbox_module.channel_of(name), lambda *args: notified.append(args[2])
        )
        messages = [modify_requested() for _ in range(5)]
        for message in messages:
            await broker.publish_message(message)
        delivered = await take(events_queue, 5, "the events queue")

        async def all_marked() -> bool:
            rows = await outbox_rows(engine, name)
            return len(rows) == 5 and all(row.published_at is not None for row in rows)

        await eventually(all_marked, "every outbox row marked published")
        assert notified == []  # nobody's relay was woken: the consumer published them itself
    events = [decode(d.body, content_type=d.content_type) for d in delivered]
    assert {event.causation_id for event in events} == {message.message_id for message in messages}
    assert {row.message_id for row in await outbox_rows(engine, name)} == {e.message_id for e in events}
    assert publishers[0].published_total == 5 and publishers[0].unmarked == 0
    for publisher in publishers:
        publisher.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)


async def test_events_a_direct_publish_could_not_send_are_left_to_the_relay_for_its_grace_period(
    engine, broker, channel, events_queue, effects, start_consumer, start_relay, service_urls, topology
):
    name = unique_name()
    # A direct publisher whose broker connection is gone: every publish fails (as in an outage).
    gone = Broker(service_urls.amqp, topology, name="runtime-test-gone", publish_timeout_s=0.5)
    await gone.connect()
    await gone.close()
    publisher = DirectPublisher(engine, gone, producer=name)
    task = asyncio.create_task(publisher.run())
    consumer = await start_consumer(
        {ModifyRequested: rejecting_handler(effects, name)}, name=name, publisher=lambda _: publisher
    )
    relay = start_relay(name, poll_interval_s=0.2, grace_s=2.0)
    message = modify_requested()
    await broker.publish_message(message)
    await eventually(lambda: consumer.counts.get("handled") == 1, "the message handled and acked")
    await eventually(
        lambda: publisher.pending == 0 and publisher.published_total == 0, "the direct publish failed"
    )
    committed = time.monotonic()
    [row] = await outbox_rows(engine, name)
    assert row.published_at is None
    await settle()
    assert await ready_ids(channel, events_queue.name) == []  # the relay leaves it alone for now

    [delivered] = await take(events_queue, 1, "the events queue", timeout_s=WAIT_S)
    assert time.monotonic() - committed > 1.0  # after the grace period (2 s from the commit)
    assert delivered.message_id == str(row.message_id)
    await eventually(lambda: _published(engine, name), "the relay marked the row published", timeout_s=WAIT_S)
    assert relay.published_total == 1 and publisher.published_total == 0
    publisher.stop()
    await asyncio.wait_for(task, timeout=5)


async def test_events_a_dead_process_committed_go_out_at_once_not_after_the_grace_period(
    engine, broker, channel, events_queue, start_relay, database_url
):
    """A worker process's rows carry its writer id; while its relay holds the writer lock, another
    process's relay leaves them to it (grace period); once it is gone, that relay takes them at once."""
    name = unique_name()
    writer, survivor_writer = outbox_module.new_writer(), outbox_module.new_writer()
    dying = start_relay(name, poll_interval_s=0.2, grace_s=60.0, writer=writer)
    survivor = start_relay(name, poll_interval_s=0.2, grace_s=60.0, writer=survivor_writer)
    await asyncio.wait_for(dying.writer_held.wait(), timeout=WAIT_S)
    await asyncio.wait_for(survivor.writer_held.wait(), timeout=WAIT_S)
    writers_engine = create_engine(database_url, 1, server_settings=outbox_module.writer_settings(writer))
    try:
        message = modify_requested()
        event = rejection_of(message, producer=name, occurred_at=datetime.now(UTC))
        async with UnitOfWork(writers_engine, name, notify=False) as uow:  # the dying process's transaction
            await uow.emit(event)
            await uow.commit()
    finally:
        await writers_engine.dispose()
    [row] = await outbox_rows(engine, name)
    assert row.writer == writer and row.published_at is None
    await settle()
    await settle()
    assert await ready_ids(channel, events_queue.name) == []  # its writer lives: left to its publisher

    dying.stop()  # its LISTEN connection closes, and the server releases the writer lock with it
    gone = time.monotonic()
    # seconds (0.2 s polls), not the 60 s grace period; generous bounds for a loaded machine
    [delivered] = await take(events_queue, 1, "the events queue", timeout_s=30.0)
    assert time.monotonic() - gone < 30.0
    assert delivered.message_id == str(event.message_id)
    await eventually(
        lambda: _published(engine, name), "the survivor marked the row published", timeout_s=30.0
    )
    assert survivor.published_total == 1 and dying.published_total == 0


async def _published(engine: AsyncEngine, producer: str) -> bool:
    return all(row.published_at is not None for row in await outbox_rows(engine, producer))


# --- 8: graceful drain ------------------------------------------------------------------------------


async def test_drain_lets_the_message_in_hand_finish_and_takes_no_new_ones(
    topology, broker, channel, effects, start_consumer
):
    started, release = asyncio.Event(), asyncio.Event()
    calls: list = []

    async def slow(message: Envelope, uow: UnitOfWork) -> None:
        calls.append(message.message_id)
        await effects.write(uow, message)
        started.set()
        await release.wait()

    consumer = await start_consumer({ModifyRequested: slow})
    queue_name = topology.queue_of("policy_gate").name
    first = modify_requested()
    await broker.publish_message(first)
    await asyncio.wait_for(started.wait(), WAIT_S)

    drain = asyncio.create_task(consumer.drain(WAIT_S))
    await settle()
    assert not drain.done()  # it waits for the message in hand

    # Draining: a message published now is not taken, it stays in the queue.
    second = modify_requested()
    await broker.publish_message(second)
    second_id = str(second.message_id)
    await eventually(lambda: _has(channel, queue_name, second_id), "the second message ready in the queue")
    assert calls == [first.message_id]

    release.set()
    began = time.monotonic()
    await asyncio.wait_for(drain, WAIT_S)
    assert time.monotonic() - began < WAIT_S / 2  # returned when the handler finished, not at the timeout
    assert consumer.counts == {"handled": 1}
    assert await effects.count(first.message_id) == 1
    assert await inbox_rows(effects.engine, consumer.name, first.message_id) == 1

    # The first was acked: closing the consumer's connection hands back nothing but the second.
    await running_of(start_consumer, consumer).stop()
    await settle()
    assert await ready_ids(channel, queue_name) == [second_id]
    assert calls == [first.message_id]


async def test_a_message_still_in_hand_when_drain_times_out_is_not_lost(
    topology, engine, broker, channel, effects, start_consumer
):
    started = asyncio.Event()

    async def stuck(message: Envelope, uow: UnitOfWork) -> None:
        await effects.write(uow, message, note="never committed")
        started.set()
        await asyncio.Event().wait()

    name = unique_name()
    consumer = await start_consumer({ModifyRequested: stuck}, name=name)
    queue_name = topology.queue_of("policy_gate").name
    message = modify_requested()
    await broker.publish_message(message)
    await asyncio.wait_for(started.wait(), WAIT_S)

    began = time.monotonic()
    await consumer.drain(0.5)
    assert time.monotonic() - began < 3
    assert "handled" not in consumer.counts
    assert await effects.count() == 0  # the abandoned transaction was rolled back
    assert await inbox_rows(engine, name, message.message_id) == 0  # so a redelivery is not a "duplicate"

    await running_of(start_consumer, consumer).stop()
    message_id = str(message.message_id)
    await eventually(lambda: _has(channel, queue_name, message_id), "the message back in the queue")
    assert "handled" not in consumer.counts

    # A replica (same consumer name, so the same inbox) takes it over and applies it once.
    calls: list = []
    replica = await start_consumer({ModifyRequested: recording_handler(effects, calls)}, name=name)
    await eventually(lambda: replica.counts.get("handled"), "the replica handling it")
    assert calls == [message.message_id]
    assert await effects.count(message.message_id) == 1
    assert await inbox_rows(engine, name, message.message_id) == 1


async def test_drain_is_bounded_by_its_timeout_even_when_the_broker_is_unreachable(
    service_urls, effects, start_consumer
):
    url = make_url(service_urls.amqp.replace("amqp://", "postgresql://", 1))
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5672)
    await proxy.start()
    proxied = service_urls.amqp.replace(f"{url.host}:{url.port or 5672}", f"127.0.0.1:{proxy.port}", 1)
    assert str(proxy.port) in proxied
    try:
        consumer = await start_consumer({ModifyRequested: recording_handler(effects, [])}, amqp_url=proxied)
    finally:
        await proxy.close()
    connection = running_of(start_consumer, consumer).broker.connection
    assert connection is not None
    await eventually(lambda: not connection.connected.is_set(), "the consumer's connection to notice")

    # SIGTERM during a broker outage: the worker must still stop within its drain timeout.
    running = running_of(start_consumer, consumer)
    running.stopped = True
    try:
        await asyncio.wait_for(consumer.drain(0.5), 3)
    finally:
        await running.broker.close()
