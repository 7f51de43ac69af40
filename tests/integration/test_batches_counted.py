"""Batches counted, on the real broker and database: how many transactions a backlog takes, how many
statements a transaction sends, and what `appt_batch_size` / `appt_batch_fallbacks_total` say about it.

Counting, not timing: the figures these tests assert do not depend on how busy the machine is.
"""

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import Envelope
from contracts.portal_v1 import ModifyRequested
from contracts.reasons import DeadLetterReason
from tests.conftest import offline_consumer, unique_tenant
from tests.integration import test_runtime as runtime_tests
from tests.integration.test_batches import Gate, handled_by, in_one_batch
from tests.integration.test_runtime import modify_requested, ready_ids, rejection_of
from tests.waiting import eventually
from workers.runtime.database import UnitOfWork, create_engine, transactions_begun
from workers.runtime.outcomes import Handled

pytestmark = pytest.mark.integration

start_consumer = runtime_tests.start_consumer
effects = runtime_tests.effects
channel = runtime_tests.channel

# What the bench's RUNTIME stages see: consecutive requests from eight tenants in turn.
TENANTS = 8
BACKLOG = 128
BATCH_MAX = 32


def samples(consumer, name: str) -> dict[tuple, float]:
    """The consumer's metric `name` as scraped: {(sample name, labels...): value}."""
    found = {}
    for family in text_string_to_metric_families(consumer.metrics.render().decode()):
        if family.name == name:
            for s in family.samples:
                found[(s.name, *sorted(s.labels.items()))] = s.value
    return found


def batch_sizes(consumer) -> tuple[int, int]:
    """(transactions, deliveries) from `appt_batch_size`."""
    found = samples(consumer, "appt_batch_size")
    worker = ("worker", consumer.name)
    return int(found[("appt_batch_size_count", worker)]), int(found[("appt_batch_size_sum", worker)])


@pytest.mark.parametrize("tenants", [1, TENANTS])
async def test_a_backlog_is_handled_in_about_backlog_over_batch_max_transactions(
    tenants, broker, effects, start_consumer, engine
):
    """The backlog is on the queue before the consumer starts; every delivery is handled once, in a
    handful of transactions (each a batch of up to BATCH_MAX, whatever tenants it mixes), not one or two
    per delivery."""
    names = [unique_tenant() for _ in range(tenants)]
    messages = [modify_requested(names[i % tenants]) for i in range(BACKLOG)]
    for message in messages:
        await broker.publish_message(message)

    async def handle(message: Envelope, uow: UnitOfWork) -> None:
        await effects.write(uow, message)

    begun = transactions_begun(engine)
    consumer = await start_consumer({ModifyRequested: handle}, batch_max=BATCH_MAX)
    await eventually(lambda: consumer.counts.get("handled") == BACKLOG, "the backlog handled", timeout_s=60)

    transactions, deliveries = batch_sizes(consumer)
    assert deliveries == BACKLOG  # every delivery in exactly one transaction (none rolled back)
    assert transactions == transactions_begun(engine) - begun  # the metric counts what was begun
    assert samples(consumer, "appt_batch_fallbacks") == {}
    # ceil(BACKLOG / BATCH_MAX) = 4 at best; deliveries trickle in as acks free prefetch slots, and the
    # first ones start batches of one while the runners are idle: a mean of at least BATCH_MAX / 4.
    most = BACKLOG // (BATCH_MAX // 4)
    assert math.ceil(BACKLOG / BATCH_MAX) <= transactions <= most, consumer.batches.sizes
    assert await effects.count() == BACKLOG


# --- statements per transaction ------------------------------------------------------------------


def kind_of(statement: str) -> str:
    sql = " ".join(statement.split())
    if sql in ("BEGIN", "COMMIT", "ROLLBACK"):
        return sql
    if "_inbox" in sql or "messaging.inbox" in sql:
        return "claim"
    if "outbox" in sql:
        return "outbox"
    if sql.startswith("SELECT set_config"):
        return "tenant"
    if sql == "SELECT now()":
        return "now"
    if "effects_" in sql:
        return "effect"
    return sql


