"""Adaptive batches on the real broker and database: what waits is handled in one transaction per tenant,
and any failure inside a batch keeps the outcome it has one delivery at a time.

A batch is made deterministic by holding the first delivery's handler until the others wait behind it
(the runner takes everything waiting once the first one's transaction ends).
"""

import asyncio
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import Envelope
from contracts.portal_v1 import ModifyRequested
from contracts.reasons import DeadLetterReason
from tests.conftest import offline_consumer, unique_tenant
from tests.integration import test_runtime as runtime_tests
from tests.integration.test_runtime import (
    SerializationFailure,
    inbox_rows,
    modify_requested,
    ready_ids,
    running_of,
)
from tests.waiting import eventually
from workers.runtime import faults
from workers.runtime.database import UnitOfWork
from workers.runtime.errors import DeadLetter
from workers.runtime.faults import FaultPoint, SimulatedCrash
from workers.runtime.outcomes import Duplicate, Handled

pytestmark = pytest.mark.integration

# The runtime tests' fixtures: a consumer on its own connection, a scratch effects table, a channel.
start_consumer = runtime_tests.start_consumer
effects = runtime_tests.effects
channel = runtime_tests.channel

BATCH = 8


class Gate:
    """Holds the first delivery's handler until the test opens it."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.open = asyncio.Event()
        self.message_id: uuid.UUID | None = None

    async def hold(self, message: Envelope) -> None:
        if message.message_id == self.message_id:
            self.entered.set()
            await self.open.wait()


async def in_one_batch(broker, consumer, gate: Gate, first: Envelope, rest: list[Envelope]) -> None:
    """Publish `first` (held in its handler), then `rest`; open the gate once they all wait."""
    gate.message_id = first.message_id
    await broker.publish_message(first)
    await asyncio.wait_for(gate.entered.wait(), 15)
    for message in rest:
        await broker.publish_message(message)
    await eventually(lambda: consumer.batches.waiting == len(rest), "the rest waiting for the next batch")
    gate.open.set()


def handled_by(effects, gate: Gate, fail: Callable[[Envelope], None] = lambda m: None):
    async def handle(message: Envelope, uow: UnitOfWork) -> None:
        await gate.hold(message)
        await effects.write(uow, message)
        fail(message)

    return handle


async def test_what_waits_is_one_batch_acked_after_its_commit(
    broker, effects, start_consumer, channel, topology
):
    gate = Gate()
    consumer = await start_consumer(
        {ModifyRequested: handled_by(effects, gate)}, batch_max=BATCH, batch_runners=1
    )
    tenant = unique_tenant()
    first, rest = modify_requested(tenant), [modify_requested(tenant) for _ in range(BATCH)]
    await in_one_batch(broker, consumer, gate, first, rest)

    await eventually(lambda: consumer.counts.get("handled") == BATCH + 1, "all handled")
    assert consumer.batches.sizes == {1: 1, BATCH: 1}  # the quiet queue's batch of one, then the rest
    for message in [first, *rest]:
        assert await effects.count(message.message_id) == 1
        assert await inbox_rows(effects.engine, consumer.name, message.message_id) == 1
    assert await ready_ids(channel, topology.queue_of("policy_gate").name) == []  # all acked


async def test_batch_max_one_is_one_delivery_per_transaction(effects, start_consumer):
    consumer = await start_consumer({ModifyRequested: handled_by(effects, Gate())}, batch_max=1)
    assert consumer.batches is None


@pytest.mark.parametrize("poison", ["bug", "refused"])
async def test_a_poison_message_in_a_batch_is_dead_lettered_and_the_good_ones_handled_once(
    poison, broker, effects, start_consumer, channel, topology
):
    gate = Gate()
    tenant = unique_tenant()
    first, rest = modify_requested(tenant), [modify_requested(tenant) for _ in range(5)]
    bad = rest[2]

    def fail(message: Envelope) -> None:
        if message.message_id == bad.message_id:
            if poison == "bug":
                raise RuntimeError("handler bug")
            raise DeadLetter(DeadLetterReason.HANDLER_ERROR, "refused by the handler")

    consumer = await start_consumer(
        {ModifyRequested: handled_by(effects, gate, fail)}, batch_max=BATCH, batch_runners=1
    )
    await in_one_batch(broker, consumer, gate, first, rest)

    reason = f"dead_lettered:{DeadLetterReason.HANDLER_ERROR}"
    await eventually(lambda: sum(consumer.counts.values()) == 6, "every delivery settled")
    assert consumer.counts == {"handled": 5, reason: 1}
    assert consumer.batches.sizes[5] == 1  # it was a batch; it rolled back; each went alone
    assert await effects.count(bad.message_id) == 0
    for message in [first, *rest]:
        if message is not bad:
            assert await effects.count(message.message_id) == 1
    dead = await ready_ids(channel, topology.queue_of("policy_gate").dead_letter_queue or "")
    assert dead == [str(bad.message_id)]


async def test_a_conflict_in_the_middle_of_a_batch_rolls_it_back_and_each_commits_once(
    broker, effects, start_consumer
):
    gate = Gate()
    tenant = unique_tenant()
    first, rest = modify_requested(tenant), [modify_requested(tenant) for _ in range(5)]
    conflicts: list[uuid.UUID] = []

    def fail(message: Envelope) -> None:
        if message.message_id == rest[2].message_id and not conflicts:
            conflicts.append(message.message_id)
            raise SerializationFailure("could not serialize access")

    consumer = await start_consumer(
        {ModifyRequested: handled_by(effects, gate, fail)}, batch_max=BATCH, batch_runners=1
    )
    await in_one_batch(broker, consumer, gate, first, rest)

    await eventually(lambda: consumer.counts.get("handled") == 6, "all handled")
    assert consumer.counts == {"handled": 6}
    assert conflicts == [rest[2].message_id]
    for message in [first, *rest]:
        assert await effects.count(message.message_id) == 1


async def test_a_duplicate_inside_a_batch_is_acked_with_no_effect(broker, effects, start_consumer):
    gate = Gate()
    tenant = unique_tenant()
    first, fresh = modify_requested(tenant), [modify_requested(tenant) for _ in range(3)]
    # the same message twice in one batch, and one the first transaction already committed
    rest = [fresh[0], fresh[1], fresh[0], first, fresh[2]]
    consumer = await start_consumer(
        {ModifyRequested: handled_by(effects, gate)}, batch_max=BATCH, batch_runners=1
    )
    await in_one_batch(broker, consumer, gate, first, rest)

    await eventually(lambda: sum(consumer.counts.values()) == 6, "every delivery settled")
    assert consumer.counts == {"handled": 4, "duplicate": 2}
    assert consumer.batches.sizes[5] == 1
    for message in [first, *fresh]:
        assert await effects.count(message.message_id) == 1


@pytest.fixture
async def walled(engine: AsyncEngine):
    """A table under row-level security (the workers' policy: the transaction's appt.tenant_id) and a
    role that is subject to it (the test database's owner is a superuser, which bypasses it)."""
    suffix = uuid.uuid4().hex[:10]
    table, role = f"public.walled_{suffix}", f"walled_{suffix}"
    async with engine.begin() as connection:
        for statement in (
            f"CREATE TABLE {table} (tenant_id text, note text)",
            f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
            f"CREATE POLICY tenant ON {table} USING (tenant_id = current_setting('appt.tenant_id', true))",
            f"CREATE ROLE {role} NOLOGIN",
            f"GRANT SELECT ON {table} TO {role}",
        ):
            await connection.execute(text(statement))
    yield table, role
    async with engine.begin() as connection:
        await connection.execute(text(f"DROP TABLE {table}"))
        await connection.execute(text(f"DROP ROLE {role}"))


async def test_a_batch_mixing_tenants_cannot_read_across_them(
    broker, effects, start_consumer, walled, engine
):
    table, role = walled
    tenants = [unique_tenant("a"), unique_tenant("b"), unique_tenant("c")]
    async with engine.begin() as connection:
        for tenant in tenants:
            await connection.execute(
                text(f"INSERT INTO {table} VALUES (:t, 'theirs'), (:t, 'theirs too')"), {"t": tenant}
            )
    gate = Gate()
    seen: dict[uuid.UUID, tuple[str, list[str]]] = {}

    async def handle(message: Envelope, uow: UnitOfWork) -> None:
        await gate.hold(message)
        setting = await uow.driver.fetchval("SELECT current_setting('appt.tenant_id', true)")
        await uow.driver.execute(f"SET LOCAL ROLE {role}")
        rows = await uow.driver.fetch(f"SELECT tenant_id FROM {table}")
        await uow.driver.execute("RESET ROLE")
        seen[message.message_id] = (setting, sorted({r["tenant_id"] for r in rows}))
        await effects.write(uow, message)

    consumer = await start_consumer({ModifyRequested: handle}, batch_max=BATCH, batch_runners=1)
    first = modify_requested(tenants[0])
    rest = [modify_requested(tenants[i % 3]) for i in range(6)]  # a, b, c, a, b, c
    await in_one_batch(broker, consumer, gate, first, rest)

    await eventually(lambda: consumer.counts.get("handled") == 7, "all handled")
    assert consumer.batches.sizes[6] == 1
    for message in [first, *rest]:
        assert seen[message.message_id] == (message.tenant_id, [message.tenant_id])
        assert await effects.count(message.message_id) == 1


@pytest.mark.parametrize("point", [FaultPoint.BEFORE_COMMIT, FaultPoint.AFTER_COMMIT])
async def test_a_worker_killed_mid_batch_loses_and_repeats_nothing(point, broker, effects, start_consumer):
    gate = Gate()
    tenant = unique_tenant()
    first, rest = modify_requested(tenant), [modify_requested(tenant) for _ in range(4)]
    name = f"rt_{uuid.uuid4().hex[:12]}"
    consumer = await start_consumer(
        {ModifyRequested: handled_by(effects, gate)}, name=name, batch_max=BATCH, batch_runners=1
    )

    def crash() -> None:
        raise SimulatedCrash(point)

    faults.arm(point, crash, after=2)  # the first passage is the batch of one's commit
    try:
        await in_one_batch(broker, consumer, gate, first, rest)
        await eventually(
            lambda: consumer.batches.sizes.get(4) == 1 and consumer.batches.waiting == 0, "crashed"
        )
        await asyncio.sleep(0.3)  # a negative check: nothing of the batch is acked
        assert consumer.counts == {"handled": 1}
    finally:
        faults.disarm()
    await running_of(start_consumer, consumer).stop(drain_timeout_s=0.5)  # the process is gone

    again = await start_consumer(
        {ModifyRequested: handled_by(effects, Gate())}, name=name, batch_max=BATCH, batch_runners=1
    )
    await eventually(lambda: sum(again.counts.values()) == 4, "the batch redelivered and settled")
    expected = "handled" if point == FaultPoint.BEFORE_COMMIT else "duplicate"
    assert again.counts == {expected: 4}
    for message in [first, *rest]:
        assert await effects.count(message.message_id) == 1
        assert await inbox_rows(effects.engine, name, message.message_id) == 1


async def test_two_replicas_batches_deadlocking_end_with_every_message_applied_once(engine: AsyncEngine):
    """Replica A's batch locks x then y, replica B's y then x: PostgreSQL aborts one (deadlock), which
    rolls back and answers 'alone'; its messages then commit one at a time."""
    table = f"public.locks_{uuid.uuid4().hex[:10]}"
    async with engine.begin() as connection:
        await connection.execute(text(f"CREATE TABLE {table} (key text PRIMARY KEY, n int)"))
        await connection.execute(text(f"INSERT INTO {table} VALUES ('x', 0), ('y', 0)"))
    tenant = unique_tenant()
    keys: dict[uuid.UUID, str] = {}
    first_of: dict[uuid.UUID, asyncio.Event] = {}
    locked = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def bump(message: Envelope, uow: UnitOfWork) -> None:
        await uow.driver.execute(f"UPDATE {table} SET n = n + 1 WHERE key = $1", keys[message.message_id])
        mine = first_of.get(message.message_id)
        if mine is not None:  # the first of a batch: hold its lock until the other batch holds one too
            mine.set()
            other = locked["b"] if mine is locked["a"] else locked["a"]
            await asyncio.wait_for(other.wait(), 10)

    try:
        replicas = [
            offline_consumer("rt_deadlock", {ModifyRequested: bump}, engine, batch_max=4) for _ in "ab"
        ]
        a1, a2, b1, b2 = (modify_requested(tenant) for _ in range(4))
        keys.update({a1.message_id: "x", a2.message_id: "y", b1.message_id: "y", b2.message_id: "x"})
        first_of.update({a1.message_id: locked["a"], b1.message_id: locked["b"]})
        pairs = [(replicas[0], a1), (replicas[0], a2), (replicas[1], b1), (replicas[1], b2)]
        answers = await asyncio.wait_for(asyncio.gather(*(r.batches.submit(m, bump) for r, m in pairs)), 60)
        assert [r.batches.sizes for r in replicas] == [{2: 1}, {2: 1}]
        outcomes = [a if a is None else type(a) for a in answers]
        assert outcomes in ([Handled, Handled, None, None], [None, None, Handled, Handled])
        for (replica, message), answer in zip(pairs, answers, strict=True):
            if answer is None:  # the rolled-back batch: each alone, through the single path
                assert await replica.handle(message) == Handled()
                assert await replica.handle(message) == Duplicate()
        async with engine.connect() as connection:
            counts = dict((await connection.execute(text(f"SELECT key, n FROM {table}"))).all())
        assert counts == {"x": 2, "y": 2}
    finally:
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP TABLE {table}"))
