"""Messages the office side publishes (schema version 1) so the system knows the world."""

from datetime import date, time, timedelta
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation, Project
from contracts.envelope import Envelope, Strict
from contracts.local_time import to_utc, zone
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
    zone: Slug | None = Field(
        default=None,
        description="The zone or technician group whose capacity it uses, if the unit has zones.",
    )


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


MAX_PLACES = 1000


class CapacityWindowSetting(Strict):
    """One arrival window of a day, in the business unit's local time, and how many places it has."""

    date: date
    start: time = Field(description="Local wall-clock time, e.g. 08:00.")
    end: time = Field(
        description=(
            "Local wall-clock time; earlier than `start` means the next day (an overnight window, "
            "e.g. 22:00-00:00). Equal to `start` is refused."
        )
    )
    places: int = Field(ge=0, le=MAX_PLACES, description="0 closes the window.")


class CapacityUpdatedPayload(Strict):
    business_unit: Slug
    zone: Slug | None = Field(default=None, description="A zone or technician group; null: the whole unit.")
    timezone: str = Field(
        min_length=1, max_length=64, description="The IANA time zone the windows are given in."
    )
    windows: list[CapacityWindowSetting] = Field(min_length=1, max_length=500)
    capacity_version: Version = Field(
        description="Increases with every change of this unit's (zone's) capacity; older ones are ignored."
    )
    changed_by: EntityId

    @model_validator(mode="after")
    def _windows_exist_and_are_distinct(self) -> "CapacityUpdatedPayload":
        self.utc_windows()
        return self

    def utc_windows(self) -> list[tuple[ArrivalWindow, int]]:
        """Each window as UTC instants with its places; ValueError for a local time that does not exist,
        an end equal to the start, or the same window twice. An end before the start is on the next day."""
        tz = zone(self.timezone)
        result: list[tuple[ArrivalWindow, int]] = []
        seen = set()
        for setting in self.windows:
            start = to_utc(setting.date, setting.start, tz)
            end_date = setting.date + timedelta(days=1) if setting.end < setting.start else setting.date
            end = to_utc(end_date, setting.end, tz)
            if end <= start:
                raise ValueError(
                    f"window {setting.date} {setting.start}-{setting.end} must end after it starts"
                )
            if start in seen:
                raise ValueError(f"window {setting.date} {setting.start} is listed twice")
            seen.add(start)
            result.append((ArrivalWindow(start=start, end=end), setting.places))
        return result


class CapacityUpdated(Envelope):
    exchange_role: ClassVar[str] = "office"
    routing_key: ClassVar[str] = "office.capacity.updated"
    summary: ClassVar[str] = (
        "The office set how many places arrival windows of a business unit (or zone) have; windows not "
        "listed keep theirs."
    )

    type: Literal["office.capacity.updated"] = "office.capacity.updated"
    schema_version: Literal[1] = 1
    payload: CapacityUpdatedPayload


class ProjectRecordedPayload(Strict):
    project: Project = Field(description="The project's full state: lock, dates and named contacts.")


class ProjectRecorded(Envelope):
    exchange_role: ClassVar[str] = "office"
    routing_key: ClassVar[str] = "office.project.recorded"
    summary: ClassVar[str] = (
        "The office created or changed a construction project (lock, dates, contacts), full state."
    )

    type: Literal["office.project.recorded"] = "office.project.recorded"
    schema_version: Literal[1] = 1
    payload: ProjectRecordedPayload