@pytest.fixture
async def counted(database_url: str) -> AsyncIterator[tuple[AsyncEngine, list[str]]]:
    """An engine of one connection whose every statement is recorded (asyncpg's query logger)."""
    engine = create_engine(database_url, pool_size=1)
    sent: list[str] = []

    @event.listens_for(engine.sync_engine, "connect")
    def _log(dbapi_connection, _record) -> None:
        dbapi_connection._connection.add_query_logger(lambda record: sent.append(record.query))

    yield engine, sent
    await engine.dispose()


async def statements_of(sent: list[str], action: Callable) -> tuple[object, list[str]]:
    await asyncio.sleep(0.05)  # the logger is called soon after each statement: let the earlier ones in
    sent.clear()
    result = await action()
    await asyncio.sleep(0.05)
    return result, [kind_of(s) for s in sent]


def emitting(effects, producer: str):
    async def handle(message: Envelope, uow: UnitOfWork) -> None:
        await uow.now()
        await effects.write(uow, message)
        await uow.emit(rejection_of(message, producer=producer, occurred_at=await uow.now()))

    return handle


async def test_the_single_path_sends_begin_claim_the_handlers_statements_outbox_and_commit(counted, effects):
    """BEGIN; the claim, which sets the tenant and returns the clock (the handler's `uow.now()` costs
    nothing); the handler's statement; the outbox rows (with the relay's wake-up); COMMIT."""
    engine, sent = counted
    name = f"rt_{uuid.uuid4().hex[:12]}"
    consumer = offline_consumer(name, {ModifyRequested: emitting(effects, name)}, engine)
    await consumer.handle(modify_requested())  # statements prepared once per connection
    outcome, kinds = await statements_of(sent, lambda: consumer.handle(modify_requested()))
    assert outcome == Handled()
    assert kinds == ["BEGIN", "claim", "effect", "outbox", "COMMIT"]
    transactions, deliveries = batch_sizes(consumer)
    assert (transactions, deliveries) == (2, 2)


async def test_a_batch_mixing_two_tenants_is_one_transaction_switching_tenant_once_each(counted, effects):
    engine, sent = counted
    name = f"rt_{uuid.uuid4().hex[:12]}"
    handle = emitting(effects, name)
    consumer = offline_consumer(name, {ModifyRequested: handle}, engine, batch_max=8, batch_runners=1)
    a, b = unique_tenant("a"), unique_tenant("b")
    await consumer.handle(modify_requested(a))  # statements prepared once per connection
    batch = [modify_requested(t) for t in (a, b, a, b)]

    async def submit_together():
        return await asyncio.gather(*(consumer.batches.submit(m, handle) for m in batch))

    answers, kinds = await statements_of(sent, submit_together)
    assert answers == [Handled()] * 4
    assert consumer.batches.sizes == {4: 1}
    # each tenant's handlers after one switch to it (the claim of two tenants leaves no setting assumed)
    assert kinds == [
        *("BEGIN", "claim"),
        *("tenant", "effect", "effect"),
        *("tenant", "effect", "effect"),
        *("outbox", "COMMIT"),
    ]
    assert batch_sizes(consumer) == (2, 5)  # the warm-up alone, then the batch


# --- a mixed batch's writes under row-level security ---------------------------------------------------


