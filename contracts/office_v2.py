"""Office messages, schema version 2: layered self-service settings, and versioned appointment records.

Settings: one message sets one layer. A layer only says what it overrides: a field left null is inherited from
the less specific layer. Precedence, most specific first: project > job type > business unit > business.
"""

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from contracts.common import AppointmentStatus
from contracts.envelope import Envelope, Strict
from contracts.office_v1 import AppointmentRecordedPayload
from contracts.types import EntityId, ShortText, Slug, Version

MAX_NOTICE_HOURS = 24 * 60
MAX_HORIZON_DAYS = 730


class Permission(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_APPROVAL = "require_approval"  # the request waits for the office's decision


class ScopeLevel(StrEnum):
    """Settings layers, least specific first."""

    BUSINESS = "business"
    BUSINESS_UNIT = "business_unit"
    JOB_TYPE = "job_type"
    PROJECT = "project"


PRECEDENCE: tuple[ScopeLevel, ...] = tuple(ScopeLevel)  # later wins


class SettingsScope(Strict):
    level: ScopeLevel
    key: Slug | None = Field(
        default=None, description="The business unit, job type or project id; null for business."
    )

    @model_validator(mode="after")
    def _key_matches_level(self) -> "SettingsScope":
        if (self.level is ScopeLevel.BUSINESS) != (self.key is None):
            raise ValueError("key must be null for the business level and set for every other level")
        return self


class RescheduleSettings(Strict):
    confirmed: Permission | None = None
    unconfirmed: Permission | None = None
    min_notice_hours: int | None = Field(default=None, ge=0, le=MAX_NOTICE_HOURS)
    min_lead_hours: int | None = Field(default=None, ge=0, le=MAX_NOTICE_HOURS)
    max_horizon_days: int | None = Field(default=None, ge=1, le=MAX_HORIZON_DAYS)
    max_customer_reschedules: Annotated[int, Field(ge=0, le=100)] | Literal["unlimited"] | None = Field(
        default=None,
        description='How many times a customer may reschedule one appointment; "unlimited" lifts a limit '
        "that a less specific layer set.",
    )

    @model_validator(mode="after")
    def _lead_within_horizon(self) -> "RescheduleSettings":
        if self.min_lead_hours is not None and self.max_horizon_days is not None:
            if self.min_lead_hours >= self.max_horizon_days * 24:
                raise ValueError("min_lead_hours must be shorter than max_horizon_days")
        return self


class CancelSettings(Strict):
    confirmed: Permission | None = None
    unconfirmed: Permission | None = None
    min_notice_hours: int | None = Field(default=None, ge=0, le=MAX_NOTICE_HOURS)
    reason_required: bool | None = None
    allowed_reasons: (
        Annotated[list[ShortText], Field(min_length=1, max_length=50)] | Literal["any"] | None
    ) = Field(
        default=None,
        description='The cancel reasons a customer may give; "any" lifts a list that a less specific '
        "layer set.",
    )

    @model_validator(mode="after")
    def _reasons_unique(self) -> "CancelSettings":
        if isinstance(self.allowed_reasons, list):
            folded = [r.casefold() for r in self.allowed_reasons]
            if len(set(folded)) != len(folded):
                raise ValueError("allowed_reasons must not repeat a reason")
        return self


class RateLimitSettings(Strict):
    """How many modify requests the gate takes before refusing them as `rate_limited` (business layer only;
    null keeps the default, see docs/policy.md)."""

    tenant_per_minute: int | None = Field(
        default=None, ge=1, le=600_000, description="Sustained requests per minute for the whole business."
    )
    tenant_burst: int | None = Field(
        default=None, ge=1, le=100_000, description="Requests the business may send at once after a lull."
    )
    requester_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=6_000,
        description="Requests per minute, sustained, from one customer or contact.",
    )
    requester_burst: int | None = Field(
        default=None, ge=1, le=1_000, description="Requests one customer or contact may send at once."
    )


class SettingsLayer(Strict):
    feature_enabled: bool | None = None
    blocking_statuses: list[AppointmentStatus] | None = Field(
        default=None, max_length=5, description="Statuses in which the portal may change nothing."
    )
    reschedule: RescheduleSettings = Field(default_factory=RescheduleSettings)
    cancel: CancelSettings = Field(default_factory=CancelSettings)
    rate_limits: RateLimitSettings | None = Field(
        default=None, description="Request rate limits; only the business layer may set them."
    )

    @model_validator(mode="after")
    def _canceled_always_blocks(self) -> "SettingsLayer":
        if self.blocking_statuses is not None and AppointmentStatus.CANCELED not in self.blocking_statuses:
            raise ValueError(
                "blocking_statuses must include 'canceled': a canceled appointment can't be changed"
            )
        return self


class PortalSettingsV2Payload(Strict):
    scope: SettingsScope
    settings: SettingsLayer
    settings_version: Version = Field(
        description="Increases with every change of this layer; older ones are ignored."
    )
    changed_by: EntityId

    @model_validator(mode="after")
    def _rate_limits_are_business_wide(self) -> "PortalSettingsV2Payload":
        if self.settings.rate_limits is not None and self.scope.level is not ScopeLevel.BUSINESS:
            raise ValueError("rate_limits can only be set on the business layer")
        return self


class PortalSettingsUpdatedV2(Envelope):
    exchange_role: ClassVar[str] = "office"
    routing_key: ClassVar[str] = "office.portal_settings.updated"
    summary: ClassVar[str] = (
        "The business changed one layer of its self-service settings (business or an override)."
    )

    type: Literal["office.portal_settings.updated"] = "office.portal_settings.updated"
    schema_version: Literal[2] = 2
    payload: PortalSettingsV2Payload


class AppointmentRecordedV2Payload(AppointmentRecordedPayload):
    """The office's full state of an appointment, saying which state of ours it was built on."""

    based_on_version: Version | None = Field(
        description=(
            "Our appointment version the office built this record on (the `version` of the last "
            "`appointment.*` event it saw for the appointment); null for a new booking. A record built "
            "before a customer's change that it would undo is refused as `stale_record` "
            "(docs/scheduling.md)."
        )
    )
    office_revision: Version = Field(
        description=(
            "The office's own revision of this appointment, increasing with every record it sends; a "
            "record with a revision not above the last applied one is ignored as `older_revision`."
        )
    )


class AppointmentRecordedV2(Envelope):
    exchange_role: ClassVar[str] = "office"
    routing_key: ClassVar[str] = "office.appointment.recorded"
    summary: ClassVar[str] = (
        "The office booked an appointment or changed one (full state), built on a known version of ours."
    )

    type: Literal["office.appointment.recorded"] = "office.appointment.recorded"
    schema_version: Literal[2] = 2
    payload: AppointmentRecordedV2Payload
