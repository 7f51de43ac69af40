"""Reconciliation: every accepted request has exactly one outcome, every customer change has a request,
and the read store equals the source of truth.

`reconcile(facts, ...)` is pure: it classifies what the system recorded (portal.requests, policy.decisions,
the messaging outbox and inbox, the scheduling and portal tables, dead letters, and optionally the list of
requests a portal says it sent) and returns a `Report`. `gather(...)` and `read_dead_letters(...)` are the
edge that queries PostgreSQL and RabbitMQ; `check(...)` runs all three.

Every request ends in one class:
  applied, rejected, failed, dead_lettered   terminal (with their reason)
  waiting                                     parked until the office decides (a legitimate resting state)
  in_flight                                   not finished, but younger than the grace period
  lost                                        not finished and older than the grace period (with the stage
                                              where it stopped)
  duplicated                                  more than one effect or decision event for one request
  unexpected                                  something happened that no accepted request explains

The outbox is the event history (purged after APPT_OUTBOX_RETENTION_S): checks that need history only run
on what it still holds, and the report says when a check was skipped for that reason.
"""

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Any

# --- the facts the checker reads ----------------------------------------------------------------------

GATE = "policy_gate"
SCHEDULER = "modify_handler"
PROJECTOR = "portal_sync"

APPROVED = "modify.approved"
REJECTED = "modify.rejected"
AWAITING = "modify.awaiting_approval"
FAILED = "modify.failed"
RESCHEDULED = "appointment.rescheduled"
CANCELED = "appointment.canceled"
UPDATED = "appointment.updated"
JOB_CHANGED = "job.status_changed"
EFFECTS = frozenset({RESCHEDULED, CANCELED})
APPOINTMENT_EVENTS = frozenset({RESCHEDULED, CANCELED, UPDATED})
REQUEST_EVENTS = frozenset({APPROVED, REJECTED, AWAITING, FAILED, RESCHEDULED, CANCELED})
ACTIVE_STATUSES = frozenset({"scheduled", "dispatched", "working"})
TERMINAL_PORTAL = frozenset({"rejected", "completed", "failed"})

Key = tuple[str, str]  # (tenant_id, id)


@dataclass(frozen=True)
class RequestRow:
    """portal.requests: what the portal shows for a request."""

    tenant_id: str
    request_id: str
    appointment_id: str
    action: str
    status: str
    reason_code: str | None
    updated_at: datetime


@dataclass(frozen=True)
class DecisionRow:
    """policy.decisions: the gate's decision, one per request."""

    tenant_id: str
    request_id: str
    message_id: str
    appointment_id: str
    action: str
    outcome: str  # approved / rejected / needs_approval
    reason_code: str | None
    decided_at: datetime


@dataclass(frozen=True)
class AppointmentState:
    """One appointment row, from scheduling (truth) or portal (read store), or carried by an event."""

    tenant_id: str
    appointment_id: str
    job_id: str
    customer_id: str
    project_id: str | None
    business_unit: str
    job_type: str
    window_start: datetime
    window_end: datetime
    status: str
    confirmation: str
    version: int
    updated_at: datetime | None = None
    customer_reschedules: int | None = None  # truth only

    COMPARED = (
        "job_id",
        "customer_id",
        "project_id",
        "business_unit",
        "job_type",
        "window_start",
        "window_end",
        "status",
        "confirmation",
        "version",
    )

    def differences(self, other: "AppointmentState") -> list[str]:
        return [f for f in self.COMPARED if getattr(self, f) != getattr(other, f)]


@dataclass(frozen=True)
class JobState:
    tenant_id: str
    job_id: str
    customer_id: str
    status: str
    version: int
    active_appointments: int
    updated_at: datetime | None = None

    COMPARED = ("customer_id", "status", "version", "active_appointments")

    def differences(self, other: "JobState") -> list[str]:
        return [f for f in self.COMPARED if getattr(self, f) != getattr(other, f)]


@dataclass(frozen=True)
class Event:
    """One outbox row (an event a worker committed with its change), with what the checks need."""

    id: int
    message_id: str
    producer: str
    type: str
    tenant_id: str
    correlation_id: str
    published: bool
    created_at: datetime
    request_id: str | None = None
    appointment_id: str | None = None
    action: str | None = None
    reason_code: str | None = None
    initiated_by: str | None = None
    appointment: AppointmentState | None = None
    job: JobState | None = None
    based_on_version: int | None = None  # an office record's: the version it was built on


@dataclass(frozen=True)
class DeadLetterRef:
    """A dead letter, as far as the checker cares: where, what, and why."""

    queue: str
    message_id: str | None
    reason: str
    correlation_id: str | None = None
    tenant_id: str | None = None
    type: str | None = None


@dataclass(frozen=True)
class SentRequest:
    """A request the portal says it sent (and the broker confirmed); from a manifest file."""

    tenant_id: str
    request_id: str
    message_id: str
    appointment_id: str
    action: str
    sent_at: datetime | None = None


@dataclass(frozen=True)
class SlotUsage:
    """One arrival window: `booked` as its row records it, `held` = appointments holding a place in it."""

    tenant_id: str
    slot_key: str
    capacity: int
    booked: int
    held: int


@dataclass
class Facts:
    now: datetime
    requests: list[RequestRow] = field(default_factory=list)
    decisions: list[DecisionRow] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    truth_appointments: list[AppointmentState] = field(default_factory=list)
    read_appointments: list[AppointmentState] = field(default_factory=list)
    truth_jobs: list[JobState] = field(default_factory=list)
    read_jobs: list[JobState] = field(default_factory=list)
    # (consumer, message_id) pairs from messaging.inbox, for the message ids the checker asked about.
    consumed: set[tuple[str, str]] = field(default_factory=set)
    dead_letters: list[DeadLetterRef] | None = None  # None: not read
    sent: list[SentRequest] | None = None  # None: no manifest given
    since: datetime | None = None
    capacity: list[SlotUsage] | None = None  # None: no capacity records (yet)


# --- the report -----------------------------------------------------------------------------------------


class RequestClass(StrEnum):
    APPLIED = "applied"
    REJECTED = "rejected"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    WAITING = "waiting"
    IN_FLIGHT = "in_flight"
    LOST = "lost"
    DUPLICATED = "duplicated"
    UNEXPECTED = "unexpected"


TERMINAL = frozenset(
    {RequestClass.APPLIED, RequestClass.REJECTED, RequestClass.FAILED, RequestClass.DEAD_LETTERED}
)
PROBLEMS = frozenset({RequestClass.LOST, RequestClass.DUPLICATED, RequestClass.UNEXPECTED})


