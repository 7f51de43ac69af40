"""Generates the AsyncAPI 3.0 document of the wire contract (contracts/asyncapi.json) from the models."""

import argparse
import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from pydantic.json_schema import models_json_schema

from contracts.catalog import EXTERNAL_PUBLISHERS, PORTAL_PUBLISHER, WORKERS
from contracts.decoding import CONTENT_TYPE, MAX_MESSAGE_BYTES
from contracts.envelope import Envelope
from contracts.portal_v1 import ModifyOutcome
from contracts.reasons import (
    CUSTOMER_TEXT,
    OFFICE_TEXT,
    DeadLetterReason,
    FailureCode,
    OfficeOutcomeCode,
    RejectionCode,
    customer_text,
)
from contracts.registry import MESSAGE_CLASSES, type_name
from contracts.routes import PUBLISHERS, publishers_of, topic_matches
from contracts.signing import KEY_ID_HEADER, PORTAL_ROLE, SIGNATURE_HEADER, SIGNED_AT_HEADER
from infra.topology import (
    DEAD_LETTER_ROLE,
    DEFAULT_NAMESPACE,
    DELIVERY_LIMIT,
    REPLY_ROLE,
    QueueSpec,
    Topology,
    build,
)

# The version of the contract as a whole; bump it when a message, route or code changes.
CONTRACT_VERSION = "1.0.0"
ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING_VERSION = "0.3.0"
DEFAULT_OUTPUT = Path(__file__).with_name("asyncapi.json")
SCHEMA_REF = "#/components/schemas/{model}"
# Sent to a queue the request names (`reply_to`), not routed by type: workers never decode them, so they
# are not in the registry; the document describes them as the reply of `modify.requested`.
REPLY_CLASSES: tuple[type[Envelope], ...] = (ModifyOutcome,)
REPLY_CHANNEL = "reply_modify_outcome"
REPLY_TO_LOCATION = "$message.payload#/payload/reply_to"


# Who sends and receives, in the operations' descriptions: each identity's summary in the catalog.
ACTORS: dict[str, str] = {identity.name: identity.summary for identity in (*EXTERNAL_PUBLISHERS, *WORKERS)}

DEAD_LETTER_TEXT: dict[str, str] = {
    DeadLetterReason.MESSAGE_TOO_LARGE: f"The body is larger than {MAX_MESSAGE_BYTES} bytes.",
    DeadLetterReason.WRONG_CONTENT_TYPE: f"The AMQP content_type is not {CONTENT_TYPE}.",
    DeadLetterReason.MALFORMED_JSON: "The body is not UTF-8 JSON, or its top level is not an object.",
    DeadLetterReason.UNKNOWN_MESSAGE_TYPE: "The body's `type` is missing or not a known message type.",
    DeadLetterReason.UNSUPPORTED_SCHEMA_VERSION: "The body's `schema_version` is not one we accept.",
    DeadLetterReason.SCHEMA_VIOLATION: "The body does not match its message schema (strict: no coercion).",
    DeadLetterReason.PROPERTIES_MISMATCH: "The AMQP `type` property contradicts the body's `type`.",
    DeadLetterReason.UNEXPECTED_MESSAGE_TYPE: "A valid message reached a worker that has no handler for it.",
    DeadLetterReason.HANDLER_ERROR: "The worker failed on the message with an error that is not transient.",
    DeadLetterReason.REQUEST_ID_REUSED: (
        "policy_gate: a `modify.requested` whose request id (correlation_id) already names a different "
        "request of the tenant (another change, appointment, requester or portal). Nothing changed. "
        "Never replay it: send the new request under a new request id. An identical re-send is no dead "
        "letter: it is acknowledged and changes nothing."
    ),
    DeadLetterReason.DELIVERY_LIMIT_EXCEEDED: (
        f"Reserved. A message redelivered more than {DELIVERY_LIMIT} times is dead-lettered by the "
        "broker itself, which sets RabbitMQ's `x-death` / `x-first-death-reason` headers instead."
    ),
    DeadLetterReason.RETRIES_EXHAUSTED: (
        "The database or broker stayed unavailable through every delayed retry; `x-attempt` says how many "
        "attempts failed and `x-last-error` the last error. Replay it once the outage is over."
    ),
    DeadLetterReason.SIGNATURE_MISSING: (
        "A portal message without the x-appt-key-id / x-appt-signed-at / x-appt-signature headers (or a "
        "portal message type that did not come through the portals' exchange). Sign it and send it again."
    ),
    DeadLetterReason.SIGNATURE_INVALID: (
        "The signature does not match the exact body bytes, key id and signing time (altered after "
        "signing, signed with another secret, or a malformed header). Never replay it."
    ),
    DeadLetterReason.SIGNATURE_UNKNOWN_KEY: (
        "Signed with a key id the workers do not know: not configured yet, or retired after a rotation."
    ),
    DeadLetterReason.SIGNATURE_EXPIRED: (
        "Signed longer ago than APPT_SIGNATURE_MAX_AGE_S (default a day), or further in the future than "
        "APPT_SIGNATURE_FUTURE_SKEW_S: a replayed old message or a wrong clock. Send a freshly signed one."
    ),
    DeadLetterReason.SIGNATURE_PRODUCER_MISMATCH: (
        "A valid signature, but with another producer's key than the message's `producer` names."
    ),
    DeadLetterReason.SIGNATURE_TENANT_NOT_ALLOWED: (
        "A valid signature, but the key's producer is bound to other businesses (`tenants` in the keyring) "
        "than the message's `tenant_id`."
    ),
    DeadLetterReason.REPLY_TO_NOT_ALLOWED: (
        "A signed request whose `payload.reply_to` is not a queue of the signing portal's own "
        "(`<namespace>.portal.<producer>.<name>`). Send it again naming one of the portal's queues."
    ),
    DeadLetterReason.ROUTE_TYPE_MISMATCH: (
        "The exchange and routing key the message came by, and the type and schema version its body names, "
        "are not one route of the worker's subscriptions (a body of one type sent under another type's "
        "routing key, or a portal-signed message that is not a portal type). Never replay it."
    ),
}

