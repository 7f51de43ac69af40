"""Bytes and AMQP properties in, a validated message or a specific refusal out. Never raises on input."""

import json
from dataclasses import dataclass

from pydantic import ValidationError

from contracts.envelope import Envelope
from contracts.reasons import DeadLetterReason
from contracts.registry import KNOWN_TYPES, message_class

CONTENT_TYPE = "application/json"
MAX_MESSAGE_BYTES = 64 * 1024
_MAX_DETAIL = 900


@dataclass(frozen=True)
class DecodeFailure:
    """Why bytes could not become a message; `detail` is safe to put in a header (bounded, no payload)."""

    reason: DeadLetterReason
    detail: str


class DecodeError(Exception):
    def __init__(self, failure: DecodeFailure) -> None:
        super().__init__(f"{failure.reason}: {failure.detail}")
        self.failure = failure


def _safe_message(item: dict) -> str:
    """pydantic's text, except where it quotes the input: a detail goes into headers and logs, and a
    payload may hold personal data, so no value from the message is ever repeated."""
    kind, ctx = item["type"], item.get("ctx") or {}
    if kind == "union_tag_invalid":
        return f"'{ctx.get('discriminator')}' must be one of {ctx.get('expected_tags')}"
    if kind == "uuid_parsing":
        return "Input should be a valid UUID"
    return item["msg"]


def _validation_detail(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "<message>"
        parts.append(f"{where}: {_safe_message(item)}")
    return "; ".join(parts)[:_MAX_DETAIL]


def decode(
    body: bytes,
    *,
    content_type: str | None = CONTENT_TYPE,
    property_type: str | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> Envelope | DecodeFailure:
    """Validate one message. Size and content type are checked before the body is parsed."""
    if len(body) > max_bytes:
        return DecodeFailure(DeadLetterReason.MESSAGE_TOO_LARGE, f"{len(body)} bytes > limit {max_bytes}")
    if (content_type or "").split(";")[0].strip().lower() != CONTENT_TYPE:
        return DecodeFailure(
            DeadLetterReason.WRONG_CONTENT_TYPE, f"content_type {content_type!r}, expected {CONTENT_TYPE!r}"
        )
    try:
        # UTF-8 only, as RFC 8259 asks of JSON between systems (json.loads would also take UTF-16/32).
        raw = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return DecodeFailure(DeadLetterReason.MALFORMED_JSON, str(exc)[:_MAX_DETAIL])
    except RecursionError:
        # Deeply nested arrays or objects (well under the size limit): one dead letter, not a crash loop.
        return DecodeFailure(DeadLetterReason.MALFORMED_JSON, "the JSON is nested too deeply")
    except ValueError as exc:  # any other parser failure (e.g. a number too long to convert)
        return DecodeFailure(DeadLetterReason.MALFORMED_JSON, f"{type(exc).__name__}: {str(exc)[:200]}")
    if not isinstance(raw, dict):
        return DecodeFailure(DeadLetterReason.MALFORMED_JSON, "top level must be a JSON object")
    type_ = raw.get("type")
    if not isinstance(type_, str) or type_ not in KNOWN_TYPES:
        return DecodeFailure(DeadLetterReason.UNKNOWN_MESSAGE_TYPE, f"type {str(type_)[:100]!r} is not known")
    version = raw.get("schema_version")
    # `type(...) is int`: JSON true is a bool, and bool is an int subclass in Python.
    cls = message_class(type_, version) if type(version) is int else None
    if cls is None:
        return DecodeFailure(
            DeadLetterReason.UNSUPPORTED_SCHEMA_VERSION,
            f"{type_} schema_version {str(version)[:20]!r} is not supported",
        )
    if property_type is not None and property_type != type_:
        return DecodeFailure(
            DeadLetterReason.PROPERTIES_MISMATCH, f"AMQP type {property_type[:100]!r} != body type {type_!r}"
        )
    try:
        return cls.model_validate_json(body, strict=True)
    except ValidationError as exc:
        return DecodeFailure(DeadLetterReason.SCHEMA_VIOLATION, _validation_detail(exc))
    except (RecursionError, ValueError) as exc:
        return DecodeFailure(DeadLetterReason.MALFORMED_JSON, f"{type(exc).__name__}: {str(exc)[:200]}")


def decode_or_raise(body: bytes, **kwargs) -> Envelope:
    result = decode(body, **kwargs)
    if isinstance(result, DecodeFailure):
        raise DecodeError(result)
    return result


def encode(message: Envelope) -> bytes:
    return message.model_dump_json().encode()
