"""A stateful model of at-least-once delivery (hypothesis), against the real runtime and PostgreSQL.

Hypothesis drives two real consumers (modify_handler and portal_sync, their real handlers, the runtime's
inbox, unit of work and outbox) through any interleaving of:

- deliver an approval, or the same approval again (a duplicate, however late);
- crash while handling it, with every write done but not committed, or after the commit but before the
  ack (the runtime's fault hook raises `SimulatedCrash` there), and restart (a fresh engine: every
  connection of the dead process is gone);
- deliver the result events modify_handler committed to portal_sync in any order (reordered, duplicated,
  crashed the same two ways).

and checks after every step, against a model that only knows which deliveries committed:

- every approval whose transaction committed has exactly one result event (applied or failed), and no
  other approval has any; the inbox holds exactly the committed ones;
- each appointment's version is 1 + its applied changes, and its events' versions are exactly 2..version;
- the read store shows, for each appointment, the highest version among the events portal_sync committed:
  whatever order they came in, it never goes back.
"""

import asyncio
import os
from uuid import UUID

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text

from contracts.decoding import decode_or_raise
from contracts.envelope import Envelope
from contracts.internal_v1 import ModifyApproved
from tests import factories as f
from tests.conftest import offline_consumer, unique_tenant
from workers.modify_handler.handlers import HANDLERS as SCHEDULE_HANDLERS
from workers.portal_sync.handlers import HANDLERS as READ_STORE_HANDLERS
from workers.runtime import faults
from workers.runtime.consumer import QueueConsumer
from workers.runtime.database import create_engine
from workers.runtime.faults import FaultPoint, SimulatedCrash
from workers.runtime.outcomes import Duplicate, Handled

APPOINTMENTS = ("apt-0", "apt-1")
EFFECTS = ("appointment.rescheduled", "appointment.canceled")
RESULTS = (*EFFECTS, "modify.failed")
EXAMPLES = int(os.environ.get("APPT_MODEL_EXAMPLES", "25"))
STEPS = int(os.environ.get("APPT_MODEL_STEPS", "40"))


def _crash() -> None:
    raise SimulatedCrash


