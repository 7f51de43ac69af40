"""The reconciler's classification, pure: hand-built facts in, request classes and violations out.

A `World` records what a correct pipeline would (portal rows, decisions, outbox events, inbox entries,
schedule and read store); the property tests check that any consistent world reconciles clean and that
every single kind of corruption is caught."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apptctl.reconcile import (
    AppointmentState,
    BadSince,
    DeadLetterRef,
    DecisionRow,
    Event,
    Facts,
    JobState,
    Kind,
    RequestClass,
    RequestRow,
    SentRequest,
    SlotUsage,
    parse_since,
    reconcile,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(minutes=10)
T = "acme"


class World:
    """What a correct pipeline leaves behind, built step by step."""

    def __init__(self) -> None:
        self.facts = Facts(now=NOW, dead_letters=[], sent=[])
        self._ids = count(1)
        self.truth: dict[str, AppointmentState] = {}
        self.read: dict[str, AppointmentState] = {}

    def _event(self, producer: str, type_: str, correlation_id: str, **fields) -> Event:
        n = next(self._ids)
        event = Event(
            id=n,
            message_id=f"m-{n}",
            producer=producer,
            type=type_,
            tenant_id=T,
            correlation_id=correlation_id,
            published=True,
            created_at=LONG_AGO + timedelta(milliseconds=n),
            **fields,
        )
        self.facts.events.append(event)
        consumer = "modify_handler" if type_ == "modify.approved" else "portal_sync"
        self.facts.consumed.add((consumer, event.message_id))
        return event

    def book(self, appointment_id: str, job_id: str = "job-1") -> None:
        state = AppointmentState(
            tenant_id=T,
            appointment_id=appointment_id,
            job_id=job_id,
            customer_id="cust-1",
            project_id=None,
            business_unit="hvac",
            job_type="repair",
            window_start=NOW + timedelta(days=3),
            window_end=NOW + timedelta(days=3, hours=2),
            status="scheduled",
            confirmation="confirmed",
            version=1,
            updated_at=LONG_AGO,
            customer_reschedules=0,
        )
        self._set(state)
        self._event(
            "modify_handler",
            "appointment.updated",
            f"book-{appointment_id}",
            initiated_by="office",
            appointment=state,
        )

    def _set(self, state: AppointmentState) -> None:
        self.truth[state.appointment_id] = state
        self.read[state.appointment_id] = replace(state, customer_reschedules=None)
        self.facts.truth_appointments = list(self.truth.values())
        self.facts.read_appointments = list(self.read.values())

    def request(self, request_id: str, appointment_id: str, action: str, outcome: str) -> None:
        message_id = f"req-msg-{request_id}"
        self.facts.sent.append(SentRequest(T, request_id, message_id, appointment_id, action, LONG_AGO))
        self.facts.consumed |= {("policy_gate", message_id), ("portal_sync", message_id)}
        if outcome == "dead_lettered":
            self.facts.dead_letters.append(
                DeadLetterRef(
                    "appt.policy_gate.dead", message_id, "handler_error", request_id, T, "modify.requested"
                )
            )
            self._portal(request_id, appointment_id, action, "pending")
            return
        decided = {"applied": "approved", "failed": "approved", "waiting": "needs_approval"}.get(
            outcome, outcome
        )
        reason = {"rejected": "same_window", "failed": "appointment_changed"}.get(outcome)
        if outcome == "waiting":
            reason = "awaiting_office_approval"
        self.facts.decisions.append(
            DecisionRow(T, request_id, message_id, appointment_id, action, decided, reason, LONG_AGO)
        )
        ids = dict(request_id=request_id, appointment_id=appointment_id, action=action)
        if decided == "rejected":
            self._event("policy_gate", "modify.rejected", request_id, reason_code=reason, **ids)
            self._portal(request_id, appointment_id, action, "rejected", reason)
            return
        if decided == "needs_approval":
            self._event("policy_gate", "modify.awaiting_approval", request_id, reason_code=reason, **ids)
            self._portal(request_id, appointment_id, action, "awaiting_approval", reason)
            return
        self._event("policy_gate", "modify.approved", request_id, **ids)
        if outcome == "failed":
            self._event("modify_handler", "modify.failed", request_id, reason_code=reason, **ids)
            self._portal(request_id, appointment_id, action, "failed", reason)
            return
        current = self.truth[appointment_id]
        if action == "reschedule":
            new = replace(
                current,
                window_start=current.window_start + timedelta(days=1),
                window_end=current.window_end + timedelta(days=1),
                version=current.version + 1,
                customer_reschedules=current.customer_reschedules + 1,
            )
        else:
            new = replace(current, status="canceled", version=current.version + 1)
        self._set(new)
        event_type = "appointment.rescheduled" if action == "reschedule" else "appointment.canceled"
        self._event(
            "modify_handler", event_type, request_id, request_id=request_id, appointment_id=appointment_id,
            action=action, initiated_by="customer", appointment=new,
        )  # fmt: skip
        self._portal(request_id, appointment_id, action, "completed")

    def _portal(self, request_id, appointment_id, action, status, reason=None) -> None:
        self.facts.requests = [r for r in self.facts.requests if r.request_id != request_id]
        self.facts.requests.append(
            RequestRow(T, request_id, appointment_id, action, status, reason, LONG_AGO)
        )

    def office_record(self, appointment_id: str, based_on: int | None, **fields) -> None:
        """The office records the appointment (its `fields` changed), built on version `based_on`."""
        current = self.truth[appointment_id]
        new = replace(current, version=current.version + 1, **fields)
        self._set(new)
        self._event(
            "modify_handler", "appointment.updated", f"office-{new.version}", initiated_by="office",
            appointment=new, based_on_version=based_on,
        )  # fmt: skip

    def job(self, job_id: str = "job-1", active: int = 1) -> None:
        job = JobState(T, job_id, "cust-1", "scheduled", 1, active, LONG_AGO)
        self.facts.truth_jobs.append(job)
        self.facts.read_jobs.append(job)


def one_appointment_world(outcome: str, action: str = "reschedule") -> World:
    world = World()
    world.book("apt-1")
    world.job()
    world.request("req-1", "apt-1", action, outcome)
    return world


def verdict_of(report, request_id: str = "req-1"):
    return next(v for v in report.verdicts if v.request_id == request_id)


@pytest.mark.parametrize(
    ("outcome", "action", "cls", "reason"),
    [
        ("applied", "reschedule", RequestClass.APPLIED, None),
        ("applied", "cancel", RequestClass.APPLIED, None),
        ("rejected", "reschedule", RequestClass.REJECTED, "same_window"),
        ("failed", "cancel", RequestClass.FAILED, "appointment_changed"),
        ("waiting", "cancel", RequestClass.WAITING, "awaiting_office_approval"),
        ("dead_lettered", "cancel", RequestClass.DEAD_LETTERED, "handler_error"),
    ],
)
def test_every_outcome_of_a_consistent_request_is_classified_without_a_violation(
    outcome, action, cls, reason
):
    report = reconcile(one_appointment_world(outcome, action).facts)
    assert report.violations == []
    assert (verdict_of(report).cls, verdict_of(report).reason) == (cls, reason)


def test_a_request_the_gate_never_decided_is_lost_at_the_gate_or_in_flight_within_the_grace():
    world = World()
    world.book("apt-1")
    world.facts.sent.append(SentRequest(T, "req-1", "msg-1", "apt-1", "cancel", LONG_AGO))
    world.facts.requests.append(RequestRow(T, "req-1", "apt-1", "cancel", "pending", None, LONG_AGO))
    lost = reconcile(world.facts)
    assert (verdict_of(lost).cls, verdict_of(lost).stage) == (RequestClass.LOST, "policy_gate")
    assert [v.kind for v in lost.violations] == [Kind.LOST_REQUEST]
    assert verdict_of(reconcile(world.facts, grace_s=3600)).cls is RequestClass.IN_FLIGHT


def test_a_sent_request_nobody_recorded_is_lost_and_one_the_gate_consumed_says_so():
    world = World()
    world.facts.sent.append(SentRequest(T, "req-1", "msg-1", "apt-1", "cancel", LONG_AGO))
    assert verdict_of(reconcile(world.facts)).detail == "no decision by the gate"
    world.facts.consumed.add(("policy_gate", "msg-1"))
    assert "consumed the request but recorded no decision" in verdict_of(reconcile(world.facts)).detail


@pytest.mark.parametrize(
    ("consumed", "published", "stage"),
    [
        (False, False, "policy_gate relay"),
        (False, True, "broker -> modify_handler"),
        (True, True, "modify_handler"),
    ],
)
def test_an_approval_without_an_outcome_is_lost_where_it_stopped(consumed, published, stage):
    world = one_appointment_world("failed", "cancel")
    world.facts.events = [e for e in world.facts.events if e.type != "modify.failed"]
    world.facts.requests = [replace(r, status="pending", reason_code=None) for r in world.facts.requests]
    approval = next(e for e in world.facts.events if e.type == "modify.approved")
    world.facts.events = [replace(e, published=published) if e is approval else e for e in world.facts.events]
    if not consumed:
        world.facts.consumed.discard(("modify_handler", approval.message_id))
    report = reconcile(world.facts)
    assert (verdict_of(report).cls, verdict_of(report).stage) == (RequestClass.LOST, stage)


def test_an_outcome_the_read_store_never_got_is_lost_at_portal_sync_or_dead_lettered_there():
    world = one_appointment_world("rejected")
    world.facts.requests = [replace(r, status="pending", reason_code=None) for r in world.facts.requests]
    refusal = next(e for e in world.facts.events if e.type == "modify.rejected")
    world.facts.consumed.discard(("portal_sync", refusal.message_id))
    assert verdict_of(reconcile(world.facts)).stage == "broker -> portal_sync"
    world.facts.dead_letters.append(
        DeadLetterRef("appt.portal_sync.dead", refusal.message_id, "handler_error")
    )
    verdict = verdict_of(reconcile(world.facts))
    assert (verdict.cls, verdict.reason) == (RequestClass.DEAD_LETTERED, "handler_error")


def test_two_effects_for_one_request_are_a_duplicate():
    world = one_appointment_world("applied")
    effect = next(e for e in world.facts.events if e.type == "appointment.rescheduled")
    world.facts.events.append(replace(effect, id=999, message_id="m-999"))
    report = reconcile(world.facts)
    assert verdict_of(report).cls is RequestClass.DUPLICATED
    assert Kind.DUPLICATED_EFFECT in {v.kind for v in report.violations}


def test_an_effect_without_an_approval_and_a_request_nobody_sent_are_unexpected():
    world = one_appointment_world("applied")
    world.facts.decisions = [replace(d, outcome="rejected") for d in world.facts.decisions]
    report = reconcile(world.facts)
    assert verdict_of(report).cls is RequestClass.UNEXPECTED
    assert Kind.EFFECT_WITHOUT_REQUEST in {v.kind for v in report.violations}

    world = one_appointment_world("rejected")
    world.facts.sent = []
    report = reconcile(world.facts)
    assert [v.kind for v in report.violations] == [Kind.UNEXPECTED_REQUEST]


def test_a_read_store_outcome_that_differs_from_the_source_of_truth_is_a_mismatch():
    world = one_appointment_world("rejected")
    world.facts.requests = [replace(r, status="completed", reason_code=None) for r in world.facts.requests]
    report = reconcile(world.facts)
    assert [v.kind for v in report.violations] == [Kind.OUTCOME_MISMATCH]


def test_the_read_store_is_compared_with_the_schedule_field_by_field_and_by_version():
    world = one_appointment_world("applied")
    read = world.read["apt-1"]
    cases = {
        Kind.READ_STORE_BEHIND: replace(read, version=read.version - 1),
        Kind.READ_STORE_AHEAD: replace(read, version=read.version + 1),
        Kind.READ_STORE_DIVERGED: replace(read, status="canceled"),
    }
    for kind, wrong in cases.items():
        facts = replace(world.facts, read_appointments=[wrong])
        assert kind in {v.kind for v in reconcile(facts).violations}, kind
    assert Kind.READ_STORE_MISSING in {
        v.kind for v in reconcile(replace(world.facts, read_appointments=[])).violations
    }
    extra = replace(read, appointment_id="apt-ghost")
    facts = replace(world.facts, read_appointments=[read, extra])
    assert Kind.READ_STORE_EXTRA in {v.kind for v in reconcile(facts).violations}


def test_a_read_store_that_is_behind_on_a_fresh_change_is_in_flight_within_the_grace():
    world = one_appointment_world("applied")
    fresh = replace(world.truth["apt-1"], updated_at=NOW - timedelta(seconds=1))
    behind = replace(world.read["apt-1"], version=1)
    facts = replace(world.facts, truth_appointments=[fresh], read_appointments=[behind])
    assert Kind.READ_STORE_BEHIND not in {v.kind for v in reconcile(facts, grace_s=30).violations}
    assert Kind.READ_STORE_BEHIND in {v.kind for v in reconcile(facts).violations}


def test_versions_that_go_back_or_skip_and_changes_without_events_are_caught():
    world = one_appointment_world("applied")
    updated = next(e for e in world.facts.events if e.type == "appointment.updated")
    world.facts.events.append(replace(updated, id=1000, message_id="m-1000"))  # v1 again, after v2
    assert Kind.VERSION_REGRESSION in {v.kind for v in reconcile(world.facts).violations}

    world = one_appointment_world("applied")
    changed = replace(world.truth["apt-1"], version=4)
    world._set(changed)
    kinds = {v.kind for v in reconcile(world.facts).violations}
    assert Kind.UNEXPLAINED_CHANGE in kinds


def test_more_customer_reschedules_than_applied_requests_is_a_duplicated_or_unrequested_change():
    world = one_appointment_world("applied")
    world._set(replace(world.truth["apt-1"], customer_reschedules=2))
    report = reconcile(world.facts)
    assert [v.kind for v in report.violations] == [Kind.RESCHEDULE_COUNT_MISMATCH]
    assert "customer_reschedules 2, applied reschedule requests 1" in report.violations[0].detail


def test_unpublished_and_unconsumed_events_and_dead_letters_without_reason_are_violations():
    world = one_appointment_world("rejected")
    refusal = next(e for e in world.facts.events if e.type == "modify.rejected")
    world.facts.events = [replace(e, published=False) if e is refusal else e for e in world.facts.events]
    assert Kind.OUTBOX_STUCK in {v.kind for v in reconcile(world.facts).violations}

    world = one_appointment_world("applied")
    updated = next(e for e in world.facts.events if e.type == "appointment.updated")
    world.facts.consumed.discard(("portal_sync", updated.message_id))
    assert Kind.EVENT_NOT_CONSUMED in {v.kind for v in reconcile(world.facts).violations}

    world = one_appointment_world("applied")
    world.facts.dead_letters.append(DeadLetterRef("appt.portal_sync.dead", "x", "unknown"))
    assert [v.kind for v in reconcile(world.facts).violations] == [Kind.DEAD_LETTER_WITHOUT_REASON]


def test_capacity_hook_flags_a_slot_whose_booked_count_differs_from_the_appointments_holding_it():
    world = one_appointment_world("applied")
    assert any("capacity not checked" in n for n in reconcile(world.facts).notes)
    world.facts.capacity = [SlotUsage(T, "hvac/''/2026-12-01T09", 2, 2, 2), SlotUsage(T, "hvac/b", 2, 2, 1)]
    report = reconcile(world.facts)
    assert [(v.kind, v.subject) for v in report.violations] == [(Kind.CAPACITY_MISMATCH, "slot hvac/b")]


def test_a_stale_job_row_in_the_read_store_is_reported():
    world = one_appointment_world("rejected")
    world.job(active=1)
    world.facts.read_jobs = [replace(j, active_appointments=2) for j in world.facts.read_jobs]
    report = reconcile(world.facts)
    assert {v.kind for v in report.violations} == {Kind.READ_STORE_DIVERGED}


def test_since_accepts_aware_times_and_ages_and_refuses_the_rest():
    assert parse_since("15m", NOW) == NOW - timedelta(minutes=15)
    assert parse_since("2d", NOW) == NOW - timedelta(days=2)
    assert parse_since("2026-11-24T10:00:00+00:00", NOW) == datetime(2026, 11, 24, 10, tzinfo=UTC)
    for bad in ("2026-11-24T10:00:00", "yesterday", "15x"):
        with pytest.raises(BadSince):
            parse_since(bad, NOW)


def test_the_json_report_lists_only_problem_requests_unless_asked_for_all():
    world = one_appointment_world("applied")
    world.facts.sent.append(SentRequest(T, "req-2", "msg-2", "apt-1", "cancel", LONG_AGO))
    data = reconcile(world.facts).to_json()
    assert data["ok"] is False
    assert data["requests"]["lost"] == 1 and data["requests"]["applied"] == 1
    assert [v["request_id"] for v in data["request_verdicts"]] == ["req-2"]
    assert data["violations_by_kind"] == {"lost_request": 1}
    assert len(reconcile(world.facts).to_json(all_requests=True)["request_verdicts"]) == 2


# --- properties: consistent worlds are clean; any one corruption is caught ------------------------------

OUTCOMES = st.sampled_from(["applied", "rejected", "failed", "waiting", "dead_lettered"])
REQUESTS = st.lists(
    st.tuples(st.integers(0, 4), st.sampled_from(["reschedule", "cancel"]), OUTCOMES), min_size=1, max_size=12
)


def build(requests) -> World:
    world = World()
    for n in range(5):
        world.book(f"apt-{n}", f"job-{n}")
    canceled: set[int] = set()
    for i, (n, action, outcome) in enumerate(requests):
        if n in canceled and outcome == "applied":
            outcome = "rejected"  # a canceled appointment is not modifiable
        world.request(f"req-{i}", f"apt-{n}", action, outcome)
        if outcome == "applied" and action == "cancel":
            canceled.add(n)
    return world


@settings(max_examples=60, deadline=None)
@given(REQUESTS)
def test_any_consistent_world_reconciles_clean(requests):
    report = reconcile(build(requests).facts)
    assert report.violations == []
    assert report.counts["lost"] == report.counts["duplicated"] == report.counts["unexpected"] == 0


def _corruptions(world: World):
    facts = world.facts
    effects = [e for e in facts.events if e.type in ("appointment.rescheduled", "appointment.canceled")]
    terminal = [r for r in facts.requests if r.status in ("rejected", "completed", "failed")]
    if terminal:
        yield (
            "drop a terminal portal row",
            replace(facts, requests=[r for r in facts.requests if r != terminal[0]]),
        )
    if effects:
        dup = replace(effects[0], id=10_000, message_id="m-dup")
        yield "duplicate an effect", replace(facts, events=[*facts.events, dup])
        yield (
            "drop the decision of an applied request",
            replace(facts, decisions=[d for d in facts.decisions if d.request_id != effects[0].request_id]),
        )
    read = facts.read_appointments[0]
    yield (
        "read store ahead",
        replace(
            facts, read_appointments=[replace(read, version=read.version + 1), *facts.read_appointments[1:]]
        ),
    )
    yield (
        "read store diverged",
        replace(
            facts,
            read_appointments=[
                replace(read, window_end=read.window_end + timedelta(minutes=30)),
                *facts.read_appointments[1:],
            ],
        ),
    )
    truth = facts.truth_appointments[0]
    yield (
        "extra customer reschedule",
        replace(
            facts,
            truth_appointments=[
                replace(truth, customer_reschedules=truth.customer_reschedules + 1),
                *facts.truth_appointments[1:],
            ],
        ),
    )
    yield (
        "an event never published",
        replace(facts, events=[replace(facts.events[-1], published=False), *facts.events[:-1]]),
    )
    yield (
        "an event never consumed",
        replace(facts, consumed=facts.consumed - {("portal_sync", facts.events[0].message_id)}),
    )


@settings(max_examples=40, deadline=None)
@given(REQUESTS)
def test_every_single_corruption_of_a_consistent_world_is_caught(requests):
    for what, corrupted in _corruptions(build(requests)):
        assert reconcile(corrupted).violations, what


# --- lost updates: a completed request's effect gone with no later change that knew of it -------------


def moved_then_office(based_on: int | None, *, back: bool, action: str = "reschedule") -> World:
    world = one_appointment_world("applied", action)  # the customer's change is version 2
    booked = World()
    booked.book("apt-1")
    original = booked.truth["apt-1"]
    fields = dict(confirmation="unconfirmed")
    if back:
        fields |= dict(window_start=original.window_start, window_end=original.window_end, status="scheduled")
    world.office_record("apt-1", based_on, **fields)
    return world


@pytest.mark.parametrize("action", ["reschedule", "cancel"])
def test_an_office_record_that_did_not_know_of_a_completed_change_and_undid_it_is_a_lost_update(action):
    report = reconcile(moved_then_office(1, back=True, action=action).facts)
    (found,) = report.violations_of(Kind.LOST_UPDATE)
    assert "request req-1 completed at v2, undone by v3" in found.detail
    assert verdict_of(report).cls is RequestClass.APPLIED  # the request did complete: its effect is lost


@pytest.mark.parametrize(
    ("based_on", "back"),
    [
        pytest.param(2, True, id="built-on-the-customer-change: deliberate"),
        pytest.param(1, False, id="did-not-know-but-left-the-change-alone"),
        pytest.param(None, False, id="version-1-record-that-agrees"),
    ],
)
def test_a_later_change_that_knew_of_it_or_left_it_alone_is_no_lost_update(based_on, back):
    assert not reconcile(moved_then_office(based_on, back=back).facts).violations_of(Kind.LOST_UPDATE)


def test_a_later_customer_change_explains_an_earlier_one_being_gone():
    world = one_appointment_world("applied")
    world.request("req-2", "apt-1", "reschedule", "applied")  # moves it on again: req-1's window is gone
    assert not reconcile(world.facts).violations_of(Kind.LOST_UPDATE)