# AMQP headers our publishers set on every message (workers/runtime/broker.py `headers_for`),
# each mirroring an envelope field so ops tools can filter without parsing bodies.
HEADER_FIELDS: dict[str, str] = {
    "x-message-type": "type",
    "x-schema-version": "schema_version",
    "x-tenant-id": "tenant_id",
    "x-producer": "producer",
    "x-causation-id": "causation_id",
}

# Headers a worker adds when it dead-letters a message (workers/runtime/consumer.py `_dead_letter`).
DEAD_LETTER_HEADERS: dict[str, dict] = {
    "x-dead-letter-reason": {
        "type": "string",
        "enum": [str(reason) for reason in DeadLetterReason],
        "description": "Why: a code from `x-reason-codes.DeadLetterReason`.",
    },
    "x-dead-letter-detail": {
        "type": "string",
        "description": "A short, bounded explanation, e.g. the schema errors' locations and messages.",
    },
    "x-original-exchange": {"type": "string", "description": "The exchange the message was published to."},
    "x-original-routing-key": {"type": "string", "description": "The routing key it was published with."},
    "x-original-queue": {"type": "string", "description": "The work queue it was consumed from."},
    "x-dead-lettered-by": {"type": "string", "description": "The worker that dead-lettered it."},
    "x-dead-lettered-at": {"type": "string", "format": "date-time", "description": "When (UTC, ISO 8601)."},
    "x-attempt": {
        "type": "integer",
        "minimum": 1,
        "description": "Deliveries that failed transiently (database or broker away), on a message that was "
        "retried through the worker's delay queues; with `retries_exhausted`, how many it took.",
    },
    "x-last-error": {"type": "string", "description": "The last transient error of a retried message."},
}

