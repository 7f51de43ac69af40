"""The one envelope every message travels in: identity, tenant, tracing ids, time and producer."""

from typing import ClassVar
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from contracts.types import EntityId, Slug, TenantId, Timestamp


class Strict(BaseModel):
    """Base for every wire model: unknown fields are refused. Bytes from the wire are validated in
    strict mode by `contracts.decoding.decode` (no coercion: "12" is not a number); models built in
    Python by our own code may pass enum members or their values alike."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=1000)


class Envelope(Strict):
    """Fields common to all messages. Subclasses fix `type`, `schema_version` and the `payload` model."""

    # Set on each concrete message class: where it is published and what it means.
    exchange_role: ClassVar[str]
    routing_key: ClassVar[str]
    summary: ClassVar[str]

    message_id: UUID = Field(description="Unique per message; consumers dedupe on it.")
    type: str
    schema_version: int
    tenant_id: TenantId = Field(description="The business the message belongs to.")
    correlation_id: EntityId = Field(
        description="The portal's request id for modify requests, carried unchanged by every message "
        "that follows from it; for office messages, the office's own change id."
    )
    causation_id: UUID | None = Field(
        default=None, description="message_id of the message that caused this one (None for inputs)."
    )
    occurred_at: Timestamp = Field(description="When the fact happened (timezone-aware).")
    producer: Slug = Field(description="Who produced the message, e.g. 'portal-web' or 'modify_handler'.")
    # A request id means one request of one portal (issue 19): (tenant_id, request_producer, request id)
    # names it. Absent (not even null) when it is None, so every other message keeps its bytes.
    request_producer: Slug | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="The portal (the verified producer of its `modify.requested`) whose request this "
        "message follows from: with the request id (`correlation_id`, or the payload's `request_id`) it "
        "names one request, since request ids are scoped by tenant and portal. Our workers set it on "
        "every message that follows from a portal request; the office sets it on "
        "`office.approval.decided` when two portals' requests wait under one id. Absent otherwise (and in "
        "`modify.requested`, whose own `producer` it is).",
    )

    def request_portal(self) -> str | None:
        """The portal whose request this message is or follows from (None when unknown)."""
        return self.request_producer

    def route(self) -> str:
        """The routing key this message is published with: the class's, unless a message routes by its
        content (the live feed routes by tenant, customer and job)."""
        return self.routing_key

    @classmethod
    def follow(
        cls, cause: "Envelope", *, producer: str, occurred_at, correlation_id: str | None = None, **fields
    ):
        """Build a message caused by `cause`: same tenant and correlation (unless the cause answers another
        request, e.g. an office approval), causation = cause's id, and the same request's portal (unless
        `request_producer` names the portal of the request it answers)."""
        request_producer = fields.pop("request_producer", None) or cause.request_portal()
        return cls(
            message_id=uuid4(),
            tenant_id=cause.tenant_id,
            correlation_id=correlation_id or cause.correlation_id,
            causation_id=cause.message_id,
            occurred_at=occurred_at,
            producer=producer,
            request_producer=request_producer,
            **fields,
        )
