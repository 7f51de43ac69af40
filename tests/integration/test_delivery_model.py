"""A stateful model of at-least-once delivery (hypothesis), against the real runtime and PostgreSQL.

Hypothesis drives two real consumers (modify_handler and portal_sync, their real handlers, the runtime's
inbox, unit of work and outbox) through any interleaving of:

- deliver an approval or an office record, or the same message again (a duplicate, however late). The
  office records are those of the two writers (docs/scheduling.md): for one appointment versioned
  records built on the version the office last saw (current), on an older one (stale), with a revision
  already applied (older revision) or on a version we never had; for the other version 1 records (no
  version, no revision). Both move the appointment between windows (some with another end than the
  window's), confirm it or cancel it, in a business unit whose windows have one place each;
- crash while handling it, with every write done but not committed, or after the commit but before the
  ack (the runtime's fault hook raises `SimulatedCrash` there), and restart (a fresh engine: every
  connection of the dead process is gone);
- deliver the events modify_handler committed to portal_sync in any order (reordered, duplicated,
  crashed the same two ways, or replayed with a new message id);
- quiesce: portal_sync catches up with every event, and `apptctl reconcile` must find nothing.

and checks after every step, against a model that only knows which deliveries committed:

- every approval whose transaction committed has exactly one result event (applied or failed), every
  committed office message exactly one `office.outcome`, and no other message has any; the inbox holds
  exactly the committed ones;
- each appointment's version counts its changes, and its events' versions are exactly 1..version;
- every office outcome tells the truth, re-derived from the history in commit order: applied only when
  its revision is above the last applied one, its version known, and it undoes no customer change it
  did not know of (so no customer change is ever undone without an outcome saying why); ignored only as
  an older revision; refused only as stale (it would have undone one) or built on an unknown version,
  with the current state;
- capacity: each window's `booked` equals the appointments holding a place in it, each of exactly its span;
- the read store shows, for each appointment, the highest version among the events portal_sync committed
  (whatever order they came in, it never goes back), and one office outcome per office message: the
  first, whatever replays follow.
"""

import asyncio
import os
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID, uuid4

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text

from apptctl import reconcile
from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation
from contracts.decoding import decode_or_raise
from contracts.envelope import Envelope
from contracts.internal_v1 import ModifyApproved
from contracts.office_v1 import AppointmentRecorded
from contracts.office_v2 import AppointmentRecordedV2
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
VERSIONED = {"apt-0": True, "apt-1": False}  # whose office sends version 2 records, whose version 1
EFFECTS = ("appointment.rescheduled", "appointment.canceled")
CHANGES = (*EFFECTS, "appointment.updated")
RESULTS = (*EFFECTS, "modify.failed")
RECORDED = "office.appointment.recorded"
DAYS = range(3, 13)  # the unit's windows: one a day, one place each
OFFICE_KINDS = ("current", "current", "stale", "older_revision", "unknown_version")
# What a quiet pipeline must never show (the model sends no portal requests and publishes nothing, so
# the request classes and the outbox checks do not apply).
QUIET_CHECKS = (
    reconcile.Kind.LOST_UPDATE,
    reconcile.Kind.READ_STORE_MISSING,
    reconcile.Kind.READ_STORE_EXTRA,
    reconcile.Kind.READ_STORE_BEHIND,
    reconcile.Kind.READ_STORE_AHEAD,
    reconcile.Kind.READ_STORE_DIVERGED,
    reconcile.Kind.VERSION_REGRESSION,
    reconcile.Kind.VERSION_GAP,
    reconcile.Kind.UNEXPLAINED_CHANGE,
    reconcile.Kind.CAPACITY_MISMATCH,
)
EXAMPLES = int(os.environ.get("APPT_MODEL_EXAMPLES", "25"))
STEPS = int(os.environ.get("APPT_MODEL_STEPS", "40"))


def _crash() -> None:
    raise SimulatedCrash


def _window(days: int) -> ArrivalWindow:
    return f.arrival_window(days)


