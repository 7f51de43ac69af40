"""Result events (schema version 1): what happened to a request and to appointments and jobs."""

from enum import StrEnum
from typing import ClassVar, Literal
from uuid import UUID

from pydantic import Field, model_validator

from contracts.common import AppointmentSnapshot, ArrivalWindow, JobStatus, ModifyAction
from contracts.envelope import Envelope, Strict
from contracts.reasons import OFFICE_TEXT, OfficeOutcomeCode
from contracts.types import EntityId, LongText, ShortText, Slug, Timestamp, Version


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


class OfferedAction(Strict):
    offered: bool = Field(description="The portal may show this action.")
    needs_approval: bool = Field(
        default=False, description="Offered, but the request will wait for the office's approval."
    )
    reason_code: Slug | None = Field(
        default=None, description="Why not, when not offered: a code from contracts.reasons.RejectionCode."
    )
    reason: LongText | None = Field(default=None, description="Why not, as a sentence the customer can read.")


class OfferSegment(Strict):
    valid_from: Timestamp | None = Field(
        default=None, description="Holds from this instant; null: from when it was computed."
    )
    valid_until: Timestamp | None = Field(
        default=None, description="Holds until this instant; null: for ever."
    )
    reschedule: OfferedAction
    cancel: OfferedAction


class PickRules(Strict):
    """Which arrival windows a customer may pick for a reschedule, besides free places in the
    appointment's business unit (and zone): from now + lead time to now + horizon, within the project."""

    business_unit: Slug
    zone: Slug | None = None
    min_lead_hours: int = Field(ge=0)
    max_horizon_days: int = Field(ge=1)
    not_before: Timestamp | None = Field(default=None, description="The project's start, if dated.")
    not_after: Timestamp | None = Field(default=None, description="The project's end, if dated.")


class CancelRules(Strict):
    """What a cancel must say, so the portal offers what the gate accepts (it refuses anything else)."""

    reason_required: bool = Field(default=False, description="A cancel without a reason is refused.")
    allowed_reasons: list[ShortText] | None = Field(
        default=None,
        max_length=50,
        description="The reasons a customer may give (offer them as a list); null: any reason.",
    )


class AppointmentOfferChangedPayload(Strict):
    appointment_id: EntityId
    job_id: EntityId
    customer_id: EntityId
    offer_version: Version = Field(description="Increases with every new offer; older ones are ignored.")
    appointment_version: Version = Field(description="The appointment version the offer was computed on.")
    segments: list[OfferSegment] = Field(
        min_length=1,
        max_length=16,
        description="Contiguous and ordered: what the portal may offer at each moment from now on.",
    )
    pick: PickRules | None = Field(
        default=None, description="What a new window must satisfy (the portal lists the free ones)."
    )
    cancel_rules: CancelRules | None = Field(
        default=None, description="What a cancel must say (reason required, the business's list of reasons)."
    )
    contacts: list[EntityId] = Field(
        default_factory=list,
        max_length=50,
        description="Who else may act on the appointment with the same offer: its project's named contacts.",
    )


# Carried with a customer's change (`modify.approved` -> `appointment.rescheduled` / `appointment.canceled`):
# an optional, additive field of version 1. Messages without it (older producers, replayed dead letters)
# stay valid; a reader built from an earlier document must be updated before the producers (unknown
# fields are refused), as portal_sync and modify_handler are (README, "The offer travels with the change").
CARRIED_OFFER = (
    "The portal's offer for the appointment as this change leaves it, computed by the policy gate when it "
    "approved the change (the same offer `appointment.offer_changed` would carry; `offer_version` orders it "
    "with those). The read store writes it with the change, in one transaction. Optional: null when the gate "
    "sent none (then a later `appointment.offer_changed` brings the offer)."
)


def check_carried_offer(
    offer: AppointmentOfferChangedPayload | None, appointment_id: str, version: int
) -> None:
    """A carried offer must be about this appointment, computed on the version the change produced."""
    if offer is None:
        return
    if offer.appointment_id != appointment_id:
        raise ValueError("offer.appointment_id must be the changed appointment's id")
    if offer.appointment_version != version:
        raise ValueError(f"offer.appointment_version must be {version}, the version the change produces")


class AppointmentRescheduledPayload(Strict):
    appointment: AppointmentSnapshot
    previous_window: ArrivalWindow
    initiated_by: Initiator
    request_id: EntityId | None = Field(default=None, description="Set when a portal request caused it.")
    offer: AppointmentOfferChangedPayload | None = Field(default=None, description=CARRIED_OFFER)

    @model_validator(mode="after")
    def _offer_matches(self) -> "AppointmentRescheduledPayload":
        check_carried_offer(self.offer, self.appointment.appointment_id, self.appointment.version)
        return self


class AppointmentRescheduled(Envelope):
    exchange_role: ClassVar[str] = "events"
    routing_key: ClassVar[str] = "appointment.rescheduled"
    summary: ClassVar[str] = (
        "An appointment moved to a new arrival window (a customer's: with the portal's offer for it)."
    )

    type: Literal["appointment.rescheduled"] = "appointment.rescheduled"
    schema_version: Literal[1] = 1
    payload: AppointmentRescheduledPayload


class AppointmentCanceledPayload(Strict):
    appointment: AppointmentSnapshot
    reason: ShortText | None = None
    initiated_by: Initiator
    request_id: EntityId | None = None
    offer: AppointmentOfferChangedPayload | None = Field(default=None, description=CARRIED_OFFER)

    @model_validator(mode="after")
    def _offer_matches(self) -> "AppointmentCanceledPayload":
        check_carried_offer(self.offer, self.appointment.appointment_id, self.appointment.version)
        return self


