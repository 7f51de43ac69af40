"""A stateful model of batches (hypothesis), against the real runtime and PostgreSQL.

Hypothesis hands a consumer's batch runner any sequence of batches: messages of three tenants, new ones
and ones delivered before (duplicates, within a batch and across batches), poison messages (a handler
bug), messages that meet a lock conflict once, and crashes of the whole process before or after a
batch's commit (the runtime's fault hook raises `SimulatedCrash`; the restart gets a fresh engine, and
whatever the crash left unanswered may be delivered again). A delivery its batch sends on alone goes
through the single path, as the consumer does. After every step:

- the inbox, the handlers' effects and the outbox hold the same messages, each at most once;
- every handler ran scoped to its own message's tenant: the effect row records the transaction's tenant
  setting as the handler saw it, and each outbox row carries its message's tenant;
- every delivery answered `Handled` or `Duplicate` is in the inbox; no poison message ever is.
"""

import asyncio
import os
import uuid
from uuid import UUID

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import text

from contracts.envelope import Envelope
from contracts.portal_v1 import ModifyRequested
from tests.conftest import offline_consumer, unique_tenant
from tests.integration.test_runtime import SerializationFailure, modify_requested, rejection_of
from workers.runtime import faults
from workers.runtime.database import UnitOfWork, create_engine
from workers.runtime.faults import FaultPoint, SimulatedCrash
from workers.runtime.outcomes import Duplicate, Handled

EXAMPLES = int(os.environ.get("APPT_MODEL_EXAMPLES", "15"))
STEPS = int(os.environ.get("APPT_MODEL_STEPS", "12"))
TENANTS = 3

# One message of a batch: (an earlier message's index, or None for a new one; its tenant; its trouble).
item = st.tuples(
    st.one_of(st.none(), st.integers(min_value=0)),
    st.integers(min_value=0, max_value=TENANTS - 1),
    st.sampled_from(["none", "none", "none", "poison", "conflict"]),
)


def _crash() -> None:
    raise SimulatedCrash


