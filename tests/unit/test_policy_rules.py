"""Policy gate rules: every rule, their precedence, and properties of decide() over generated inputs."""

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation
from contracts.office_v1 import ActionRules, ConfirmationRule, Permission
from contracts.portal_v1 import Cancel, Reschedule
from contracts.reasons import STATUS_PHRASE, RejectionCode
from workers.policy_gate.rules import AppointmentFacts, Decision, PortalSettings, decide

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))

CUSTOMER = "cust-1"
PROJECT_LEAD = "lead-1"
SUBCONTRACTOR = "sub-1"
STRANGER = "stranger-9"

ALLOW = Permission.ALLOW
DENY = Permission.DENY


def window(start: datetime, hours: float = 2) -> ArrivalWindow:
    return ArrivalWindow(start=start, end=start + timedelta(hours=hours))


CURRENT_WINDOW = window(NOW + timedelta(days=3))
NEW_WINDOW = window(NOW + timedelta(days=5))


def rules(
    *,
    reschedule_confirmed: Permission = ALLOW,
    reschedule_unconfirmed: Permission = ALLOW,
    cancel_confirmed: Permission = ALLOW,
    cancel_unconfirmed: Permission = ALLOW,
) -> ActionRules:
    return ActionRules(
        reschedule=ConfirmationRule(confirmed=reschedule_confirmed, unconfirmed=reschedule_unconfirmed),
        cancel=ConfirmationRule(confirmed=cancel_confirmed, unconfirmed=cancel_unconfirmed),
    )


ALLOW_ALL = rules()


def facts(**overrides) -> AppointmentFacts:
    values = dict(
        appointment_id="appt-1",
        customer_id=CUSTOMER,
        project_contacts=frozenset({PROJECT_LEAD, SUBCONTRACTOR}),
        status=AppointmentStatus.SCHEDULED,
        confirmation=Confirmation.UNCONFIRMED,
        window=CURRENT_WINDOW,
        version=4,
    )
    values.update(overrides)
    return AppointmentFacts(**values)


def settings(*, enabled: bool = True, action_rules: ActionRules = ALLOW_ALL) -> PortalSettings:
    return PortalSettings(feature_enabled=enabled, rules=action_rules, settings_version=7)


DEFAULT_FACTS = facts()
DEFAULT_SETTINGS = settings()


def reschedule_to(new_window: ArrivalWindow = NEW_WINDOW) -> Reschedule:
    return Reschedule(new_window=new_window)


def cancel() -> Cancel:
    return Cancel(reason="We found another plumber.")


def run(
    *,
    requester_id: str = CUSTOMER,
    change: Reschedule | Cancel | None = None,
    appointment: AppointmentFacts | None = DEFAULT_FACTS,
    portal: PortalSettings | None = DEFAULT_SETTINGS,
    now: datetime = NOW,
) -> Decision:
    return decide(
        requester_id=requester_id,
        change=reschedule_to() if change is None else change,
        facts=appointment,
        settings=portal,
        now=now,
    )


def assert_customer_sentence(text: str | None) -> None:
    assert isinstance(text, str)
    assert text.strip() == text and text
    assert "{" not in text and "}" not in text, f"unfilled template in {text!r}"
    assert "None" not in text
    assert text[0].isupper(), text
    assert text.endswith("."), text


def assert_rejected(decision: Decision, code: RejectionCode, rule: str | None = None) -> None:
    assert decision.approved is False
    assert decision.reason_code == code.value
    if rule is not None:
        assert decision.rule == rule
    assert_customer_sentence(decision.reason_text)


def assert_approved(decision: Decision) -> None:
    assert decision == Decision(True, "all_rules_passed"), decision


BOTH_CHANGES = pytest.mark.parametrize("change", [reschedule_to(), cancel()], ids=["reschedule", "cancel"])


# --- ownership -----------------------------------------------------------------------------------