DESCRIPTION = """\
Customer self-service for field-service appointments: a portal asks to reschedule or cancel an \
appointment, the business's rules decide, and the outcome flows back to the portal.

**Flow.** A portal publishes `modify.requested` to `{ns}.requests`. `policy_gate` checks it against \
the business's self-service settings (`office.portal_settings.updated`) and the appointment, and \
publishes `modify.approved` to `{ns}.internal` or `modify.rejected` to `{ns}.events`. `modify_handler` \
applies approved changes to the appointments the office records (`office.appointment.recorded`) and \
publishes `appointment.rescheduled` / `appointment.canceled`, or `modify.failed` when the appointment \
changed after the decision; office changes become `appointment.updated` and `job.status_changed`. \
`portal_sync` consumes every request and result event and keeps the portal read store up to date. \
**The offer travels with the change:** the gate's `modify.approved` carries the portal's offer for the \
state it approves (`offer`), `modify_handler` carries it on in `appointment.rescheduled` / \
`appointment.canceled`, and the read store writes the new time and the new offer together; the gate \
announces `appointment.offer_changed` for what it cannot know in advance (office changes, settings, \
projects, `modify.failed`). `offer` is an optional field added to schema version 1: messages without \
it stay valid, and a reader generated from an earlier version of this document (unknown fields \
refused) must be regenerated before it meets one. Every message that follows from a request carries \
the request's `correlation_id`; `causation_id` is the `message_id` of the message that caused it.

**Replies.** A request may name `payload.reply_to`, a queue of the portal's bound to the direct \
exchange `{ns}.replies` with its own name; `portal_sync` then sends the request's final outcome there \
once (`modify.outcome`, the reply of the portal's `modify.requested` operation).

**Publishing.** JSON bodies (`{content_type}`, UTF-8, at most {max_bytes} bytes), persistent, with \
publisher confirms and `mandatory`. Set the AMQP `message_id`, `correlation_id` and `type` properties \
to the envelope's values. Unknown fields are refused; ids and strings are bounded; times carry a \
timezone. Exchange and queue names start with the deployment namespace (`{ns}` by default).

**Signing.** Every message a portal publishes to `{ns}.requests` is signed with HMAC-SHA256 over its \
exact body bytes with the portal's own key (headers `x-appt-key-id`, `x-appt-signed-at`, \
`x-appt-signature`; see the message's headers). Each portal has a current key and, during a rotation, a \
previous one; both are accepted. The signature is checked before the body is parsed: unsigned, altered, \
unknown-key, expired (older than a day by default) and another producer's messages are dead-lettered \
with a `signature_*` reason and have no effect. A copy of a message already handled (same message_id) is \
dropped with no effect.

**Dead letters.** A message a worker cannot process is republished, body unchanged, to the worker's \
own direct exchange `{dlx}.<worker>` with the routing key `<work queue>.dead` (a quorum queue of that \
name, also bound to the shared `{dlx}`, through which the broker dead-letters), then acknowledged. \
It keeps its headers and gains `x-dead-letter-reason` (a code from \
`x-reason-codes.DeadLetterReason`), `x-dead-letter-detail`, `x-original-exchange`, \
`x-original-routing-key`, `x-original-queue`, `x-dead-lettered-by` and `x-dead-lettered-at`. A message \
redelivered more than {limit} times is dead-lettered by the broker with RabbitMQ's `x-death` headers.
"""


# --- names ----------------------------------------------------------------------------------------


def _snake(name: str) -> str:
    return name.replace(".", "_").replace("-", "_").replace("{", "").replace("}", "")


def channel_id(exchange_role: str, routing_key: str) -> str:
    """One channel per (exchange, routing key); ids use only [A-Za-z0-9_-] so tools can name things."""
    return f"{_snake(exchange_role)}_{_snake(routing_key)}"


def message_key(cls: type[Envelope]) -> str:
    return cls.__name__


def operation_subject(cls: type[Envelope]) -> str:
    """The message type in an operation id; later schema versions of one type get their own operation."""
    version = cls.model_fields["schema_version"].default
    return _snake(type_name(cls)) + (f"_v{version}" if version > 1 else "")


def _pointer(*parts: str) -> str:
    escaped = (part.replace("~", "~0").replace("/", "~1") for part in parts)
    return "#/" + "/".join(escaped)


# --- topology -------------------------------------------------------------------------------------


def consumers(topology: Topology, cls: type[Envelope]) -> Iterator[tuple[QueueSpec, str]]:
    """(work queue, first matching binding key) for every queue a message of `cls` is routed to."""
    for queue in topology.queues:
        keys = [
            binding.routing_key
            for binding in queue.bindings
            if binding.exchange_role == cls.exchange_role
            and topic_matches(binding.routing_key, cls.routing_key)
        ]
        if queue.worker is not None and keys:
            yield queue, keys[0]


# --- schemas --------------------------------------------------------------------------------------


