"""The gate's rules, pure: facts about the appointment + the business's settings + now -> a decision.

Order matters and is part of the contract: ownership first (so a stranger learns nothing about an
appointment, not even whether self-service is on), then the feature switch, then the appointment's
state, then the business's rule for this action and confirmation state, then the new time itself.
"""

from dataclasses import dataclass
from datetime import datetime

from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation
from contracts.office_v1 import ActionRules, Permission
from contracts.portal_v1 import Cancel, Reschedule
from contracts.reasons import RejectionCode, customer_text

# Statuses in which the customer may still change the appointment online.
MODIFIABLE_STATUSES = frozenset({AppointmentStatus.SCHEDULED})


@dataclass(frozen=True)
class AppointmentFacts:
    appointment_id: str
    customer_id: str
    project_contacts: frozenset[str]
    status: AppointmentStatus
    confirmation: Confirmation
    window: ArrivalWindow
    version: int


@dataclass(frozen=True)
class PortalSettings:
    feature_enabled: bool
    rules: ActionRules
    settings_version: int


@dataclass(frozen=True)
class Decision:
    approved: bool
    rule: str
    reason_code: str | None = None
    reason_text: str | None = None

    @classmethod
    def reject(cls, code: RejectionCode, rule: str, **text_args) -> "Decision":
        return cls(False, rule, code.value, customer_text(code, **text_args))


APPROVED = Decision(True, "all_rules_passed")


def may_act_for(requester_id: str, facts: AppointmentFacts) -> bool:
    """The job's customer, or a named contact of the appointment's project."""
    return requester_id == facts.customer_id or requester_id in facts.project_contacts


def decide(
    *,
    requester_id: str,
    change: Reschedule | Cancel,
    facts: AppointmentFacts | None,
    settings: PortalSettings | None,
    now: datetime,
) -> Decision:
    action = change.action
    if facts is None or not may_act_for(requester_id, facts):
        return Decision.reject(RejectionCode.APPOINTMENT_NOT_FOUND, "ownership")
    if settings is None or not settings.feature_enabled:
        return Decision.reject(RejectionCode.SELF_SERVICE_DISABLED, "feature_switch")
    if facts.status not in MODIFIABLE_STATUSES:
        return Decision.reject(
            RejectionCode.APPOINTMENT_NOT_MODIFIABLE, "appointment_status", status=facts.status.value
        )
    rule = getattr(settings.rules, action)
    permission = getattr(rule, facts.confirmation.value)
    if permission is not Permission.ALLOW:
        code = (
            RejectionCode.CONFIRMED_CHANGE_BLOCKED
            if facts.confirmation is Confirmation.CONFIRMED
            else RejectionCode.UNCONFIRMED_CHANGE_BLOCKED
        )
        return Decision.reject(code, f"{action}.{facts.confirmation.value}", action=action)
    if isinstance(change, Reschedule):
        if change.new_window.start <= now:
            return Decision.reject(RejectionCode.NEW_WINDOW_IN_PAST, "new_window")
        if change.new_window == facts.window:
            return Decision.reject(RejectionCode.SAME_WINDOW, "new_window")
    return APPROVED
