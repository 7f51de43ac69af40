"""Messages between our own workers (schema version 1)."""

from typing import ClassVar, Literal

from pydantic import Field

from contracts.envelope import Envelope, Strict
from contracts.portal_v1 import ModifyChange
from contracts.types import EntityId, Version


class ModifyApprovedPayload(Strict):
    appointment_id: EntityId
    requester_id: EntityId
    change: ModifyChange
    decided_on_version: Version = Field(description="The appointment version the gate's decision rested on.")


class ModifyApproved(Envelope):
    exchange_role: ClassVar[str] = "internal"
    routing_key: ClassVar[str] = "modify.approved"
    summary: ClassVar[str] = "The policy gate allowed a request; the scheduling worker applies it."

    type: Literal["modify.approved"] = "modify.approved"
    schema_version: Literal[1] = 1
    payload: ModifyApprovedPayload
