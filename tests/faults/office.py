"""The office's side of the fault suite: an office scheduler writing the commercial unit's appointments
while the customers' requests run (issue 12, docs/scheduling.md "Two writers"), and the checks that every
office message got exactly one true outcome.

The office builds each record from what it knows, as a real office system would: the read store's state
of the appointment (what our events told it) or an older one, versioned (`based_on_version`,
`office_revision`) for the appointments booked with version 2 and without a version for the others:

- `current`: built on the version the read store shows, a new revision: applied, or refused
  `stale_record` (a customer changed it since and the record would undo that);
- `stale`: built on version 1 (the booking as first recorded), a new revision: the same two;
- `older_revision`: a revision already applied: ignored `older_revision`, always;
- any versioned record may also be ignored as `older_revision` when a record of a later (or the same)
  revision of its appointment was applied before it: records are consumed concurrently and redelivered
  after crashes, so the office's order is not the order they are handled in;
- `v1` (from the read store's state) and `v1_stale` (from the booking): no version, read as built on the
  previous office record's state: applied, or refused `stale_record`.

Each changes something: a move to another window of the unit, a confirmation, the same start with another
end (the window no longer fits: its place is freed), or a cancel. After quiescence every office message
of the run (settings, capacity, bookings, approvals and these records) must have exactly one
`office.outcome` in the outbox, the read store's row must say the same, an applied appointment record
exactly one `appointment.updated` and a not-applied one none; lost updates, capacity accounting and the
read store are the reconciler's (`lost_update`, `capacity_mismatch`, `read_store_*`).
"""

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation
from contracts.envelope import Envelope
from infra.db.tables import outbox, portal_appointments, portal_office_outcomes
from tests import factories
from tests.faults.load import COMMERCIAL, Booking, Plan, publish_confirmed
from workers.runtime.broker import Broker

MAY_APPLY = frozenset({("applied", None), ("refused", "stale_record")})
OLDER = frozenset({("ignored", "older_revision")})
EXPECT = {
    "current": MAY_APPLY,
    "stale": MAY_APPLY,
    "older_revision": OLDER,
    "v1": MAY_APPLY,
    "v1_stale": MAY_APPLY,
}


@dataclass(frozen=True)
class Written:
    """One record the office sent, and what it may end as."""

    message: Envelope
    kind: str
    expect: frozenset[tuple[str, str | None]]

    @property
    def revision(self) -> int | None:
        return getattr(self.message.payload, "office_revision", None)


@dataclass(frozen=True)
class Answer:
    status: str
    reason_code: str | None


@dataclass
class OfficeFacts:
    """What the run recorded about office messages, read once after quiescence."""

    outcomes: dict[UUID, list[Answer]] = field(default_factory=dict)  # from the outbox, per office message
    shown: dict[UUID, Answer] = field(default_factory=dict)  # portal.office_outcomes
    updates: Counter = field(default_factory=Counter)  # appointment.updated per causing office message