def _schemas() -> dict[str, dict]:
    """Every message's validation schema and its parts, named once, refs pointing into components."""
    documented = (*MESSAGE_CLASSES, *REPLY_CLASSES)
    _, top = models_json_schema([(cls, "validation") for cls in documented], ref_template=SCHEMA_REF)
    renamed = {name: _schema_name(name) for name in top["$defs"]}
    if len(set(renamed.values())) != len(renamed):
        raise ValueError(f"two schemas would share a name: {sorted(renamed.values())}")
    schemas = _renamed_refs({renamed[name]: schema for name, schema in sorted(top["$defs"].items())}, renamed)
    for name, schema in schemas.items():
        # Generators name classes after titles: each title is its schema's (unique) component name.
        schema["title"] = name
        _constants_as_enums(schema)
        for prop in schema.get("properties", {}).values():
            if "enum" in prop and "title" in prop:  # an inline enum becomes a class named after its title
                prop["title"] = name + prop["title"].replace(" ", "")
    for cls in documented:
        # decode() dispatches on these two before validating, so the wire requires them even though
        # the models give them defaults (which makes pydantic call them optional).
        _require(schemas[cls.__name__], "type", "schema_version")
    for schema in schemas.values():
        _walk_discriminators(schema, schemas)
    return schemas


def _schema_name(name: str) -> str:
    """pydantic names a model that two modules define `contracts__office_v1__Permission`; a generator
    would turn that into a class name, so it becomes `OfficeV1Permission`."""
    if "__" not in name:
        return name
    *modules, model = name.split("__")
    module = modules[-1]
    return "".join(part[:1].upper() + part[1:] for part in module.split("_")) + model


def _renamed_refs(node, renamed: dict[str, str]):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(SCHEMA_REF.format(model="")):
                name = value.rsplit("/", 1)[1]
                out[key] = SCHEMA_REF.format(model=renamed.get(name, name))
            else:
                out[key] = _renamed_refs(value, renamed)
        return out
    if isinstance(node, list):
        return [_renamed_refs(item, renamed) for item in node]
    return node


def _constants_as_enums(node: object) -> None:
    """`const` alone is dropped by some generators (a generated publisher then sends no
    `schema_version` and is dead-lettered); an enum of the one value survives every one we know."""
    if isinstance(node, list):
        for item in node:
            _constants_as_enums(item)
    elif isinstance(node, dict):
        if "const" in node and "enum" not in node:
            node["enum"] = [node["const"]]
        for value in node.values():
            _constants_as_enums(value)


def _require(schema: dict, *fields: str) -> None:
    required = set(schema.get("required", ())) | set(fields)
    schema["required"] = [name for name in schema["properties"] if name in required]


def _walk_discriminators(node: object, schemas: dict[str, dict]) -> None:
    """AsyncAPI's `discriminator` is a property name (a string), not OpenAPI's object that pydantic
    emits; the tag property must be required in every variant, as the tagged union demands."""
    if isinstance(node, list):
        for item in node:
            _walk_discriminators(item, schemas)
        return
    if not isinstance(node, dict):
        return
    found = node.get("discriminator")
    if isinstance(found, dict):
        prop = found["propertyName"]
        node["discriminator"] = prop
        for ref in found.get("mapping", {}).values():
            _require(schemas[ref.rsplit("/", 1)[1]], prop)
    for key, value in node.items():
        if key != "discriminator":
            _walk_discriminators(value, schemas)


SIGNATURE_HEADER_SCHEMAS: dict[str, dict] = {
    KEY_ID_HEADER: {
        "type": "string",
        "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
        "description": "The id of the key that signed: the producer's current key, or its previous one "
        "while a rotation is under way. Each key id belongs to exactly one producer.",
    },
    SIGNED_AT_HEADER: {
        "type": "integer",
        "description": "When it was signed, in whole seconds since the Unix epoch (an AMQP integer, not a "
        "string). Older than the workers' maximum age, or too far in the future: refused as expired.",
    },
    SIGNATURE_HEADER: {
        "type": "string",
        "pattern": "^v1=[0-9a-f]{64}$",
        "description": "`v1=` + lowercase hex HMAC-SHA256 with the key's secret over the bytes "
        '`"v1\\n" + key id + "\\n" + signed-at (decimal) + "\\n" + body`, the body exactly as published.',
    },
}