@BOTH_CHANGES
@pytest.mark.parametrize(
    ("requester_id", "appointment", "may_act"),
    [
        pytest.param(CUSTOMER, facts(), True, id="customer"),
        pytest.param(PROJECT_LEAD, facts(), True, id="project-lead"),
        pytest.param(SUBCONTRACTOR, facts(), True, id="subcontractor"),
        pytest.param(STRANGER, facts(), False, id="stranger"),
        pytest.param(
            CUSTOMER, facts(project_contacts=frozenset()), True, id="customer-of-appointment-without-project"
        ),
        pytest.param(
            PROJECT_LEAD,
            facts(project_contacts=frozenset()),
            False,
            id="contact-of-another-project-on-appointment-without-project",
        ),
        pytest.param("CUST-1", facts(), False, id="customer-id-in-other-case-is-a-stranger"),
        pytest.param("appt-1", facts(), False, id="appointment-id-is-not-a-requester"),
        pytest.param(CUSTOMER, None, False, id="unknown-appointment"),
    ],
)
def test_ownership(
    change: Reschedule | Cancel, requester_id: str, appointment: AppointmentFacts | None, may_act: bool
) -> None:
    decision = run(requester_id=requester_id, change=change, appointment=appointment)
    if may_act:
        assert_approved(decision)
    else:
        assert_rejected(decision, RejectionCode.APPOINTMENT_NOT_FOUND, "ownership")


# --- feature switch ------------------------------------------------------------------------------


@BOTH_CHANGES
@pytest.mark.parametrize(
    "portal",
    [
        pytest.param(None, id="no-settings-stored"),
        pytest.param(settings(enabled=False), id="disabled-with-everything-allowed"),
        pytest.param(settings(enabled=False, action_rules=ActionRules()), id="disabled-with-defaults"),
    ],
)
@pytest.mark.parametrize("requester_id", [CUSTOMER, PROJECT_LEAD], ids=["customer", "project-lead"])
def test_feature_switch_off(
    change: Reschedule | Cancel, portal: PortalSettings | None, requester_id: str
) -> None:
    decision = run(requester_id=requester_id, change=change, portal=portal)
    assert_rejected(decision, RejectionCode.SELF_SERVICE_DISABLED, "feature_switch")


@BOTH_CHANGES
def test_enabled_with_default_rules_denies_everything(change: Reschedule | Cancel) -> None:
    decision = run(change=change, portal=settings(action_rules=ActionRules()))
    assert_rejected(decision, RejectionCode.UNCONFIRMED_CHANGE_BLOCKED, f"{change.action}.unconfirmed")


# --- appointment status --------------------------------------------------------------------------

NOT_MODIFIABLE = [s for s in AppointmentStatus if s is not AppointmentStatus.SCHEDULED]


@BOTH_CHANGES
@pytest.mark.parametrize("status", NOT_MODIFIABLE, ids=[s.value for s in NOT_MODIFIABLE])
def test_status_other_than_scheduled_is_not_modifiable(
    change: Reschedule | Cancel, status: AppointmentStatus
) -> None:
    decision = run(change=change, appointment=facts(status=status))
    assert_rejected(decision, RejectionCode.APPOINTMENT_NOT_MODIFIABLE, "appointment_status")
    assert f"already {STATUS_PHRASE[status.value]}" in decision.reason_text


def test_not_modifiable_statuses_cover_every_status_but_scheduled() -> None:
    assert {*NOT_MODIFIABLE, AppointmentStatus.SCHEDULED} == set(AppointmentStatus)


@BOTH_CHANGES
def test_scheduled_is_modifiable(change: Reschedule | Cancel) -> None:
    assert_approved(run(change=change, appointment=facts(status=AppointmentStatus.SCHEDULED)))


# --- action x confirmation permission ------------------------------------------------------------


