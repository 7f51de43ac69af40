"""What the API sends: a customer's reschedule or cancel, and an office's approval decision.

A request is `modify.requested`, signed as the portal's producer; each is published persistent, mandatory
and confirmed.

A request is recorded under its request id (the `Idempotency-Key`) in the same transaction that is
committed only after the broker confirmed the publish: the broker away leaves no record, so a retry with
the same key publishes again; the same key and body again gets the first answer; another body a 409.
The message id is derived from tenant, request id and body, so a publish repeated after a lost confirm
is the same message to the workers' inboxes.
"""

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import aio_pika
import aiormq.exceptions
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.office_v1 import ApprovalDecided, ApprovalDecidedPayload
from contracts.portal_v1 import Cancel, ModifyRequested, ModifyRequestedPayload, Reschedule
from portal_api.problems import ApiProblem
from portal_api.reads import tenant_transaction
from workers.runtime.broker import Broker

log = structlog.get_logger(__name__)
MESSAGE_NAMESPACE = uuid.UUID("5d0e7f0e-3c43-4f55-9d7a-6b2b3c0a1e13")

# A request id (the Idempotency-Key) means one request of one portal: keyed by the key's producer too.
CLAIM = text(
    "INSERT INTO portal_api.requests (tenant_id, producer, request_id, customer_id, appointment_id, action, "
    "body_sha256, message_id) "
    "VALUES (:tenant, :producer, :request, :customer, :appointment, :action, :hash, :message) "
    "ON CONFLICT (tenant_id, producer, request_id) DO NOTHING RETURNING request_id"
)
EXISTING = text(
    "SELECT customer_id, appointment_id, action, body_sha256 FROM portal_api.requests "
    "WHERE tenant_id = :tenant AND producer = :producer AND request_id = :request"
)


@dataclass(frozen=True)
class Sent:
    request_id: str
    appointment_id: str
    action: str
    replayed: bool  # the same key and body were seen before: this is the first answer again


def body_hash(customer_id: str, appointment_id: str, change: Reschedule | Cancel) -> str:
    canonical = json.dumps(
        {"customer": customer_id, "appointment": appointment_id, "change": change.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def broker_away(retry_after_s: int, detail: str) -> ApiProblem:
    return ApiProblem(
        503,
        "broker_unavailable",
        "Service temporarily unavailable",
        f"{detail} Nothing was sent; try again with the same Idempotency-Key.",
        headers={"Retry-After": str(retry_after_s)},
    )


PUBLISH_ERRORS = (
    OSError,
    TimeoutError,
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    RuntimeError,
    AssertionError,
)


async def _publish(broker: Broker, message, retry_after_s: int) -> None:
    if not broker.is_connected:
        raise broker_away(retry_after_s, "The message broker cannot be reached.")
    try:
        await broker.publish_message(message)
    except PUBLISH_ERRORS as exc:
        log.warning("api.publish_failed", error=repr(exc)[:200], type=message.type)
        raise broker_away(retry_after_s, "The message broker did not confirm the request.") from None


async def send_modify(
    *,
    engine: AsyncEngine,
    broker: Broker,
    tenant_id: str,
    customer_id: str,
    producer: str,
    request_id: str,
    appointment_id: str,
    change: Reschedule | Cancel,
    expected_version: int,
    current_version: int,
    retry_after_s: int,
) -> Sent:
    """Send the change once per request id. A repeat (same key and body) answers as the first time,
    whatever the version is now; a new request built on another version than `current_version` is
    refused (412) before anything is recorded or sent."""
    digest = body_hash(customer_id, appointment_id, change)
    message_id = uuid.uuid5(MESSAGE_NAMESPACE, f"{tenant_id}/{producer}/{request_id}/{digest}")
    params = {
        "tenant": tenant_id,
        "producer": producer,
        "request": request_id,
        "customer": customer_id,
        "appointment": appointment_id,
        "action": change.action,
        "hash": digest,
        "message": message_id,
    }
    async with tenant_transaction(engine, tenant_id) as conn:
        claimed = (await conn.execute(CLAIM, params)).scalar_one_or_none()
        if claimed is None:
            existing = (await conn.execute(EXISTING, params)).one()
            if (existing.customer_id, existing.body_sha256) != (customer_id, digest):
                raise ApiProblem(
                    409,
                    "idempotency_key_reused",
                    "Idempotency-Key already used",
                    "This Idempotency-Key was used for another request. Use a new key for a new request.",
                )
            return Sent(request_id, existing.appointment_id, existing.action, replayed=True)
        if expected_version != current_version:
            raise ApiProblem(
                412,
                "version_mismatch",
                "The appointment changed",
                f"The appointment is at version {current_version}, not {expected_version}: show the "
                "customer the current appointment and ask again.",
                headers={"ETag": f'"{current_version}"'},
            )
        message = ModifyRequested(
            message_id=message_id,
            tenant_id=tenant_id,
            correlation_id=request_id,
            occurred_at=datetime.now(UTC),
            producer=producer,
            payload=ModifyRequestedPayload(
                appointment_id=appointment_id,
                requester_id=customer_id,
                change=change,
                expected_version=expected_version,
            ),
        )
        # Confirmed before the record commits: a refused publish rolls the record back.
        await _publish(broker, message, retry_after_s)
    log.info("api.modify_sent", request_id=request_id, action=change.action)
    return Sent(request_id, appointment_id, change.action, replayed=False)


async def send_decision(
    *,
    broker: Broker,
    tenant_id: str,
    request_id: str,
    approved: bool,
    reason: str | None,
    decided_by: str,
    retry_after_s: int,
    request_producer: str | None = None,
) -> None:
    """`request_producer`: the portal whose request it is (request ids are per portal)."""
    message = ApprovalDecided(
        message_id=uuid.uuid4(),
        tenant_id=tenant_id,
        correlation_id=f"decision-{uuid.uuid4().hex[:16]}",
        occurred_at=datetime.now(UTC),
        producer="office",
        request_producer=request_producer or None,
        payload=ApprovalDecidedPayload(
            request_id=request_id, approved=approved, reason=reason, decided_by=decided_by
        ),
    )
    await _publish(broker, message, retry_after_s)
