"""Messages between portals and us (schema version 1): the modify request, and the reply to it.

The reply goes out when the request named a queue."""

from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints, model_validator

from contracts.common import ArrivalWindow, ModifyAction
from contracts.envelope import Envelope, Strict
from contracts.types import EntityId, LongText, ShortText, Slug, Version


class Reschedule(Strict):
    action: Literal["reschedule"] = "reschedule"
    new_window: ArrivalWindow


class Cancel(Strict):
    action: Literal["cancel"] = "cancel"
    reason: ShortText | None = Field(default=None, description="Why the customer cancels, in their words.")


ModifyChange = Annotated[Reschedule | Cancel, Field(discriminator="action")]


# An AMQP queue name the portal owns (no spaces; at most 200 characters).
ReplyQueue = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,200}$")]


class ModifyRequestedPayload(Strict):
    appointment_id: EntityId
    requester_id: EntityId = Field(
        description="The portal user asking: the job's customer, or a named contact of the job's project."
    )
    change: ModifyChange
    expected_version: Version | None = Field(
        default=None, description="The appointment version the customer saw, if the portal knows it."
    )
    reply_to: ReplyQueue | None = Field(
        default=None,
        description="A queue of the portal's own, named `<namespace>.portal.<producer>.<name>` (the "
        "signing portal's producer; any other name is dead-lettered as `reply_to_not_allowed`), bound to the "
        "`replies` exchange (direct) with its own name as the routing key: the final outcome is also sent "
        "there (`modify.outcome`) once it is known.",
    )


class ModifyRequested(Envelope):
    exchange_role: ClassVar[str] = "requests"
    routing_key: ClassVar[str] = "modify.requested"
    summary: ClassVar[str] = "A customer asks to reschedule or cancel an appointment."

    type: Literal["modify.requested"] = "modify.requested"
    schema_version: Literal[1] = 1
    payload: ModifyRequestedPayload

    @model_validator(mode="after")
    def _its_own_portal(self) -> "ModifyRequested":
        # the request's portal is the (signature-verified) producer; a body may not name another
        if self.request_producer not in (None, self.producer):
            raise ValueError("leave out request_producer: in modify.requested, the producer is the portal")
        return self

    def request_portal(self) -> str | None:
        return self.producer


class ModifyOutcomePayload(Strict):
    request_id: EntityId
    appointment_id: EntityId
    action: ModifyAction
    status: Literal["rejected", "completed", "failed"]
    reason_code: Slug | None = Field(default=None, description="For rejected and failed: why.")
    reason: LongText | None = Field(default=None, description="For rejected and failed: a customer sentence.")
    reply_to: ReplyQueue = Field(description="The queue this reply was sent to (the request's `reply_to`).")


class ModifyOutcome(Envelope):
    exchange_role: ClassVar[str] = "reply"
    routing_key: ClassVar[str] = "{reply_to}"
    summary: ClassVar[str] = (
        "The final outcome of a request that named a reply_to queue, sent to that queue once (the same "
        "outcome as the read store row and the outcome event)."
    )

    type: Literal["modify.outcome"] = "modify.outcome"
    schema_version: Literal[1] = 1
    payload: ModifyOutcomePayload

    def route(self) -> str:
        return self.payload.reply_to
