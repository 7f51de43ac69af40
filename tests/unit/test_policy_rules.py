"""Policy gate rules: every rule and reason code, their documented order, which setting (and at which
level) decided, the customer sentences, and properties of decide() and offer() over generated inputs."""

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation
from contracts.office_v2 import Permission, ScopeLevel, SettingsLayer
from contracts.portal_v1 import Cancel, Reschedule
from contracts.reasons import STATUS_PHRASE, PendingCode, RejectionCode, customer_text
from workers.policy_gate.rules import (
    AppointmentFacts,
    Decision,
    Offer,
    Outcome,
    ProjectFacts,
    check_action,
    decide,
    offer,
)
from workers.policy_gate.settings import DEFAULTS, EffectiveSettings, ScopedLayer, resolve

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))
US = timedelta(microseconds=1)

CUSTOMER = "cust-1"
PROJECT_LEAD = "lead-1"
SUBCONTRACTOR = "sub-1"
STRANGER = "stranger-9"

ALLOW, DENY, REQUIRE = Permission.ALLOW, Permission.DENY, Permission.REQUIRE_APPROVAL
CONFIRMED, UNCONFIRMED = Confirmation.CONFIRMED, Confirmation.UNCONFIRMED
BUSINESS, BUSINESS_UNIT, JOB_TYPE, PROJECT = ScopeLevel
KEYS = {BUSINESS: None, BUSINESS_UNIT: "plumbing", JOB_TYPE: "boiler-service", PROJECT: "proj-7"}
ACTIONS = ("reschedule", "cancel")


def window(start: datetime, hours: float = 2) -> ArrivalWindow:
    return ArrivalWindow(start=start, end=start + timedelta(hours=hours))


CURRENT_WINDOW = window(NOW + timedelta(days=3))
NEW_WINDOW = window(NOW + timedelta(days=5))

# --- building settings -----------------------------------------------------------------------------

ALLOW_BOTH = {"confirmed": "allow", "unconfirmed": "allow"}


def open_layer(**overrides) -> SettingsLayer:
    """Self-service on and every action allowed in every confirmation state; `overrides` replace
    top-level fields and are merged into the reschedule / cancel sections."""
    fields: dict = {"feature_enabled": True, "reschedule": dict(ALLOW_BOTH), "cancel": dict(ALLOW_BOTH)}
    for key, value in overrides.items():
        if key in ACTIONS:
            fields[key].update(value)
        else:
            fields[key] = value
    return SettingsLayer(**fields)


def business(**overrides) -> ScopedLayer:
    """The business layer: open_layer() with overrides."""
    return ScopedLayer(BUSINESS, None, open_layer(**overrides))


def at(level: ScopeLevel, **fields) -> ScopedLayer:
    """An override layer that sets only the given fields."""
    return ScopedLayer(level, KEYS[level], SettingsLayer(**fields))


def effective(*layers: ScopedLayer) -> EffectiveSettings:
    return resolve(list(layers))


OPEN = effective(business())
NO_LAYERS = effective()


def facts(**overrides) -> AppointmentFacts:
    values = dict(
        appointment_id="appt-1",
        customer_id=CUSTOMER,
        business_unit=KEYS[BUSINESS_UNIT],
        job_type=KEYS[JOB_TYPE],
        project=ProjectFacts(project_id=KEYS[PROJECT], contacts=frozenset({PROJECT_LEAD, SUBCONTRACTOR})),
        status=AppointmentStatus.SCHEDULED,
        confirmation=UNCONFIRMED,
        window=CURRENT_WINDOW,
        version=4,
    )
    values.update(overrides)
    return AppointmentFacts(**values)


def project(**overrides) -> ProjectFacts:
    values = dict(project_id=KEYS[PROJECT], contacts=frozenset({PROJECT_LEAD, SUBCONTRACTOR}))
    values.update(overrides)
    return ProjectFacts(**values)


DEFAULT_FACTS = facts()


def reschedule_to(new_window: ArrivalWindow = NEW_WINDOW) -> Reschedule:
    return Reschedule(new_window=new_window)


def cancel(reason: str | None = "We found another plumber.") -> Cancel:
    return Cancel(reason=reason)


def change_for(action: str) -> Reschedule | Cancel:
    return reschedule_to() if action == "reschedule" else cancel()


def run(
    *,
    requester_id: str = CUSTOMER,
    change: Reschedule | Cancel | None = None,
    appointment: AppointmentFacts | None = DEFAULT_FACTS,
    config: EffectiveSettings = OPEN,
    now: datetime = NOW,
    expected_version: int | None = None,
) -> Decision:
    return decide(
        requester_id=requester_id,
        change=reschedule_to() if change is None else change,
        facts=appointment,
        settings=config,
        now=now,
        expected_version=expected_version,
    )


# --- assertions ------------------------------------------------------------------------------------

UNSET = object()


def assert_customer_sentence(text: str | None) -> None:
    assert isinstance(text, str) and text
    assert text.strip() == text
    assert "{" not in text and "}" not in text, f"unfilled template in {text!r}"
    assert "None" not in text, text
    assert text[0].isupper(), text
    assert text.endswith("."), text


def assert_rejected(
    decision: Decision,
    code: RejectionCode,
    rule: str | None = None,
    *,
    setting: object = UNSET,
    level: object = UNSET,
) -> None:
    assert decision.outcome is Outcome.REJECTED, decision
    assert decision.approved is False
    assert decision.reason_code == code.value, decision
    if rule is not None:
        assert decision.rule == rule, decision
    if setting is not UNSET:
        assert decision.setting == setting, decision
    if level is not UNSET:
        assert decision.setting_level == level, decision
    assert_customer_sentence(decision.reason_text)


def assert_approved(decision: Decision) -> None:
    assert decision == Decision(Outcome.APPROVED, "all_rules_passed"), decision
    assert decision.approved is True


def assert_needs_approval(decision: Decision, path: str, level: str) -> None:
    assert decision.outcome is Outcome.NEEDS_APPROVAL, decision
    assert decision.approved is False
    assert decision.rule == path
    assert decision.setting == path
    assert decision.setting_level == level
    assert decision.reason_code == PendingCode.AWAITING_OFFICE_APPROVAL.value
    assert_customer_sentence(decision.reason_text)


BOTH_CHANGES = pytest.mark.parametrize("change", [reschedule_to(), cancel()], ids=list(ACTIONS))


# --- 1. ownership --------------------------------------------------------------------------------