@dataclass
class History:
    """One appointment as its events tell it, in commit order (what the office outcomes must agree with)."""

    version: int = 0
    window: ArrivalWindow | None = None
    status: AppointmentStatus | None = None
    customer_version: int | None = None  # the version the last customer change produced
    office_version: int | None = None  # the version the last applied office record produced
    office_revision: int | None = None  # the last applied versioned record's revision
    applied: set[UUID] = field(default_factory=set)  # the office records that changed it

    def undone_by(self, record: AppointmentRecorded | AppointmentRecordedV2) -> bool:
        """Would the record put back what the last change made (its window, or a cancel)?"""
        canceled = self.status is AppointmentStatus.CANCELED
        return record.payload.window != self.window or (
            canceled and record.payload.status is not AppointmentStatus.CANCELED
        )

    def base_of(self, record: AppointmentRecorded | AppointmentRecordedV2) -> int | None:
        """The version a record was built on: its own word (version 2), or the previous office record's."""
        if isinstance(record, AppointmentRecordedV2):
            return record.payload.based_on_version
        return self.office_version

    def knew_of_the_customer(self, record: AppointmentRecorded | AppointmentRecordedV2) -> bool:
        return self.customer_version is None or (self.base_of(record) or 0) >= self.customer_version


class DeliveryModel(RuleBasedStateMachine):
    inputs = Bundle("inputs")  # approvals and office records, built but not necessarily delivered

    def __init__(self, database_url: str) -> None:
        super().__init__()
        self.database_url = database_url
        self.loop = asyncio.new_event_loop()
        self.tenant = unique_tenant("model")
        self.engine = None
        self._events: list[Envelope] = []  # modify_handler's outbox as read so far
        self._seen = 0
        self._start()
        self.committed: set[UUID] = set()  # messages whose transaction committed
        self.office: dict[UUID, Envelope] = {}  # every office message built, by message id
        self.revisions = dict.fromkeys(APPOINTMENTS, 1)  # the last revision each office sent
        self.synced: set[UUID] = set()  # events portal_sync committed
        self.shown: dict[str, int] = {}  # appointment -> highest version portal_sync committed
        self.outcomes_shown: dict[UUID, tuple[str, str | None]] = {}  # office message -> first outcome synced
        capacity = f.capacity_updated(
            tenant=self.tenant,
            windows=[
                {"date": w.start.date(), "start": w.start.time(), "end": w.end.time(), "places": 1}
                for w in (_window(day) for day in DAYS)
            ],
            change_id="capacity",
        )
        self._deliver_first(capacity)
        for i, appointment in enumerate(APPOINTMENTS):
            booking = f.appointment_recorded(
                tenant=self.tenant,
                appointment_id=appointment,
                job_id=f"job-{i}",
                customer_id=f"cust-{i}",
                window=_window(2 + i),  # apt-0 outside the unit's windows, apt-1 in one
                change_id=f"book-{i}",
                **({"office_revision": 1} if VERSIONED[appointment] else {}),
            )
            self._deliver_first(booking)

    # --- plumbing ---------------------------------------------------------------------------------

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def _consumer(self, name: str, handlers) -> QueueConsumer:
        return offline_consumer(name, handlers, self.engine, transient_retry_delay_s=0.01)

    def _start(self) -> None:
        self.engine = create_engine(self.database_url, pool_size=2)
        self.schedule = self._consumer("modify_handler", SCHEDULE_HANDLERS)
        self.read_store = self._consumer("portal_sync", READ_STORE_HANDLERS)

    def _deliver_first(self, message: Envelope) -> None:
        self.office[message.message_id] = message
        assert self.run(self.schedule.handle(message)) == Handled()
        self.committed.add(message.message_id)

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
        """Everything modify_handler committed, in commit order. One transaction at a time here, so ids
        commit in order and only the rows after the last one read are new (never true of a live outbox)."""
        rows = self.run(
            self._rows(
                "SELECT id, body FROM messaging.outbox WHERE tenant_id = :tenant "
                "AND producer = 'modify_handler' AND id > :seen ORDER BY id",
                seen=self._seen,
            )
        )
        for row in rows:
            self._events.append(decode_or_raise(bytes(row.body)))
            self._seen = row.id
        return self._events

    def _current(self, appointment: str):
        [row] = self.run(
            self._rows(
                "SELECT version, office_revision, window_start, window_end FROM scheduling.appointments "
                "WHERE tenant_id = :tenant AND appointment_id = :a",
                a=appointment,
            )
        )
        return row

    def _sync(self, event: Envelope) -> None:
        """portal_sync committed `event`: what the read store must show now."""
        self.synced.add(event.message_id)
        snapshot = getattr(event.payload, "appointment", None)
        if snapshot is not None:
            self.shown[snapshot.appointment_id] = max(
                self.shown.get(snapshot.appointment_id, 0), snapshot.version
            )
        if event.type == "office.outcome":
            self.outcomes_shown.setdefault(
                event.payload.office_message_id, (event.payload.status.value, event.payload.reason_code)
            )

    # --- rules ------------------------------------------------------------------------------------

    @rule(
        target=inputs,
        appointment=st.sampled_from(APPOINTMENTS),
        cancel=st.booleans(),
        stale_by=st.sampled_from([0, 0, 0, 1, -1]),
        days=st.sampled_from(DAYS),
    )
    def approval(self, appointment: str, cancel: bool, stale_by: int, days: int) -> ModifyApproved:
        """The gate approved a change on the version it saw (mostly the current one, sometimes one behind
        or ahead); not delivered yet."""
        current = self._current(appointment)
        decided_on = max(1, current.version - stale_by)
        change = f.cancel("model") if cancel else f.reschedule(_window(days))
        request = f.modify_requested(
            tenant=self.tenant,
            appointment_id=appointment,
            requester_id=f"cust-{APPOINTMENTS.index(appointment)}",
            change=change,
            request_id=f"req-{len(self.committed)}-{days}-{decided_on}-{int(cancel)}-{os.urandom(3).hex()}",
        )
        return f.modify_approved(request, decided_on_version=decided_on)

    @rule(
        target=inputs,
        appointment=st.sampled_from(APPOINTMENTS),
        kind=st.sampled_from(OFFICE_KINDS),
        where=st.sampled_from(["move", "move", "keep", "keep", "end"]),
        days=st.sampled_from([2, *DAYS]),
        status=st.sampled_from([AppointmentStatus.SCHEDULED] * 4 + [AppointmentStatus.CANCELED]),
        confirmed=st.booleans(),
    )
    def office_record(
        self,
        appointment: str,
        kind: str,
        where: str,
        days: int,
        status: AppointmentStatus,
        confirmed: bool,
    ) -> Envelope:
        """The office records the appointment as it wants it: moved to another day's window, kept where it
        is now (a confirmation, a cancel), or kept at its start with another end (the window no longer
        fits); built on what it last saw (versioned) or without a version (version 1); not delivered yet,
        so by then it may be stale."""
        current = self._current(appointment)
        window = ArrivalWindow(start=current.window_start, end=current.window_end)
        if where == "move":
            window = _window(days)
        elif where == "end":
            hours = 3 if window.end - window.start == timedelta(hours=2) else 2
            window = ArrivalWindow(start=window.start, end=window.start + timedelta(hours=hours))
        versioned: dict[str, int | None] = {}
        if VERSIONED[appointment]:
            if kind == "older_revision":  # a revision already applied: ignored whenever it arrives
                revision = current.office_revision
            else:
                self.revisions[appointment] += 1
                revision = self.revisions[appointment]
            based_on = {"stale": max(0, current.version - 1), "unknown_version": current.version + 1_000}
            versioned = {"office_revision": revision, "based_on_version": based_on.get(kind, current.version)}
        i = APPOINTMENTS.index(appointment)
        record = f.appointment_recorded(
            tenant=self.tenant,
            appointment_id=appointment,
            job_id=f"job-{i}",
            customer_id=f"cust-{i}",
            window=window,
            status=status,
            confirmation=Confirmation.CONFIRMED if confirmed else Confirmation.UNCONFIRMED,
            change_id=f"office-{appointment}-{kind}-{where}-{os.urandom(3).hex()}",
            **versioned,
        )
        self.office[record.message_id] = record
        return record

    @rule(message=inputs)
    def deliver(self, message: Envelope) -> None:
        outcome = self.run(self.schedule.handle(message))
        assert outcome == (Duplicate() if message.message_id in self.committed else Handled())
        self.committed.add(message.message_id)

    @rule(message=inputs, point=st.sampled_from([FaultPoint.BEFORE_COMMIT, FaultPoint.AFTER_COMMIT]))
    def crash_while_delivering(self, message: Envelope, point: FaultPoint) -> None:
        first = message.message_id not in self.committed
        crashed = self._handle_crashing(self.schedule, message, point)
        assert crashed == first  # a duplicate commits nothing, so it passes no commit point
        if crashed and point is FaultPoint.AFTER_COMMIT:
            self.committed.add(message.message_id)  # committed; only the ack was lost

    @rule()
    def restart(self) -> None:
        self.run(self.engine.dispose())
        self._start()

    @rule(pick=st.integers(min_value=0), crash=st.sampled_from([None, *faults.FaultPoint]))
    def sync_an_event(self, pick: int, crash: FaultPoint | None) -> None:
        """Any committed event to portal_sync: any order, any number of times, maybe crashing."""
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
        self._sync(event)

    @rule(pick=st.integers(min_value=0))
    def replay_an_event_with_a_new_id(self, pick: int) -> None:
        """A committed event again under a fresh message id (a bridge or a replayed copy): the inbox cannot
        drop it; the version guard and one-outcome-per-office-message must."""
        events = self._results()
        event = events[pick % len(events)]
        copy = event.model_copy(update={"message_id": uuid4()})
        assert self.run(self.read_store.handle(copy)) == Handled()
        self._sync(copy)

    @rule()
    def quiesce(self) -> None:
        """portal_sync catches up with everything committed, in commit order; then the reconciler finds
        nothing: read store == schedule, no lost update, capacity counted, versions without gaps."""
        for event in self._results():
            if event.message_id not in self.synced:
                assert self.run(self.read_store.handle(event)) == Handled()
                self._sync(event)
        report = self.run(
            reconcile.check(self.engine, tenants=[self.tenant], dead_letters=[], dead_letters_required=False)
        )
        assert not report.violations_of(*QUIET_CHECKS), report.violations_of(*QUIET_CHECKS)[:5]

    # --- invariants -------------------------------------------------------------------------------

    @invariant()
    def one_result_per_committed_message(self) -> None:
        results: dict[UUID, int] = {}
        for event in self._results():
            if event.type in RESULTS:
                results[event.causation_id] = results.get(event.causation_id, 0) + 1
            elif event.type == "office.outcome":
                answered = event.payload.office_message_id
                results[answered] = results.get(answered, 0) + 1
                assert event.causation_id == answered
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
    def versions_count_the_changes(self) -> None:
        events = self._results()
        rows = self.run(
            self._rows(
                "SELECT appointment_id, version FROM scheduling.appointments WHERE tenant_id = :tenant"
            )
        )
        for row in rows:
            changes = [
                e.payload.appointment.version
                for e in events
                if e.type in CHANGES and e.payload.appointment.appointment_id == row.appointment_id
            ]
            assert sorted(changes) == list(range(1, row.version + 1))

    @invariant()
    def office_outcomes_tell_the_truth(self) -> None:
        """Replay the history in commit order and judge each office record independently of the code."""
        history = {a: History() for a in APPOINTMENTS}
        for event in self._results():
            if event.type in EFFECTS:
                h = history[event.payload.appointment.appointment_id]
                snapshot = event.payload.appointment
                h.version, h.window, h.status = snapshot.version, snapshot.window, snapshot.status
                h.customer_version = snapshot.version
            elif event.type == "appointment.updated":
                record = self.office[event.causation_id]
                h = history[event.payload.appointment.appointment_id]
                snapshot = event.payload.appointment
                if h.version:  # a change, not the booking
                    assert event.payload.based_on_version == h.base_of(record)
                    # applied: a newer revision, a version we had, and no customer change undone unknowingly
                    if isinstance(record, AppointmentRecordedV2):
                        assert record.payload.office_revision > (h.office_revision or 0), "older applied"
                        assert (record.payload.based_on_version or 0) <= h.version, "unknown version applied"
                    assert h.knew_of_the_customer(record) or not h.undone_by(record), (
                        f"v{snapshot.version} undid the customer's v{h.customer_version} without knowing it"
                    )
                assert snapshot.version == h.version + 1
                h.version, h.window, h.status = snapshot.version, snapshot.window, snapshot.status
                h.office_version = snapshot.version
                h.applied.add(record.message_id)
                if isinstance(record, AppointmentRecordedV2):
                    h.office_revision = record.payload.office_revision
            elif event.type == "office.outcome" and event.payload.message_type == RECORDED:
                self._judge(event, history[event.payload.subject])

    def _judge(self, outcome: Envelope, h: History) -> None:
        """A not-applied outcome is right: older revision, unknown version, or stale and undoing."""
        answer = outcome.payload
        record = self.office[answer.office_message_id]
        assert answer.current is not None and answer.current.version == h.version
        assert (answer.status.value == "applied") == (record.message_id in h.applied)
        if answer.status.value == "applied":
            return  # judged at its appointment.updated, just before
        revision = record.payload.office_revision if isinstance(record, AppointmentRecordedV2) else None
        if answer.status.value == "ignored":
            assert answer.reason_code == "older_revision"
            assert revision is not None and revision <= (h.office_revision or 0)
            return
        assert answer.status.value == "refused"
        assert revision is None or revision > (h.office_revision or 0), "an older revision refused"
        if answer.reason_code == "unknown_version":
            assert (record.payload.based_on_version or 0) > h.version
        else:
            assert answer.reason_code == "stale_record"
            assert not h.knew_of_the_customer(record) and h.undone_by(record), "refused a harmless record"

    @invariant()
    def capacity_counts_the_appointments_holding_places(self) -> None:
        rows = self.run(
            self._rows(
                "SELECT w.starts_at, w.ends_at, w.booked, w.capacity, "
                "       count(a.appointment_id) AS held, "
                "       count(a.appointment_id) FILTER (WHERE a.window_end <> w.ends_at) AS misfits "
                "  FROM scheduling.capacity_windows w "
                "  LEFT JOIN scheduling.appointments a ON a.tenant_id = w.tenant_id "
                "   AND a.business_unit = w.business_unit AND a.zone = w.zone "
                "   AND a.window_start = w.starts_at AND a.holds_place "
                " WHERE w.tenant_id = :tenant GROUP BY w.starts_at, w.ends_at, w.booked, w.capacity"
            )
        )
        assert len(rows) == len(DAYS)
        for row in rows:
            assert (row.booked, row.misfits) == (row.held, 0), row
            assert row.booked <= row.capacity, row

    @invariant()
    def read_store_shows_the_newest_synced_version_and_the_first_outcome(self) -> None:
        rows = self.run(
            self._rows("SELECT appointment_id, version FROM portal.appointments WHERE tenant_id = :tenant")
        )
        assert {row.appointment_id: row.version for row in rows} == self.shown
        rows = self.run(
            self._rows(
                "SELECT office_message_id, status, reason_code FROM portal.office_outcomes "
                "WHERE tenant_id = :tenant"
            )
        )
        assert {row.office_message_id: (row.status, row.reason_code) for row in rows} == self.outcomes_shown


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
