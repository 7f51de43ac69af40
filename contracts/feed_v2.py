"""The live feed (schema version 2): one event per read-store change, listing every view it changed.

Office boards and portals subscribe to exactly what they show.

Published on the `feed` exchange (topic) with the routing key `<tenant>.<customer>.<job>`: bind
`acme.#` for one business's board, `acme.cust-7.#` for one customer's portal, `acme.*.job-42` for one
job. A dot inside an id would split a routing word, so it is sent as `~` (ids never contain `~`); an
unknown customer or job is `-` (free times: `<tenant>.-.-`). Nobody has to listen: unrouted feed
events go to a small bounded queue.

What "one change" is: the views that one handled message changed under one routing key. A reschedule
that moves the appointment, completes the request and changes the offer is one event listing the three.
portal_sync handles several deliveries in one transaction when they wait together (batches), possibly of
several customers; such a transaction still publishes one event per delivery (and routing key), so each
event keeps its request id as its correlation id and a subscriber hears only its own customer's changes.
Version 1 (`schema_version` 1, one event per view, the view's fields at the top of the payload) is no
longer published.
"""

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field

from contracts.envelope import Envelope, Strict
from contracts.types import EntityId, Slug, Version

# One handled message changes at most the appointment, its job, its request, its offer and a free time.
MAX_CHANGES = 8


class ViewKind(StrEnum):
    APPOINTMENT = "appointment"
    JOB = "job"
    REQUEST = "request"
    OFFER = "offer"
    AVAILABILITY = "availability"


class ViewChange(Strict):
    """One view the change touched, and what to re-read."""

    view: ViewKind = Field(description="Which read-store view changed; re-read it to show the new state.")
    appointment_id: EntityId | None = None
    request_id: EntityId | None = None
    business_unit: Slug | None = Field(
        default=None, description="For availability: the unit whose times changed."
    )
    status: Slug | None = Field(default=None, description="The new status, where the view has one.")
    version: Version | None = Field(
        default=None,
        description="The row's version after the change (an offer: its offer version; a request has none).",
    )


class PortalViewChangedV2Payload(Strict):
    customer_id: EntityId | None = Field(
        default=None, description="Whose views changed (the routing key's second word); null for free times."
    )
    job_id: EntityId | None = Field(
        default=None, description="The job the changed views belong to (the routing key's third word)."
    )
    changes: list[ViewChange] = Field(
        min_length=1,
        max_length=MAX_CHANGES,
        description="Every view this change touched, in the order appointment, offer, availability, job, "
        "request: re-read each once.",
    )


def routing_word(value: str | None) -> str:
    return "-" if value is None else value.replace(".", "~")


class PortalViewChangedV2(Envelope):
    exchange_role: ClassVar[str] = "feed"
    routing_key: ClassVar[str] = "{tenant_id}.{customer_id}.{job_id}"
    summary: ClassVar[str] = (
        "The portal read store changed: one event per change, listing every view it touched (appointment, "
        "job, request outcome, offer, free times) with ids, status and version; routed by tenant, customer "
        "and job so subscribers bind to exactly what they show and re-read once per change."
    )

    type: Literal["portal.view_changed"] = "portal.view_changed"
    schema_version: Literal[2] = 2
    payload: PortalViewChangedV2Payload

    def route(self) -> str:
        p = self.payload
        return f"{self.tenant_id}.{routing_word(p.customer_id)}.{routing_word(p.job_id)}"
