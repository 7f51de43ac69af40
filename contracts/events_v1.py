"""Result events (schema version 1): what happened to a request and to appointments and jobs."""

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field

from contracts.common import AppointmentSnapshot, ArrivalWindow, JobStatus, ModifyAction
from contracts.envelope import Envelope, Strict
from contracts.types import EntityId, LongText, ShortText, Slug, Version


class Initiator(StrEnum):
    CUSTOMER = "customer"
    OFFICE = "office"


class ModifyRejectedPayload(Strict):
    request_id: EntityId
    appointment_id: EntityId
    action: ModifyAction
    reason_code: Slug = Field(description="A stable code from contracts.reasons.RejectionCode.")
    reason: LongText = Field(description="A sentence the customer can read.")


class ModifyRejected(Envelope):
    exchange_role: ClassVar[str] = "events"
    routing_key: ClassVar[str] = "modify.rejected"
    summary: ClassVar[str] = "The request was refused by the business's rules; nothing changed."

    type: Literal["modify.rejected"] = "modify.rejected"
    schema_version: Literal[1] = 1
    payload: ModifyRejectedPayload


class ModifyAwaitingApprovalPayload(Strict):
    request_id: EntityId
    appointment_id: EntityId
    action: ModifyAction
    reason_code: Slug = Field(description="awaiting_office_approval")
    reason: LongText


class ModifyAwaitingApproval(Envelope):
    exchange_role: ClassVar[str] = "events"
    routing_key: ClassVar[str] = "modify.awaiting_approval"
    summary: ClassVar[str] = (
        "The business wants its office to approve this request; it waits for that decision."
    )

    type: Literal["modify.awaiting_approval"] = "modify.awaiting_approval"
    schema_version: Literal[1] = 1
    payload: ModifyAwaitingApprovalPayload


class ModifyFailedPayload(Strict):
    request_id: EntityId
    appointment_id: EntityId
    action: ModifyAction
    reason_code: Slug = Field(description="A stable code from contracts.reasons.FailureCode.")
    reason: LongText


class ModifyFailed(Envelope):
    exchange_role: ClassVar[str] = "events"
    routing_key: ClassVar[str] = "modify.failed"
    summary: ClassVar[str] = "The request was approved but could not be applied; nothing changed."

    type: Literal["modify.failed"] = "modify.failed"
    schema_version: Literal[1] = 1
    payload: ModifyFailedPayload


class AppointmentRescheduledPayload(Strict):
    appointment: AppointmentSnapshot
    previous_window: ArrivalWindow
    initiated_by: Initiator
    request_id: EntityId | None = Field(default=None, description="Set when a portal request caused it.")


class AppointmentRescheduled(Envelope):
    exchange_role: ClassVar[str] = "events"
    routing_key: ClassVar[str] = "appointment.rescheduled"
    summary: ClassVar[str] = "An appointment moved to a new arrival window."

    type: Literal["appointment.rescheduled"] = "appointment.rescheduled"
    schema_version: Literal[1] = 1
    payload: AppointmentRescheduledPayload


class AppointmentCanceledPayload(Strict):
    appointment: AppointmentSnapshot
    reason: ShortText | None = None
    initiated_by: Initiator
    request_id: EntityId | None = None


class AppointmentCanceled(Envelope):
    exchange_role: ClassVar[str] = "events"
    routing_key: ClassVar[str] = "appointment.canceled"
    summary: ClassVar[str] = "An appointment was canceled; its job no longer lists it as active."

    type: Literal["appointment.canceled"] = "appointment.canceled"
    schema_version: Literal[1] = 1
    payload: AppointmentCanceledPayload


class AppointmentUpdatedPayload(Strict):
    appointment: AppointmentSnapshot
    initiated_by: Initiator


class AppointmentUpdated(Envelope):
    exchange_role: ClassVar[str] = "events"
    routing_key: ClassVar[str] = "appointment.updated"
    summary: ClassVar[str] = "An appointment was booked or changed by the office (full state)."

    type: Literal["appointment.updated"] = "appointment.updated"
    schema_version: Literal[1] = 1
    payload: AppointmentUpdatedPayload


class JobStatusChangedPayload(Strict):
    job_id: EntityId
    customer_id: EntityId
    status: JobStatus
    previous_status: JobStatus | None = Field(default=None, description="None when the job is new.")
    active_appointments: int = Field(ge=0)
    version: Version


class JobStatusChanged(Envelope):
    exchange_role: ClassVar[str] = "events"
    routing_key: ClassVar[str] = "job.status_changed"
    summary: ClassVar[str] = "A job's status changed, e.g. canceled when its last active appointment was."

    type: Literal["job.status_changed"] = "job.status_changed"
    schema_version: Literal[1] = 1
    payload: JobStatusChangedPayload