class Kind(StrEnum):
    """Stable violation codes."""

    LOST_REQUEST = "lost_request"
    DUPLICATED_EFFECT = "duplicated_effect"
    UNEXPECTED_REQUEST = "unexpected_request"
    EFFECT_WITHOUT_REQUEST = "effect_without_request"
    OUTCOME_MISMATCH = "outcome_mismatch"
    READ_STORE_MISSING = "read_store_missing"
    READ_STORE_EXTRA = "read_store_extra"
    READ_STORE_BEHIND = "read_store_behind"
    READ_STORE_AHEAD = "read_store_ahead"
    READ_STORE_DIVERGED = "read_store_diverged"
    VERSION_REGRESSION = "version_regression"
    VERSION_GAP = "version_gap"
    UNEXPLAINED_CHANGE = "unexplained_change"
    RESCHEDULE_COUNT_MISMATCH = "reschedule_count_mismatch"
    DEAD_LETTER_WITHOUT_REASON = "dead_letter_without_reason"
    OUTBOX_STUCK = "outbox_stuck"
    EVENT_NOT_CONSUMED = "event_not_consumed"
    CAPACITY_MISMATCH = "capacity_mismatch"
    LOST_UPDATE = "lost_update"


@dataclass(frozen=True)
class Verdict:
    tenant_id: str
    request_id: str
    appointment_id: str | None
    action: str | None
    cls: RequestClass
    reason: str | None = None  # reason code, dead-letter reason
    stage: str | None = None  # where a lost request stopped
    detail: str | None = None


@dataclass(frozen=True)
class Violation:
    kind: Kind
    tenant_id: str | None
    subject: str  # "request req-1", "appointment apt-7", "job job-3", "message <id>"
    detail: str


@dataclass
class Report:
    now: datetime
    verdicts: list[Verdict]
    violations: list[Violation]
    dead_letters: dict[str, dict[str, int]] | None  # queue -> reason -> count (None: not read)
    checked: dict[str, int]
    notes: list[str]

    @property
    def counts(self) -> dict[str, int]:
        counts = Counter(v.cls.value for v in self.verdicts)
        return {cls.value: counts.get(cls.value, 0) for cls in RequestClass}

    @property
    def ok(self) -> bool:
        return not self.violations

    def violations_of(self, *kinds: Kind) -> list[Violation]:
        return [v for v in self.violations if v.kind in kinds]

    def to_json(self, *, all_requests: bool = False) -> dict[str, Any]:
        shown = [v for v in self.verdicts if all_requests or v.cls not in TERMINAL | {RequestClass.WAITING}]
        return {
            "ok": self.ok,
            "now": self.now.isoformat(),
            "requests": self.counts,
            "violations_by_kind": dict(Counter(v.kind.value for v in self.violations)),
            "violations": [{**asdict(v), "kind": v.kind.value} for v in self.violations],
            "request_verdicts": [{**asdict(v), "cls": v.cls.value} for v in shown],
            "dead_letters": self.dead_letters,
            "checked": self.checked,
            "notes": self.notes,
        }


# --- classification (pure) ----------------------------------------------------------------------------


@dataclass
class _Trail:
    """Everything recorded about one request."""

    tenant_id: str
    request_id: str
    portal: RequestRow | None = None
    decision: DecisionRow | None = None
    gate_events: list[Event] = field(default_factory=list)
    handler_events: list[Event] = field(default_factory=list)
    dead_letters: list[DeadLetterRef] = field(default_factory=list)
    sent: SentRequest | None = None

    def of(self, events: list[Event], *types: str) -> list[Event]:
        return [e for e in events if e.type in types]

    @property
    def appointment_id(self) -> str | None:
        for source in (self.decision, self.portal, self.sent):
            if source is not None:
                return source.appointment_id
        for e in self.gate_events + self.handler_events:
            if e.appointment_id:
                return e.appointment_id
        return None

    @property
    def action(self) -> str | None:
        for source in (self.decision, self.portal, self.sent):
            if source is not None:
                return source.action
        return None

    def last_activity(self) -> datetime | None:
        times = [e.created_at for e in self.gate_events + self.handler_events]
        if self.portal is not None:
            times.append(self.portal.updated_at)
        if self.decision is not None:
            times.append(self.decision.decided_at)
        if self.sent is not None and self.sent.sent_at is not None:
            times.append(self.sent.sent_at)
        return max(times) if times else None


@dataclass(frozen=True)
class _Context:
    now: datetime
    grace: timedelta
    history_from: datetime  # events before this may have been purged from the outbox
    consumed: set[tuple[str, str]]
    dead_letters_read: bool
    manifest: bool

    def young(self, when: datetime | None) -> bool:
        return when is not None and self.now - when < self.grace

    def was_consumed(self, consumer: str, message_id: str) -> bool:
        return (consumer, message_id) in self.consumed


_PORTAL_STATUS = {
    RequestClass.APPLIED: "completed",
    RequestClass.REJECTED: "rejected",
    RequestClass.FAILED: "failed",
    RequestClass.WAITING: "awaiting_approval",
}


def _request_event_key(event: Event) -> Key | None:
    if event.type not in REQUEST_EVENTS or event.request_id is None:
        return None
    return (event.tenant_id, event.request_id)


def _dead_letter_for(trail: _Trail, *message_ids: str | None) -> DeadLetterRef | None:
    wanted = {m for m in message_ids if m}
    for letter in trail.dead_letters:
        if letter.message_id in wanted:
            return letter
    return None


