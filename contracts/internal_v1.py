"""Messages between our own workers (schema version 1)."""

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from contracts.envelope import Envelope, Strict
from contracts.events_v1 import AppointmentOfferChangedPayload, check_carried_offer
from contracts.office_v2 import SettingsScope
from contracts.portal_v1 import ModifyChange
from contracts.types import EntityId, Version


class ModifyApprovedPayload(Strict):
    appointment_id: EntityId
    requester_id: EntityId
    change: ModifyChange
    decided_on_version: Version = Field(description="The appointment version the gate's decision rested on.")
    offer: AppointmentOfferChangedPayload | None = Field(
        default=None,
        description="The portal's offer for the appointment as the change leaves it (version "
        "`decided_on_version` + 1), computed by the gate as it approved; the scheduling worker carries it "
        "in `appointment.rescheduled` / `appointment.canceled`. Null when the gate computed none (an "
        "office approval of a request whose appointment changed since: the change will fail).",
    )

    @model_validator(mode="after")
    def _offer_matches(self) -> "ModifyApprovedPayload":
        check_carried_offer(self.offer, self.appointment_id, self.decided_on_version + 1)
        return self


class ModifyApproved(Envelope):
    exchange_role: ClassVar[str] = "internal"
    routing_key: ClassVar[str] = "modify.approved"
    summary: ClassVar[str] = "The policy gate allowed a request; the scheduling worker applies it."

    type: Literal["modify.approved"] = "modify.approved"
    schema_version: Literal[1] = 1
    payload: ModifyApprovedPayload


class RefreshOffersPayload(Strict):
    scope: SettingsScope = Field(
        description="The appointments whose offers to recompute: all of a business, "
        "business unit, job type or project."
    )
    after_appointment_id: EntityId = Field(
        description="Recompute the next chunk of upcoming appointments, in id order, after this one."
    )


class RefreshOffers(Envelope):
    exchange_role: ClassVar[str] = "internal"
    routing_key: ClassVar[str] = "offers.refresh"
    summary: ClassVar[str] = (
        "The policy gate, to itself: recompute the portal offers of the next chunk of appointments a "
        "settings change covers (a large scope is refreshed a chunk per message, each in a transaction "
        "of its own)."
    )

    type: Literal["offers.refresh"] = "offers.refresh"
    schema_version: Literal[1] = 1
    payload: RefreshOffersPayload