def only_cell(action: str, confirmation: Confirmation, permission: Permission) -> ActionRules:
    """Rules where the one cell under test has `permission` and every other cell the opposite, so the
    test fails if decide() reads the wrong cell."""
    other = DENY if permission is ALLOW else ALLOW
    cells = {
        f"{a}_{c.value}": (permission if (a, c) == (action, confirmation) else other)
        for a in ("reschedule", "cancel")
        for c in Confirmation
    }
    return rules(**cells)


PERMISSION_CASES = [
    pytest.param(action, confirmation, permission, id=f"{action}-{confirmation.value}-{permission.value}")
    for action in ("reschedule", "cancel")
    for confirmation in Confirmation
    for permission in Permission
]


@pytest.mark.parametrize(("action", "confirmation", "permission"), PERMISSION_CASES)
def test_permission_per_action_and_confirmation(
    action: str, confirmation: Confirmation, permission: Permission
) -> None:
    change = reschedule_to() if action == "reschedule" else cancel()
    decision = run(
        change=change,
        appointment=facts(confirmation=confirmation),
        portal=settings(action_rules=only_cell(action, confirmation, permission)),
    )
    if permission is ALLOW:
        assert_approved(decision)
        return
    expected = (
        RejectionCode.CONFIRMED_CHANGE_BLOCKED
        if confirmation is Confirmation.CONFIRMED
        else RejectionCode.UNCONFIRMED_CHANGE_BLOCKED
    )
    assert_rejected(decision, expected, f"{action}.{confirmation.value}")
    past = {"reschedule": "rescheduled", "cancel": "canceled"}[action]
    assert f"can't be {past} online" in decision.reason_text


# --- the new window (reschedule only) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("new_window", "now", "expected"),
    [
        pytest.param(window(NOW - timedelta(days=1)), NOW, RejectionCode.NEW_WINDOW_IN_PAST, id="yesterday"),
        pytest.param(
            window(NOW - timedelta(hours=1), hours=3),
            NOW,
            RejectionCode.NEW_WINDOW_IN_PAST,
            id="started-an-hour-ago-still-open",
        ),
        pytest.param(window(NOW), NOW, RejectionCode.NEW_WINDOW_IN_PAST, id="starts-exactly-now"),
        pytest.param(
            window(NOW.astimezone(PLUS_TWO)),
            NOW,
            RejectionCode.NEW_WINDOW_IN_PAST,
            id="starts-exactly-now-other-timezone",
        ),
        pytest.param(window(NOW + timedelta(microseconds=1)), NOW, None, id="one-microsecond-ahead"),
        pytest.param(window(NOW + timedelta(days=1)), NOW, None, id="tomorrow"),
        pytest.param(CURRENT_WINDOW, NOW, RejectionCode.SAME_WINDOW, id="same-window"),
        pytest.param(
            ArrivalWindow(
                start=CURRENT_WINDOW.start.astimezone(PLUS_TWO), end=CURRENT_WINDOW.end.astimezone(PLUS_TWO)
            ),
            NOW,
            RejectionCode.SAME_WINDOW,
            id="same-window-written-in-other-timezone",
        ),
        pytest.param(
            ArrivalWindow(start=CURRENT_WINDOW.start, end=CURRENT_WINDOW.end + timedelta(hours=1)),
            NOW,
            None,
            id="same-start-longer-window",
        ),
        pytest.param(
            ArrivalWindow(start=CURRENT_WINDOW.start + timedelta(hours=1), end=CURRENT_WINDOW.end),
            NOW,
            None,
            id="later-start-same-end",
        ),
        pytest.param(
            CURRENT_WINDOW,
            CURRENT_WINDOW.start + timedelta(minutes=5),
            RejectionCode.NEW_WINDOW_IN_PAST,
            id="same-window-already-started-reports-past-first",
        ),
    ],
)
def test_reschedule_new_window(
    new_window: ArrivalWindow, now: datetime, expected: RejectionCode | None
) -> None:
    decision = run(change=reschedule_to(new_window), now=now)
    if expected is None:
        assert_approved(decision)
    else:
        assert_rejected(decision, expected, "new_window")


