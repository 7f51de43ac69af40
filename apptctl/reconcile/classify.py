"""Classification, pure: the facts -> each request's class and every violation (`reconcile`)."""

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise

from apptctl.reconcile.facts import (
    APPOINTMENT_EVENTS,
    APPROVED,
    AWAITING,
    CANCELED,
    EFFECTS,
    FAILED,
    GATE,
    JOB_CHANGED,
    PROJECTOR,
    REJECTED,
    REQUEST_EVENTS,
    SCHEDULER,
    TERMINAL_PORTAL,
    AppointmentState,
    DeadLetterRef,
    DecisionRow,
    Event,
    Facts,
    Key,
    RequestRow,
    SentRequest,
)
from apptctl.reconcile.report import Kind, Report, RequestClass, Verdict, Violation
from contracts.common import AppointmentStatus, ModifyAction
from workers.policy_gate.rules import Outcome


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
    if d.outcome == Outcome.REJECTED:
        return RequestClass.REJECTED, d.reason_code, None, None, refusals[0] if refusals else None
    if d.outcome == Outcome.NEEDS_APPROVAL:
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
    if effects and (t.decision is None or t.decision.outcome != Outcome.APPROVED):
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
        return RequestClass.LOST, PROJECTOR, f"{PROJECTOR} consumed the outcome but the read store lacks it"
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
        return truth.status != AppointmentStatus.CANCELED
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
        if (
            verdict.cls is RequestClass.APPLIED
            and verdict.action == ModifyAction.RESCHEDULE
            and verdict.appointment_id
        ):
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