@pytest.fixture
async def walled_engine(engine: AsyncEngine, database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine logged in as a role that row-level security applies to (the test database's owner is a
    superuser, which bypasses it), allowed to claim in the inbox and write the outbox."""
    role = f"batch_{uuid.uuid4().hex[:10]}"
    async with engine.begin() as connection:
        for statement in (
            f"CREATE ROLE {role} LOGIN",
            f"GRANT USAGE ON SCHEMA messaging TO {role}",
            f"GRANT SELECT, INSERT ON messaging.inbox, messaging.outbox TO {role}",
            f"GRANT USAGE ON SEQUENCE messaging.outbox_id_seq TO {role}",
        ):
            await connection.execute(text(statement))
    url = make_url(database_url).set(username=role, password=None)
    walled = create_engine(url.render_as_string(hide_password=False), pool_size=1)
    try:
        yield walled
    finally:
        await walled.dispose()
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP OWNED BY {role}"))
            await connection.execute(text(f"DROP ROLE {role}"))


async def test_a_batch_mixing_tenants_writes_each_rows_inbox_and_outbox_under_its_own_tenant(
    walled_engine, engine
):
    name = f"rt_{uuid.uuid4().hex[:12]}"

    async def handle(message: Envelope, uow: UnitOfWork) -> None:
        await uow.emit(rejection_of(message, producer=name, occurred_at=await uow.now()))

    consumer = offline_consumer(name, {ModifyRequested: handle}, walled_engine, batch_max=8, batch_runners=1)
    tenants = [unique_tenant("a"), unique_tenant("b"), unique_tenant("c")]
    batch = [modify_requested(tenants[i % 3]) for i in range(6)]
    answers = await asyncio.gather(*(consumer.batches.submit(m, handle) for m in batch))

    assert answers == [Handled()] * 6  # not None: the batch committed, nothing went alone
    assert consumer.batches.sizes == {6: 1}
    async with engine.connect() as connection:
        inbox = dict(
            (
                await connection.execute(
                    text("SELECT message_id, tenant_id FROM messaging.inbox WHERE consumer = :c"), {"c": name}
                )
            ).all()
        )
        outbox = dict(
            (
                await connection.execute(
                    text("SELECT correlation_id, tenant_id FROM messaging.outbox WHERE producer = :p"),
                    {"p": name},
                )
            ).all()
        )
    assert inbox == {m.message_id: m.tenant_id for m in batch}
    assert outbox == {m.correlation_id: m.tenant_id for m in batch}  # each event follows its cause


# --- a failure in a batch mixing tenants ---------------------------------------------------------------


async def test_a_poison_message_of_one_tenant_sends_the_whole_mixed_batch_alone_and_counts_one_fallback(
    broker, effects, start_consumer, channel, topology
):
    """The batch is one transaction for every tenant in it: one tenant's poison message rolls back the
    others' work too; each then goes alone, the good ones are handled once, the bad one dead-lettered."""
    gate = Gate()
    tenants = [unique_tenant("a"), unique_tenant("b")]
    first, rest = modify_requested(tenants[0]), [modify_requested(tenants[i % 2]) for i in range(5)]
    bad = rest[3]  # tenant b's

    def fail(message: Envelope) -> None:
        if message.message_id == bad.message_id:
            raise RuntimeError("handler bug")

    consumer = await start_consumer(
        {ModifyRequested: handled_by(effects, gate, fail)}, batch_max=8, batch_runners=1
    )
    await in_one_batch(broker, consumer, gate, first, rest)

    await eventually(lambda: sum(consumer.counts.values()) == 6, "every delivery settled")
    assert consumer.counts == {"handled": 5, f"dead_lettered:{DeadLetterReason.HANDLER_ERROR}": 1}
    assert consumer.batches.sizes == {1: 1, 5: 1}
    assert samples(consumer, "appt_batch_fallbacks") == {
        ("appt_batch_fallbacks_total", ("kind", "handler_error"), ("worker", consumer.name)): 1.0
    }
    # the first alone, the batch of five, then each of the five alone (the bad one's retries included)
    transactions, deliveries = batch_sizes(consumer)
    assert deliveries == transactions + 4
    for message in [first, *rest]:
        assert await effects.count(message.message_id) == (0 if message is bad else 1)
    dead = await ready_ids(channel, topology.queue_of("policy_gate").dead_letter_queue or "")
    assert dead == [str(bad.message_id)]
