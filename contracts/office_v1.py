"""Messages the office side publishes (schema version 1) so the system knows the world."""

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field

from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation, Project
from contracts.envelope import Envelope, Strict
from contracts.types import EntityId, ShortText, Slug, Version


class AppointmentRecordedPayload(Strict):
    appointment_id: EntityId
    job_id: EntityId
    customer_id: EntityId
    business_unit: Slug
    job_type: Slug
    project: Project | None = None
    window: ArrivalWindow
    status: AppointmentStatus
    confirmation: Confirmation


class AppointmentRecorded(Envelope):
    exchange_role: ClassVar[str] = "office"
    routing_key: ClassVar[str] = "office.appointment.recorded"
    summary: ClassVar[str] = "The office booked an appointment or changed one (full state)."

    type: Literal["office.appointment.recorded"] = "office.appointment.recorded"
    schema_version: Literal[1] = 1
    payload: AppointmentRecordedPayload


class Permission(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class ConfirmationRule(Strict):
    """What the portal may do for appointments in each confirmation state."""

    confirmed: Permission = Permission.DENY
    unconfirmed: Permission = Permission.DENY


class ActionRules(Strict):
    reschedule: ConfirmationRule = Field(default_factory=ConfirmationRule)
    cancel: ConfirmationRule = Field(default_factory=ConfirmationRule)


class PortalSettingsPayload(Strict):
    feature_enabled: bool
    rules: ActionRules = Field(default_factory=ActionRules)
    settings_version: Version = Field(
        description="Increases with every change the office makes; older versions are ignored."
    )
    changed_by: EntityId


class PortalSettingsUpdated(Envelope):
    exchange_role: ClassVar[str] = "office"
    routing_key: ClassVar[str] = "office.portal_settings.updated"
    summary: ClassVar[str] = "The business changed its customer self-service settings."

    type: Literal["office.portal_settings.updated"] = "office.portal_settings.updated"
    schema_version: Literal[1] = 1
    payload: PortalSettingsPayload


class ApprovalDecidedPayload(Strict):
    request_id: EntityId = Field(description="The portal request waiting for approval (its correlation id).")
    approved: bool
    reason: ShortText | None = Field(
        default=None, description="Why the office declined; shown to the customer."
    )
    decided_by: EntityId


class ApprovalDecided(Envelope):
    exchange_role: ClassVar[str] = "office"
    routing_key: ClassVar[str] = "office.approval.decided"
    summary: ClassVar[str] = "The office approved or declined a request that was waiting for its approval."

    type: Literal["office.approval.decided"] = "office.approval.decided"
    schema_version: Literal[1] = 1
    payload: ApprovalDecidedPayload