@BOTH_CHANGES
@pytest.mark.parametrize(
    ("requester_id", "appointment", "may_act"),
    [
        pytest.param(CUSTOMER, facts(), True, id="customer"),
        pytest.param(PROJECT_LEAD, facts(), True, id="project-lead"),
        pytest.param(SUBCONTRACTOR, facts(), True, id="subcontractor"),
        pytest.param(STRANGER, facts(), False, id="stranger"),
        pytest.param(CUSTOMER, facts(project=None), True, id="customer-of-appointment-without-project"),
        pytest.param(PROJECT_LEAD, facts(project=None), False, id="contact-on-appointment-without-project"),
        pytest.param(
            PROJECT_LEAD,
            facts(project=project(contacts=frozenset({SUBCONTRACTOR}))),
            False,
            id="lead-of-another-project",
        ),
        pytest.param(
            CUSTOMER,
            facts(project=project(contacts=frozenset())),
            True,
            id="customer-of-project-without-contacts",
        ),
        pytest.param("CUST-1", facts(), False, id="customer-id-in-other-case-is-a-stranger"),
        pytest.param("appt-1", facts(), False, id="appointment-id-is-not-a-requester"),
        pytest.param("proj-7", facts(), False, id="project-id-is-not-a-requester"),
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
        assert_rejected(decision, RejectionCode.APPOINTMENT_NOT_FOUND, "ownership", setting=None, level=None)


# --- 2. feature switch ---------------------------------------------------------------------------


@BOTH_CHANGES
@pytest.mark.parametrize(
    ("config", "level"),
    [
        pytest.param(NO_LAYERS, "default", id="no-layers-at-all"),
        pytest.param(effective(at(BUSINESS)), "default", id="empty-business-layer"),
        pytest.param(
            effective(at(BUSINESS, reschedule=ALLOW_BOTH, cancel=ALLOW_BOTH)),
            "default",
            id="everything-allowed-but-never-switched-on",
        ),
        pytest.param(effective(business(feature_enabled=False)), "business", id="business-switched-off"),
        pytest.param(
            effective(business(), at(JOB_TYPE, feature_enabled=False)), "job_type", id="job-type-switched-off"
        ),
        pytest.param(
            effective(business(), at(PROJECT, feature_enabled=False)), "project", id="project-switched-off"
        ),
    ],
)
@pytest.mark.parametrize("requester_id", [CUSTOMER, PROJECT_LEAD], ids=["customer", "project-lead"])
def test_feature_switch_off(
    change: Reschedule | Cancel, config: EffectiveSettings, level: str, requester_id: str
) -> None:
    decision = run(requester_id=requester_id, change=change, config=config)
    assert_rejected(
        decision,
        RejectionCode.SELF_SERVICE_DISABLED,
        "feature_switch",
        setting="feature_enabled",
        level=level,
    )


@BOTH_CHANGES
def test_a_more_specific_layer_can_switch_self_service_on(change: Reschedule | Cancel) -> None:
    config = effective(business(feature_enabled=False), at(BUSINESS_UNIT, feature_enabled=True))
    assert_approved(run(change=change, config=config))


@BOTH_CHANGES
def test_switched_on_with_default_permissions_denies_everything(change: Reschedule | Cancel) -> None:
    decision = run(change=change, config=effective(at(BUSINESS, feature_enabled=True)))
    path = f"{change.action}.unconfirmed"
    assert_rejected(decision, RejectionCode.UNCONFIRMED_CHANGE_BLOCKED, path, setting=path, level="default")


def test_no_layers_offers_nothing() -> None:
    shown = offer(requester_id=CUSTOMER, facts=DEFAULT_FACTS, settings=NO_LAYERS, now=NOW)
    assert shown.modify_offered is False
    for decision in (shown.reschedule, shown.cancel):
        assert_rejected(
            decision, RejectionCode.SELF_SERVICE_DISABLED, setting="feature_enabled", level="default"
        )


# --- 3. project lock -----------------------------------------------------------------------------


@BOTH_CHANGES
@pytest.mark.parametrize("requester_id", [CUSTOMER, PROJECT_LEAD, SUBCONTRACTOR])
def test_a_locked_project_refuses_everyone(change: Reschedule | Cancel, requester_id: str) -> None:
    decision = run(
        requester_id=requester_id, change=change, appointment=facts(project=project(portal_locked=True))
    )
    assert_rejected(decision, RejectionCode.PROJECT_LOCKED, "project_lock", setting=None, level="project")


@BOTH_CHANGES
def test_an_unlocked_project_passes(change: Reschedule | Cancel) -> None:
    assert_approved(run(change=change, appointment=facts(project=project(portal_locked=False))))


# --- 4. blocking statuses ------------------------------------------------------------------------

BLOCKED_BY_DEFAULT = [s for s in AppointmentStatus if s is not AppointmentStatus.SCHEDULED]


@BOTH_CHANGES
@pytest.mark.parametrize("status", BLOCKED_BY_DEFAULT, ids=[s.value for s in BLOCKED_BY_DEFAULT])
def test_default_blocking_statuses(change: Reschedule | Cancel, status: AppointmentStatus) -> None:
    decision = run(change=change, appointment=facts(status=status))
    assert_rejected(
        decision,
        RejectionCode.APPOINTMENT_NOT_MODIFIABLE,
        "appointment_status",
        setting="blocking_statuses",
        level="default",
    )
    assert f"already {STATUS_PHRASE[status.value]}" in decision.reason_text


@BOTH_CHANGES
def test_scheduled_is_not_blocked_by_default(change: Reschedule | Cancel) -> None:
    assert_approved(run(change=change, appointment=facts(status=AppointmentStatus.SCHEDULED)))


# (layers, status, blocked, level that decided)
CUSTOM_BLOCKING = [
    pytest.param(
        [business(blocking_statuses=["done", "canceled"])],
        AppointmentStatus.DISPATCHED,
        None,
        id="business-allows-changes-while-dispatched",
    ),
    pytest.param(
        [business(blocking_statuses=["done", "canceled"])],
        AppointmentStatus.WORKING,
        None,
        id="business-allows-changes-while-working",
    ),
    pytest.param(
        [business(blocking_statuses=["done", "canceled"])],
        AppointmentStatus.DONE,
        "business",
        id="done-still-blocks",
    ),
    pytest.param(
        [business(blocking_statuses=["done", "canceled"])],
        AppointmentStatus.CANCELED,
        "business",
        id="canceled-still-blocks",
    ),
    pytest.param(
        [
            business(blocking_statuses=["canceled"]),
            at(JOB_TYPE, blocking_statuses=["dispatched", "canceled"]),
        ],
        AppointmentStatus.DISPATCHED,
        "job_type",
        id="job-type-blocks-dispatched-again",
    ),
    pytest.param(
        [business(), at(BUSINESS_UNIT, blocking_statuses=["canceled"])],
        AppointmentStatus.DONE,
        None,
        id="business-unit-allows-even-done",
    ),
    pytest.param(
        [business(), at(PROJECT, blocking_statuses=["scheduled", "canceled"])],
        AppointmentStatus.SCHEDULED,
        "project",
        id="project-blocks-scheduled",
    ),
]


@BOTH_CHANGES
@pytest.mark.parametrize(("layers", "status", "level"), CUSTOM_BLOCKING)
def test_blocking_statuses_from_settings(
    change: Reschedule | Cancel, layers: list[ScopedLayer], status: AppointmentStatus, level: str | None
) -> None:
    decision = run(change=change, appointment=facts(status=status), config=resolve(layers))
    if level is None:
        assert_approved(decision)
    else:
        assert_rejected(
            decision,
            RejectionCode.APPOINTMENT_NOT_MODIFIABLE,
            "appointment_status",
            setting="blocking_statuses",
            level=level,
        )


# --- 5 and 8. permission per action and confirmation -----------------------------------------------


def only_cell(
    action: str, confirmation: Confirmation, permission: Permission, others: Permission
) -> ScopedLayer:
    """The business layer where the one cell under test has `permission` and every other cell `others`,
    so the test fails if the gate reads the wrong cell."""
    sections = {
        a: {c.value: (permission if (a, c) == (action, confirmation) else others).value for c in Confirmation}
        for a in ACTIONS
    }
    return business(**sections)


PERMISSION_CASES = [
    pytest.param(
        action,
        confirmation,
        permission,
        others,
        id=f"{action}-{confirmation.value}-{permission.value}-others-{others.value}",
    )
    for action in ACTIONS
    for confirmation in Confirmation
    for permission in Permission
    for others in Permission
    if others is not permission
]


@pytest.mark.parametrize(("action", "confirmation", "permission", "others"), PERMISSION_CASES)
def test_permission_per_action_and_confirmation(
    action: str, confirmation: Confirmation, permission: Permission, others: Permission
) -> None:
    path = f"{action}.{confirmation.value}"
    decision = run(
        change=change_for(action),
        appointment=facts(confirmation=confirmation),
        config=effective(only_cell(action, confirmation, permission, others)),
    )
    if permission is ALLOW:
        assert_approved(decision)
    elif permission is REQUIRE:
        assert_needs_approval(decision, path, "business")
    else:
        expected = (
            RejectionCode.CONFIRMED_CHANGE_BLOCKED
            if confirmation is CONFIRMED
            else RejectionCode.UNCONFIRMED_CHANGE_BLOCKED
        )
        assert_rejected(decision, expected, path, setting=path, level="business")
        past = {"reschedule": "rescheduled", "cancel": "canceled"}[action]
        assert f"can't be {past} online" in decision.reason_text


@pytest.mark.parametrize(
    ("layers", "change", "confirmation", "outcome", "path", "level"),
    [
        pytest.param(
            [business(), at(JOB_TYPE, reschedule={"confirmed": "deny"})],
            reschedule_to(),
            CONFIRMED,
            Outcome.REJECTED,
            "reschedule.confirmed",
            "job_type",
            id="job-type-denies-confirmed-reschedule",
        ),
        pytest.param(
            [business(), at(JOB_TYPE, reschedule={"confirmed": "deny"})],
            reschedule_to(),
            UNCONFIRMED,
            Outcome.APPROVED,
            None,
            None,
            id="job-type-deny-leaves-unconfirmed-alone",
        ),
        pytest.param(
            [business(), at(JOB_TYPE, reschedule={"confirmed": "deny"})],
            cancel(),
            CONFIRMED,
            Outcome.APPROVED,
            None,
            None,
            id="job-type-reschedule-deny-leaves-cancel-alone",
        ),
        pytest.param(
            [business(cancel={"unconfirmed": "deny"}), at(PROJECT, cancel={"unconfirmed": "allow"})],
            cancel(),
            UNCONFIRMED,
            Outcome.APPROVED,
            None,
            None,
            id="project-allows-what-business-denies",
        ),
        pytest.param(
            [business(), at(BUSINESS_UNIT, cancel={"unconfirmed": "require_approval"})],
            cancel(),
            UNCONFIRMED,
            Outcome.NEEDS_APPROVAL,
            "cancel.unconfirmed",
            "business_unit",
            id="business-unit-requires-approval",
        ),
        pytest.param(
            [
                business(reschedule={"confirmed": "require_approval"}),
                at(BUSINESS_UNIT, reschedule={"confirmed": "deny"}),
                at(PROJECT, reschedule={"confirmed": "allow"}),
            ],
            reschedule_to(),
            CONFIRMED,
            Outcome.APPROVED,
            None,
            None,
            id="project-allow-beats-unit-deny-and-business-approval",
        ),
        pytest.param(
            [at(BUSINESS, feature_enabled=True, cancel={"unconfirmed": "allow"})],
            cancel(),
            CONFIRMED,
            Outcome.REJECTED,
            "cancel.confirmed",
            "default",
            id="cell-never-set-is-denied-by-default",
        ),
    ],
)
def test_permission_overrides_record_their_level(
    layers: list[ScopedLayer],
    change: Reschedule | Cancel,
    confirmation: Confirmation,
    outcome: Outcome,
    path: str | None,
    level: str | None,
) -> None:
    decision = run(change=change, appointment=facts(confirmation=confirmation), config=resolve(layers))
    assert decision.outcome is outcome
    if outcome is Outcome.APPROVED:
        assert_approved(decision)
    elif outcome is Outcome.NEEDS_APPROVAL:
        assert_needs_approval(decision, path, level)
    else:
        code = (
            RejectionCode.CONFIRMED_CHANGE_BLOCKED
            if confirmation is CONFIRMED
            else RejectionCode.UNCONFIRMED_CHANGE_BLOCKED
        )
        assert_rejected(decision, code, path, setting=path, level=level)


REQUIRE_ALL = {"confirmed": "require_approval", "unconfirmed": "require_approval"}


@pytest.mark.parametrize(
    ("change", "appointment", "layers", "now", "expected"),
    [
        pytest.param(
            reschedule_to(window(NOW - timedelta(days=1))),
            facts(),
            [business(reschedule=REQUIRE_ALL)],
            NOW,
            RejectionCode.NEW_WINDOW_IN_PAST,
            id="past-new-window",
        ),
        pytest.param(
            reschedule_to(CURRENT_WINDOW),
            facts(),
            [business(reschedule=REQUIRE_ALL)],
            NOW,
            RejectionCode.SAME_WINDOW,
            id="same-window",
        ),
        pytest.param(
            reschedule_to(window(NOW + timedelta(hours=2))),
            facts(),
            [business(reschedule={**REQUIRE_ALL, "min_lead_hours": 24})],
            NOW,
            RejectionCode.NEW_WINDOW_TOO_SOON,
            id="too-soon",
        ),
        pytest.param(
            reschedule_to(window(NOW + timedelta(days=40))),
            facts(),
            [business(reschedule={**REQUIRE_ALL, "max_horizon_days": 30})],
            NOW,
            RejectionCode.NEW_WINDOW_TOO_FAR,
            id="too-far",
        ),
        pytest.param(
            reschedule_to(),
            facts(project=project(ends_at=NOW + timedelta(days=4))),
            [business(reschedule=REQUIRE_ALL)],
            NOW,
            RejectionCode.OUTSIDE_PROJECT_DATES,
            id="outside-project-dates",
        ),
        pytest.param(
            reschedule_to(),
            facts(customer_reschedules=2),
            [business(reschedule={**REQUIRE_ALL, "max_customer_reschedules": 2})],
            NOW,
            RejectionCode.RESCHEDULE_LIMIT_REACHED,
            id="reschedule-limit",
        ),
        pytest.param(
            reschedule_to(),
            facts(),
            [business(reschedule={**REQUIRE_ALL, "min_notice_hours": 96})],
            NOW,
            RejectionCode.NOTICE_WINDOW_PASSED,
            id="notice-window",
        ),
        pytest.param(
            cancel(None),
            facts(),
            [business(cancel={**REQUIRE_ALL, "reason_required": True})],
            NOW,
            RejectionCode.CANCEL_REASON_REQUIRED,
            id="cancel-reason-missing",
        ),
        pytest.param(
            cancel("Other"),
            facts(),
            [business(cancel={**REQUIRE_ALL, "allowed_reasons": ["Moving"]})],
            NOW,
            RejectionCode.CANCEL_REASON_NOT_ALLOWED,
            id="cancel-reason-not-on-list",
        ),
        pytest.param(
            cancel(),
            facts(status=AppointmentStatus.DISPATCHED),
            [business(cancel=REQUIRE_ALL)],
            NOW,
            RejectionCode.APPOINTMENT_NOT_MODIFIABLE,
            id="blocking-status",
        ),
        pytest.param(
            cancel(),
            facts(project=project(portal_locked=True)),
            [business(cancel=REQUIRE_ALL)],
            NOW,
            RejectionCode.PROJECT_LOCKED,
            id="project-locked",
        ),
        pytest.param(
            cancel(),
            facts(),
            [business(cancel=REQUIRE_ALL, feature_enabled=False)],
            NOW,
            RejectionCode.SELF_SERVICE_DISABLED,
            id="feature-off",
        ),
    ],
)
def test_require_approval_only_after_every_other_rule_passes(
    change: Reschedule | Cancel,
    appointment: AppointmentFacts,
    layers: list[ScopedLayer],
    now: datetime,
    expected: RejectionCode,
) -> None:
    config = resolve(layers)
    assert_rejected(run(change=change, appointment=appointment, config=config, now=now), expected)
    # The same request with the one problem removed waits for the office instead.
    fixed = run(
        change=change_for(change.action),
        appointment=facts(),
        config=effective(business(**{change.action: REQUIRE_ALL})),
    )
    assert_needs_approval(fixed, f"{change.action}.unconfirmed", "business")


# --- 6. notice window ----------------------------------------------------------------------------


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("hours", [0, 1, 24, 36, 72])
@pytest.mark.parametrize(
    ("before_limit", "refused"),
    [
        pytest.param(timedelta(0), True, id="exactly-at-the-notice-limit"),
        pytest.param(-US, True, id="one-microsecond-late"),
        pytest.param(-timedelta(hours=1), True, id="an-hour-late"),
        pytest.param(US, False, id="one-microsecond-before"),
        pytest.param(timedelta(hours=1), False, id="an-hour-before"),
    ],
)
def test_notice_window(action: str, hours: int, before_limit: timedelta, refused: bool) -> None:
    """Only the notice of the action asked for counts: the other action's notice is set far longer."""
    other = "cancel" if action == "reschedule" else "reschedule"
    config = effective(business(**{action: {"min_notice_hours": hours}, other: {"min_notice_hours": 1000}}))
    now = CURRENT_WINDOW.start - timedelta(hours=hours) - before_limit
    change = (
        reschedule_to(window(CURRENT_WINDOW.start + timedelta(days=2)))
        if action == "reschedule"
        else cancel()
    )
    decision = run(change=change, config=config, now=now)
    if refused:
        path = f"{action}.min_notice_hours"
        assert_rejected(
            decision, RejectionCode.NOTICE_WINDOW_PASSED, "notice_window", setting=path, level="business"
        )
        assert customer_text(RejectionCode.NOTICE_WINDOW_PASSED, hours=hours) == decision.reason_text
    else:
        assert_approved(decision)


@pytest.mark.parametrize("action", ACTIONS)
def test_notice_of_the_other_action_does_not_apply(action: str) -> None:
    other = "cancel" if action == "reschedule" else "reschedule"
    config = effective(business(**{other: {"min_notice_hours": 1000}}))
    assert_approved(run(change=change_for(action), config=config))


@pytest.mark.parametrize("action", ACTIONS)
def test_an_appointment_already_started_or_past_passed_its_notice(action: str) -> None:
    for start in (NOW - timedelta(days=2), NOW - timedelta(minutes=30), NOW):
        decision = run(change=change_for(action), appointment=facts(window=window(start)))
        assert_rejected(
            decision,
            RejectionCode.NOTICE_WINDOW_PASSED,
            setting=f"{action}.min_notice_hours",
            level="default",
        )


def test_notice_level_is_the_overriding_layer() -> None:
    config = effective(
        business(cancel={"min_notice_hours": 1}), at(BUSINESS_UNIT, cancel={"min_notice_hours": 96})
    )
    decision = run(change=cancel(), config=config)
    assert_rejected(
        decision, RejectionCode.NOTICE_WINDOW_PASSED, setting="cancel.min_notice_hours", level="business_unit"
    )
    assert "96 hours" in decision.reason_text


# --- 7. the new window (reschedule only) ---------------------------------------------------------

LEAD_24 = business(reschedule={"min_lead_hours": 24})
HORIZON_30 = business(reschedule={"max_horizon_days": 30})
PROJECT_START = NOW + timedelta(days=2)
PROJECT_END = NOW + timedelta(days=10)
DATED_PROJECT = facts(project=project(starts_at=PROJECT_START, ends_at=PROJECT_END))

# (new window, appointment, layers, expected code or None, rule, setting, level)
NEW_WINDOW_CASES = [
    pytest.param(
        window(NOW - timedelta(days=1)),
        DEFAULT_FACTS,
        [business()],
        RejectionCode.NEW_WINDOW_IN_PAST,
        "new_window",
        None,
        None,
        id="yesterday",
    ),
    pytest.param(
        window(NOW - timedelta(hours=1), 3),
        DEFAULT_FACTS,
        [business()],
        RejectionCode.NEW_WINDOW_IN_PAST,
        "new_window",
        None,
        None,
        id="started-an-hour-ago-still-open",
    ),
    pytest.param(
        window(NOW),
        DEFAULT_FACTS,
        [business()],
        RejectionCode.NEW_WINDOW_IN_PAST,
        "new_window",
        None,
        None,
        id="starts-exactly-now",
    ),
    pytest.param(
        window(NOW.astimezone(PLUS_TWO)),
        DEFAULT_FACTS,
        [business()],
        RejectionCode.NEW_WINDOW_IN_PAST,
        "new_window",
        None,
        None,
        id="starts-exactly-now-other-timezone",
    ),
    pytest.param(
        window(NOW + US),
        DEFAULT_FACTS,
        [business()],
        None,
        None,
        None,
        None,
        id="one-microsecond-ahead-without-lead",
    ),
    pytest.param(
        CURRENT_WINDOW,
        DEFAULT_FACTS,
        [business()],
        RejectionCode.SAME_WINDOW,
        "new_window",
        None,
        None,
        id="same-window",
    ),
    pytest.param(
        ArrivalWindow(
            start=CURRENT_WINDOW.start.astimezone(PLUS_TWO), end=CURRENT_WINDOW.end.astimezone(PLUS_TWO)
        ),
        DEFAULT_FACTS,
        [business()],
        RejectionCode.SAME_WINDOW,
        "new_window",
        None,
        None,
        id="same-window-in-other-timezone",
    ),
    pytest.param(
        ArrivalWindow(start=CURRENT_WINDOW.start, end=CURRENT_WINDOW.end + timedelta(hours=1)),
        DEFAULT_FACTS,
        [business()],
        None,
        None,
        None,
        None,
        id="same-start-longer-window",
    ),
    pytest.param(
        window(NOW + timedelta(hours=2)),
        facts(window=window(NOW + timedelta(hours=2))),
        [LEAD_24],
        RejectionCode.SAME_WINDOW,
        "new_window",
        None,
        None,
        id="same-window-reported-before-lead-time",
    ),
    pytest.param(
        window(NOW - timedelta(hours=1)),
        DEFAULT_FACTS,
        [LEAD_24],
        RejectionCode.NEW_WINDOW_IN_PAST,
        "new_window",
        None,
        None,
        id="past-reported-before-lead-time",
    ),
    pytest.param(
        window(NOW + timedelta(hours=24)),
        DEFAULT_FACTS,
        [LEAD_24],
        None,
        None,
        None,
        None,
        id="exactly-at-lead-time",
    ),
    pytest.param(
        window(NOW + timedelta(hours=24) - US),
        DEFAULT_FACTS,
        [LEAD_24],
        RejectionCode.NEW_WINDOW_TOO_SOON,
        "lead_time",
        "reschedule.min_lead_hours",
        "business",
        id="one-microsecond-inside-lead-time",
    ),
    pytest.param(
        window(NOW + timedelta(hours=1)),
        DEFAULT_FACTS,
        [business(), at(PROJECT, reschedule={"min_lead_hours": 24})],
        RejectionCode.NEW_WINDOW_TOO_SOON,
        "lead_time",
        "reschedule.min_lead_hours",
        "project",
        id="project-lead-time",
    ),
    pytest.param(
        window(NOW + timedelta(days=30)),
        DEFAULT_FACTS,
        [HORIZON_30],
        None,
        None,
        None,
        None,
        id="exactly-at-horizon",
    ),
    pytest.param(
        window(NOW + timedelta(days=30) + US),
        DEFAULT_FACTS,
        [HORIZON_30],
        RejectionCode.NEW_WINDOW_TOO_FAR,
        "horizon",
        "reschedule.max_horizon_days",
        "business",
        id="one-microsecond-beyond-horizon",
    ),
    pytest.param(
        window(NOW + timedelta(days=366)),
        DEFAULT_FACTS,
        [business()],
        RejectionCode.NEW_WINDOW_TOO_FAR,
        "horizon",
        "reschedule.max_horizon_days",
        "default",
        id="beyond-default-horizon",
    ),
    pytest.param(
        window(NOW + timedelta(days=4)),
        DEFAULT_FACTS,
        [business(), at(JOB_TYPE, reschedule={"max_horizon_days": 2})],
        RejectionCode.NEW_WINDOW_TOO_FAR,
        "horizon",
        "reschedule.max_horizon_days",
        "job_type",
        id="job-type-horizon",
    ),
    pytest.param(
        window(PROJECT_START - US),
        DATED_PROJECT,
        [business()],
        RejectionCode.OUTSIDE_PROJECT_DATES,
        "project_dates",
        None,
        "project",
        id="starts-before-project-start",
    ),
    pytest.param(
        window(PROJECT_START),
        DATED_PROJECT,
        [business()],
        None,
        None,
        None,
        None,
        id="starts-exactly-at-project-start",
    ),
    pytest.param(
        ArrivalWindow(start=PROJECT_END - timedelta(hours=2), end=PROJECT_END),
        DATED_PROJECT,
        [business()],
        None,
        None,
        None,
        None,
        id="ends-exactly-at-project-end",
    ),
    pytest.param(
        ArrivalWindow(start=PROJECT_END - timedelta(hours=2), end=PROJECT_END + US),
        DATED_PROJECT,
        [business()],
        RejectionCode.OUTSIDE_PROJECT_DATES,
        "project_dates",
        None,
        "project",
        id="ends-after-project-end",
    ),
    pytest.param(
        ArrivalWindow(start=PROJECT_END - US, end=PROJECT_END + timedelta(hours=1)),
        DATED_PROJECT,
        [business()],
        RejectionCode.OUTSIDE_PROJECT_DATES,
        "project_dates",
        None,
        "project",
        id="starts-inside-ends-after-project",
    ),
    pytest.param(
        window(NOW + timedelta(days=1)),
        facts(project=project(starts_at=PROJECT_START)),
        [business()],
        RejectionCode.OUTSIDE_PROJECT_DATES,
        "project_dates",
        None,
        "project",
        id="only-start-date-known",
    ),
    pytest.param(
        window(NOW + timedelta(days=20)),
        facts(project=project(ends_at=PROJECT_END)),
        [business()],
        RejectionCode.OUTSIDE_PROJECT_DATES,
        "project_dates",
        None,
        "project",
        id="only-end-date-known",
    ),
    pytest.param(
        window(NOW + timedelta(days=20)),
        facts(project=project()),
        [business()],
        None,
        None,
        None,
        None,
        id="project-without-dates",
    ),
    pytest.param(
        window(NOW + timedelta(days=20)),
        facts(project=None),
        [business()],
        None,
        None,
        None,
        None,
        id="no-project",
    ),
    pytest.param(
        window(NOW + timedelta(days=40)),
        DATED_PROJECT,
        [HORIZON_30],
        RejectionCode.NEW_WINDOW_TOO_FAR,
        "horizon",
        "reschedule.max_horizon_days",
        "business",
        id="horizon-reported-before-project-dates",
    ),
    pytest.param(
        window(NOW + timedelta(hours=1)),
        DATED_PROJECT,
        [LEAD_24],
        RejectionCode.NEW_WINDOW_TOO_SOON,
        "lead_time",
        "reschedule.min_lead_hours",
        "business",
        id="lead-time-reported-before-project-dates",
    ),
]


@pytest.mark.parametrize(
    ("new_window", "appointment", "layers", "expected", "rule", "setting", "level"), NEW_WINDOW_CASES
)
def test_reschedule_new_window(
    new_window: ArrivalWindow,
    appointment: AppointmentFacts,
    layers: list[ScopedLayer],
    expected: RejectionCode | None,
    rule: str | None,
    setting: str | None,
    level: str | None,
) -> None:
    decision = run(change=reschedule_to(new_window), appointment=appointment, config=resolve(layers))
    if expected is None:
        assert_approved(decision)
    else:
        assert_rejected(decision, expected, rule, setting=setting, level=level)


def test_too_soon_and_too_far_name_their_numbers() -> None:
    config = effective(business(reschedule={"min_lead_hours": 30, "max_horizon_days": 14}))
    soon = run(change=reschedule_to(window(NOW + timedelta(hours=29))), config=config)
    far = run(change=reschedule_to(window(NOW + timedelta(days=15))), config=config)
    assert_rejected(soon, RejectionCode.NEW_WINDOW_TOO_SOON)
    assert_rejected(far, RejectionCode.NEW_WINDOW_TOO_FAR)
    assert "30 hours" in soon.reason_text
    assert "14 days" in far.reason_text


def test_cancel_ignores_every_window_setting() -> None:
    config = effective(
        business(reschedule={"min_lead_hours": 12, "max_horizon_days": 1, "max_customer_reschedules": 0})
    )
    appointment = facts(
        project=project(starts_at=NOW + timedelta(days=20), ends_at=NOW + timedelta(days=21)),
        customer_reschedules=5,
    )
    assert_approved(run(change=cancel(), appointment=appointment, config=config))


# --- 7. reschedule limit -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "done", "refused"),
    [
        pytest.param(2, 0, False, id="none-done-of-2"),
        pytest.param(2, 1, False, id="one-below-limit"),
        pytest.param(2, 2, True, id="count-equal-to-limit"),
        pytest.param(2, 3, True, id="count-above-limit"),
        pytest.param(1, 1, True, id="limit-1-used"),
        pytest.param(0, 0, True, id="limit-0-allows-none"),
        pytest.param(None, 0, False, id="unlimited-none-done"),
        pytest.param(None, 100, False, id="unlimited-many-done"),
    ],
)
def test_reschedule_limit(limit: int | None, done: int, refused: bool) -> None:
    config = effective(business(reschedule={"max_customer_reschedules": limit}))
    decision = run(change=reschedule_to(), appointment=facts(customer_reschedules=done), config=config)
    if refused:
        assert_rejected(
            decision,
            RejectionCode.RESCHEDULE_LIMIT_REACHED,
            "reschedule_limit",
            setting="reschedule.max_customer_reschedules",
            level="business",
        )
        assert customer_text(RejectionCode.RESCHEDULE_LIMIT_REACHED, limit=limit) == decision.reason_text
    else:
        assert_approved(decision)


@pytest.mark.parametrize("done", [0, 2, 50])
def test_cancel_is_unaffected_by_the_reschedule_limit(done: int) -> None:
    config = effective(business(reschedule={"max_customer_reschedules": 0}))
    assert_approved(run(change=cancel(), appointment=facts(customer_reschedules=done), config=config))
    shown = offer(requester_id=CUSTOMER, facts=facts(customer_reschedules=done), settings=config, now=NOW)
    assert shown.cancel == Decision(Outcome.APPROVED, "all_rules_passed")
    assert shown.reschedule.reason_code == RejectionCode.RESCHEDULE_LIMIT_REACHED.value
    assert shown.modify_offered is True


def test_reschedule_limit_level_is_the_overriding_layer() -> None:
    config = effective(
        business(reschedule={"max_customer_reschedules": 5}),
        at(JOB_TYPE, reschedule={"max_customer_reschedules": 1}),
    )
    decision = run(appointment=facts(customer_reschedules=1), config=config)
    assert_rejected(
        decision,
        RejectionCode.RESCHEDULE_LIMIT_REACHED,
        setting="reschedule.max_customer_reschedules",
        level="job_type",
    )


# --- 7. cancel reason ----------------------------------------------------------------------------

REASONS = ["Moving", "Found another company", "Straße gesperrt"]


# (reason, reason_required, allowed reasons, expected code or None, setting)
CANCEL_REASON_CASES = [
    pytest.param(
        None,
        True,
        None,
        RejectionCode.CANCEL_REASON_REQUIRED,
        "cancel.reason_required",
        id="required-none-given",
    ),
    pytest.param(
        "",
        True,
        None,
        RejectionCode.CANCEL_REASON_REQUIRED,
        "cancel.reason_required",
        id="required-empty-given",
    ),
    pytest.param("Anything at all", True, None, None, None, id="required-any-given"),
    pytest.param(None, False, None, None, None, id="not-required-none-given"),
    pytest.param(None, False, REASONS, None, None, id="not-required-none-given-with-list"),
    pytest.param("", False, REASONS, None, None, id="not-required-empty-given-with-list"),
    pytest.param(
        None,
        True,
        REASONS,
        RejectionCode.CANCEL_REASON_REQUIRED,
        "cancel.reason_required",
        id="required-none-given-with-list",
    ),
    pytest.param("Moving", True, REASONS, None, None, id="on-list"),
    pytest.param("moving", False, REASONS, None, None, id="on-list-other-case"),
    pytest.param("FOUND ANOTHER COMPANY", True, REASONS, None, None, id="on-list-upper-case"),
    pytest.param("STRASSE GESPERRT", True, REASONS, None, None, id="on-list-under-casefolding"),
    pytest.param(
        "Other",
        False,
        REASONS,
        RejectionCode.CANCEL_REASON_NOT_ALLOWED,
        "cancel.allowed_reasons",
        id="not-on-list",
    ),
    pytest.param(
        "Moving house",
        True,
        REASONS,
        RejectionCode.CANCEL_REASON_NOT_ALLOWED,
        "cancel.allowed_reasons",
        id="prefix-of-a-reason-is-not-enough",
    ),
    pytest.param(
        "Movin",
        True,
        REASONS,
        RejectionCode.CANCEL_REASON_NOT_ALLOWED,
        "cancel.allowed_reasons",
        id="part-of-a-reason-is-not-enough",
    ),
    pytest.param("  Moving  ", True, REASONS, None, None, id="surrounding-space-is-stripped"),
]


@pytest.mark.parametrize(("reason", "required", "allowed", "expected", "setting"), CANCEL_REASON_CASES)
def test_cancel_reason(
    reason: str | None,
    required: bool,
    allowed: list[str] | None,
    expected: RejectionCode | None,
    setting: str | None,
) -> None:
    config = effective(business(cancel={"reason_required": required, "allowed_reasons": allowed}))
    # An empty reason can't pass the wire model; the gate must refuse it all the same.
    change = Cancel.model_construct(reason="") if reason == "" else Cancel(reason=reason)
    decision = run(change=change, config=config)
    if expected is None:
        assert_approved(decision)
    else:
        assert_rejected(decision, expected, "cancel_reason", setting=setting, level="business")


def test_reason_not_on_list_names_the_allowed_reasons() -> None:
    config = effective(business(cancel={"allowed_reasons": REASONS}))
    decision = run(change=cancel("Other"), config=config)
    assert_rejected(decision, RejectionCode.CANCEL_REASON_NOT_ALLOWED)
    assert all(reason in decision.reason_text for reason in REASONS)


def test_cancel_reason_levels_come_from_the_overriding_layers() -> None:
    config = effective(
        business(cancel={"allowed_reasons": ["Other"]}),
        at(JOB_TYPE, cancel={"reason_required": True}),
        at(PROJECT, cancel={"allowed_reasons": ["Moving"]}),
    )
    assert_rejected(
        run(change=cancel(None), config=config),
        RejectionCode.CANCEL_REASON_REQUIRED,
        setting="cancel.reason_required",
        level="job_type",
    )
    assert_rejected(
        run(change=cancel("Other"), config=config),
        RejectionCode.CANCEL_REASON_NOT_ALLOWED,
        setting="cancel.allowed_reasons",
        level="project",
    )
    assert_approved(run(change=cancel("moving"), config=config))


def test_reschedule_ignores_cancel_reason_settings() -> None:
    config = effective(
        business(cancel={"reason_required": True, "allowed_reasons": ["Moving"], "min_notice_hours": 1000})
    )
    assert_approved(run(change=reschedule_to(), config=config))


# --- the order of the rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requester_id", "change", "appointment", "config", "now", "expected"),
    [
        pytest.param(
            STRANGER,
            cancel(),
            facts(),
            effective(business(feature_enabled=False)),
            NOW,
            RejectionCode.APPOINTMENT_NOT_FOUND,
            id="stranger-on-disabled-tenant-learns-nothing",
        ),
        pytest.param(
            STRANGER,
            cancel(),
            facts(),
            NO_LAYERS,
            NOW,
            RejectionCode.APPOINTMENT_NOT_FOUND,
            id="stranger-on-tenant-without-settings",
        ),
        pytest.param(
            STRANGER,
            cancel(),
            facts(project=project(portal_locked=True)),
            OPEN,
            NOW,
            RejectionCode.APPOINTMENT_NOT_FOUND,
            id="stranger-on-locked-project",
        ),
        pytest.param(
            STRANGER,
            cancel(),
            facts(status=AppointmentStatus.CANCELED),
            OPEN,
            NOW,
            RejectionCode.APPOINTMENT_NOT_FOUND,
            id="stranger-on-canceled-appointment",
        ),
        pytest.param(
            CUSTOMER,
            cancel(),
            None,
            NO_LAYERS,
            NOW,
            RejectionCode.APPOINTMENT_NOT_FOUND,
            id="unknown-appointment-on-tenant-without-settings",
        ),
        pytest.param(
            PROJECT_LEAD,
            cancel(),
            facts(project=project(portal_locked=True)),
            NO_LAYERS,
            NOW,
            RejectionCode.SELF_SERVICE_DISABLED,
            id="disabled-before-project-lock",
        ),
        pytest.param(
            CUSTOMER,
            cancel(),
            facts(status=AppointmentStatus.DONE),
            effective(business(feature_enabled=False)),
            NOW,
            RejectionCode.SELF_SERVICE_DISABLED,
            id="disabled-before-status",
        ),
        pytest.param(
            CUSTOMER,
            reschedule_to(window(NOW - timedelta(days=1))),
            facts(),
            NO_LAYERS,
            NOW,
            RejectionCode.SELF_SERVICE_DISABLED,
            id="disabled-before-past-window",
        ),
        pytest.param(
            CUSTOMER,
            cancel(),
            facts(project=project(portal_locked=True), status=AppointmentStatus.DONE),
            OPEN,
            NOW,
            RejectionCode.PROJECT_LOCKED,
            id="project-lock-before-status",
        ),
        pytest.param(
            CUSTOMER,
            cancel(),
            facts(status=AppointmentStatus.CANCELED, confirmation=CONFIRMED),
            effective(business(cancel={"confirmed": "deny"})),
            NOW,
            RejectionCode.APPOINTMENT_NOT_MODIFIABLE,
            id="status-before-permission",
        ),
        pytest.param(
            PROJECT_LEAD,
            reschedule_to(window(NOW - timedelta(days=1))),
            facts(status=AppointmentStatus.DISPATCHED),
            effective(at(BUSINESS, feature_enabled=True)),
            NOW,
            RejectionCode.APPOINTMENT_NOT_MODIFIABLE,
            id="status-before-permission-and-window",
        ),
        pytest.param(
            CUSTOMER,
            reschedule_to(),
            facts(confirmation=CONFIRMED),
            effective(business(reschedule={"confirmed": "deny", "min_notice_hours": 1000})),
            NOW,
            RejectionCode.CONFIRMED_CHANGE_BLOCKED,
            id="permission-before-notice",
        ),
        pytest.param(
            CUSTOMER,
            reschedule_to(window(NOW - timedelta(days=1))),
            facts(confirmation=CONFIRMED),
            effective(business(reschedule={"confirmed": "deny"})),
            NOW,
            RejectionCode.CONFIRMED_CHANGE_BLOCKED,
            id="permission-before-past-window",
        ),
        pytest.param(
            CUSTOMER,
            reschedule_to(CURRENT_WINDOW),
            facts(),
            effective(business(reschedule={"unconfirmed": "deny"})),
            NOW,
            RejectionCode.UNCONFIRMED_CHANGE_BLOCKED,
            id="permission-before-same-window",
        ),
        pytest.param(
            CUSTOMER,
            reschedule_to(),
            facts(customer_reschedules=9),
            effective(business(reschedule={"unconfirmed": "deny", "max_customer_reschedules": 1})),
            NOW,
            RejectionCode.UNCONFIRMED_CHANGE_BLOCKED,
            id="permission-before-limit",
        ),
        pytest.param(
            CUSTOMER,
            reschedule_to(),
            facts(customer_reschedules=9),
            effective(business(reschedule={"min_notice_hours": 1000, "max_customer_reschedules": 1})),
            NOW,
            RejectionCode.NOTICE_WINDOW_PASSED,
            id="notice-before-limit",
        ),
        pytest.param(
            CUSTOMER,
            reschedule_to(window(NOW - timedelta(days=1))),
            facts(),
            effective(business(reschedule={"min_notice_hours": 1000})),
            NOW,
            RejectionCode.NOTICE_WINDOW_PASSED,
            id="notice-before-past-window",
        ),
        pytest.param(
            CUSTOMER,
            cancel(None),
            facts(),
            effective(business(cancel={"min_notice_hours": 1000, "reason_required": True})),
            NOW,
            RejectionCode.NOTICE_WINDOW_PASSED,
            id="notice-before-cancel-reason",
        ),
        pytest.param(
            CUSTOMER,
            reschedule_to(window(NOW - timedelta(days=1))),
            facts(customer_reschedules=1),
            effective(business(reschedule={"max_customer_reschedules": 1})),
            NOW,
            RejectionCode.RESCHEDULE_LIMIT_REACHED,
            id="limit-before-past-window",
        ),
        pytest.param(
            CUSTOMER,
            reschedule_to(CURRENT_WINDOW),
            facts(customer_reschedules=1),
            effective(business(reschedule={"max_customer_reschedules": 1})),
            NOW,
            RejectionCode.RESCHEDULE_LIMIT_REACHED,
            id="limit-before-same-window",
        ),
        pytest.param(
            CUSTOMER,
            reschedule_to(window(NOW - timedelta(days=1))),
            DATED_PROJECT,
            effective(business(reschedule={"min_lead_hours": 24})),
            NOW,
            RejectionCode.NEW_WINDOW_IN_PAST,
            id="past-before-lead-and-project-dates",
        ),
        pytest.param(
            CUSTOMER,
            cancel(None),
            facts(),
            effective(business(cancel={"reason_required": True, "allowed_reasons": ["Moving"]})),
            NOW,
            RejectionCode.CANCEL_REASON_REQUIRED,
            id="required-before-not-on-list",
        ),
    ],
)
def test_rule_precedence(
    requester_id: str,
    change: Reschedule | Cancel,
    appointment: AppointmentFacts | None,
    config: EffectiveSettings,
    now: datetime,
    expected: RejectionCode,
) -> None:
    decision = run(requester_id=requester_id, change=change, appointment=appointment, config=config, now=now)
    assert_rejected(decision, expected)


