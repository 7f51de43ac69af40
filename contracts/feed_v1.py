"""The live feed (schema version 1): a small event after each read-store change.

Office boards and portals subscribe to exactly what they show.

Published on the `feed` exchange (topic) with the routing key `<tenant>.<customer>.<job>`: bind
`acme.#` for one business's board, `acme.cust-7.#` for one customer's portal, `acme.*.job-42` for one
job. A dot inside an id would split a routing word, so it is sent as `~` (ids never contain `~`); an
unknown customer or job is `-`. Nobody has to listen: unrouted feed events go to a small bounded queue.
"""

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field

from contracts.envelope import Envelope, Strict
from contracts.types import EntityId, Slug, Version


class ViewKind(StrEnum):
    APPOINTMENT = "appointment"
    JOB = "job"
    REQUEST = "request"
    OFFER = "offer"
    AVAILABILITY = "availability"


class PortalViewChangedPayload(Strict):
    view: ViewKind = Field(description="Which read-store view changed; re-read it to show the new state.")
    customer_id: EntityId | None = None
    job_id: EntityId | None = None
    appointment_id: EntityId | None = None
    request_id: EntityId | None = None
    business_unit: Slug | None = Field(
        default=None, description="For availability: the unit whose times changed."
    )
    status: Slug | None = Field(default=None, description="The new status, where the view has one.")
    version: Version | None = Field(default=None, description="The row's version after the change.")


def routing_word(value: str | None) -> str:
    return "-" if value is None else value.replace(".", "~")


class PortalViewChanged(Envelope):
    exchange_role: ClassVar[str] = "feed"
    routing_key: ClassVar[str] = "{tenant_id}.{customer_id}.{job_id}"
    summary: ClassVar[str] = (
        "The portal read store changed (an appointment, job, request outcome, offer or free times): "
        "routed by tenant, customer and job so subscribers bind to exactly what they show."
    )

    type: Literal["portal.view_changed"] = "portal.view_changed"
    schema_version: Literal[1] = 1
    payload: PortalViewChangedPayload

    def route(self) -> str:
        p = self.payload
        return f"{self.tenant_id}.{routing_word(p.customer_id)}.{routing_word(p.job_id)}"