class OfficeWriter:
    """Writes the commercial unit's appointments during the load (`write`), as described above."""

    def __init__(self, engine: AsyncEngine, broker: Broker, plan: Plan, seed: int) -> None:
        self._engine = engine
        self._broker = broker
        self._plan = plan
        self._rng = random.Random(seed)
        self._revision = {b.appointment_id: 1 for b in plan.office_written if b.versioned}
        self._revision_of: dict[UUID, int] = {}
        self.written: list[Written] = []
        self.copies = 1  # the duplicates scenario sends each record twice
        self.published = 0

    def records_for(self, requests: int) -> int:
        return max(10, requests // 6) if self._plan.office_written else 0

    async def write(self, duration_s: float, count: int) -> None:
        """`count` records spread over `duration_s`; a record that cannot be built or sent right now (the
        database or broker is away in a fault) is tried again at the next tick."""
        interval = duration_s / max(count, 1)
        target = len(self.written) + count
        for _ in range(3 * count):  # bounded: a long outage leaves fewer records, not a hung run
            if len(self.written) >= target:
                return
            try:
                written = await self._one()
            except Exception:  # the database is away in a fault: the next tick tries again
                await asyncio.sleep(interval)
                continue
            self.written.append(written)  # before it is sent: whatever arrives must be accounted for
            for _ in range(self.copies):
                await publish_confirmed(self._broker, written.message)  # retries as an office system must
                self.published += 1
            await asyncio.sleep(interval)

    async def resend_all(self) -> int:
        """Every record once more with its message id (an office system retrying after a lost confirm)."""
        await asyncio.gather(*(publish_confirmed(self._broker, w.message) for w in self.written))
        self.published += len(self.written)
        return len(self.written)

    async def _view(self, booking: Booking):
        t = portal_appointments
        async with self._engine.connect() as conn:
            return (
                await conn.execute(
                    select(t.c.window_start, t.c.window_end, t.c.status, t.c.confirmation, t.c.version).where(
                        t.c.tenant_id == booking.tenant_id, t.c.appointment_id == booking.appointment_id
                    )
                )
            ).one()

    async def _applied_revision(self, booking: Booking) -> int:
        """The highest revision of this appointment the office has seen applied (its booking's, at least)."""
        mine = [
            w.message.message_id
            for w in self.written
            if w.message.payload.appointment_id == booking.appointment_id and w.message.schema_version == 2
        ]
        if not mine:
            return 1
        t = portal_office_outcomes
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(t.c.office_message_id).where(
                    t.c.tenant_id == booking.tenant_id,
                    t.c.office_message_id.in_(mine),
                    t.c.status == "applied",
                )
            )
            return max([1, *(self._revision_of[r.office_message_id] for r in rows)])

    async def _one(self) -> Written:
        rng = self._rng
        booking = rng.choice(self._plan.office_written)
        if booking.versioned:
            kind = rng.choices(["current", "stale", "older_revision"], weights=[5, 3, 2])[0]
        else:
            kind = rng.choices(["v1", "v1_stale"], weights=[6, 4])[0]
        stale = kind in ("stale", "v1_stale")
        view = await self._view(booking)
        if stale:  # built on the booking as it was first recorded
            window, status = booking.window, AppointmentStatus.SCHEDULED
            confirmation = Confirmation.UNCONFIRMED
        else:
            window = ArrivalWindow(start=view.window_start, end=view.window_end)
            status, confirmation = AppointmentStatus(view.status), Confirmation(view.confirmation)
        roll = rng.random()
        if roll < 0.45:
            window = rng.choice(self._plan.commercial_windows)
            status = AppointmentStatus.SCHEDULED
        elif roll < 0.8:
            confirmation = (
                Confirmation.UNCONFIRMED if confirmation is Confirmation.CONFIRMED else Confirmation.CONFIRMED
            )
        elif roll < 0.93:
            window = ArrivalWindow(start=window.start, end=window.start + timedelta(hours=3))
        else:
            status = AppointmentStatus.CANCELED
        versioned: dict[str, int | None] = {}
        if booking.versioned:
            if kind == "older_revision":
                revision = rng.randint(1, await self._applied_revision(booking))
            else:
                self._revision[booking.appointment_id] += 1
                revision = self._revision[booking.appointment_id]
            versioned = {"office_revision": revision, "based_on_version": 1 if stale else view.version}
        message = factories.appointment_recorded(
            tenant=booking.tenant_id,
            appointment_id=booking.appointment_id,
            job_id=booking.job_id,
            customer_id=booking.customer_id,
            business_unit=COMMERCIAL,
            job_type=booking.job_type,
            window=window,
            status=status,
            confirmation=confirmation,
            change_id=f"office-{booking.appointment_id}-{len(self.written)}",
            **versioned,
        )
        if booking.versioned:
            self._revision_of[message.message_id] = versioned["office_revision"]  # type: ignore[assignment]
        return Written(message, kind, EXPECT[kind])