# --- customer sentences --------------------------------------------------------------------------

# The rules' codes: the office declines, and rate limits refuse before the rules run (limits.py).
GATE_CODES = {
    code for code in RejectionCode if code not in (RejectionCode.OFFICE_DECLINED, RejectionCode.RATE_LIMITED)
}


def one_decision_per_code() -> list[Decision]:
    return [
        run(requester_id=STRANGER),
        run(config=NO_LAYERS),
        run(appointment=facts(project=project(portal_locked=True))),
        run(appointment=facts(status=AppointmentStatus.WORKING)),
        run(appointment=facts(confirmation=CONFIRMED), config=effective(at(BUSINESS, feature_enabled=True))),
        run(config=effective(at(BUSINESS, feature_enabled=True))),
        run(change=reschedule_to(window(NOW - timedelta(hours=3)))),
        run(change=reschedule_to(CURRENT_WINDOW)),
        run(config=effective(business(reschedule={"min_notice_hours": 90}))),
        run(
            change=reschedule_to(window(NOW + timedelta(hours=3))),
            config=effective(business(reschedule={"min_lead_hours": 12})),
        ),
        run(config=effective(business(reschedule={"max_horizon_days": 2}))),
        run(appointment=facts(project=project(ends_at=NOW + timedelta(days=4)))),
        run(
            appointment=facts(customer_reschedules=3),
            config=effective(business(reschedule={"max_customer_reschedules": 3})),
        ),
        run(change=cancel(None), config=effective(business(cancel={"reason_required": True}))),
        run(
            change=cancel("Other"),
            config=effective(business(cancel={"allowed_reasons": ["Moving", "Too expensive"]})),
        ),
        run(expected_version=DEFAULT_FACTS.version - 1),
    ]


