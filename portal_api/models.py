"""What the API answers and accepts: pydantic models, the source of the OpenAPI document."""

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contracts.common import ArrivalWindow
from contracts.types import EntityId, ShortText


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=1000)


class LocalWindow(BaseModel):
    start: datetime = Field(description="Start in the business unit's local time, with its UTC offset.")
    end: datetime
    time_zone: str = Field(description="The IANA zone name, e.g. America/Chicago.")


class ActionOffer(BaseModel):
    offered: bool = Field(description="Show this action now.")
    needs_approval: bool = Field(description="Offered, but the office must approve the request.")
    reason_code: str | None = Field(default=None, description="Why not, when not offered.")
    reason: str | None = Field(default=None, description="Why not, as a sentence for the customer.")


class CancelOffer(ActionOffer):
    reason_required: bool = Field(default=False, description="A cancel without a reason is refused.")
    reasons: list[str] | None = Field(
        default=None,
        description="The business's list of cancel reasons: send one of them (offer it as a choice); "
        "null: any reason.",
    )


class Offers(BaseModel):
    modify: bool = Field(description="Show the Modify button.")
    reschedule: ActionOffer
    cancel: CancelOffer
    until: datetime | None = Field(
        default=None, description="When this may change by itself (a notice window closing); null: never."
    )


class Appointment(BaseModel):
    appointment_id: str
    job_id: str
    business_unit: str
    job_type: str
    status: str
    confirmation: str
    version: int = Field(description="Send it as If-Match when asking for a change.")
    window: ArrivalWindow = Field(description="The arrival window in UTC.")
    local_window: LocalWindow
    offers: Offers


class Job(BaseModel):
    job_id: str
    status: str | None = Field(description="The job's status (null until the read store has it).")
    version: int | None = None
    appointments: list[Appointment] = Field(description="Its upcoming appointments, soonest first.")


class JobList(BaseModel):
    jobs: list[Job]


class PickableTime(BaseModel):
    window: ArrivalWindow
    local_window: LocalWindow
    free: int


class PickableTimes(BaseModel):
    appointment_id: str
    time_zone: str
    times: list[PickableTime]


class RescheduleBody(Body):
    new_window: ArrivalWindow = Field(description="The new arrival window; both ends with a UTC offset.")


class CancelBody(Body):
    reason: ShortText | None = Field(default=None, description="Why the customer cancels.")


RequestStatus = Literal["pending", "awaiting_approval", "completed", "rejected", "failed"]


class RequestAccepted(BaseModel):
    request_id: str
    status_url: str
    appointment_id: str
    action: Literal["reschedule", "cancel"]


class RequestState(BaseModel):
    request_id: str
    appointment_id: str
    action: str
    status: RequestStatus
    reason_code: str | None = None
    reason: str | None = None
    updated_at: datetime | None = None


class Approval(BaseModel):
    request_id: str
    portal: str | None = Field(
        default=None,
        description="The portal whose request it is (request ids are per portal); name it as `?portal=` "
        "when deciding if requests of several portals wait under this id.",
    )
    appointment_id: str
    customer_id: str | None
    requester_id: str | None
    action: str
    reason_code: str | None
    reason: str | None
    requested_at: datetime | None
    appointment: Appointment | None


class ApprovalList(BaseModel):
    approvals: list[Approval]


class DecisionBody(Body):
    approved: bool
    reason: ShortText | None = Field(
        default=None, description="Why the office declines; the customer sees it."
    )
    decided_by: EntityId = Field(description="The office user deciding.")


class DecisionAccepted(BaseModel):
    request_id: str
    approved: bool
    status_url: str


class BoardAppointment(Appointment):
    customer_id: str
    updated_at: datetime


class Board(BaseModel):
    tenant_id: str
    appointments: list[BoardAppointment]
    recent_changes: list["Change"]


class Change(BaseModel):
    occurred_at: AwareDatetime
    appointment_id: str
    entry: str
    actor: str
    action: str | None
    status: str | None
    request_id: str | None
    reason: str | None
    window_start: datetime | None


Board.model_rebuild()