@pytest.mark.parametrize(
    "current_window",
    [
        pytest.param(CURRENT_WINDOW, id="future-window"),
        pytest.param(window(NOW - timedelta(days=2)), id="window-already-passed"),
        pytest.param(window(NOW), id="window-starts-now"),
    ],
)
def test_cancel_ignores_window_checks(current_window: ArrivalWindow) -> None:
    decision = run(change=Cancel(), appointment=facts(window=current_window))
    assert_approved(decision)


# --- precedence ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requester_id", "change", "appointment", "portal", "expected"),
    [
        pytest.param(
            STRANGER,
            cancel(),
            facts(),
            settings(enabled=False),
            RejectionCode.APPOINTMENT_NOT_FOUND,
            id="stranger-on-disabled-tenant-learns-nothing",
        ),
        pytest.param(
            STRANGER,
            cancel(),
            facts(),
            None,
            RejectionCode.APPOINTMENT_NOT_FOUND,
            id="stranger-on-tenant-without-settings",
        ),
        pytest.param(
            STRANGER,
            cancel(),
            facts(status=AppointmentStatus.CANCELED),
            settings(),
            RejectionCode.APPOINTMENT_NOT_FOUND,
            id="stranger-on-canceled-appointment",
        ),
        pytest.param(
            STRANGER,
            reschedule_to(window(NOW - timedelta(days=1))),
            facts(),
            settings(),
            RejectionCode.APPOINTMENT_NOT_FOUND,
            id="stranger-with-past-window",
        ),
        pytest.param(
            CUSTOMER,
            cancel(),
            None,
            None,
            RejectionCode.APPOINTMENT_NOT_FOUND,
            id="unknown-appointment-on-tenant-without-settings",
        ),
        pytest.param(
            CUSTOMER,
            cancel(),
            facts(status=AppointmentStatus.DONE),
            settings(enabled=False),
            RejectionCode.SELF_SERVICE_DISABLED,
            id="disabled-before-status",
        ),
        pytest.param(
            CUSTOMER,
            reschedule_to(window(NOW - timedelta(days=1))),
            facts(),
            None,
            RejectionCode.SELF_SERVICE_DISABLED,
            id="disabled-before-past-window",
        ),
        pytest.param(
            CUSTOMER,
            cancel(),
            facts(status=AppointmentStatus.CANCELED, confirmation=Confirmation.CONFIRMED),
            settings(action_rules=rules(cancel_confirmed=DENY)),
            RejectionCode.APPOINTMENT_NOT_MODIFIABLE,
            id="canceled-confirmed-is-not-modifiable",
        ),
        pytest.param(
            PROJECT_LEAD,
            reschedule_to(window(NOW - timedelta(days=1))),
            facts(status=AppointmentStatus.DISPATCHED),
            settings(action_rules=ActionRules()),
            RejectionCode.APPOINTMENT_NOT_MODIFIABLE,
            id="status-before-permission-and-window",
        ),
        pytest.param(
            CUSTOMER,
            reschedule_to(window(NOW - timedelta(days=1))),
            facts(confirmation=Confirmation.CONFIRMED),
            settings(action_rules=rules(reschedule_confirmed=DENY)),
            RejectionCode.CONFIRMED_CHANGE_BLOCKED,
            id="permission-before-past-window",
        ),
        pytest.param(
            CUSTOMER,
            reschedule_to(CURRENT_WINDOW),
            facts(),
            settings(action_rules=rules(reschedule_unconfirmed=DENY)),
            RejectionCode.UNCONFIRMED_CHANGE_BLOCKED,
            id="permission-before-same-window",
        ),
    ],
)
def test_rule_precedence(
    requester_id: str,
    change: Reschedule | Cancel,
    appointment: AppointmentFacts | None,
    portal: PortalSettings | None,
    expected: RejectionCode,
) -> None:
    decision = run(requester_id=requester_id, change=change, appointment=appointment, portal=portal)
    assert_rejected(decision, expected)


