"""Messages portals publish (schema version 1): the customer's modify request."""

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from contracts.common import ArrivalWindow
from contracts.envelope import Envelope, Strict
from contracts.types import EntityId, ShortText, Version


class Reschedule(Strict):
    action: Literal["reschedule"] = "reschedule"
    new_window: ArrivalWindow


class Cancel(Strict):
    action: Literal["cancel"] = "cancel"
    reason: ShortText | None = Field(default=None, description="Why the customer cancels, in their words.")


ModifyChange = Annotated[Reschedule | Cancel, Field(discriminator="action")]


class ModifyRequestedPayload(Strict):
    appointment_id: EntityId
    requester_id: EntityId = Field(
        description="The portal user asking: the job's customer, or a named contact of the job's project."
    )
    change: ModifyChange
    expected_version: Version | None = Field(
        default=None, description="The appointment version the customer saw, if the portal knows it."
    )


class ModifyRequested(Envelope):
    exchange_role: ClassVar[str] = "requests"
    routing_key: ClassVar[str] = "modify.requested"
    summary: ClassVar[str] = "A customer asks to reschedule or cancel an appointment."

    type: Literal["modify.requested"] = "modify.requested"
    schema_version: Literal[1] = 1
    payload: ModifyRequestedPayload