def _pipeline_outcome(
    t: _Trail, ctx: _Context
) -> tuple[RequestClass, str | None, str | None, str | None, Event | None]:
    """What the source of truth says happened: (class, reason, stage, detail, the outcome event)."""
    d = t.decision
    refusals = t.of(t.gate_events, REJECTED)
    waits = t.of(t.gate_events, AWAITING)
    approvals = t.of(t.gate_events, APPROVED)
    effects = t.of(t.handler_events, *EFFECTS)
    failures = t.of(t.handler_events, FAILED)
    if d is None:
        letter = _dead_letter_for(t, t.sent.message_id if t.sent else None) or next(
            (x for x in t.dead_letters if x.type in (None, "modify.requested")), None
        )
        if letter is not None:
            return RequestClass.DEAD_LETTERED, letter.reason, letter.queue, None, None
        if t.sent is not None and ctx.was_consumed(GATE, t.sent.message_id):
            return (
                RequestClass.LOST,
                None,
                GATE,
                "the gate consumed the request but recorded no decision",
                None,
            )
        detail = "no decision by the gate" + ("" if ctx.dead_letters_read else " (dead letters not read)")
        return RequestClass.LOST, None, GATE, detail, None
    if d.outcome == "rejected":
        return RequestClass.REJECTED, d.reason_code, None, None, refusals[0] if refusals else None
    if d.outcome == "needs_approval":
        return RequestClass.WAITING, d.reason_code, None, None, waits[0] if waits else None
    if effects:
        return RequestClass.APPLIED, None, None, None, effects[0]
    if failures:
        return RequestClass.FAILED, failures[0].reason_code, None, None, failures[0]
    approval = approvals[0] if approvals else None
    letter = _dead_letter_for(t, approval.message_id if approval else None) or next(
        (x for x in t.dead_letters if x.type == APPROVED), None
    )
    if letter is not None:
        return RequestClass.DEAD_LETTERED, letter.reason, letter.queue, None, None
    if d.decided_at < ctx.history_from:
        # Events purged: the portal row is the only record left of what the scheduler did.
        by_portal = {"completed": RequestClass.APPLIED, "failed": RequestClass.FAILED}
        if t.portal is not None and t.portal.status in by_portal:
            return by_portal[t.portal.status], t.portal.reason_code, None, "history purged", None
    if approval is None:
        return RequestClass.LOST, None, GATE, "approved, but no approval event in the outbox", None
    if not approval.published:
        return RequestClass.LOST, None, f"{GATE} relay", "the approval event was never published", None
    if ctx.was_consumed(SCHEDULER, approval.message_id):
        detail = "the scheduler consumed the approval but recorded no outcome"
        return RequestClass.LOST, None, SCHEDULER, detail, None
    return RequestClass.LOST, None, f"broker -> {SCHEDULER}", "the approval was never consumed", None


def _classify(t: _Trail, ctx: _Context) -> tuple[Verdict, list[Violation]]:
    subject = f"request {t.request_id}"
    violations: list[Violation] = []

    def verdict(cls: RequestClass, reason=None, stage=None, detail=None) -> Verdict:
        return Verdict(t.tenant_id, t.request_id, t.appointment_id, t.action, cls, reason, stage, detail)

    effects = t.of(t.handler_events, *EFFECTS)
    failures = t.of(t.handler_events, FAILED)
    duplicated = [
        f"{len(events)} {name} events"
        for name, events in (
            ("effect", effects),
            ("failure", failures),
            ("approval", t.of(t.gate_events, APPROVED)),
            ("rejection", t.of(t.gate_events, REJECTED)),
        )
        if len(events) > 1
    ]
    if effects and failures:
        duplicated.append("both applied and failed")
    if duplicated:
        detail = ", ".join(duplicated)
        violations.append(Violation(Kind.DUPLICATED_EFFECT, t.tenant_id, subject, detail))
        return verdict(RequestClass.DUPLICATED, detail=detail), violations

    unexpected: list[tuple[Kind, str]] = []
    if ctx.manifest and t.sent is None:
        unexpected.append((Kind.UNEXPECTED_REQUEST, "not a request the portal sent"))
    if effects and (t.decision is None or t.decision.outcome != "approved"):
        outcome = t.decision.outcome if t.decision else "no decision"
        unexpected.append((Kind.EFFECT_WITHOUT_REQUEST, f"applied, but the gate's decision is {outcome}"))
    if (
        t.sent is not None
        and t.decision is not None
        and ((t.decision.appointment_id, t.decision.action) != (t.sent.appointment_id, t.sent.action))
    ):
        unexpected.append(
            (
                Kind.UNEXPECTED_REQUEST,
                f"decided {t.decision.action} of {t.decision.appointment_id}, "
                f"but sent {t.sent.action} of {t.sent.appointment_id}",
            )
        )
    if effects and t.appointment_id and effects[0].appointment_id != t.appointment_id:
        unexpected.append(
            (
                Kind.EFFECT_WITHOUT_REQUEST,
                f"applied to {effects[0].appointment_id}, asked for {t.appointment_id}",
            )
        )
    if unexpected:
        violations.extend(Violation(kind, t.tenant_id, subject, text) for kind, text in unexpected)
        return verdict(RequestClass.UNEXPECTED, detail="; ".join(text for _, text in unexpected)), violations

    cls, reason, stage, detail, outcome_event = _pipeline_outcome(t, ctx)
    portal = t.portal
    want = _PORTAL_STATUS.get(cls)
    if want is not None:
        shown = portal.status if portal else None
        agrees = shown == want and (
            cls not in (RequestClass.REJECTED, RequestClass.FAILED)
            or (portal is not None and portal.reason_code == reason)
        )
        if not agrees:
            if shown in TERMINAL_PORTAL:
                mismatch = (
                    f"the read store says {shown} ({portal.reason_code if portal else None}), "
                    f"the source of truth {want} ({reason})"
                )
                violations.append(Violation(Kind.OUTCOME_MISMATCH, t.tenant_id, subject, mismatch))
                return verdict(RequestClass.UNEXPECTED, reason, detail=mismatch), violations
            cls, stage, detail = _why_not_projected(t, outcome_event, ctx)
            if cls is RequestClass.DEAD_LETTERED:
                reason = detail
    elif cls in (RequestClass.LOST, RequestClass.DEAD_LETTERED) and portal is not None:
        if portal.status in TERMINAL_PORTAL:
            mismatch = f"the read store says {portal.status}, but the gate never decided it"
            violations.append(Violation(Kind.OUTCOME_MISMATCH, t.tenant_id, subject, mismatch))
            return verdict(RequestClass.UNEXPECTED, detail=mismatch), violations

    if cls is RequestClass.LOST:
        if ctx.young(t.last_activity()):
            return verdict(RequestClass.IN_FLIGHT, stage=stage, detail=detail), violations
        violations.append(Violation(Kind.LOST_REQUEST, t.tenant_id, subject, f"stopped at {stage}: {detail}"))
    return verdict(cls, reason, stage, detail), violations