def test_every_gate_rejection_code_is_reachable_with_its_own_customer_sentence() -> None:
    decisions = one_decision_per_code()
    for decision in decisions:
        assert decision.outcome is Outcome.REJECTED
        assert_customer_sentence(decision.reason_text)
    assert {d.reason_code for d in decisions} == {code.value for code in GATE_CODES}
    assert len({d.reason_text for d in decisions}) == len(decisions), "each code has its own sentence"


@pytest.mark.parametrize(
    ("decision", "number"),
    [
        pytest.param(
            lambda: run(config=effective(business(reschedule={"min_notice_hours": 90}))),
            "90 hours",
            id="notice",
        ),
        pytest.param(
            lambda: run(change=cancel(), config=effective(business(cancel={"min_notice_hours": 80}))),
            "80 hours",
            id="cancel-notice",
        ),
        pytest.param(
            lambda: run(
                change=reschedule_to(window(NOW + timedelta(hours=3))),
                config=effective(business(reschedule={"min_lead_hours": 12})),
            ),
            "12 hours",
            id="lead",
        ),
        pytest.param(
            lambda: run(config=effective(business(reschedule={"max_horizon_days": 2}))),
            "2 days",
            id="horizon",
        ),
        pytest.param(
            lambda: run(change=reschedule_to(window(NOW + timedelta(days=366)))),
            "365 days",
            id="default-horizon",
        ),
        pytest.param(
            lambda: run(
                appointment=facts(customer_reschedules=3),
                config=effective(business(reschedule={"max_customer_reschedules": 3})),
            ),
            "3 times",
            id="limit",
        ),
    ],
)
def test_customer_sentences_name_the_number(decision, number: str) -> None:
    made = decision()
    assert_customer_sentence(made.reason_text)
    assert number in made.reason_text