class BatchModel(RuleBasedStateMachine):
    def __init__(self, database_url: str) -> None:
        super().__init__()
        self.database_url = database_url
        self.loop = asyncio.new_event_loop()
        self.name = f"rt_{uuid.uuid4().hex[:12]}"
        self.table = f"public.batch_model_{uuid.uuid4().hex[:10]}"
        self.tenants = [unique_tenant("m") for _ in range(TENANTS)]
        self.messages: list[Envelope] = []
        self.poison: set[UUID] = set()
        self.conflict_once: set[UUID] = set()
        self.answered: set[UUID] = set()  # answered Handled or Duplicate at some point
        self.engine = None
        self._start()
        self.run(self._execute(f"CREATE TABLE {self.table} (message_id uuid, tenant_id text, setting text)"))

    # --- plumbing ---------------------------------------------------------------------------------

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def _start(self) -> None:
        self.engine = create_engine(self.database_url, pool_size=2)
        self.consumer = offline_consumer(
            self.name, {ModifyRequested: self.handle}, self.engine, batch_max=8, batch_runners=1
        )

    def restart(self) -> None:
        """The process is gone: every connection with it; a new one starts."""
        self.run(self.engine.dispose())
        self._start()

    def teardown(self) -> None:
        faults.disarm()
        self.run(self._execute(f"DROP TABLE IF EXISTS {self.table}"))
        self.run(self.engine.dispose())
        self.loop.close()

    async def _execute(self, sql: str) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(text(sql))

    async def _rows(self, sql: str, **params) -> list:
        async with self.engine.connect() as connection:
            return (await connection.execute(text(sql), params)).all()

    async def handle(self, message: Envelope, uow: UnitOfWork) -> None:
        if message.message_id in self.poison:
            raise RuntimeError("poison")
        await uow.driver.execute(
            f"INSERT INTO {self.table} (message_id, tenant_id, setting)"
            " VALUES ($1, $2, current_setting('appt.tenant_id', true))",
            message.message_id,
            message.tenant_id,
        )
        if message.message_id in self.conflict_once:
            self.conflict_once.discard(message.message_id)
            raise SerializationFailure("could not serialize access")
        await uow.emit(rejection_of(message, producer=self.name, occurred_at=await uow.now()))

    def _message(self, earlier: int | None, tenant: int, trouble: str) -> Envelope:
        if earlier is not None and self.messages:
            return self.messages[earlier % len(self.messages)]
        message = modify_requested(self.tenants[tenant])
        self.messages.append(message)
        if trouble == "poison":
            self.poison.add(message.message_id)
        elif trouble == "conflict":
            self.conflict_once.add(message.message_id)
        return message

    async def _deliver(self, batch: list[Envelope]) -> list:
        answers = await asyncio.gather(
            *(self.consumer.batches.submit(m, self.handle) for m in batch), return_exceptions=True
        )
        for message, answer in zip(batch, answers, strict=True):
            if isinstance(answer, BaseException) and not isinstance(answer, Exception):
                raise answer  # the crash (or its cancellation): nothing after it runs
            if not isinstance(answer, Handled | Duplicate):
                try:  # its batch failed: alone, through the single path, as the consumer does
                    answer = await self.consumer.handle(message)
                except RuntimeError:
                    continue  # the poison message: dead-lettered
            self.answered.add(message.message_id)
        return answers

    # --- rules ------------------------------------------------------------------------------------

    @rule(items=st.lists(item, min_size=1, max_size=8))
    def deliver(self, items) -> None:
        self.run(self._deliver([self._message(*i) for i in items]))

    @rule(
        items=st.lists(item, min_size=2, max_size=8),
        point=st.sampled_from([FaultPoint.BEFORE_COMMIT, FaultPoint.AFTER_COMMIT]),
    )
    def deliver_and_crash(self, items, point) -> None:
        batch = [self._message(*i) for i in items]
        faults.arm(point, _crash)
        try:
            self.run(self._deliver(batch))
        except (SimulatedCrash, asyncio.CancelledError):
            self.restart()
        finally:
            faults.disarm()

    # --- invariants -------------------------------------------------------------------------------

    @invariant()
    def inbox_effects_and_outbox_agree_each_message_once(self) -> None:
        inbox = self.run(
            self._rows("SELECT message_id, tenant_id FROM messaging.inbox WHERE consumer = :c", c=self.name)
        )
        effects = self.run(self._rows(f"SELECT message_id, tenant_id, setting FROM {self.table}"))
        outbox = self.run(
            self._rows(
                "SELECT correlation_id, tenant_id FROM messaging.outbox WHERE producer = :p", p=self.name
            )
        )
        by_id = {m.message_id: m for m in self.messages}
        claimed = [UUID(str(r.message_id)) for r in inbox]
        assert len(claimed) == len(set(claimed))
        assert sorted(UUID(str(r.message_id)) for r in effects) == sorted(claimed)
        assert sorted(r.correlation_id for r in outbox) == sorted(by_id[i].correlation_id for i in claimed)
        for row in inbox:
            assert row.tenant_id == by_id[UUID(str(row.message_id))].tenant_id
        for row in effects:  # the handler ran under its own message's tenant
            assert row.setting == row.tenant_id == by_id[UUID(str(row.message_id))].tenant_id
        by_correlation = {m.correlation_id: m for m in self.messages}
        for row in outbox:
            assert row.tenant_id == by_correlation[row.correlation_id].tenant_id
        assert self.answered <= set(claimed)
        assert not (self.poison & set(claimed))


def test_batch_model(database_url: str) -> None:
    run_state_machine_as_test(
        lambda: BatchModel(database_url),
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            # No shrinking: every step is real database work, and a shrink outran the test's time limit.
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