def _why_not_projected(
    t: _Trail, outcome_event: Event | None, ctx: _Context
) -> tuple[RequestClass, str, str]:
    """The source of truth has an outcome the read store does not show: where did it stop?"""
    if outcome_event is None:
        return RequestClass.LOST, PROJECTOR, "outcome event not in the outbox (purged?)"
    if not outcome_event.published:
        return RequestClass.LOST, f"{outcome_event.producer} relay", "the outcome event was never published"
    letter = _dead_letter_for(t, outcome_event.message_id)
    if letter is not None:
        return RequestClass.DEAD_LETTERED, letter.queue, letter.reason
    if ctx.was_consumed(PROJECTOR, outcome_event.message_id):
        return RequestClass.LOST, PROJECTOR, "portal_sync consumed the outcome but the read store lacks it"
    return RequestClass.LOST, f"broker -> {PROJECTOR}", "the outcome event was never consumed"


def _trails(facts: Facts) -> dict[Key, _Trail]:
    trails: dict[Key, _Trail] = {}

    def trail(tenant_id: str, request_id: str) -> _Trail:
        key = (tenant_id, request_id)
        if key not in trails:
            trails[key] = _Trail(tenant_id, request_id)
        return trails[key]

    for r in facts.requests:
        trail(r.tenant_id, r.request_id).portal = r
    for d in facts.decisions:
        trail(d.tenant_id, d.request_id).decision = d
    for s in facts.sent or ():
        trail(s.tenant_id, s.request_id).sent = s
    for e in facts.events:
        key = _request_event_key(e)
        if key is None:
            continue
        target = trail(*key)
        (target.gate_events if e.producer == GATE else target.handler_events).append(e)
    if facts.dead_letters:
        by_id: dict[str, list[_Trail]] = defaultdict(list)
        for t in trails.values():
            if t.sent is not None:
                by_id[t.sent.message_id].append(t)
            for e in t.gate_events + t.handler_events:
                by_id[e.message_id].append(t)
        for letter in facts.dead_letters:
            owners = by_id.get(letter.message_id or "", [])
            if not owners and letter.correlation_id and letter.tenant_id:
                known = trails.get((letter.tenant_id, letter.correlation_id))
                owners = [known] if known is not None else []
            for owner in owners:
                owner.dead_letters.append(letter)
    return trails


def _compare_read_row(
    tenant_id: str,
    subject: str,
    t,
    r,
    ctx: "_Context",
    *,
    extra: str,
    missing: str,
    diverged_while_young: bool,
) -> list[Violation]:
    """One read-store row against its source of truth (either may be None): never ahead, not behind or
    missing once older than the grace, the same fields at the same version. `diverged_while_young`:
    a difference at the same version counts even within the grace."""
    if t is None:
        return [Violation(Kind.READ_STORE_EXTRA, tenant_id, subject, extra)]
    young = ctx.young(t.updated_at)
    if r is None:
        return [] if young else [Violation(Kind.READ_STORE_MISSING, tenant_id, subject, missing)]
    if r.version > t.version:
        return [
            Violation(Kind.READ_STORE_AHEAD, tenant_id, subject, f"read v{r.version} > truth v{t.version}")
        ]
    if r.version < t.version:
        behind = f"read v{r.version} < truth v{t.version}"
        return [] if young else [Violation(Kind.READ_STORE_BEHIND, tenant_id, subject, behind)]
    diff = t.differences(r)
    if not diff or (young and not diverged_while_young):
        return []
    detail = ", ".join(f"{f}: truth {getattr(t, f)} / read {getattr(r, f)}" for f in diff)
    return [Violation(Kind.READ_STORE_DIVERGED, tenant_id, subject, detail)]


def _check_appointments(
    facts: Facts, ctx: _Context, applied_reschedules: Counter
) -> tuple[list[Violation], int]:
    violations: list[Violation] = []
    truth = {(a.tenant_id, a.appointment_id): a for a in facts.truth_appointments}
    read = {(a.tenant_id, a.appointment_id): a for a in facts.read_appointments}
    history: dict[Key, list[Event]] = defaultdict(list)
    for e in facts.events:
        if e.type in APPOINTMENT_EVENTS and e.appointment is not None:
            history[(e.tenant_id, e.appointment.appointment_id)].append(e)
    for key in sorted(truth.keys() | read.keys()):
        tenant_id, appointment_id = key
        subject = f"appointment {appointment_id}"
        t, r = truth.get(key), read.get(key)
        violations += _compare_read_row(
            tenant_id,
            subject,
            t,
            r,
            ctx,
            extra="in the read store, not in the schedule",
            missing=f"schedule has v{t.version}" if t else "",
            diverged_while_young=True,
        )
        if t is None:
            continue
        violations.extend(_check_history(key, t, history.get(key, []), ctx))
        if facts.since is None and t.customer_reschedules is not None:
            applied = applied_reschedules.get(key, 0)
            if applied != t.customer_reschedules:
                violations.append(
                    Violation(
                        Kind.RESCHEDULE_COUNT_MISMATCH,
                        tenant_id,
                        subject,
                        f"customer_reschedules {t.customer_reschedules}, "
                        f"applied reschedule requests {applied}",
                    )
                )
    return violations, len(truth)


def _check_history(key: Key, truth: AppointmentState, events: list[Event], ctx: _Context) -> list[Violation]:
    """Versions only go up, one event per version, and the schedule's current state is the one its
    latest event announced (a change written without an event, or twice, shows here)."""
    tenant_id, appointment_id = key
    subject = f"appointment {appointment_id}"
    violations = []
    events = sorted(events, key=lambda e: e.id)
    versions = [e.appointment.version for e in events if e.appointment is not None]
    for before, after in pairwise(versions):
        if after <= before:
            violations.append(
                Violation(
                    Kind.VERSION_REGRESSION, tenant_id, subject, f"event v{after} written after v{before}"
                )
            )
    for e in events:
        if e.type in EFFECTS and e.request_id is None and e.initiated_by == "customer":
            violations.append(
                Violation(Kind.EFFECT_WITHOUT_REQUEST, tenant_id, subject, f"{e.type} without a request id")
            )
    complete = bool(versions) and min(versions) == 1 and ctx.history_from <= events[0].created_at
    if complete:
        missing = sorted(set(range(1, max(versions) + 1)) - set(versions))
        if missing:
            violations.append(
                Violation(Kind.VERSION_GAP, tenant_id, subject, f"no event for version(s) {missing[:10]}")
            )
    if not versions or (truth.updated_at is not None and truth.updated_at < ctx.history_from):
        return violations
    latest = {e.appointment.version: e.appointment for e in events if e.appointment is not None}
    announced = latest.get(truth.version)
    if announced is None:
        if truth.version > max(versions) and not ctx.young(truth.updated_at):
            violations.append(
                Violation(
                    Kind.UNEXPLAINED_CHANGE,
                    tenant_id,
                    subject,
                    f"schedule at v{truth.version}, latest event v{max(versions)}",
                )
            )
    elif diff := truth.differences(announced):
        violations.append(
            Violation(
                Kind.UNEXPLAINED_CHANGE,
                tenant_id,
                subject,
                f"schedule differs from its v{truth.version} event in {', '.join(diff)}",
            )
        )
    return violations