def test_awaiting_approval_has_a_customer_sentence() -> None:
    decision = run(config=effective(business(reschedule=REQUIRE_ALL)))
    assert_needs_approval(decision, "reschedule.unconfirmed", "business")
    assert "office" in decision.reason_text


# --- what the portal offers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requester_id", "appointment", "config", "reschedule", "cancel_outcome"),
    [
        pytest.param(CUSTOMER, facts(), OPEN, Outcome.APPROVED, Outcome.APPROVED, id="everything-open"),
        pytest.param(STRANGER, facts(), OPEN, Outcome.REJECTED, Outcome.REJECTED, id="stranger"),
        pytest.param(CUSTOMER, facts(), NO_LAYERS, Outcome.REJECTED, Outcome.REJECTED, id="no-settings"),
        pytest.param(
            CUSTOMER,
            facts(project=project(portal_locked=True)),
            OPEN,
            Outcome.REJECTED,
            Outcome.REJECTED,
            id="locked",
        ),
        pytest.param(
            CUSTOMER,
            facts(),
            effective(business(cancel=REQUIRE_ALL)),
            Outcome.APPROVED,
            Outcome.NEEDS_APPROVAL,
            id="cancel-needs-approval",
        ),
        pytest.param(
            CUSTOMER,
            facts(),
            effective(business(reschedule={"unconfirmed": "deny"})),
            Outcome.REJECTED,
            Outcome.APPROVED,
            id="reschedule-denied",
        ),
        pytest.param(
            CUSTOMER,
            facts(),
            effective(business(cancel={"min_notice_hours": 100})),
            Outcome.APPROVED,
            Outcome.REJECTED,
            id="cancel-notice-passed",
        ),
    ],
)
def test_offer(
    requester_id: str,
    appointment: AppointmentFacts,
    config: EffectiveSettings,
    reschedule: Outcome,
    cancel_outcome: Outcome,
) -> None:
    shown = offer(requester_id=requester_id, facts=appointment, settings=config, now=NOW)
    assert isinstance(shown, Offer)
    assert (shown.reschedule.outcome, shown.cancel.outcome) == (reschedule, cancel_outcome)
    assert shown.modify_offered is (
        reschedule is not Outcome.REJECTED or cancel_outcome is not Outcome.REJECTED
    )
    for action, decision in (("reschedule", shown.reschedule), ("cancel", shown.cancel)):
        assert decision == check_action(
            requester_id=requester_id, action=action, facts=appointment, settings=config, now=NOW
        )


