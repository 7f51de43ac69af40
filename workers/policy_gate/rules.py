"""The gate's rules, pure: facts about the appointment + effective settings + now -> a decision.

The order is part of the contract and documented in docs/policy.md:
 1. ownership (a stranger learns nothing, not even whether self-service is on); then, when the request
    says which appointment version the customer saw, that it is still the current one
 2. feature switch            3. project lock            4. blocking statuses
 5. the permission for this action and confirmation state (deny)
 6. the notice window before the current start
 7. reschedule only: new window in the past / unchanged / too soon / too far / outside the project's
    dates; the customer reschedule limit.   cancel only: reason required / reason not on the list
 8. the permission says "require approval" -> the request waits for the office
The window-independent part (1-6 and the reschedule limit) also decides what the portal offers, so
the portal never shows a button the gate would refuse.
"""

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation
from contracts.office_v2 import Permission
from contracts.portal_v1 import Cancel, Reschedule
from contracts.reasons import PendingCode, RejectionCode, customer_text
from workers.policy_gate.new_window import Refusal, WindowRules, no_start_left, refusal
from workers.policy_gate.settings import EffectiveSettings


class Outcome(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"
    NEEDS_APPROVAL = "needs_approval"


@dataclass(frozen=True)
class ProjectFacts:
    project_id: str
    contacts: frozenset[str]
    portal_locked: bool = False
    starts_at: datetime | None = None
    ends_at: datetime | None = None


@dataclass(frozen=True)
class AppointmentFacts:
    appointment_id: str
    customer_id: str
    business_unit: str
    job_type: str
    project: ProjectFacts | None
    status: AppointmentStatus
    confirmation: Confirmation
    window: ArrivalWindow
    version: int
    customer_reschedules: int = 0
    job_id: str | None = None
    zone: str = ""

    @property
    def project_id(self) -> str | None:
        return self.project.project_id if self.project else None


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    rule: str
    setting: str | None = None  # the settings path that decided, if one did
    setting_level: str | None = None  # business / business_unit / job_type / project / default
    reason_code: str | None = None
    reason_text: str | None = None

    @property
    def approved(self) -> bool:
        return self.outcome is Outcome.APPROVED

    @classmethod
    def rejected(
        cls,
        code: RejectionCode,
        rule: str,
        settings: EffectiveSettings | None = None,
        setting: str | None = None,
        *,
        level: str | None = None,
        **text_args,
    ) -> "Decision":
        """A refusal: the rule (and the setting, with the level that set it) that refused, and why."""
        if level is None and settings is not None and setting is not None:
            level = settings.level_of(setting)
        return cls(Outcome.REJECTED, rule, setting, level, code.value, customer_text(code, **text_args))

    @classmethod
    def awaiting_approval(cls, settings: EffectiveSettings, permission_path: str) -> "Decision":
        """The permission says the office approves: the request waits."""
        code = PendingCode.AWAITING_OFFICE_APPROVAL
        return cls(
            Outcome.NEEDS_APPROVAL,
            permission_path,
            permission_path,
            settings.level_of(permission_path),
            code.value,
            customer_text(code),
        )


APPROVED = Decision(Outcome.APPROVED, "all_rules_passed")
_reject = Decision.rejected


def facts_after(facts: AppointmentFacts, change: Reschedule | Cancel) -> AppointmentFacts:
    """The appointment as an approved change leaves it, as the scheduling worker applies it
    (workers/modify_handler/domain.py `reschedule` / `cancel` and the customer's reschedule count): the
    state whose offer the gate sends with its approval."""
    if isinstance(change, Reschedule):
        return replace(
            facts,
            window=change.new_window,
            version=facts.version + 1,
            customer_reschedules=facts.customer_reschedules + 1,
        )
    return replace(facts, status=AppointmentStatus.CANCELED, version=facts.version + 1)


def may_act_for(requester_id: str, facts: AppointmentFacts) -> bool:
    """The job's customer, or a named contact (project lead, subcontractor) of the appointment's project."""
    return requester_id == facts.customer_id or (
        facts.project is not None and requester_id in facts.project.contacts
    )


def window_rules(facts: AppointmentFacts, settings: EffectiveSettings) -> WindowRules:
    """The new-window rules for this appointment (settings + the project's dates)."""
    project = facts.project
    return WindowRules(
        min_lead_hours=settings.get("reschedule.min_lead_hours"),
        max_horizon_days=settings.get("reschedule.max_horizon_days"),
        not_before=project.starts_at if project else None,
        not_after=project.ends_at if project else None,
    )


def _window_refused(refused: Refusal, settings: EffectiveSettings) -> Decision:
    """The decision for a new-window refusal (new_window.py says which rule refused)."""
    match refused:
        case Refusal.IN_PAST:
            return _reject(RejectionCode.NEW_WINDOW_IN_PAST, "new_window")
        case Refusal.SAME_WINDOW:
            return _reject(RejectionCode.SAME_WINDOW, "new_window")
        case Refusal.TOO_SOON:
            lead = settings.get("reschedule.min_lead_hours")
            return _reject(
                RejectionCode.NEW_WINDOW_TOO_SOON,
                "lead_time",
                settings,
                "reschedule.min_lead_hours",
                hours=lead,
            )
        case Refusal.TOO_FAR:
            horizon = settings.get("reschedule.max_horizon_days")
            return _reject(
                RejectionCode.NEW_WINDOW_TOO_FAR,
                "horizon",
                settings,
                "reschedule.max_horizon_days",
                days=horizon,
            )
        case Refusal.OUTSIDE_PROJECT_DATES:
            return _reject(RejectionCode.OUTSIDE_PROJECT_DATES, "project_dates", level="project")


def check_action(
    *,
    requester_id: str,
    action: str,
    facts: AppointmentFacts | None,
    settings: EffectiveSettings,
    now: datetime,
) -> Decision:
    """Everything that does not depend on the new window or the cancel reason (rules 1-6, the reschedule
    limit, and the approval requirement). APPROVED here means the portal may offer the action."""
    if facts is None or not may_act_for(requester_id, facts):
        return _reject(RejectionCode.APPOINTMENT_NOT_FOUND, "ownership")
    if not settings.get("feature_enabled"):
        return _reject(RejectionCode.SELF_SERVICE_DISABLED, "feature_switch", settings, "feature_enabled")
    if facts.project is not None and facts.project.portal_locked:
        return _reject(RejectionCode.PROJECT_LOCKED, "project_lock", level="project")
    if facts.status in settings.get("blocking_statuses"):
        return _reject(
            RejectionCode.APPOINTMENT_NOT_MODIFIABLE,
            "appointment_status",
            settings,
            "blocking_statuses",
            status=facts.status.value,
        )
    permission_path = f"{action}.{facts.confirmation.value}"
    permission = settings.get(permission_path)
    if permission is Permission.DENY:
        code = (
            RejectionCode.CONFIRMED_CHANGE_BLOCKED
            if facts.confirmation is Confirmation.CONFIRMED
            else RejectionCode.UNCONFIRMED_CHANGE_BLOCKED
        )
        return _reject(code, permission_path, settings, permission_path, action=action)
    notice_path = f"{action}.min_notice_hours"
    notice_hours = settings.get(notice_path)
    if now + timedelta(hours=notice_hours) >= facts.window.start:
        return _reject(
            RejectionCode.NOTICE_WINDOW_PASSED, "notice_window", settings, notice_path, hours=notice_hours
        )
    if action == "reschedule":
        limit = settings.get("reschedule.max_customer_reschedules")
        if limit is not None and facts.customer_reschedules >= limit:
            return _reject(
                RejectionCode.RESCHEDULE_LIMIT_REACHED,
                "reschedule_limit",
                settings,
                "reschedule.max_customer_reschedules",
                limit=limit,
            )
        # No start a new window could have (lead time, horizon, the project's dates): refuse up front,
        # so the portal does not offer a reschedule that every pick would fail.
        closed = no_start_left(window_rules(facts, settings), now)
        if closed is not None:
            return _window_refused(closed, settings)
    if permission is Permission.REQUIRE_APPROVAL:
        return Decision.awaiting_approval(settings, permission_path)
    return APPROVED


def _check_new_window(
    new_window: ArrivalWindow, facts: AppointmentFacts, settings: EffectiveSettings, now: datetime
) -> Decision | None:
    refused = refusal(window_rules(facts, settings), new_window, facts.window, now)
    return None if refused is None else _window_refused(refused, settings)


def _check_cancel_reason(reason: str | None, settings: EffectiveSettings) -> Decision | None:
    if settings.get("cancel.reason_required") and not reason:
        return _reject(
            RejectionCode.CANCEL_REASON_REQUIRED, "cancel_reason", settings, "cancel.reason_required"
        )
    allowed = settings.get("cancel.allowed_reasons")
    if reason and allowed is not None and reason.casefold() not in {r.casefold() for r in allowed}:
        return _reject(
            RejectionCode.CANCEL_REASON_NOT_ALLOWED,
            "cancel_reason",
            settings,
            "cancel.allowed_reasons",
            reasons=", ".join(allowed),
        )
    return None


def decide(
    *,
    requester_id: str,
    change: Reschedule | Cancel,
    facts: AppointmentFacts | None,
    settings: EffectiveSettings,
    now: datetime,
    expected_version: int | None = None,
) -> Decision:
    if (
        expected_version is not None
        and facts is not None
        and may_act_for(requester_id, facts)
        and expected_version != facts.version
    ):
        # The customer decided on a state that is gone (the office changed it since they looked).
        return _reject(RejectionCode.APPOINTMENT_VERSION_STALE, "expected_version")
    base = check_action(
        requester_id=requester_id, action=change.action, facts=facts, settings=settings, now=now
    )
    if base.outcome is Outcome.REJECTED:
        return base
    assert facts is not None
    if isinstance(change, Reschedule):
        refusal = _check_new_window(change.new_window, facts, settings, now)
    else:
        refusal = _check_cancel_reason(change.reason, settings)
    return refusal or base


@dataclass(frozen=True)
class Offer:
    """What the portal shows for one appointment: which actions, and why not the others."""

    reschedule: Decision
    cancel: Decision

    @property
    def modify_offered(self) -> bool:
        return self.reschedule.outcome is not Outcome.REJECTED or self.cancel.outcome is not Outcome.REJECTED


def offer(*, requester_id: str, facts: AppointmentFacts, settings: EffectiveSettings, now: datetime) -> Offer:
    return Offer(
        reschedule=check_action(
            requester_id=requester_id, action="reschedule", facts=facts, settings=settings, now=now
        ),
        cancel=check_action(
            requester_id=requester_id, action="cancel", facts=facts, settings=settings, now=now
        ),
    )