def office_messages(plan: Plan, writer: OfficeWriter, decisions: list[Envelope]) -> list[Envelope]:
    """Every office message of a run: the set-up's settings, capacity and bookings, the records written
    during the load, and the approval decisions."""
    return [*plan.setup, *(w.message for w in writer.written), *decisions]


async def gather(engine: AsyncEngine, tenants: list[str]) -> OfficeFacts:
    facts = OfficeFacts()
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox.c.message_type, outbox.c.body).where(
                outbox.c.tenant_id.in_(tenants),
                outbox.c.message_type.in_(["office.outcome", "appointment.updated"]),
            )
        )
        for message_type, body in rows:
            document = json.loads(bytes(body))
            if message_type == "appointment.updated":
                facts.updates[UUID(document["causation_id"])] += 1
                continue
            payload = document["payload"]
            answers = facts.outcomes.setdefault(UUID(payload["office_message_id"]), [])
            answers.append(Answer(payload["status"], payload["reason_code"]))
        t = portal_office_outcomes
        rows = await conn.execute(
            select(t.c.office_message_id, t.c.status, t.c.reason_code).where(t.c.tenant_id.in_(tenants))
        )
        facts.shown = {r.office_message_id: Answer(r.status, r.reason_code) for r in rows}
    return facts


def answered(facts: OfficeFacts, messages: list[Envelope]) -> bool:
    """Every office message's outcome is in the read store (part of quiescence)."""
    return all(m.message_id in facts.shown for m in messages)


def problems(facts: OfficeFacts, messages: list[Envelope], writer: OfficeWriter) -> list[str]:
    """Exactly one outcome per office message, the read store saying the same, each written record ended
    as its kind allows, and an applied appointment record changed the appointment once (none otherwise)."""
    found = []
    sent = {m.message_id: m for m in messages}
    for message_id, message in sent.items():
        answers = facts.outcomes.get(message_id, [])
        if len(answers) != 1:
            found.append(f"{message.type} {message_id}: {len(answers)} office outcomes, not 1: {answers}")
            continue
        if facts.shown.get(message_id) != answers[0]:
            found.append(f"{message.type} {message_id}: read store shows {facts.shown.get(message_id)}, "
                         f"the outcome was {answers[0]}")  # fmt: skip
        if message.type == "office.appointment.recorded":
            updates = facts.updates.get(message_id, 0)
            if updates != (1 if answers[0].status == "applied" else 0):
                found.append(f"record {message_id} {answers[0]}: {updates} appointment.updated")
    for message_id in facts.outcomes.keys() - sent.keys():
        found.append(f"an office outcome for {message_id}, which nobody sent")
    for written in writer.written:
        answers = facts.outcomes.get(written.message.message_id, [])
        if answers and (answers[0].status, answers[0].reason_code) not in _allowed(written, writer, facts):
            found.append(f"{written.kind} record {written.message.message_id}: {answers[0]}, expected one of "
                         f"{sorted(written.expect, key=str)}")  # fmt: skip
    return found


def _allowed(written: Written, writer: OfficeWriter, facts: OfficeFacts) -> frozenset:
    """What a record may end as: its kind's outcomes, or ignored as older once a record of the same
    appointment with a revision at least its own was applied (whichever order they were handled in)."""
    if written.revision is None or written.expect == OLDER:
        return written.expect
    overtaken = any(
        other is not written
        and other.message.payload.appointment_id == written.message.payload.appointment_id
        and (other.revision or 0) >= written.revision
        and facts.outcomes.get(other.message.message_id, [None])[0] == Answer("applied", None)
        for other in writer.written
    )
    return written.expect | OLDER if overtaken else written.expect


def tally(facts: OfficeFacts, writer: OfficeWriter) -> dict[str, int]:
    """The written records' outcomes by kind, for the scenario's line in docs/reliability.md."""
    counts: Counter = Counter()
    for written in writer.written:
        answers = facts.outcomes.get(written.message.message_id) or [Answer("none", None)]
        counts[f"{written.kind} {answers[0].status}"] += 1
    return dict(sorted(counts.items()))