# --- properties ----------------------------------------------------------------------------------

PEOPLE = [CUSTOMER, "cust-2", PROJECT_LEAD, SUBCONTRACTOR, STRANGER]
OFFSETS = [UTC, PLUS_TWO, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))]
REASON_CHOICES = ["Moving", "Too expensive", "Other"]


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


@st.composite
def windows(draw: st.DrawFn) -> ArrivalWindow:
    start = NOW + timedelta(minutes=draw(st.integers(-3 * 24 * 60, 40 * 24 * 60)))
    length = timedelta(minutes=draw(st.integers(1, 24 * 60)))
    tz = draw(st.sampled_from(OFFSETS))
    return ArrivalWindow(start=start.astimezone(tz), end=(start + length).astimezone(tz))


# Fixed windows and hour steps drawn often, so boundaries ("exactly now", "exactly the lead time",
# "same window") actually happen.
FIXED_WINDOWS = [
    CURRENT_WINDOW,
    NEW_WINDOW,
    window(NOW),
    window(NOW - timedelta(hours=1)),
    window(NOW + timedelta(hours=24)),
]
hourly_windows = st.builds(lambda h: window(NOW + timedelta(hours=h)), st.integers(-24, 40 * 24))
any_window = st.one_of(st.sampled_from(FIXED_WINDOWS), hourly_windows, windows())

any_project = st.one_of(
    st.none(),
    st.builds(
        ProjectFacts,
        project_id=st.just(KEYS[PROJECT]),
        contacts=st.frozensets(st.sampled_from(PEOPLE), max_size=3),
        portal_locked=st.sampled_from([False, False, False, True]),
        starts_at=maybe(st.builds(lambda h: NOW + timedelta(hours=h), st.integers(-72, 240))),
        ends_at=maybe(st.builds(lambda h: NOW + timedelta(hours=h), st.integers(-24, 40 * 24))),
    ),
)
known_facts = st.builds(
    AppointmentFacts,
    appointment_id=st.just("appt-1"),
    customer_id=st.sampled_from(PEOPLE),
    business_unit=st.just(KEYS[BUSINESS_UNIT]),
    job_type=st.just(KEYS[JOB_TYPE]),
    project=any_project,
    status=st.one_of(st.just(AppointmentStatus.SCHEDULED), st.sampled_from(AppointmentStatus)),
    confirmation=st.sampled_from(Confirmation),
    window=any_window,
    version=st.integers(0, 2**62),
    customer_reschedules=st.integers(0, 4),
)
any_facts = st.one_of(st.none(), known_facts)
status_sets = st.lists(
    st.sampled_from([s for s in AppointmentStatus if s is not AppointmentStatus.CANCELED]),
    unique=True,
    max_size=3,
).map(lambda statuses: [*statuses, AppointmentStatus.CANCELED])

friendly_status_sets = status_sets.map(
    lambda statuses: [s for s in statuses if s is not AppointmentStatus.SCHEDULED]
)


@st.composite
def settings_layers(draw: st.DrawFn, friendly: bool = False) -> SettingsLayer:
    """Any valid layer; a `friendly` one never switches self-service off, denies an action or blocks
    scheduled appointments, so that more inputs get past the window-independent rules."""
    switch = (
        st.one_of(st.none(), st.just(True))
        if friendly
        else st.one_of(st.none(), st.just(True), st.booleans())
    )
    permissions = maybe(st.sampled_from([ALLOW, REQUIRE] if friendly else list(Permission)))
    lead = draw(maybe(st.sampled_from([0, 2, 24, 72])))
    horizon = draw(maybe(st.sampled_from([1, 2, 7, 30])))
    if lead is not None and horizon is not None and lead >= horizon * 24:
        horizon = None  # a single layer can't contradict itself (layers can still contradict each other)
    return SettingsLayer(
        feature_enabled=draw(switch),
        blocking_statuses=draw(maybe(friendly_status_sets if friendly else status_sets)),
        reschedule={
            "confirmed": draw(permissions),
            "unconfirmed": draw(permissions),
            "min_notice_hours": draw(maybe(st.sampled_from([0, 1, 24, 48]))),
            "min_lead_hours": lead,
            "max_horizon_days": horizon,
            "max_customer_reschedules": draw(maybe(st.sampled_from([0, 1, 2, 5]))),
        },
        cancel={
            "confirmed": draw(permissions),
            "unconfirmed": draw(permissions),
            "min_notice_hours": draw(maybe(st.sampled_from([0, 1, 24, 48]))),
            "reason_required": draw(maybe(st.booleans())),
            "allowed_reasons": draw(
                maybe(st.lists(st.sampled_from(REASON_CHOICES), min_size=1, unique=True))
            ),
        },
    )


@st.composite
def layer_sets(draw: st.DrawFn, friendly: bool = False) -> list[ScopedLayer]:
    """The layers that apply to one appointment: at most one per level, in any order. Friendly sets
    always switch self-service on at the business level."""
    levels = draw(st.lists(st.sampled_from(ScopeLevel), unique=True, max_size=4))
    layers = [ScopedLayer(level, KEYS[level], draw(settings_layers(friendly))) for level in levels]
    if friendly:
        layers = [layer for layer in layers if layer.level is not BUSINESS]
        base = draw(settings_layers(friendly)).model_copy(update={"feature_enabled": True})
        layers.insert(draw(st.integers(0, len(layers))), ScopedLayer(BUSINESS, None, base))
    return layers


@st.composite
def owned_appointments(draw: st.DrawFn) -> tuple[str, AppointmentFacts]:
    """An appointment of an unlocked project (or none) and someone who may act on it (ownership and the
    project lock have their own tests)."""
    appointment = draw(known_facts)
    status = draw(st.sampled_from([AppointmentStatus.SCHEDULED] * 12 + list(AppointmentStatus)))
    appointment = dataclasses.replace(appointment, status=status)
    if appointment.project is not None:
        appointment = dataclasses.replace(
            appointment, project=dataclasses.replace(appointment.project, portal_locked=False)
        )
    contacts = sorted(appointment.project.contacts) if appointment.project else []
    return draw(st.sampled_from([appointment.customer_id, *contacts])), appointment


any_requester = st.sampled_from(PEOPLE)
# Who asks about which appointment: mostly someone who may act (so that inputs reach the later rules),
# sometimes anyone about anything.
requests = st.one_of(owned_appointments(), owned_appointments(), st.tuples(any_requester, any_facts))
requests_about_known = st.one_of(
    owned_appointments(), owned_appointments(), st.tuples(any_requester, known_facts)
)
any_layers = st.one_of(layer_sets(friendly=True), layer_sets())


any_change = st.one_of(
    st.builds(Reschedule, new_window=any_window),
    st.builds(Cancel, reason=st.sampled_from([None, "Moving", "moving", "OTHER", "Changed my mind"])),
)
any_now = st.one_of(
    st.just(NOW),
    st.builds(lambda h: NOW + timedelta(hours=h), st.integers(-48, 96)),
    st.builds(
        lambda m: (NOW + timedelta(minutes=m)).astimezone(PLUS_TWO), st.integers(-5 * 24 * 60, 5 * 24 * 60)
    ),
)


Scenario = tuple[str, AppointmentFacts | None, list[ScopedLayer], Reschedule | Cancel, datetime]


@st.composite
def scenarios(draw: st.DrawFn, known: bool = False) -> Scenario:
    """A whole request. Often the clock sits right at the notice limit and the new window right at an
    edge (now, lead time, horizon, project dates), give or take a microsecond, so boundaries are hit."""
    requester_id, appointment = draw(requests_about_known if known else requests)
    layers = draw(any_layers)
    change = draw(any_change)
    now = draw(any_now)
    config = resolve(layers)  # only to aim at the edges; the checks use their own model
    nudge = st.sampled_from([-US, timedelta(0), timedelta(0), US, -timedelta(hours=1), timedelta(hours=1)])
    if appointment is not None and draw(st.booleans()):
        notice = config.get(f"{change.action}.min_notice_hours")
        now = appointment.window.start - timedelta(hours=notice) - draw(nudge)
    limit = config.get("reschedule.max_customer_reschedules")
    if appointment is not None and limit is not None and draw(st.booleans()):
        done = max(0, limit + draw(st.sampled_from([-1, 0, 0, 1])))
        appointment = dataclasses.replace(appointment, customer_reschedules=done)
    if isinstance(change, Reschedule) and draw(st.booleans()):
        edges = [
            now,
            now + timedelta(hours=config.get("reschedule.min_lead_hours")),
            now + timedelta(days=config.get("reschedule.max_horizon_days")),
        ]
        if appointment is not None and appointment.project is not None:
            edges += [e for e in (appointment.project.starts_at, appointment.project.ends_at) if e]
        length = draw(st.sampled_from([US, timedelta(hours=2)]))
        start = draw(st.sampled_from(edges)) + draw(nudge)
        if draw(st.booleans()):
            start -= length  # end at the edge rather than start there
        change = Reschedule(new_window=ArrivalWindow(start=start, end=start + length))
    return requester_id, appointment, layers, change, now


def model_settings(layers: list[ScopedLayer]) -> dict[str, tuple[object, str]]:
    """Independent model of resolution: per field, the highest-ranked layer that sets it, else default."""
    rank = {BUSINESS: 1, BUSINESS_UNIT: 2, JOB_TYPE: 3, PROJECT: 4}
    result = {}
    for path, default in DEFAULTS.items():
        best: tuple[int, object, str] | None = None
        for layer in layers:
            data = layer.settings.model_dump()
            for part in path.split("."):
                data = data[part]
            if data is not None and (best is None or rank[layer.level] > best[0]):
                best = (rank[layer.level], data, layer.level.value)
        result[path] = (default, "default") if best is None else (best[1], best[2])
    return result