def _check_jobs(facts: Facts, ctx: _Context) -> tuple[list[Violation], int]:
    violations: list[Violation] = []
    truth = {(j.tenant_id, j.job_id): j for j in facts.truth_jobs}
    read = {(j.tenant_id, j.job_id): j for j in facts.read_jobs}
    for key in sorted(truth.keys() | read.keys()):
        tenant_id, job_id = key
        subject = f"job {job_id}"
        t, r = truth.get(key), read.get(key)
        violations += _compare_read_row(
            tenant_id,
            subject,
            t,
            r,
            ctx,
            extra="not in the schedule",
            missing=f"truth v{t.version}" if t else "",
            diverged_while_young=False,
        )
    job_events: dict[Key, list[Event]] = defaultdict(list)
    for e in facts.events:
        if e.type == JOB_CHANGED and e.job is not None:
            job_events[(e.tenant_id, e.job.job_id)].append(e)
    for (tenant_id, job_id), events in job_events.items():
        versions = [e.job.version for e in sorted(events, key=lambda e: e.id) if e.job is not None]
        for before, after in pairwise(versions):
            if after <= before:
                violations.append(
                    Violation(
                        Kind.VERSION_REGRESSION, tenant_id, f"job {job_id}", f"event v{after} after v{before}"
                    )
                )
    return violations, len(truth)


def _check_outbox(facts: Facts, ctx: _Context) -> list[Violation]:
    """Every event got published, and every published event reached the worker that consumes it."""
    violations = []
    letters = {x.message_id for x in facts.dead_letters or () if x.message_id}
    for e in facts.events:
        subject = f"message {e.message_id}"
        if not e.published:
            if not ctx.young(e.created_at):
                violations.append(
                    Violation(
                        Kind.OUTBOX_STUCK, e.tenant_id, subject, f"{e.type} by {e.producer} unpublished"
                    )
                )
            continue
        consumer = SCHEDULER if e.type == APPROVED else PROJECTOR
        if ctx.was_consumed(consumer, e.message_id) or e.message_id in letters or ctx.young(e.created_at):
            continue
        if e.created_at >= ctx.history_from:
            violations.append(
                Violation(Kind.EVENT_NOT_CONSUMED, e.tenant_id, subject, f"{e.type} never reached {consumer}")
            )
    return violations


def _undone(effect: Event, truth: AppointmentState) -> bool:
    """Is what the customer's request did gone from the schedule (its window, or its cancel)?"""
    done = effect.appointment
    assert done is not None
    if effect.type == CANCELED:
        return truth.status != "canceled"
    return (truth.window_start, truth.window_end) != (done.window_start, done.window_end)


def _knew_of(later: Event, version: int) -> bool:
    """A later change that explains a customer's change being gone: another customer change, or an
    office record built on (at or past) the customer's version: a deliberate change."""
    if later.type in EFFECTS and later.request_id is not None:
        return True
    return later.based_on_version is not None and later.based_on_version >= version


def check_lost_updates(facts: Facts, ctx: "_Context") -> list[Violation]:
    """A completed request whose effect is gone from the schedule, with no later deliberate change that
    explains it: a lost update (an office record that did not know of it put the old state back).
    Only where the history after the effect is still in the outbox."""
    truth = {(a.tenant_id, a.appointment_id): a for a in facts.truth_appointments}
    history: dict[Key, list[Event]] = defaultdict(list)
    for event in facts.events:
        if event.appointment is not None:
            history[(event.tenant_id, event.appointment.appointment_id)].append(event)
    violations = []
    for key, events in history.items():
        current = truth.get(key)
        if current is None:
            continue
        events = sorted(events, key=lambda e: e.appointment.version)  # type: ignore[union-attr]
        for n, effect in enumerate(events):
            if effect.type not in EFFECTS or effect.request_id is None or effect.initiated_by != "customer":
                continue
            version = effect.appointment.version  # type: ignore[union-attr]
            if current.version == version or not _undone(effect, current):
                continue
            later = events[n + 1 :]
            if current.version > max(e.appointment.version for e in events):  # type: ignore[union-attr]
                continue  # the change that undid it is not in the history (yet): UNEXPLAINED_CHANGE's
            if any(_knew_of(e, version) for e in later):
                continue
            violations.append(
                Violation(
                    Kind.LOST_UPDATE,
                    key[0],
                    f"appointment {key[1]}",
                    f"request {effect.request_id} completed at v{version}, undone by v{current.version} "
                    "with no later change that knew of it",
                )
            )
    return violations


def check_capacity(facts: Facts) -> list[Violation]:
    """Capacity accounting: a slot's `booked` equals the active appointments holding it, never above its
    capacity. `gather` reads scheduling.capacity_windows; None (tests' hand-made facts) means not checked."""
    violations = []
    for slot in facts.capacity or ():
        if slot.booked != slot.held or slot.booked > slot.capacity:
            violations.append(
                Violation(
                    Kind.CAPACITY_MISMATCH,
                    slot.tenant_id,
                    f"slot {slot.slot_key}",
                    f"booked {slot.booked}, held by {slot.held} appointment(s), capacity {slot.capacity}",
                )
            )
    return violations


