"""The portal's offer timeline: it must equal the gate's answer at every later moment."""

import dataclasses
import itertools
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.common import AppointmentStatus
from contracts.portal_v1 import Cancel, Reschedule
from contracts.reasons import RejectionCode
from tests.unit.test_policy_rules import (
    CUSTOMER,
    NOW,
    OPEN,
    PROJECT_LEAD,
    SUBCONTRACTOR,
    US,
    business,
    cancel,
    effective,
    facts,
    known_facts,
    layer_sets,
    project,
    run,
    window,
)
from workers.modify_handler import domain as scheduling
from workers.modify_handler.domain import Appointment
from workers.policy_gate.offering import cancel_rules, contacts_of
from workers.policy_gate.offers import ActionOffer, change_points, offer_timeline, segment_at
from workers.policy_gate.rules import AppointmentFacts, Outcome, check_action, facts_after
from workers.policy_gate.settings import resolve

ACTIONS = ("reschedule", "cancel")


def gate_answer(appointment, settings, moment) -> tuple[ActionOffer, ActionOffer]:
    return tuple(
        ActionOffer.of(
            check_action(
                requester_id=appointment.customer_id,
                action=action,
                facts=appointment,
                settings=settings,
                now=moment,
            )
        )
        for action in ACTIONS
    )


def offered_at(timeline, moment) -> tuple[ActionOffer, ActionOffer]:
    segment = segment_at(timeline, moment)
    return segment.reschedule, segment.cancel


def test_an_open_appointment_is_offered_until_its_notice_window_closes() -> None:
    appointment = facts(window=window(NOW + timedelta(days=3)))
    settings = effective(business(reschedule={"min_notice_hours": 24}, cancel={"min_notice_hours": 48}))
    timeline = offer_timeline(appointment, settings, NOW)
    start = appointment.window.start
    assert [(s.valid_from, s.valid_until) for s in timeline] == [
        (None, start - timedelta(hours=48)),
        (start - timedelta(hours=48), start - timedelta(hours=24)),
        (start - timedelta(hours=24), None),
    ]
    first, second, last = timeline
    assert first.reschedule.offered and first.cancel.offered and first.modify_offered
    assert second.reschedule.offered and not second.cancel.offered
    assert second.cancel.reason_code == RejectionCode.NOTICE_WINDOW_PASSED
    assert "48 hours" in second.cancel.reason
    assert not last.modify_offered
    assert last.reschedule.reason_code == RejectionCode.NOTICE_WINDOW_PASSED


def test_self_service_off_is_one_segment_with_the_reason() -> None:
    (only,) = offer_timeline(facts(), effective(), NOW)
    assert (only.valid_from, only.valid_until) == (None, None)
    assert not only.modify_offered
    assert only.reschedule.reason_code == only.cancel.reason_code == RejectionCode.SELF_SERVICE_DISABLED


def test_a_blocked_status_offers_nothing_from_now_on() -> None:
    dispatched = dataclasses.replace(facts(), status=AppointmentStatus.DISPATCHED)
    (only,) = offer_timeline(dispatched, effective(business()), NOW)
    assert only.reschedule.reason_code == RejectionCode.APPOINTMENT_NOT_MODIFIABLE
    assert only.cancel.reason_code == RejectionCode.APPOINTMENT_NOT_MODIFIABLE


def test_approval_is_offered_and_marked() -> None:
    settings = effective(
        business(reschedule={"confirmed": "require_approval", "unconfirmed": "require_approval"})
    )
    first = offer_timeline(facts(), settings, NOW)[0]
    assert first.reschedule == ActionOffer(True, True, None, None)
    assert first.cancel == ActionOffer(True, False, None, None)


def test_a_project_beyond_the_horizon_becomes_reschedulable_as_time_passes() -> None:
    """Not offered now (no date within the horizon), offered later: time can also open an action."""
    starts = NOW + timedelta(days=20)
    appointment = facts(
        window=window(NOW + timedelta(days=25)),
        project=project(starts_at=starts, ends_at=starts + timedelta(days=30)),
    )
    settings = effective(business(reschedule={"max_horizon_days": 7}))
    timeline = offer_timeline(appointment, settings, NOW)
    assert not timeline[0].reschedule.offered
    assert timeline[0].reschedule.reason_code == RejectionCode.NEW_WINDOW_TOO_FAR
    opens = starts - timedelta(days=7)
    assert segment_at(timeline, opens - US).reschedule.offered is False
    assert segment_at(timeline, opens).reschedule.offered is True


def test_computing_again_later_gives_the_same_timeline_when_nothing_changed() -> None:
    appointment = facts(window=window(NOW + timedelta(days=3)))
    settings = effective(business(reschedule={"min_notice_hours": 24}))
    assert offer_timeline(appointment, settings, NOW) == offer_timeline(
        appointment, settings, NOW + timedelta(hours=5)
    )


def test_a_moment_before_the_timeline_was_computed_is_still_covered_by_its_first_segment() -> None:
    timeline = offer_timeline(facts(), effective(business()), NOW)
    assert segment_at(timeline, NOW - timedelta(days=1)) is timeline[0]


@pytest.mark.parametrize("hours", [0, 1, 24])
def test_change_points_include_each_notice_window(hours: int) -> None:
    appointment = facts()
    settings = effective(business(reschedule={"min_notice_hours": hours}))
    assert appointment.window.start - timedelta(hours=hours) in change_points(appointment, settings)


# --- the property: the portal's offer equals the gate's answer, at any later moment -----------------