def _headers(envelope_schema: dict, *, signed: bool = False) -> dict:
    properties = {}
    for header, field in HEADER_FIELDS.items():
        source = envelope_schema["properties"][field]
        if field == "causation_id":
            schema = {"type": "string", "format": "uuid"}
            note = "Set only when the envelope has a causation_id."
        else:
            schema = {k: source[k] for k in ("type", "const", "pattern", "format") if k in source}
            note = ""
        schema["description"] = f"Mirrors the envelope's `{field}`. {note}".strip()
        properties[header] = schema
    description = (
        "Set by our workers on every message they publish, so ops tools can filter without parsing "
        "bodies. External publishers may omit them: consumers read the body, not these headers."
    )
    schema: dict = {"type": "object", "properties": properties}
    if signed:
        properties.update(SIGNATURE_HEADER_SCHEMAS)
        schema["required"] = list(SIGNATURE_HEADER_SCHEMAS)
        description += (
            " The three x-appt-* signature headers are required: see Signing in the document's description."
        )
    schema["description"] = description
    return {"type": schema.pop("type"), "description": schema.pop("description"), **schema}


# --- document parts -------------------------------------------------------------------------------


def _title(cls: type[Envelope]) -> str:
    words = "".join(f" {c}" if c.isupper() else c for c in cls.__name__).strip()
    return words[0] + words[1:].lower()


def _message(cls: type[Envelope], schemas: dict[str, dict], topology: Topology) -> dict:
    type_ = type_name(cls)
    return {
        "name": type_,
        "title": _title(cls),
        "summary": cls.summary,
        "description": (
            f"Published by {' and '.join(publishers_of(type_))} to "
            f"`{topology.exchange(cls.exchange_role)}` with routing key "
            f"{_routing_text(cls)}. AMQP properties: content_type `{CONTENT_TYPE}`, delivery_mode 2 "
            "(persistent), message_id = `message_id`, correlation_id = `correlation_id`, "
            "type = `type` (a mismatch is dead-lettered as `properties_mismatch`), app_id = `producer`, "
            "timestamp = `occurred_at`."
        ),
        "contentType": CONTENT_TYPE,
        "correlationId": {
            "description": (
                "The request id (portal) or change id (office), unchanged in every message that follows; "
                "also sent as the AMQP correlation_id property."
            ),
            "location": "$message.payload#/correlation_id",
        },
        "headers": _headers(schemas[cls.__name__], signed=cls.exchange_role == PORTAL_ROLE),
        "payload": {"$ref": SCHEMA_REF.format(model=cls.__name__)},
        "bindings": {"amqp": {"messageType": type_, "bindingVersion": AMQP_BINDING_VERSION}},
    }


def _routing_text(cls: type[Envelope]) -> str:
    if cls in REPLY_CLASSES:
        return (
            "= the request's `payload.reply_to` (a queue of the portal's, bound to this direct exchange "
            "with its own name); sent once, when the request's outcome is final"
        )
    return f"`{cls.routing_key}`"


def _dead_letter_message() -> dict:
    return {
        "name": "dead_letter",
        "title": "Dead letter",
        "summary": "A message a worker could not process, with why.",
        "description": (
            "The original message, body and AMQP properties unchanged (the body may be anything, even "
            "invalid JSON), plus the dead-letter headers below alongside its original headers."
        ),
        "headers": {
            "type": "object",
            "properties": copy.deepcopy(DEAD_LETTER_HEADERS),
            "required": list(DEAD_LETTER_HEADERS),
        },
        "payload": {"description": "The original body, byte for byte."},
    }


def _exchange_binding(topology: Topology, role: str) -> dict:
    spec = next(spec for spec in topology.exchanges if spec.role == role)
    return {
        "amqp": {
            "is": "routingKey",
            "exchange": {
                "name": spec.name,
                "type": str(spec.type.value),
                "durable": True,
                "autoDelete": False,
                "vhost": "/",
            },
            "bindingVersion": AMQP_BINDING_VERSION,
        }
    }