class AppointmentCanceled(Envelope):
    exchange_role: ClassVar[str] = "events"
    routing_key: ClassVar[str] = "appointment.canceled"
    summary: ClassVar[str] = (
        "An appointment was canceled; its job no longer lists it as active (a customer's cancel: with the "
        "portal's offer for it)."
    )

    type: Literal["appointment.canceled"] = "appointment.canceled"
    schema_version: Literal[1] = 1
    payload: AppointmentCanceledPayload


class AppointmentUpdatedPayload(Strict):
    appointment: AppointmentSnapshot
    initiated_by: Initiator
    based_on_version: Version | None = Field(
        default=None,
        description="The appointment version the office's record was built on (a version 1 record: the "
        "version its previous record produced); null for a new booking. A customer change at a later "
        "version was known to the record only if this is at or past it.",
    )


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


class AppointmentOfferChanged(Envelope):
    exchange_role: ClassVar[str] = "events"
    routing_key: ClassVar[str] = "appointment.offer_changed"
    summary: ClassVar[str] = (
        "What the portal may offer for an appointment (reschedule, cancel, or why not) changed, "
        "as a timeline, so notice windows close without another event."
    )

    type: Literal["appointment.offer_changed"] = "appointment.offer_changed"
    schema_version: Literal[1] = 1
    payload: AppointmentOfferChangedPayload


class CapacityWindowChangedPayload(Strict):
    business_unit: Slug
    zone: Slug | None = None
    window: ArrivalWindow
    places: int = Field(ge=0, description="The places the office set for the window.")
    booked: int = Field(
        ge=0, description="Places held by appointments (the office may book beyond `places`)."
    )
    free: int = Field(ge=0, description="Places a customer may still take: max(places - booked, 0).")
    version: Version = Field(
        description="Increases with every change of this window; older ones are ignored."
    )


class CapacityWindowChanged(Envelope):
    exchange_role: ClassVar[str] = "events"
    routing_key: ClassVar[str] = "capacity.window_changed"
    summary: ClassVar[str] = "An arrival window's places or bookings changed (a place taken, freed, or set)."

    type: Literal["capacity.window_changed"] = "capacity.window_changed"
    schema_version: Literal[1] = 1
    payload: CapacityWindowChangedPayload


class ProjectUpdatedPayload(Strict):
    project_id: EntityId
    portal_locked: bool
    starts_at: Timestamp | None = None
    ends_at: Timestamp | None = None
    contacts: int = Field(ge=0, description="How many named contacts may act on its appointments.")


class ProjectUpdated(Envelope):
    exchange_role: ClassVar[str] = "events"
    routing_key: ClassVar[str] = "project.updated"
    summary: ClassVar[str] = (
        "A project's lock, dates or contacts changed (what its appointments offer may too)."
    )

    type: Literal["project.updated"] = "project.updated"
    schema_version: Literal[1] = 1
    payload: ProjectUpdatedPayload


class OfficeOutcomeStatus(StrEnum):
    APPLIED = "applied"
    IGNORED = "ignored"  # an older revision (or settings/capacity version) than one already applied
    REFUSED = "refused"  # nothing changed, for the reason given


class OfficeOutcomePayload(Strict):
    office_message_id: UUID = Field(description="The `message_id` of the office message this answers.")
    message_type: Slug = Field(description="Its type, e.g. office.appointment.recorded.")
    schema_version: int = Field(ge=1, description="Its schema version.")
    status: OfficeOutcomeStatus
    subject: EntityId | None = Field(
        default=None,
        description="What it was about: the appointment id, the request id of an approval, the business "
        "unit of a capacity change, the settings scope's key (null for the business level).",
    )
    reason_code: Slug | None = Field(
        default=None, description="Why not applied: a code from contracts.reasons.OfficeOutcomeCode."
    )
    reason: LongText | None = Field(default=None, description="Why not applied, as a sentence.")
    current: AppointmentSnapshot | None = Field(
        default=None,
        description="For an appointment record: the appointment as it stands after this message (for a "
        "refused one, the state to rebuild the record on; its `version` is the `based_on_version` to send).",
    )


class OfficeOutcome(Envelope):
    exchange_role: ClassVar[str] = "events"
    routing_key: ClassVar[str] = "office.outcome"
    summary: ClassVar[str] = (
        "What became of an office message (appointment record, settings, capacity, approval): applied, "
        "ignored as older, or refused with a reason. Its correlation id is the office message's."
    )

    type: Literal["office.outcome"] = "office.outcome"
    schema_version: Literal[1] = 1
    payload: OfficeOutcomePayload


def office_outcome(
    cause: Envelope,
    occurred_at,
    subject: str | None,
    code: str | None,
    *,
    producer: str,
    current: AppointmentSnapshot | None = None,
) -> OfficeOutcome:
    """The answer to an office message: applied when there is no code, ignored for an older revision,
    refused for any other code (with its sentence from contracts.reasons.OFFICE_TEXT)."""
    if code is None:
        status = OfficeOutcomeStatus.APPLIED
    elif code == OfficeOutcomeCode.OLDER_REVISION:
        status = OfficeOutcomeStatus.IGNORED
    else:
        status = OfficeOutcomeStatus.REFUSED
    return OfficeOutcome.follow(
        cause,
        producer=producer,
        occurred_at=occurred_at,
        payload=OfficeOutcomePayload(
            office_message_id=cause.message_id,
            message_type=cause.type,
            schema_version=cause.schema_version,
            status=status,
            subject=subject,
            reason_code=None if code is None else str(code),
            reason=None if code is None else OFFICE_TEXT[code],
            current=current,
        ),
    )