def expected_decision(
    requester_id: str,
    change: Reschedule | Cancel,
    appointment: AppointmentFacts | None,
    layers: list[ScopedLayer],
    now: datetime,
) -> tuple[Outcome, str | None, str | None, str | None]:
    """An independent statement of docs/policy.md's rule order: (outcome, reason code, setting, level)."""
    model = model_settings(layers)

    def value(path: str) -> object:
        return model[path][0]

    def refuse(code: RejectionCode, path: str | None = None, level: str | None = None):
        return Outcome.REJECTED, code.value, path, (model[path][1] if path else level)

    if appointment is None:
        return refuse(RejectionCode.APPOINTMENT_NOT_FOUND)
    contacts = appointment.project.contacts if appointment.project else frozenset()
    if requester_id != appointment.customer_id and requester_id not in contacts:
        return refuse(RejectionCode.APPOINTMENT_NOT_FOUND)
    if value("feature_enabled") is not True:
        return refuse(RejectionCode.SELF_SERVICE_DISABLED, "feature_enabled")
    if appointment.project and appointment.project.portal_locked:
        return refuse(RejectionCode.PROJECT_LOCKED, level="project")
    if appointment.status in {AppointmentStatus(s) for s in value("blocking_statuses")}:
        return refuse(RejectionCode.APPOINTMENT_NOT_MODIFIABLE, "blocking_statuses")
    cell = f"{change.action}.{appointment.confirmation.value}"
    permission = Permission(value(cell))
    if permission == Permission.DENY:
        if appointment.confirmation == CONFIRMED:
            return refuse(RejectionCode.CONFIRMED_CHANGE_BLOCKED, cell)
        return refuse(RejectionCode.UNCONFIRMED_CHANGE_BLOCKED, cell)
    notice = f"{change.action}.min_notice_hours"
    if appointment.window.start - now <= timedelta(hours=value(notice)):
        return refuse(RejectionCode.NOTICE_WINDOW_PASSED, notice)
    if isinstance(change, Reschedule):
        limit = value("reschedule.max_customer_reschedules")
        if limit is not None and not appointment.customer_reschedules < limit:
            return refuse(RejectionCode.RESCHEDULE_LIMIT_REACHED, "reschedule.max_customer_reschedules")
        # No start at all can satisfy lead time, horizon and the project's dates together.
        p = appointment.project
        earliest = max(now + US, now + timedelta(hours=value("reschedule.min_lead_hours")))
        if p and p.starts_at:
            earliest = max(earliest, p.starts_at)
        if p and p.ends_at and not earliest < p.ends_at:
            return refuse(RejectionCode.OUTSIDE_PROJECT_DATES, level="project")
        if earliest - now > timedelta(days=value("reschedule.max_horizon_days")):
            return refuse(RejectionCode.NEW_WINDOW_TOO_FAR, "reschedule.max_horizon_days")
        new = change.new_window
        if not new.start > now:
            return refuse(RejectionCode.NEW_WINDOW_IN_PAST)
        if (new.start, new.end) == (appointment.window.start, appointment.window.end):
            return refuse(RejectionCode.SAME_WINDOW)
        if new.start - now < timedelta(hours=value("reschedule.min_lead_hours")):
            return refuse(RejectionCode.NEW_WINDOW_TOO_SOON, "reschedule.min_lead_hours")
        if new.start - now > timedelta(days=value("reschedule.max_horizon_days")):
            return refuse(RejectionCode.NEW_WINDOW_TOO_FAR, "reschedule.max_horizon_days")
        p = appointment.project
        if p and ((p.starts_at and new.start < p.starts_at) or (p.ends_at and new.end > p.ends_at)):
            return refuse(RejectionCode.OUTSIDE_PROJECT_DATES, level="project")
    else:
        if value("cancel.reason_required") and change.reason in (None, ""):
            return refuse(RejectionCode.CANCEL_REASON_REQUIRED, "cancel.reason_required")
        allowed = value("cancel.allowed_reasons")
        if (
            change.reason
            and allowed is not None
            and change.reason.lower() not in [r.lower() for r in allowed]
        ):
            return refuse(RejectionCode.CANCEL_REASON_NOT_ALLOWED, "cancel.allowed_reasons")
    if permission == Permission.REQUIRE_APPROVAL:
        return Outcome.NEEDS_APPROVAL, PendingCode.AWAITING_OFFICE_APPROVAL.value, cell, model[cell][1]
    return Outcome.APPROVED, None, None, None


LEVELS = {None, "default", *(level.value for level in ScopeLevel)}


@given(scenario=scenarios())
def test_decide_is_total_and_well_formed(scenario: Scenario) -> None:
    requester_id, appointment, layers, change, now = scenario
    config = resolve(layers)
    decision = decide(requester_id=requester_id, change=change, facts=appointment, settings=config, now=now)
    assert isinstance(decision, Decision)
    assert decision.setting_level in LEVELS
    if decision.setting is not None:
        assert decision.setting in DEFAULTS
        assert decision.setting_level == config.level_of(decision.setting)
    if decision.outcome is Outcome.APPROVED:
        assert_approved(decision)
    elif decision.outcome is Outcome.NEEDS_APPROVAL:
        assert decision.reason_code == PendingCode.AWAITING_OFFICE_APPROVAL.value
        assert_customer_sentence(decision.reason_text)
    else:
        assert RejectionCode(decision.reason_code) in GATE_CODES
        assert decision.rule
        assert_customer_sentence(decision.reason_text)


@settings(max_examples=300)
@given(scenario=scenarios())
def test_decision_is_the_first_failing_rule_in_documented_order(scenario: Scenario) -> None:
    requester_id, appointment, layers, change, now = scenario
    decision = decide(
        requester_id=requester_id, change=change, facts=appointment, settings=resolve(layers), now=now
    )
    expected = expected_decision(requester_id, change, appointment, layers, now)
    assert (decision.outcome, decision.reason_code, decision.setting, decision.setting_level) == expected


@settings(max_examples=200)
@given(scenario=scenarios(known=True))
def test_approval_implies_every_rule_passes(scenario: Scenario) -> None:
    requester_id, appointment, layers, change, now = scenario
    assert appointment is not None
    config = resolve(layers)
    decision = decide(requester_id=requester_id, change=change, facts=appointment, settings=config, now=now)
    if decision.outcome is Outcome.REJECTED:
        return
    model = {path: value for path, (value, _) in model_settings(layers).items()}
    p = appointment.project
    assert requester_id == appointment.customer_id or (p is not None and requester_id in p.contacts)
    assert model["feature_enabled"] is True
    assert p is None or not p.portal_locked
    assert appointment.status not in set(model["blocking_statuses"])
    cell = model[f"{change.action}.{appointment.confirmation.value}"]
    assert cell in (ALLOW, REQUIRE)
    assert (decision.outcome is Outcome.NEEDS_APPROVAL) is (cell == REQUIRE)
    assert appointment.window.start > now + timedelta(hours=model[f"{change.action}.min_notice_hours"])
    if isinstance(change, Reschedule):
        limit = model["reschedule.max_customer_reschedules"]
        assert limit is None or appointment.customer_reschedules < limit
        new = change.new_window
        assert new.start > now
        assert (new.start, new.end) != (appointment.window.start, appointment.window.end)
        assert now + timedelta(hours=model["reschedule.min_lead_hours"]) <= new.start
        assert new.start <= now + timedelta(days=model["reschedule.max_horizon_days"])
        if p is not None:
            assert p.starts_at is None or p.starts_at <= new.start
            assert p.ends_at is None or new.end <= p.ends_at
    else:
        assert change.reason or not model["cancel.reason_required"]
        allowed = model["cancel.allowed_reasons"]
        assert (
            not change.reason
            or allowed is None
            or change.reason.casefold() in {r.casefold() for r in allowed}
        )


@given(scenario=scenarios())
def test_decide_is_deterministic(scenario: Scenario) -> None:
    requester_id, appointment, layers, change, now = scenario
    first = decide(
        requester_id=requester_id, change=change, facts=appointment, settings=resolve(layers), now=now
    )
    again = decide(
        requester_id=requester_id, change=change, facts=appointment, settings=resolve(layers), now=now
    )
    # Equal but not identical inputs (as after a redelivery and a fresh database read) decide the same,
    # whatever order the layers come in and whatever offset the clock is written in.
    copies = [
        dataclasses.replace(layer, settings=layer.settings.model_copy(deep=True))
        for layer in reversed(layers)
    ]
    from_copies = decide(
        requester_id=requester_id,
        change=change.model_copy(deep=True),
        facts=None if appointment is None else dataclasses.replace(appointment),
        settings=resolve(copies),
        now=now.astimezone(timezone(timedelta(hours=-7))),
    )
    assert first == again == from_copies


# --- the portal's offer equals the gate's decision -------------------------------------------------


def a_valid_window(
    appointment: AppointmentFacts, config: EffectiveSettings, now: datetime
) -> ArrivalWindow | None:
    """A new window that passes every window rule, if one exists."""
    earliest = max(now + US, now + timedelta(hours=config.get("reschedule.min_lead_hours")))
    latest = now + timedelta(days=config.get("reschedule.max_horizon_days"))
    end_limit = None
    if appointment.project is not None:
        if appointment.project.starts_at is not None:
            earliest = max(earliest, appointment.project.starts_at)
        end_limit = appointment.project.ends_at
        if end_limit is not None:
            latest = min(latest, end_limit - US)
    if earliest > latest:
        return None
    for start in (earliest, latest):
        for length in (timedelta(hours=1), timedelta(minutes=30), US):
            end = start + length if end_limit is None else min(start + length, end_limit)
            if end > start:
                candidate = ArrivalWindow(start=start, end=end)
                if candidate != appointment.window:
                    return candidate
    return None


def a_valid_reason(config: EffectiveSettings) -> str | None:
    allowed = config.get("cancel.allowed_reasons")
    if allowed is not None:
        return allowed[-1]
    return "Changed my mind" if config.get("cancel.reason_required") else None


@settings(max_examples=200)
@given(
    request=requests_about_known,
    layers=any_layers,
    now=any_now,
    changes=st.lists(any_change, min_size=1, max_size=8),
)
def test_an_action_the_portal_does_not_offer_is_refused_by_the_gate_for_the_same_reason(
    request: tuple[str, AppointmentFacts],
    layers: list[ScopedLayer],
    now: datetime,
    changes: list[Reschedule | Cancel],
) -> None:
    requester_id, appointment = request
    config = resolve(layers)
    shown = offer(requester_id=requester_id, facts=appointment, settings=config, now=now)
    for change in changes:
        offered = getattr(shown, change.action)
        if offered.outcome is not Outcome.REJECTED:
            continue
        decision = decide(
            requester_id=requester_id, change=change, facts=appointment, settings=config, now=now
        )
        assert decision.outcome is Outcome.REJECTED
        assert decision.reason_code == offered.reason_code
        assert decision == offered


@settings(max_examples=150)
@given(
    owned=owned_appointments(),
    layers=layer_sets(friendly=True),
    now=any_now,
)
def test_an_action_the_portal_offers_can_be_done_with_the_offered_outcome(
    owned: tuple[str, AppointmentFacts], layers: list[ScopedLayer], now: datetime
) -> None:
    requester_id, appointment = owned
    config = resolve(layers)
    shown = offer(requester_id=requester_id, facts=appointment, settings=config, now=now)
    assume(shown.modify_offered)
    if shown.reschedule.outcome is not Outcome.REJECTED:
        new_window = a_valid_window(appointment, config, now)
        event("reschedule offered")
        assert new_window is not None, "the portal offers a reschedule that no new window can pass"
        change = Reschedule(new_window=new_window)
        decision = decide(
            requester_id=requester_id, change=change, facts=appointment, settings=config, now=now
        )
        assert decision == shown.reschedule
    if shown.cancel.outcome is not Outcome.REJECTED:
        event(f"cancel offered: {shown.cancel.outcome.value}")
        change = Cancel(reason=a_valid_reason(config))
        decision = decide(
            requester_id=requester_id, change=change, facts=appointment, settings=config, now=now
        )
        assert decision == shown.cancel