def test_every_rejection_code_is_reachable_with_a_customer_sentence() -> None:
    decisions = [
        run(requester_id=STRANGER),
        run(portal=None),
        run(appointment=facts(status=AppointmentStatus.WORKING)),
        run(
            appointment=facts(confirmation=Confirmation.CONFIRMED),
            portal=settings(action_rules=ActionRules()),
        ),
        run(portal=settings(action_rules=ActionRules())),
        run(change=reschedule_to(window(NOW - timedelta(hours=3)))),
        run(change=reschedule_to(CURRENT_WINDOW)),
    ]
    for decision in decisions:
        assert decision.approved is False
        assert_customer_sentence(decision.reason_text)
    assert {d.reason_code for d in decisions} == {code.value for code in RejectionCode}
    assert len({d.reason_text for d in decisions}) == len(decisions), "each code has its own sentence"


# --- properties ----------------------------------------------------------------------------------

PEOPLE = [CUSTOMER, "cust-2", PROJECT_LEAD, SUBCONTRACTOR, STRANGER]
OFFSETS = [UTC, PLUS_TWO, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))]


@st.composite
def windows(draw: st.DrawFn) -> ArrivalWindow:
    start = NOW + timedelta(minutes=draw(st.integers(-3 * 24 * 60, 3 * 24 * 60)))
    length = timedelta(minutes=draw(st.integers(1, 24 * 60)))
    tz = draw(st.sampled_from(OFFSETS))
    return ArrivalWindow(start=start.astimezone(tz), end=(start + length).astimezone(tz))


# A few fixed windows drawn often, so "same window" and "starts exactly now" actually happen.
FIXED_WINDOWS = [CURRENT_WINDOW, NEW_WINDOW, window(NOW), window(NOW - timedelta(hours=1))]
any_window = st.one_of(st.sampled_from(FIXED_WINDOWS), windows())

any_facts = st.one_of(
    st.none(),
    st.builds(
        AppointmentFacts,
        appointment_id=st.just("appt-1"),
        customer_id=st.sampled_from(PEOPLE),
        project_contacts=st.frozensets(st.sampled_from(PEOPLE), max_size=3),
        status=st.sampled_from(AppointmentStatus),
        confirmation=st.sampled_from(Confirmation),
        window=any_window,
        version=st.integers(0, 2**62),
    ),
)
confirmation_rules = st.builds(
    ConfirmationRule, confirmed=st.sampled_from(Permission), unconfirmed=st.sampled_from(Permission)
)
any_settings = st.one_of(
    st.none(),
    st.builds(
        PortalSettings,
        feature_enabled=st.booleans(),
        rules=st.builds(ActionRules, reschedule=confirmation_rules, cancel=confirmation_rules),
        settings_version=st.integers(0, 2**62),
    ),
)
any_change = st.one_of(
    st.builds(Reschedule, new_window=any_window),
    st.builds(Cancel, reason=st.one_of(st.none(), st.just("Changed my mind."))),
)
any_now = st.one_of(
    st.just(NOW),
    st.builds(lambda minutes: NOW + timedelta(minutes=minutes), st.integers(-5 * 24 * 60, 5 * 24 * 60)),
)
any_requester = st.sampled_from(PEOPLE)


def may_act(requester_id: str, appointment: AppointmentFacts) -> bool:
    return requester_id == appointment.customer_id or requester_id in appointment.project_contacts