def _channels(topology: Topology) -> dict:
    channels: dict[str, dict] = {}
    for cls in MESSAGE_CLASSES:
        key = channel_id(cls.exchange_role, cls.routing_key)
        channel = channels.setdefault(
            key,
            {
                "address": cls.routing_key,
                "title": f"{topology.exchange(cls.exchange_role)} / {cls.routing_key}",
                "description": "",
                "messages": {},
                "bindings": _exchange_binding(topology, cls.exchange_role),
            },
        )
        channel["messages"][message_key(cls)] = {"$ref": _pointer("components", "messages", message_key(cls))}
        queues = [
            f"`{queue.name}` ({queue.worker}, binding key `{bound}`)"
            for queue, bound in consumers(topology, cls)
        ]
        channel["description"] = (
            f"Topic exchange `{topology.exchange(cls.exchange_role)}`, routing key `{cls.routing_key}`. "
            f"Consumed by: {', '.join(queues) or 'no queue of ours'}."
        )
    channels[REPLY_CHANNEL] = {
        # AsyncAPI 3: a channel whose address is only known at runtime has a null address; the reply
        # of `modify.requested` says where it comes from (the request's reply_to).
        "address": None,
        "title": f"{topology.exchange(REPLY_ROLE)} / <the request's reply_to>",
        "description": (
            f"Direct exchange `{topology.exchange(REPLY_ROLE)}`, routing key = the request's "
            "`payload.reply_to`. The portal declares that queue and binds it to the exchange with its own "
            "name as the binding key; the final outcome of each request that named it arrives there once."
        ),
        "messages": {
            message_key(cls): {"$ref": _pointer("components", "messages", message_key(cls))}
            for cls in REPLY_CLASSES
        },
        "bindings": _exchange_binding(topology, REPLY_ROLE),
    }
    for queue in topology.queues:
        if queue.dead_letter_queue is None:
            continue
        channels[channel_id(DEAD_LETTER_ROLE, queue.dead_letter_queue)] = {
            "address": queue.dead_letter_queue,
            "title": f"{topology.dead_letter_exchange} / {queue.dead_letter_queue}",
            "description": (
                f"Dead letters of `{queue.name}`: direct exchange `{topology.dead_letter_exchange}`, "
                f"routing key `{queue.dead_letter_queue}`, bound to the quorum queue of the same name."
            ),
            "messages": {"DeadLetter": {"$ref": _pointer("components", "messages", "DeadLetter")}},
            "bindings": _exchange_binding(topology, DEAD_LETTER_ROLE),
        }
    return channels


def _operation(action: str, channel: str, messages: list[str], summary: str, description: str) -> dict:
    amqp = (
        {"deliveryMode": 2, "mandatory": True, "timestamp": True}
        if action == "send"
        else {"ack": True}  # acked only after the handler's transaction committed
    )
    return {
        "action": action,
        "channel": {"$ref": _pointer("channels", channel)},
        "summary": summary,
        "description": description,
        "messages": [{"$ref": _pointer("channels", channel, "messages", name)} for name in messages],
        "bindings": {"amqp": {**amqp, "bindingVersion": AMQP_BINDING_VERSION}},
    }


def _operations(topology: Topology) -> dict:
    operations: dict[str, dict] = {}
    for cls in MESSAGE_CLASSES:
        for publisher in publishers_of(type_name(cls)):
            operations[f"{publisher}_send_{operation_subject(cls)}"] = _operation(
                "send",
                channel_id(cls.exchange_role, cls.routing_key),
                [message_key(cls)],
                cls.summary,
                f"{ACTORS[publisher]} Publishes to `{topology.exchange(cls.exchange_role)}`.",
            )
    replies = [message_key(cls) for cls in REPLY_CLASSES]
    operations[f"{PUBLISHERS['modify.requested']}_send_modify_requested"]["reply"] = {
        "address": {
            "location": REPLY_TO_LOCATION,
            "description": "Only when the request names a `reply_to` queue; the outcome also reaches the "
            "read store and the `modify.*` / `appointment.*` events either way.",
        },
        "channel": {"$ref": _pointer("channels", REPLY_CHANNEL)},
        "messages": [{"$ref": _pointer("channels", REPLY_CHANNEL, "messages", name)} for name in replies],
    }
    for cls in REPLY_CLASSES:
        publisher = PUBLISHERS[type_name(cls)]
        operations[f"{publisher}_send_{operation_subject(cls)}"] = _operation(
            "send",
            REPLY_CHANNEL,
            [message_key(cls)],
            cls.summary,
            f"{ACTORS[publisher]} Publishes to `{topology.exchange(REPLY_ROLE)}` with the request's "
            "`reply_to` as the routing key.",
        )
        operations[f"{PORTAL_PUBLISHER.name}_receive_{operation_subject(cls)}"] = _operation(
            "receive",
            REPLY_CHANNEL,
            [message_key(cls)],
            cls.summary,
            f"{PORTAL_PUBLISHER.summary} Consumes its own `reply_to` queue.",
        )
    receives = sorted(
        ((queue, bound, cls) for cls in MESSAGE_CLASSES for queue, bound in consumers(topology, cls)),
        key=lambda item: topology.queues.index(item[0]),  # grouped by worker, registry order within
    )
    for queue, bound, cls in receives:
        operations[f"{queue.worker}_receive_{operation_subject(cls)}"] = _operation(
            "receive",
            channel_id(cls.exchange_role, cls.routing_key),
            [message_key(cls)],
            cls.summary,
            f"{ACTORS[queue.worker]} Consumes from `{queue.name}` (binding key `{bound}`).",
        )
    for queue in topology.queues:
        if queue.worker is None or queue.dead_letter_queue is None:
            continue
        operations[f"{queue.worker}_send_dead_letter"] = _operation(
            "send",
            channel_id(DEAD_LETTER_ROLE, queue.dead_letter_queue),
            ["DeadLetter"],
            "Set aside a message that cannot be processed, with why.",
            f"{queue.worker} republishes what it cannot process from `{queue.name}`, then acks it.",
        )
    return operations