def reconcile(facts: Facts, *, grace_s: float = 0.0, retention_s: float = 3600.0) -> Report:
    """Classify every request and check the schedule, the read store, the outbox and dead letters.

    `grace_s`: unfinished work younger than this is in flight, not lost (0 after quiescence).
    `retention_s`: the workers' outbox retention; older history may be gone, so checks that need it skip.
    """
    history_from = facts.now - timedelta(seconds=retention_s)
    if facts.since is not None:
        history_from = max(history_from, facts.since)
    ctx = _Context(
        now=facts.now,
        grace=timedelta(seconds=grace_s),
        history_from=history_from,
        consumed=facts.consumed,
        dead_letters_read=facts.dead_letters is not None,
        manifest=facts.sent is not None,
    )
    verdicts: list[Verdict] = []
    violations: list[Violation] = []
    applied_reschedules: Counter = Counter()
    trails = _trails(facts)
    for key in sorted(trails):
        verdict, found = _classify(trails[key], ctx)
        verdicts.append(verdict)
        violations.extend(found)
        if verdict.cls is RequestClass.APPLIED and verdict.action == "reschedule" and verdict.appointment_id:
            applied_reschedules[(verdict.tenant_id, verdict.appointment_id)] += 1
    appointment_violations, appointments = _check_appointments(facts, ctx, applied_reschedules)
    job_violations, jobs = _check_jobs(facts, ctx)
    violations += appointment_violations + job_violations + _check_outbox(facts, ctx) + check_capacity(facts)
    violations += check_lost_updates(facts, ctx)
    dead_letter_counts = None
    if facts.dead_letters is not None:
        dead_letter_counts = {}
        for letter in facts.dead_letters:
            per_queue = dead_letter_counts.setdefault(letter.queue, {})
            per_queue[letter.reason] = per_queue.get(letter.reason, 0) + 1
            if not letter.reason or letter.reason == "unknown":
                violations.append(
                    Violation(
                        Kind.DEAD_LETTER_WITHOUT_REASON,
                        letter.tenant_id,
                        f"message {letter.message_id}",
                        f"in {letter.queue} without a reason header",
                    )
                )
    notes = []
    if facts.dead_letters is None:
        notes.append("dead letters not read: a dead-lettered request shows as lost")
    if facts.since is not None:
        notes.append(f"since {facts.since.isoformat()}: reschedule counts and version gaps not checked")
    if facts.capacity is None:
        notes.append("capacity not checked: the schedule has no arrival-window capacity records yet")
    return Report(
        now=facts.now,
        verdicts=verdicts,
        violations=violations,
        dead_letters=dead_letter_counts,
        checked={
            "requests": len(verdicts),
            "appointments": appointments,
            "jobs": jobs,
            "events": len(facts.events),
            "dead_letters": len(facts.dead_letters or ()),
        },
        notes=notes,
    )


# --- rendering ----------------------------------------------------------------------------------------


def render(report: Report, *, limit: int = 50) -> str:
    counts = report.counts
    lines = [
        "requests: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v or k in ("lost", "duplicated")),
        "checked: " + ", ".join(f"{k} {v}" for k, v in report.checked.items()),
    ]
    if report.dead_letters:
        for queue, reasons in sorted(report.dead_letters.items()):
            lines.append(
                f"dead letters in {queue}: " + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
            )
    for note in report.notes:
        lines.append(f"note: {note}")
    if report.ok:
        lines.append("reconcile: OK (no violation)")
        return "\n".join(lines)
    by_kind = Counter(v.kind.value for v in report.violations)
    lines.append(
        f"reconcile: {len(report.violations)} VIOLATION(S): "
        + ", ".join(f"{k} {n}" for k, n in by_kind.items())
    )
    for v in report.violations[:limit]:
        lines.append(f"  {v.kind.value:<26} {v.tenant_id or '-'} {v.subject}: {v.detail}")
    if len(report.violations) > limit:
        lines.append(f"  ... {len(report.violations) - limit} more (use --json for all)")
    return "\n".join(lines)


# --- the edge: PostgreSQL and RabbitMQ ----------------------------------------------------------------


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _snapshot(tenant_id: str, s: dict) -> AppointmentState:
    return AppointmentState(
        tenant_id=tenant_id,
        appointment_id=s["appointment_id"],
        job_id=s["job_id"],
        customer_id=s["customer_id"],
        project_id=s.get("project_id"),
        business_unit=s["business_unit"],
        job_type=s["job_type"],
        window_start=_time(s["window"]["start"]),
        window_end=_time(s["window"]["end"]),
        status=s["status"],
        confirmation=s["confirmation"],
        version=s["version"],
    )


def event_from_row(row: Any) -> Event:
    """An outbox row (id, message_id, producer, message_type, tenant_id, correlation_id, published_at,
    created_at, body) with the payload fields the checks use."""
    base = dict(
        id=row.id,
        message_id=str(row.message_id),
        producer=row.producer,
        type=row.message_type,
        tenant_id=row.tenant_id,
        correlation_id=row.correlation_id,
        published=row.published_at is not None,
        created_at=row.created_at,
    )
    try:
        payload = json.loads(bytes(row.body)).get("payload") or {}
    except (ValueError, AttributeError):
        return Event(**base)
    kind = row.message_type
    if kind == APPROVED:
        return Event(
            **base,
            request_id=row.correlation_id,
            appointment_id=payload.get("appointment_id"),
            action=(payload.get("change") or {}).get("action"),
        )
    if kind in (REJECTED, AWAITING, FAILED):
        return Event(
            **base,
            request_id=payload.get("request_id"),
            appointment_id=payload.get("appointment_id"),
            action=payload.get("action"),
            reason_code=payload.get("reason_code"),
        )
    if kind in APPOINTMENT_EVENTS:
        snapshot = _snapshot(row.tenant_id, payload["appointment"])
        return Event(
            **base,
            request_id=payload.get("request_id"),
            appointment_id=snapshot.appointment_id,
            action={RESCHEDULED: "reschedule", CANCELED: "cancel"}.get(kind),
            initiated_by=payload.get("initiated_by"),
            appointment=snapshot,
            based_on_version=payload.get("based_on_version"),
        )
    if kind == JOB_CHANGED:
        return Event(
            **base,
            job=JobState(
                tenant_id=row.tenant_id,
                job_id=payload["job_id"],
                customer_id=payload["customer_id"],
                status=payload["status"],
                version=payload["version"],
                active_appointments=payload["active_appointments"],
            ),
        )
    return Event(**base)


def dead_letter_ref(letter: Any) -> DeadLetterRef:
    """An `apptctl.dlq.DeadLetter` as the checker sees it (tenant from the header or the body, if any)."""
    headers = letter.headers or {}
    tenant = headers.get("x-tenant-id")
    message_type = letter.properties.get("type")
    if tenant is None or message_type is None:
        try:
            body = json.loads(letter.body)
            if isinstance(body, dict):
                tenant = tenant or body.get("tenant_id")
                message_type = message_type or body.get("type")
        except ValueError:
            pass
    if isinstance(tenant, bytes):
        tenant = tenant.decode("utf-8", "replace")
    return DeadLetterRef(
        queue=letter.queue,
        message_id=letter.message_id,
        reason=letter.reason,
        correlation_id=letter.properties.get("correlation_id"),
        tenant_id=tenant if isinstance(tenant, str) else None,
        type=message_type if isinstance(message_type, str) else None,
    )