TightCase = tuple[AppointmentFacts, list[ScopedLayer], datetime, list[ArrivalWindow]]


@st.composite
def tight_schedules(draw: st.DrawFn) -> TightCase:
    """Lead time, horizon and project dates close together, so that the bookable span is often narrow or
    empty; and new windows tried right at and next to each of its edges."""
    now = NOW + timedelta(hours=draw(st.integers(-24, 24)))
    lead = draw(st.sampled_from([0, 2, 24, 72]))
    horizon = draw(st.sampled_from([1, 2, 7]))
    edges = [now, now + timedelta(hours=lead), now + timedelta(days=horizon)]
    nudge = st.sampled_from([-US, timedelta(0), US])
    near_an_edge = st.builds(
        lambda edge, hours, n: edge + timedelta(hours=hours) + n,
        st.sampled_from(edges),
        st.sampled_from([-24, -1, 0, 0, 0, 1, 24]),
        nudge,
    )
    starts_at = draw(maybe(near_an_edge))
    ends_at = draw(maybe(near_an_edge))
    if starts_at and ends_at and ends_at <= starts_at:
        starts_at, ends_at = ends_at, starts_at + timedelta(hours=draw(st.integers(1, 48)))
    appointment = facts(project=project(starts_at=starts_at, ends_at=ends_at))
    layers = [
        business(reschedule={"min_lead_hours": lead}),
        at(JOB_TYPE, reschedule={"max_horizon_days": horizon}),
    ]
    edges += [edge for edge in (starts_at, ends_at) if edge]
    tried = [appointment.window]
    for edge in edges:
        for offset in (-US, timedelta(0), US):
            for length in (US, timedelta(minutes=30), timedelta(hours=2)):
                tried += [ArrivalWindow(start=edge + offset, end=edge + offset + length)]
                tried += [ArrivalWindow(start=edge + offset - length, end=edge + offset)]
    return appointment, layers, now, tried


@settings(max_examples=150)
@given(case=tight_schedules())
def test_reschedule_is_offered_exactly_when_some_window_can_pass(case: TightCase) -> None:
    """The key property: the offer rejects "reschedule" iff the gate rejects every new window. Every
    window tried at the edges gets the documented decision, and the test's own a_valid_window() finds a
    window whenever the gate accepts one."""
    appointment, layers, now, tried = case
    config = resolve(layers)
    shown = offer(requester_id=CUSTOMER, facts=appointment, settings=config, now=now)
    assert shown.cancel.approved
    found = a_valid_window(appointment, config, now)
    accepted = []
    for new_window in tried:
        change = Reschedule(new_window=new_window)
        decision = decide(requester_id=CUSTOMER, change=change, facts=appointment, settings=config, now=now)
        expected = expected_decision(CUSTOMER, change, appointment, layers, now)
        assert (decision.outcome, decision.reason_code, decision.setting, decision.setting_level) == expected
        if decision.approved:
            accepted.append(new_window)
    event("a window is bookable" if found else "no window is bookable")
    if accepted:
        assert found is not None
    if found is None:
        assert shown.reschedule.outcome is Outcome.REJECTED
        assert shown.reschedule.reason_code in {
            RejectionCode.NEW_WINDOW_TOO_FAR,
            RejectionCode.OUTSIDE_PROJECT_DATES,
        }
    else:
        assert shown.reschedule.approved
        change = Reschedule(new_window=found)
        assert decide(
            requester_id=CUSTOMER, change=change, facts=appointment, settings=config, now=now
        ).approved


# Effective settings and project dates under which no new window can pass, although every layer is
# valid on its own: the portal must not offer a reschedule, and says why.
# (layers, appointment, code, setting, level)
NO_BOOKABLE_WINDOW = [
    pytest.param(
        [business(reschedule={"min_lead_hours": 48}), at(JOB_TYPE, reschedule={"max_horizon_days": 1})],
        facts(project=None),
        RejectionCode.NEW_WINDOW_TOO_FAR,
        "reschedule.max_horizon_days",
        "job_type",
        id="lead-from-business-longer-than-horizon-from-job-type",
    ),
    pytest.param(
        [business()],
        facts(project=project(ends_at=NOW - timedelta(days=1))),
        RejectionCode.OUTSIDE_PROJECT_DATES,
        None,
        "project",
        id="project-already-ended",
    ),
    pytest.param(
        [business()],
        facts(project=project(ends_at=NOW)),
        RejectionCode.OUTSIDE_PROJECT_DATES,
        None,
        "project",
        id="project-ends-now",
    ),
    pytest.param(
        [business(reschedule={"min_lead_hours": 24})],
        facts(project=project(ends_at=NOW + timedelta(hours=12))),
        RejectionCode.OUTSIDE_PROJECT_DATES,
        None,
        "project",
        id="project-ends-within-lead-time",
    ),
    pytest.param(
        [business(reschedule={"min_lead_hours": 24})],
        facts(project=project(ends_at=NOW + timedelta(hours=24))),
        RejectionCode.OUTSIDE_PROJECT_DATES,
        None,
        "project",
        id="project-ends-exactly-at-lead-time",
    ),
    pytest.param(
        [business(reschedule={"max_horizon_days": 7})],
        facts(project=project(starts_at=NOW + timedelta(days=7) + US)),
        RejectionCode.NEW_WINDOW_TOO_FAR,
        "reschedule.max_horizon_days",
        "business",
        id="project-starts-just-beyond-horizon",
    ),
]


def sweep(appointment: AppointmentFacts, config: EffectiveSettings) -> list[Decision]:
    """The gate's answer for every half-hour start from an hour ago to 40 days ahead, 1 µs to 24 h long,
    and for windows right at the edges of the lead time and the project's dates."""
    starts = [NOW + timedelta(minutes=30 * step) for step in range(-2, 40 * 48)]
    edges = [NOW + timedelta(hours=config.get("reschedule.min_lead_hours"))]
    if appointment.project is not None:
        edges += [edge for edge in (appointment.project.starts_at, appointment.project.ends_at) if edge]
    starts += [edge + nudge for edge in edges for nudge in (-US, timedelta(0), US)]
    decisions = []
    for start in starts:
        for length in (US, timedelta(hours=1), timedelta(hours=24)):
            change = Reschedule(new_window=ArrivalWindow(start=start, end=start + length))
            decisions.append(
                decide(requester_id=CUSTOMER, change=change, facts=appointment, settings=config, now=NOW)
            )
    return decisions


@pytest.mark.parametrize(("layers", "appointment", "code", "setting", "level"), NO_BOOKABLE_WINDOW)
def test_no_reschedule_is_offered_when_no_window_can_pass(
    layers: list[ScopedLayer],
    appointment: AppointmentFacts,
    code: RejectionCode,
    setting: str | None,
    level: str,
) -> None:
    config = resolve(layers)
    assert a_valid_window(appointment, config, NOW) is None
    assert all(d.outcome is Outcome.REJECTED for d in sweep(appointment, config))
    shown = offer(requester_id=CUSTOMER, facts=appointment, settings=config, now=NOW)
    assert_rejected(shown.reschedule, code, setting=setting, level=level)
    assert shown.cancel == Decision(Outcome.APPROVED, "all_rules_passed")
    for change in (reschedule_to(), reschedule_to(window(NOW + timedelta(hours=30)))):
        assert run(change=change, appointment=appointment, config=config) == shown.reschedule


@pytest.mark.parametrize(
    ("layers", "appointment", "bookable_start"),
    [
        pytest.param(
            [business(reschedule={"min_lead_hours": 24}), at(PROJECT, reschedule={"max_horizon_days": 1})],
            facts(project=None),
            NOW + timedelta(hours=24),
            id="lead-equal-to-horizon-leaves-one-start",
        ),
        pytest.param(
            [business(reschedule={"min_lead_hours": 24})],
            facts(project=project(ends_at=NOW + timedelta(hours=24) + US)),
            NOW + timedelta(hours=24),
            id="project-ends-a-microsecond-after-lead-time",
        ),
        pytest.param(
            [business(reschedule={"max_horizon_days": 7})],
            facts(project=project(starts_at=NOW + timedelta(days=7))),
            NOW + timedelta(days=7),
            id="project-starts-exactly-at-horizon",
        ),
    ],
)
def test_reschedule_is_offered_when_exactly_one_start_is_left(
    layers: list[ScopedLayer], appointment: AppointmentFacts, bookable_start: datetime
) -> None:
    config = resolve(layers)
    assert offer(requester_id=CUSTOMER, facts=appointment, settings=config, now=NOW).reschedule.approved
    end = bookable_start + US
    assert run(
        change=reschedule_to(ArrivalWindow(start=bookable_start, end=end)),
        appointment=appointment,
        config=config,
    ).approved


def test_no_reschedule_is_offered_when_the_project_ends_a_microsecond_from_now() -> None:
    appointment = facts(project=project(ends_at=NOW + US))
    config = effective(business())
    assert a_valid_window(appointment, config, NOW) is None
    assert all(d.outcome is Outcome.REJECTED for d in sweep(appointment, config))
    shown = offer(requester_id=CUSTOMER, facts=appointment, settings=config, now=NOW)
    assert shown.reschedule.outcome is Outcome.REJECTED


# --- the version the customer saw ------------------------------------------------------------------


@BOTH_CHANGES
def test_a_request_made_on_a_version_that_is_gone_is_refused(change: Reschedule | Cancel) -> None:
    for seen in (DEFAULT_FACTS.version - 1, DEFAULT_FACTS.version + 1):
        decision = run(change=change, expected_version=seen)
        assert_rejected(decision, RejectionCode.APPOINTMENT_VERSION_STALE, "expected_version")


@BOTH_CHANGES
def test_the_current_version_or_none_passes(change: Reschedule | Cancel) -> None:
    assert_approved(run(change=change, expected_version=DEFAULT_FACTS.version))
    assert_approved(run(change=change, expected_version=None))


def test_a_stranger_quoting_a_version_still_learns_nothing() -> None:
    decision = run(requester_id=STRANGER, expected_version=DEFAULT_FACTS.version - 1)
    assert_rejected(decision, RejectionCode.APPOINTMENT_NOT_FOUND, "ownership")


def test_a_stale_version_comes_before_the_other_rules() -> None:
    decision = run(config=NO_LAYERS, expected_version=DEFAULT_FACTS.version + 3)
    assert decision.reason_code == RejectionCode.APPOINTMENT_VERSION_STALE