def _reason_codes() -> dict:
    def outcome(code: str) -> dict:
        # An example with the blanks filled, as customer_text() does for a reschedule of a done job.
        return {
            "customerText": CUSTOMER_TEXT[code],
            "example": customer_text(code, action="reschedule", status="done"),
        }

    return {
        "RejectionCode": {
            "description": "`reason_code` of `modify.rejected`: the rules refused the request.",
            "codes": {str(code): outcome(code) for code in RejectionCode},
        },
        "FailureCode": {
            "description": "`reason_code` of `modify.failed`: approved but could not be applied.",
            "codes": {str(code): outcome(code) for code in FailureCode},
        },
        "OfficeOutcomeCode": {
            "description": "`reason_code` of `office.outcome`: why an office message was ignored "
            "(older_revision) or refused (any other code); an applied one has none.",
            "codes": {str(code): {"description": OFFICE_TEXT[code]} for code in OfficeOutcomeCode},
        },
        "DeadLetterReason": {
            "description": "`x-dead-letter-reason` header of dead letters.",
            "codes": {str(code): {"description": DEAD_LETTER_TEXT[code]} for code in DeadLetterReason},
        },
        "blanks": {
            "{action_past}": "'rescheduled' or 'canceled' from the request's action ('changed' if unknown).",
            "{status}": "The appointment's status as a phrase a customer reads ('closed' if unknown).",
        },
    }


# --- public API -----------------------------------------------------------------------------------


def build_document(namespace: str = DEFAULT_NAMESPACE) -> dict:
    """The AsyncAPI 3.0 document as a JSON-serialisable dict, the same on every call."""
    topology = build(namespace)
    schemas = _schemas()
    messages = {
        message_key(cls): _message(cls, schemas, topology) for cls in (*MESSAGE_CLASSES, *REPLY_CLASSES)
    }
    messages["DeadLetter"] = _dead_letter_message()
    description = DESCRIPTION.format(
        ns=namespace,
        content_type=CONTENT_TYPE,
        max_bytes=MAX_MESSAGE_BYTES,
        dlx=topology.dead_letter_exchange,
        limit=DELIVERY_LIMIT,
    )
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Appointment self-service messaging",
            "version": CONTRACT_VERSION,
            "description": description,
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "local": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0-9-1",
                "description": "The local RabbitMQ (`bash infra/services.sh` or docker compose); AMQP_URL.",
            }
        },
        "channels": _channels(topology),
        "operations": _operations(topology),
        "components": {"schemas": schemas, "messages": messages},
        "x-reason-codes": _reason_codes(),
    }


def render() -> str:
    """The document as committed: 2-space JSON in a fixed key order, ending in a newline."""
    return json.dumps(build_document(), indent=2, ensure_ascii=False) + "\n"


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contracts.asyncapi", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the models")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="default: contracts/asyncapi.json"
    )
    args = parser.parse_args(argv)
    text = render()
    shown = _shown(args.output)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
        if current != text:
            again = "" if args.output == DEFAULT_OUTPUT else f" --output {shown}"
            print(f"{shown} is stale: run `python -m contracts.asyncapi{again}`", file=sys.stderr)
            return 1
        print(f"{shown} is up to date")
        return 0
    args.output.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