def load_manifest(path: Path) -> list[SentRequest]:
    """JSON lines: {"tenant_id", "request_id", "message_id", "appointment_id", "action", "sent_at"?}."""
    sent = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        sent.append(
            SentRequest(
                tenant_id=item["tenant_id"],
                request_id=item["request_id"],
                message_id=str(item["message_id"]),
                appointment_id=item["appointment_id"],
                action=item["action"],
                sent_at=_time(item.get("sent_at")),
            )
        )
    return sent


def write_manifest(path: Path, sent: Iterable[SentRequest]) -> None:
    with path.open("w") as out:
        for s in sent:
            item = {**asdict(s), "sent_at": s.sent_at.isoformat() if s.sent_at else None}
            out.write(json.dumps(item) + "\n")


def _chunks(items: Sequence, size: int = 5000) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def gather(
    engine: Any,
    *,
    tenants: Sequence[str] | None = None,
    since: datetime | None = None,
    dead_letters: list[DeadLetterRef] | None = None,
    sent: list[SentRequest] | None = None,
) -> Facts:
    """Read what the database recorded, scoped to `tenants` (all when None) and to rows touched since
    `since` (all when None)."""
    from sqlalchemy import and_, func, or_, select, true

    from infra.db.tables import (
        appointments,
        decisions,
        inbox,
        jobs,
        outbox,
        portal_appointments,
        portal_jobs,
        portal_requests,
    )

    if tenants is not None:
        tenants = list(tenants)
        if sent is not None:
            sent = [s for s in sent if s.tenant_id in tenants]
        if dead_letters is not None:
            dead_letters = [x for x in dead_letters if x.tenant_id in tenants or x.tenant_id is None]

    def scoped(table, *time_columns):
        conditions = []
        if tenants is not None:
            conditions.append(table.c.tenant_id.in_(tenants))
        if since is not None and time_columns:
            conditions.append(or_(*(c >= since for c in time_columns)))
        return and_(true(), *conditions)

    async with engine.connect() as conn:
        now = (await conn.execute(select(func.now()))).scalar_one()
        facts = Facts(now=now, since=since, dead_letters=dead_letters, sent=sent)
        r = portal_requests
        for row in await conn.execute(
            select(
                r.c.tenant_id, r.c.request_id, r.c.appointment_id, r.c.action, r.c.status, r.c.reason_code,
                r.c.updated_at,
            ).where(scoped(r, r.c.requested_at, r.c.updated_at))
        ):  # fmt: skip
            facts.requests.append(RequestRow(*row))
        d = decisions
        for row in await conn.execute(
            select(
                d.c.tenant_id, d.c.request_id, d.c.message_id, d.c.appointment_id, d.c.action, d.c.outcome,
                d.c.reason_code, d.c.decided_at,
            ).where(scoped(d, d.c.decided_at))
        ):  # fmt: skip
            facts.decisions.append(DecisionRow(row[0], row[1], str(row[2]), *row[3:]))
        o = outbox
        rows = await conn.execute(
            select(
                o.c.id, o.c.message_id, o.c.producer, o.c.message_type, o.c.tenant_id, o.c.correlation_id,
                o.c.published_at, o.c.created_at, o.c.body,
            )
            .where(scoped(o, o.c.created_at), o.c.producer.in_((GATE, SCHEDULER)))
            .order_by(o.c.id)
        )  # fmt: skip
        facts.events = [event_from_row(row) for row in rows]

        def appointment_state(row, truth: bool) -> AppointmentState:
            return AppointmentState(
                tenant_id=row.tenant_id,
                appointment_id=row.appointment_id,
                job_id=row.job_id,
                customer_id=row.customer_id,
                project_id=row.project_id,
                business_unit=row.business_unit,
                job_type=row.job_type,
                window_start=row.window_start,
                window_end=row.window_end,
                status=row.status,
                confirmation=row.confirmation,
                version=row.version,
                updated_at=row.updated_at,
                customer_reschedules=row.customer_reschedules if truth else None,
            )

        facts.truth_appointments = [
            appointment_state(row, True)
            for row in await conn.execute(
                select(*_columns(appointments, truth=True)).where(
                    scoped(appointments, appointments.c.updated_at)
                )
            )
        ]
        facts.read_appointments = [
            appointment_state(row, False)
            for row in await conn.execute(
                select(*_columns(portal_appointments, truth=False)).where(
                    scoped(portal_appointments, portal_appointments.c.updated_at)
                )
            )
        ]
        await _complete_pairs(conn, facts, appointments, portal_appointments, appointment_state)
        active = func.count().filter(appointments.c.status.in_(ACTIVE_STATUSES))
        counts = {
            (row.tenant_id, row.job_id): row.active
            for row in await conn.execute(
                select(appointments.c.tenant_id, appointments.c.job_id, active.label("active"))
                .where(scoped(appointments))
                .group_by(appointments.c.tenant_id, appointments.c.job_id)
            )
        }
        facts.truth_jobs = [
            JobState(
                row.tenant_id, row.job_id, row.customer_id, row.status, row.version,
                counts.get((row.tenant_id, row.job_id), 0), row.updated_at,
            )
            for row in await conn.execute(select(*_job_columns(jobs)).where(scoped(jobs, jobs.c.updated_at)))
        ]  # fmt: skip
        facts.read_jobs = [
            JobState(
                row.tenant_id, row.job_id, row.customer_id, row.status, row.version,
                row.active_appointments, row.updated_at,
            )
            for row in await conn.execute(
                select(*_job_columns(portal_jobs, "active_appointments")).where(
                    scoped(portal_jobs, portal_jobs.c.updated_at)
                )
            )
        ]  # fmt: skip
        ids = {e.message_id for e in facts.events} | {x.message_id for x in facts.decisions}
        ids |= {s.message_id for s in sent or ()}
        for chunk in _chunks(sorted(ids)):
            rows = await conn.execute(
                select(inbox.c.consumer, inbox.c.message_id).where(inbox.c.message_id.in_(list(chunk)))
            )
            facts.consumed.update((consumer, str(message_id)) for consumer, message_id in rows)
        facts.capacity = await _capacity(conn, tenants)
    return facts


def _columns(table, *, truth: bool) -> list:
    """Only the columns the checks read, so a database a migration behind (or ahead) still reconciles."""
    names = ["tenant_id", "updated_at", *AppointmentState.COMPARED, "appointment_id"]
    if truth:
        names.append("customer_reschedules")
    return [table.c[name] for name in names]


def _job_columns(table, *extra: str) -> list:
    return [
        table.c[name]
        for name in ("tenant_id", "job_id", "customer_id", "status", "version", "updated_at", *extra)
    ]