class DeliveryModel(RuleBasedStateMachine):
    approvals = Bundle("approvals")

    def __init__(self, database_url: str) -> None:
        super().__init__()
        self.database_url = database_url
        self.loop = asyncio.new_event_loop()
        self.tenant = unique_tenant("model")
        self.engine = None
        self._start()
        self.committed: set[UUID] = set()  # approvals whose transaction committed
        self.synced: set[UUID] = set()  # events portal_sync committed
        self.shown: dict[str, int] = {}  # appointment -> highest version portal_sync committed
        for i, appointment in enumerate(APPOINTMENTS):
            booking = f.appointment_recorded(
                tenant=self.tenant,
                appointment_id=appointment,
                job_id=f"job-{i}",
                customer_id=f"cust-{i}",
                window=f.arrival_window(2 + i),
                change_id=f"book-{i}",
            )
            assert self.run(self.schedule.handle(booking)) == Handled()

    # --- plumbing ---------------------------------------------------------------------------------

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def _consumer(self, name: str, handlers) -> QueueConsumer:
        return offline_consumer(name, handlers, self.engine, transient_retry_delay_s=0.01)

    def _start(self) -> None:
        self.engine = create_engine(self.database_url, pool_size=2)
        self.schedule = self._consumer("modify_handler", SCHEDULE_HANDLERS)
        self.read_store = self._consumer("portal_sync", READ_STORE_HANDLERS)

    def teardown(self) -> None:
        faults.disarm()
        self.run(self.engine.dispose())
        self.loop.close()

    def _handle_crashing(self, consumer: QueueConsumer, message: Envelope, point: FaultPoint) -> bool:
        """Handle `message` with a crash armed at `point`; True when it crashed (then restart)."""
        faults.arm(point, _crash)
        try:
            self.run(consumer.handle(message))
            return False
        except SimulatedCrash:
            self.restart()
            return True
        finally:
            faults.disarm()

    async def _rows(self, sql: str, **params) -> list:
        async with self.engine.connect() as connection:
            return (await connection.execute(text(sql), {"tenant": self.tenant, **params})).all()

    def _results(self) -> list[Envelope]:
        rows = self.run(
            self._rows(
                "SELECT body FROM messaging.outbox WHERE tenant_id = :tenant AND producer = 'modify_handler' "
                "ORDER BY id"
            )
        )
        return [decode_or_raise(bytes(row.body)) for row in rows]

    # --- rules ------------------------------------------------------------------------------------

    @rule(
        target=approvals,
        appointment=st.sampled_from(APPOINTMENTS),
        cancel=st.booleans(),
        stale_by=st.sampled_from([0, 0, 0, 1, -1]),
        days=st.integers(3, 12),
    )
    def approval(self, appointment: str, cancel: bool, stale_by: int, days: int) -> ModifyApproved:
        """The gate approved a change on the version it saw (mostly the current one, sometimes one behind
        or ahead); not delivered yet."""
        [current] = self.run(
            self._rows(
                "SELECT version FROM scheduling.appointments "
                "WHERE tenant_id = :tenant AND appointment_id = :a",
                a=appointment,
            )
        )
        decided_on = max(1, current.version - stale_by)
        change = f.cancel("model") if cancel else f.reschedule(f.arrival_window(days))
        request = f.modify_requested(
            tenant=self.tenant,
            appointment_id=appointment,
            requester_id=f"cust-{APPOINTMENTS.index(appointment)}",
            change=change,
            request_id=f"req-{len(self.committed)}-{days}-{decided_on}-{int(cancel)}-{os.urandom(3).hex()}",
        )
        return f.modify_approved(request, decided_on_version=decided_on)

    @rule(approval=approvals)
    def deliver(self, approval: ModifyApproved) -> None:
        outcome = self.run(self.schedule.handle(approval))
        assert outcome == (Duplicate() if approval.message_id in self.committed else Handled())
        self.committed.add(approval.message_id)

    @rule(approval=approvals, point=st.sampled_from([FaultPoint.BEFORE_COMMIT, FaultPoint.AFTER_COMMIT]))
    def crash_while_delivering(self, approval: ModifyApproved, point: FaultPoint) -> None:
        first = approval.message_id not in self.committed
        crashed = self._handle_crashing(self.schedule, approval, point)
        assert crashed == first  # a duplicate commits nothing, so it passes no commit point
        if crashed and point is FaultPoint.AFTER_COMMIT:
            self.committed.add(approval.message_id)  # committed; only the ack was lost

    @rule()
    def restart(self) -> None:
        self.run(self.engine.dispose())
        self._start()

    @precondition(lambda self: self.committed)
    @rule(pick=st.integers(min_value=0), crash=st.sampled_from([None, *faults.FaultPoint]))
    def sync_an_event(self, pick: int, crash: FaultPoint | None) -> None:
        """Any committed result event to portal_sync: any order, any number of times, maybe crashing."""
        events = self._results()
        event = events[pick % len(events)]
        if crash in (FaultPoint.BEFORE_COMMIT, FaultPoint.AFTER_COMMIT):
            crashed = self._handle_crashing(self.read_store, event, crash)
            assert crashed == (event.message_id not in self.synced)
            if not (crashed and crash is FaultPoint.AFTER_COMMIT):
                return
        else:
            outcome = self.run(self.read_store.handle(event))
            assert outcome == (Duplicate() if event.message_id in self.synced else Handled())
        self.synced.add(event.message_id)
        snapshot = getattr(event.payload, "appointment", None)
        if snapshot is not None:
            self.shown[snapshot.appointment_id] = max(
                self.shown.get(snapshot.appointment_id, 0), snapshot.version
            )

    # --- invariants -------------------------------------------------------------------------------

    @invariant()
    def one_result_per_committed_approval(self) -> None:
        events = self._results()
        results: dict[UUID, int] = {}
        for event in events:
            if event.type in RESULTS:
                results[event.causation_id] = results.get(event.causation_id, 0) + 1
        assert results == dict.fromkeys(self.committed, 1)
        claimed = self.run(
            self._rows(
                "SELECT message_id FROM messaging.inbox WHERE consumer = 'modify_handler' "
                "AND message_id = ANY(:ids)",
                ids=list(self.committed | {UUID(int=0)}),
            )
        )
        assert {row.message_id for row in claimed} == self.committed

    @invariant()
    def versions_count_the_applied_changes(self) -> None:
        events = self._results()
        rows = self.run(
            self._rows(
                "SELECT appointment_id, version FROM scheduling.appointments WHERE tenant_id = :tenant"
            )
        )
        for row in rows:
            applied = [
                e.payload.appointment.version
                for e in events
                if e.type in EFFECTS and e.payload.appointment.appointment_id == row.appointment_id
            ]
            assert row.version == 1 + len(applied)
            assert sorted(applied) == list(range(2, row.version + 1))

    @invariant()
    def read_store_shows_the_newest_synced_version(self) -> None:
        rows = self.run(
            self._rows("SELECT appointment_id, version FROM portal.appointments WHERE tenant_id = :tenant")
        )
        assert {row.appointment_id: row.version for row in rows} == self.shown


def test_delivery_model(database_url: str) -> None:
    run_state_machine_as_test(
        lambda: DeliveryModel(database_url),
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
