"""The steps before a handler: verify signature -> decode -> check route -> check signer -> dispatch.

Each step takes what the previous one proved and returns either the next fact or a `Refusal` (the reason
and detail the delivery is dead-lettered with). Pure: nothing here touches the broker or the database.
The size limit comes first (decode refuses an oversize body), then the signature over the raw bytes,
then parsing; a route decides the type, checked before any handler or state is touched.
"""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage

from contracts.decoding import MAX_MESSAGE_BYTES, DecodeFailure, decode
from contracts.envelope import Envelope
from contracts.reasons import DeadLetterReason
from contracts.routes import RouteTable
from contracts.signing import SignatureRefused, Verified
from workers.runtime.database import UnitOfWork
from workers.runtime.metrics import UNDECODED
from workers.runtime.redelivery import Bookkeeping
from workers.runtime.signatures import SignaturePolicy

Handler = Callable[[Envelope, UnitOfWork], Awaitable[None]]


@dataclass(frozen=True)
class Refusal:
    """Why a delivery is dead-lettered before its handler runs (`message_type` for metrics)."""

    reason: str
    detail: str
    message_type: str = UNDECODED


@dataclass(frozen=True)
class Admitted:
    """A delivery every step let through: its decoded message and the handler it goes to."""

    message: Envelope
    handler: Handler


def verify_signature(
    incoming: AbstractIncomingMessage, where: Bookkeeping, signatures: SignaturePolicy | None
) -> Verified | Refusal | None:
    """The signature over the raw bytes, for messages that came by an exchange that requires one."""
    if (
        signatures is None
        or len(incoming.body) > MAX_MESSAGE_BYTES
        or not signatures.applies_to(where.exchange)
    ):
        return None
    checked = signatures.check(incoming.body, incoming.headers)
    if isinstance(checked, SignatureRefused):
        return Refusal(checked.reason, checked.detail)
    return checked


def decode_body(incoming: AbstractIncomingMessage) -> Envelope | Refusal:
    decoded = decode(incoming.body, content_type=incoming.content_type, property_type=incoming.type)
    if isinstance(decoded, DecodeFailure):
        return Refusal(decoded.reason, decoded.detail)
    return decoded


def check_route(message: Envelope, where: Bookkeeping, routes: RouteTable | None) -> Refusal | None:
    """The exchange and routing key it came by must be one of the worker's routes for its type."""
    if routes is None:
        return None
    refusal = routes.refusal(where.exchange, where.routing_key, message.type, message.schema_version)
    if refusal is None:
        return None
    return Refusal(DeadLetterReason.ROUTE_TYPE_MISMATCH, refusal, message.type)


def check_signer(
    message: Envelope, verified: Verified | None, signatures: SignaturePolicy | None
) -> Refusal | None:
    """What the signature proved must cover what the parsed message claims."""
    if signatures is None:
        return None
    refused = signatures.check_parsed(message, verified)
    return None if refused is None else Refusal(refused.reason, refused.detail, message.type)


def dispatch(message: Envelope, handlers: Mapping[type[Envelope], Handler], worker: str) -> Handler | Refusal:
    handler = handlers.get(type(message))
    if handler is None:
        return Refusal(
            DeadLetterReason.UNEXPECTED_MESSAGE_TYPE,
            f"{worker} has no handler for {message.type} v{message.schema_version}",
            message.type,
        )
    return handler


def admit(
    incoming: AbstractIncomingMessage,
    where: Bookkeeping,
    *,
    signatures: SignaturePolicy | None,
    routes: RouteTable | None,
    handlers: Mapping[type[Envelope], Handler],
    worker: str,
) -> Admitted | Refusal:
    """All the steps in order; the first refusal wins."""
    verified = verify_signature(incoming, where, signatures)
    if isinstance(verified, Refusal):
        return verified
    message = decode_body(incoming)
    if isinstance(message, Refusal):
        return message
    refused = check_route(message, where, routes) or check_signer(message, verified, signatures)
    if refused is not None:
        return refused
    handler = dispatch(message, handlers, worker)
    if isinstance(handler, Refusal):
        return handler
    return Admitted(message, handler)