async def _complete_pairs(conn, facts: Facts, truth_table, read_table, build) -> None:
    """With `since`, a row touched on one side only still needs its counterpart to be compared."""
    from sqlalchemy import select

    if facts.since is None:
        return
    for rows, have, table, truth in (
        (facts.truth_appointments, facts.read_appointments, read_table, False),
        (facts.read_appointments, facts.truth_appointments, truth_table, True),
    ):
        known = {(a.tenant_id, a.appointment_id) for a in have}
        wanted: dict[str, list[str]] = defaultdict(list)
        for a in rows:
            if (a.tenant_id, a.appointment_id) not in known:
                wanted[a.tenant_id].append(a.appointment_id)
        for tenant_id, ids in wanted.items():
            for chunk in _chunks(ids):
                result = await conn.execute(
                    select(*_columns(table, truth=truth)).where(
                        table.c.tenant_id == tenant_id, table.c.appointment_id.in_(list(chunk))
                    )
                )
                have.extend(build(row, truth) for row in result)


async def _capacity(conn, tenants: Sequence[str] | None) -> list[SlotUsage] | None:
    """Each arrival window's capacity, its `booked` counter and the appointments holding a place in it
    (scheduling.capacity_windows, migration 0004)."""
    from sqlalchemy import and_, func, select

    from infra.db.tables import appointments, capacity_windows

    held = (
        select(
            appointments.c.tenant_id,
            appointments.c.business_unit,
            appointments.c.zone,
            appointments.c.window_start,
            func.count().label("held"),
        )
        .where(appointments.c.holds_place)
        .group_by(
            appointments.c.tenant_id,
            appointments.c.business_unit,
            appointments.c.zone,
            appointments.c.window_start,
        )
        .subquery()
    )
    w = capacity_windows
    statement = select(
        w.c.tenant_id, w.c.business_unit, w.c.zone, w.c.starts_at, w.c.capacity, w.c.booked,
        func.coalesce(held.c.held, 0),
    ).select_from(
        w.outerjoin(
            held,
            and_(
                held.c.tenant_id == w.c.tenant_id,
                held.c.business_unit == w.c.business_unit,
                held.c.zone == w.c.zone,
                held.c.window_start == w.c.starts_at,
            ),
        )
    )  # fmt: skip
    if tenants:
        statement = statement.where(w.c.tenant_id.in_(list(tenants)))
    rows = await conn.execute(statement)
    return [
        SlotUsage(tenant, f"{unit}/{zone or '-'}/{starts.isoformat()}", capacity, booked, count)
        for tenant, unit, zone, starts, capacity, booked, count in rows
    ]


async def read_dead_letters(amqp_url: str, namespace: str) -> list[DeadLetterRef]:
    """Every dead letter of the namespace, left where it is (taken without ack, handed back)."""
    from apptctl import dlq
    from infra.nodes import connect_first
    from infra.topology import build

    # the queues work queues dead-letter into (not every queue without a worker is one)
    queues = sorted({spec.dead_letter_queue for spec in build(namespace).queues if spec.dead_letter_queue})
    connection = await connect_first(amqp_url, client_properties={"connection_name": "apptctl-reconcile"})
    async with connection:
        sweep = await dlq.read(connection, queues)
    return [dead_letter_ref(letter) for letter in sweep.letters]


async def check(
    engine: Any,
    *,
    amqp_url: str | None = None,
    namespace: str | None = None,
    tenants: Sequence[str] | None = None,
    since: datetime | None = None,
    sent: list[SentRequest] | None = None,
    dead_letters: list[DeadLetterRef] | None = None,
    grace_s: float = 0.0,
    retention_s: float = 3600.0,
    dead_letters_required: bool = True,
) -> Report:
    """Gather and reconcile. Dead letters are read from the namespace's queues when `amqp_url` and
    `namespace` are given and `dead_letters` is not; with `dead_letters_required=False` an unreachable
    broker is a note in the report (dead-lettered requests then show as lost), not an error."""
    unread: str | None = None
    if dead_letters is None and amqp_url is not None and namespace is not None:
        try:
            dead_letters = await read_dead_letters(amqp_url, namespace)
        except Exception as exc:
            if dead_letters_required:
                raise
            unread = f"{type(exc).__name__}: {exc}"[:200]
    facts = await gather(engine, tenants=tenants, since=since, dead_letters=dead_letters, sent=sent)
    report = reconcile(facts, grace_s=grace_s, retention_s=retention_s)
    if unread is not None:
        report.notes = [
            n.replace("dead letters not read", f"dead letters not read (RabbitMQ: {unread})")
            for n in report.notes
        ]
    return report


class DatabaseUnavailable(Exception):
    pass


class BadSince(ValueError):
    pass


def parse_since(text: str, now: datetime) -> datetime:
    """`--since`: an ISO 8601 time with a timezone, or an age such as 90s, 15m, 2h, 7d."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    value = text.strip()
    if value[:-1].isdigit() and value[-1:] in units:
        return now - timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise BadSince(
            f"--since {text!r}: give an ISO 8601 time with a timezone or an age like 15m"
        ) from None
    if when.tzinfo is None:
        raise BadSince(f"--since {text!r} has no timezone: add one, e.g. {value}+00:00")
    return when


async def run(
    settings: Any,
    *,
    tenants: Sequence[str] | None,
    since: str | None,
    sent_path: Path | None,
    grace_s: float,
    read_dlq: bool,
) -> Report:
    """`apptctl reconcile`: the settings' database and namespace, checked as of now."""
    from datetime import UTC

    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    when = parse_since(since, datetime.now(UTC)) if since else None
    sent = load_manifest(sent_path) if sent_path else None
    engine = create_async_engine(settings.database_url, poolclass=NullPool, connect_args={"timeout": 10})
    try:
        async with engine.connect():
            pass
    except Exception as exc:
        await engine.dispose()
        why = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        raise DatabaseUnavailable(
            f"PostgreSQL is unreachable at DATABASE_URL ({why}): start it (`bash infra/services.sh`), "
            "check DATABASE_URL, run `apptctl migrate`"
        ) from None
    try:
        return await check(
            engine,
            amqp_url=settings.amqp_url if read_dlq else None,
            namespace=settings.namespace,
            tenants=tenants or None,
            since=when,
            sent=sent,
            grace_s=grace_s,
            retention_s=settings.outbox_retention_s,
            dead_letters_required=False,
        )
    finally:
        await engine.dispose()