later = st.one_of(
    st.integers(0, 45 * 24 * 60).map(lambda m: timedelta(minutes=m)),
    st.integers(0, 45 * 24).map(lambda h: timedelta(hours=h)),
)


@settings(max_examples=400, deadline=None)
@given(appointment=known_facts, layers=layer_sets(friendly=True), offset=later, data=st.data())
def test_the_offer_equals_the_gate_at_every_later_moment(appointment, layers, offset, data) -> None:
    appointment = dataclasses.replace(appointment, customer_id=CUSTOMER)
    settings_ = resolve(layers)
    timeline = offer_timeline(appointment, settings_, NOW)
    # Segments are contiguous, ordered, and start open-ended.
    assert timeline[0].valid_from is None and timeline[-1].valid_until is None
    for before, after in itertools.pairwise(timeline):
        assert before.valid_until == after.valid_from and before.valid_until > NOW
    moments = [NOW, NOW + offset]
    for point in change_points(appointment, settings_):
        if point >= NOW:
            moments += [point, point + US] + ([point - US] if point - US >= NOW else [])
    for moment in moments:
        assert offered_at(timeline, moment) == gate_answer(appointment, settings_, moment), moment


@settings(max_examples=200, deadline=None)
@given(appointment=known_facts, layers=layer_sets(), offset=later)
def test_the_offer_equals_the_gate_for_any_settings(appointment, layers, offset) -> None:
    appointment = dataclasses.replace(appointment, customer_id=CUSTOMER)
    settings_ = resolve(layers)
    timeline = offer_timeline(appointment, settings_, NOW)
    for moment in (NOW, NOW + offset):
        assert offered_at(timeline, moment) == gate_answer(appointment, settings_, moment)


def test_the_offer_carries_the_cancel_terms_the_gate_checks() -> None:
    """The list the portal offers is the list the gate accepts: each listed reason passes, others don't."""
    reasons = ["Tenant moved out", "Work no longer needed"]
    settings = effective(business(cancel={"reason_required": True, "allowed_reasons": reasons}))
    rules = cancel_rules(settings)
    assert rules.reason_required is True and rules.allowed_reasons == reasons
    for reason in rules.allowed_reasons:
        assert run(change=cancel(reason), config=settings).outcome is Outcome.APPROVED
    assert run(change=cancel("Other"), config=settings).reason_code == RejectionCode.CANCEL_REASON_NOT_ALLOWED
    assert run(change=cancel(None), config=settings).reason_code == RejectionCode.CANCEL_REASON_REQUIRED
    assert cancel_rules(effective(business())).model_dump() == {
        "reason_required": False,
        "allowed_reasons": None,
    }


def test_the_offer_names_the_project_contacts_the_gate_lets_act() -> None:
    appointment = facts(project=project(contacts=frozenset({PROJECT_LEAD, SUBCONTRACTOR})))
    assert contacts_of(appointment) == sorted([PROJECT_LEAD, SUBCONTRACTOR])
    for contact in contacts_of(appointment):
        assert run(requester_id=contact, appointment=appointment, config=OPEN).outcome is Outcome.APPROVED
    assert run(requester_id="stranger-1", appointment=appointment, config=OPEN).outcome is Outcome.REJECTED
    assert contacts_of(facts(project=None)) == []


# --- the offer an approval carries (issue 14) --------------------------------------------------------


def _scheduled(appointment: AppointmentFacts) -> Appointment:
    """The scheduling worker's view of the same appointment."""
    return Appointment(
        tenant_id="t-1",
        appointment_id=appointment.appointment_id,
        job_id="job-1",
        customer_id=appointment.customer_id,
        business_unit=appointment.business_unit,
        job_type=appointment.job_type,
        project_id=appointment.project_id,
        window=appointment.window,
        status=appointment.status,
        confirmation=appointment.confirmation,
        version=appointment.version,
    )


@pytest.mark.parametrize("change", [Reschedule(new_window=window(NOW + timedelta(days=5))), Cancel()])
def test_the_state_an_approval_leaves_is_the_one_the_schedule_writes(change) -> None:
    """`facts_after` (the gate's offer for the approved state) mirrors modify_handler's domain: window,
    status and version as it applies the change, and one more customer reschedule for a reschedule."""
    before = facts(customer_reschedules=1)
    after = facts_after(before, change)
    scheduled = (
        scheduling.reschedule(_scheduled(before), change.new_window, NOW)
        if isinstance(change, Reschedule)
        else scheduling.cancel(_scheduled(before))
    )
    assert (after.window, after.status, after.confirmation, after.version) == (
        scheduled.window,
        scheduled.status,
        scheduled.confirmation,
        scheduled.version,
    )
    assert after.customer_reschedules == 1 + isinstance(change, Reschedule)
    assert (
        dataclasses.replace(
            after,
            window=before.window,
            status=before.status,
            version=before.version,
            customer_reschedules=before.customer_reschedules,
        )
        == before
    )


def test_an_approved_reschedule_that_reaches_the_limit_is_offered_no_more() -> None:
    settings = effective(business(reschedule={"max_customer_reschedules": 1}))
    after = facts_after(facts(), Reschedule(new_window=window(NOW + timedelta(days=5))))
    (only,) = offer_timeline(after, settings, NOW)[:1]
    assert (
        not only.reschedule.offered and only.reschedule.reason_code == RejectionCode.RESCHEDULE_LIMIT_REACHED
    )
    assert only.cancel.offered
    canceled = facts_after(facts(), Cancel())
    assert not offer_timeline(canceled, settings, NOW)[0].modify_offered