def first_failing_rule(
    requester_id: str,
    change: Reschedule | Cancel,
    appointment: AppointmentFacts | None,
    portal: PortalSettings | None,
    now: datetime,
) -> RejectionCode | None:
    """An independent statement of the documented rule order, to compare decide() against."""
    if appointment is None or not may_act(requester_id, appointment):
        return RejectionCode.APPOINTMENT_NOT_FOUND
    if portal is None or not portal.feature_enabled:
        return RejectionCode.SELF_SERVICE_DISABLED
    if appointment.status != AppointmentStatus.SCHEDULED:
        return RejectionCode.APPOINTMENT_NOT_MODIFIABLE
    cell = getattr(getattr(portal.rules, change.action), appointment.confirmation.value)
    if cell != Permission.ALLOW:
        if appointment.confirmation == Confirmation.CONFIRMED:
            return RejectionCode.CONFIRMED_CHANGE_BLOCKED
        return RejectionCode.UNCONFIRMED_CHANGE_BLOCKED
    if isinstance(change, Reschedule):
        if not change.new_window.start > now:
            return RejectionCode.NEW_WINDOW_IN_PAST
        if (change.new_window.start, change.new_window.end) == (
            appointment.window.start,
            appointment.window.end,
        ):
            return RejectionCode.SAME_WINDOW
    return None


@given(requester_id=any_requester, change=any_change, appointment=any_facts, portal=any_settings, now=any_now)
def test_decide_is_total(
    requester_id: str,
    change: Reschedule | Cancel,
    appointment: AppointmentFacts | None,
    portal: PortalSettings | None,
    now: datetime,
) -> None:
    decision = decide(requester_id=requester_id, change=change, facts=appointment, settings=portal, now=now)
    assert isinstance(decision, Decision)
    if decision.approved:
        assert decision.reason_code is None and decision.reason_text is None
    else:
        assert RejectionCode(decision.reason_code) in RejectionCode
        assert decision.rule
        assert_customer_sentence(decision.reason_text)


@given(requester_id=any_requester, change=any_change, appointment=any_facts, portal=any_settings, now=any_now)
def test_approval_implies_every_rule_passes(
    requester_id: str,
    change: Reschedule | Cancel,
    appointment: AppointmentFacts | None,
    portal: PortalSettings | None,
    now: datetime,
) -> None:
    decision = decide(requester_id=requester_id, change=change, facts=appointment, settings=portal, now=now)
    if not decision.approved:
        return
    assert appointment is not None and may_act(requester_id, appointment)
    assert portal is not None and portal.feature_enabled
    assert appointment.status is AppointmentStatus.SCHEDULED
    assert getattr(getattr(portal.rules, change.action), appointment.confirmation.value) is Permission.ALLOW
    if isinstance(change, Reschedule):
        assert change.new_window.start > now
        assert (change.new_window.start, change.new_window.end) != (
            appointment.window.start,
            appointment.window.end,
        )


@given(requester_id=any_requester, change=any_change, appointment=any_facts, portal=any_settings, now=any_now)
def test_decision_is_the_first_failing_rule_in_documented_order(
    requester_id: str,
    change: Reschedule | Cancel,
    appointment: AppointmentFacts | None,
    portal: PortalSettings | None,
    now: datetime,
) -> None:
    decision = decide(requester_id=requester_id, change=change, facts=appointment, settings=portal, now=now)
    expected = first_failing_rule(requester_id, change, appointment, portal, now)
    assert decision.reason_code == (None if expected is None else expected.value)
    assert decision.approved is (expected is None)


@given(requester_id=any_requester, change=any_change, appointment=any_facts, portal=any_settings, now=any_now)
def test_decide_is_deterministic(
    requester_id: str,
    change: Reschedule | Cancel,
    appointment: AppointmentFacts | None,
    portal: PortalSettings | None,
    now: datetime,
) -> None:
    first = decide(requester_id=requester_id, change=change, facts=appointment, settings=portal, now=now)
    again = decide(requester_id=requester_id, change=change, facts=appointment, settings=portal, now=now)
    # Equal but not identical inputs (as after a redelivery and a fresh database read) decide the same.
    from_copies = decide(
        requester_id=requester_id,
        change=change.model_copy(deep=True),
        facts=None if appointment is None else dataclasses.replace(appointment),
        settings=None
        if portal is None
        else dataclasses.replace(portal, rules=portal.rules.model_copy(deep=True)),
        now=now.astimezone(PLUS_TWO),
    )
    assert first == again == from_copies
