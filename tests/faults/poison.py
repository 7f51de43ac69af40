"""Poison messages of every kind, aimed at every queue: each must end in its worker's dead-letter queue
with the reason a person can act on, and none may change anything."""

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from uuid import uuid4

import aio_pika

from apptctl.portal_keys import tool_keyring
from contracts.decoding import CONTENT_TYPE, MAX_MESSAGE_BYTES
from contracts.envelope import Envelope
from contracts.events_v1 import office_outcome
from contracts.signing import SigningKey, signature_headers
from infra.topology import SUBSCRIPTIONS, Topology
from tests import factories
from workers.runtime.broker import Broker
from workers.runtime.settings import Settings


@dataclass(frozen=True)
class Poison:
    kind: str
    reason: str  # the x-dead-letter-reason it must get
    exchange_role: str
    routing_key: str
    body: bytes
    content_type: str | None
    amqp_type: str | None
    message_id: str
    # Sent as a portal would: the test's broker signs what goes to the portals' exchange with app_id's key.
    # Signature poison brings its own headers (or none) and no app_id, so nothing signs it again.
    app_id: str | None = "portal-web"
    headers: dict | None = None

    def queues(self, topology: Topology) -> list[str]:
        """The work queues it reaches (so the dead-letter queues it must end in)."""
        return [
            topology.queue_of(worker).dead_letter_queue or ""
            for worker, bindings in SUBSCRIPTIONS.items()
            if any(
                b.exchange_role == self.exchange_role and _matches(b.routing_key, self.routing_key)
                for b in bindings
            )
        ]


def _matches(pattern: str, key: str) -> bool:
    return pattern == "#" or pattern == key


Mutation = Callable[[dict], object]  # returns the new document (dict) or raw bytes


def _drop(*path: str) -> Mutation:
    def apply(doc: dict) -> dict:
        target = doc
        for step in path[:-1]:
            target = target[step]
        target.pop(path[-1], None)
        return doc

    return apply


def _set(value: object, *path: str) -> Mutation:
    def apply(doc: dict) -> dict:
        target = doc
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        return doc

    return apply


# kind -> (reason, mutation of the valid document, content type, AMQP type override)
BODY_MUTATIONS: dict[str, tuple[str, Mutation]] = {
    "truncated_json": ("malformed_json", lambda d: json.dumps(d).encode()[: len(json.dumps(d)) // 2]),
    "not_json": ("malformed_json", lambda d: b"this is not json"),
    "empty_body": ("malformed_json", lambda d: b""),
    "not_utf8": ("malformed_json", lambda d: b"\xff\xfe{\x00\x00bad"),
    "top_level_array": ("malformed_json", lambda d: b"[1, 2, 3]"),
    "json_null": ("malformed_json", lambda d: b"null"),
    "unknown_type": ("unknown_message_type", _set("modify.exploded", "type")),
    "type_missing": ("unknown_message_type", _drop("type")),
    "type_is_a_number": ("unknown_message_type", _set(42, "type")),
    # a version no message type has (office.appointment.recorded and the settings have a version 2)
    "schema_version_99": ("unsupported_schema_version", _set(99, "schema_version")),
    "schema_version_string": ("unsupported_schema_version", _set("1", "schema_version")),
    "schema_version_bool": ("unsupported_schema_version", _set(True, "schema_version")),
    "schema_version_float": ("unsupported_schema_version", _set(1.0, "schema_version")),
    "schema_version_missing": ("unsupported_schema_version", _drop("schema_version")),
    "message_id_missing": ("schema_violation", _drop("message_id")),
    "message_id_not_uuid": ("schema_violation", _set("not-a-uuid", "message_id")),
    "tenant_missing": ("schema_violation", _drop("tenant_id")),
    "tenant_uppercase": ("schema_violation", _set("ACME-CORP", "tenant_id")),
    "payload_missing": ("schema_violation", _drop("payload")),
    "payload_a_string": ("schema_violation", _set("reschedule please", "payload")),
    "occurred_at_a_number": ("schema_violation", _set(1_700_000_000, "occurred_at")),
    "occurred_at_naive": ("schema_violation", _set("2026-11-24T10:00:00", "occurred_at")),
    "extra_top_level_field": ("schema_violation", _set(True, "is_admin")),
    "extra_payload_field": ("schema_violation", _set("high", "payload", "priority")),
    "correlation_id_too_long": ("schema_violation", _set("r" * 300, "correlation_id")),
    "correlation_id_injection": ("schema_violation", _set("req'; DROP TABLE x;--", "correlation_id")),
}

# Mutations that only make sense for one family (path into its payload).
FAMILY_MUTATIONS: dict[str, dict[str, tuple[str, Mutation]]] = {
    "request": {
        "appointment_id_a_number": ("schema_violation", _set(123, "payload", "appointment_id")),
        "requester_null": ("schema_violation", _set(None, "payload", "requester_id")),
        "unknown_action": ("schema_violation", _set("teleport", "payload", "change", "action")),
        "naive_new_window": (
            "schema_violation",
            _set(
                {"start": "2026-12-01T09:00:00", "end": "2026-12-01T11:00:00"},
                "payload",
                "change",
                "new_window",
            ),
        ),
        "window_backwards": (
            "schema_violation",
            _set(
                {"start": "2026-12-01T11:00:00Z", "end": "2026-12-01T09:00:00Z"},
                "payload",
                "change",
                "new_window",
            ),
        ),
        "extra_change_field": ("schema_violation", _set(1, "payload", "change", "priority")),
    },
    "booking": {
        "status_unknown": ("schema_violation", _set("teleported", "payload", "status")),
        "window_two_days": (
            "schema_violation",
            _set({"start": "2026-12-01T09:00:00Z", "end": "2026-12-03T09:00:00Z"}, "payload", "window"),
        ),
        "naive_window": (
            "schema_violation",
            _set({"start": "2026-12-01T09:00:00", "end": "2026-12-01T11:00:00"}, "payload", "window"),
        ),
    },
    "booking_v2": {
        "based_on_version_negative": ("schema_violation", _set(-1, "payload", "based_on_version")),
        "based_on_version_a_float": ("schema_violation", _set(2.5, "payload", "based_on_version")),
        "office_revision_missing": ("schema_violation", _drop("payload", "office_revision")),
        "office_revision_a_string": ("schema_violation", _set("3", "payload", "office_revision")),
        "office_revision_beyond_2_62": ("schema_violation", _set(2**63, "payload", "office_revision")),
    },
    "approval": {
        "version_negative": ("schema_violation", _set(-1, "payload", "decided_on_version")),
        "version_a_string": ("schema_violation", _set("1", "payload", "decided_on_version")),
    },
    "event": {
        "snapshot_missing": ("schema_violation", _drop("payload", "appointment")),
        "version_a_float": ("schema_violation", _set(2.5, "payload", "appointment", "version")),
    },
    "outcome": {
        "status_unknown": ("schema_violation", _set("maybe", "payload", "status")),
        "office_message_id_not_uuid": ("schema_violation", _set("office-1", "payload", "office_message_id")),
        "current_version_negative": ("schema_violation", _set(-1, "payload", "current", "version")),
    },
}


def _families(tenant: str, appointment_id: str) -> dict[str, tuple[Envelope, str, str]]:
    """A valid message of each family aimed at a real appointment: (message, exchange role, routing key)."""
    request = factories.modify_requested(
        tenant=tenant,
        appointment_id=appointment_id,
        change=factories.cancel("poison"),
        request_id="poison-req",
    )
    booking = factories.appointment_recorded(tenant=tenant, appointment_id=appointment_id)
    versioned = factories.appointment_recorded(
        tenant=tenant, appointment_id=appointment_id, office_revision=1_000, based_on_version=1
    )
    approval = factories.modify_approved(request)
    event = factories.appointment_updated(booking, version=1_000)
    outcome = office_outcome(
        versioned, factories.now(), appointment_id, None, producer="modify_handler",
        current=event.payload.appointment,
    )  # fmt: skip
    return {
        "request": (request, "requests", "modify.requested"),
        "booking": (booking, "office", "office.appointment.recorded"),
        "booking_v2": (versioned, "office", "office.appointment.recorded"),
        "approval": (approval, "internal", "modify.approved"),
        "event": (event, "events", "appointment.updated"),
        "outcome": (outcome, "events", "office.outcome"),
    }


def catalog(tenants: list[str], appointment_ids: list[str], total: int, seed: int = 7) -> list[Poison]:
    """At least `total` poison messages: every kind against every family, then more of the same mix."""
    rng = random.Random(seed)
    poison: list[Poison] = []
    while len(poison) < total:
        families = _families(rng.choice(tenants), rng.choice(appointment_ids))
        for family, (message, role, key) in families.items():
            valid = json.loads(message.model_dump_json())
            body_kinds = {**BODY_MUTATIONS, **FAMILY_MUTATIONS[family]}
            for kind, (reason, mutate) in body_kinds.items():
                result = mutate(json.loads(json.dumps(valid)))
                body = result if isinstance(result, bytes) else json.dumps(result).encode()
                poison.append(
                    Poison(f"{family}:{kind}", reason, role, key, body, CONTENT_TYPE, None, str(uuid4()))
                )
            raw = json.dumps(valid).encode()
            padded = json.dumps({**valid, "padding": "x" * (MAX_MESSAGE_BYTES + 1024)}).encode()
            for kind, reason, body, content_type, amqp_type in (
                ("oversize", "message_too_large", padded, CONTENT_TYPE, None),
                ("text_plain", "wrong_content_type", raw, "text/plain", None),
                ("xml", "wrong_content_type", raw, "application/xml", None),
                ("no_content_type", "wrong_content_type", raw, None, None),
                ("amqp_type_mismatch", "properties_mismatch", raw, CONTENT_TYPE, "office.approval.decided"),
            ):
                poison.append(
                    Poison(f"{family}:{kind}", reason, role, key, body, content_type, amqp_type, str(uuid4()))
                )
        poison += _signature_poison(families["request"][0])
        # valid messages on another type's route: refused before any handler, whatever the body says
        request, _, _ = families["request"]
        approval, _, _ = families["approval"]
        booking, _, _ = families["booking"]
        for kind, message, role, key in (
            ("approval_on_requests", approval, "requests", "modify.requested"),
            ("booking_on_requests", booking, "requests", "modify.requested"),
            ("request_on_office", request, "office", "office.appointment.recorded"),
            ("request_on_internal", request, "internal", "modify.approved"),
        ):
            poison.append(
                Poison(
                    f"misrouted:{kind}",
                    "route_type_mismatch",
                    role,
                    key,
                    message.model_dump_json().encode(),
                    CONTENT_TYPE,
                    message.type,
                    str(uuid4()),
                )
            )
    rng.shuffle(poison)
    return poison


def _signature_poison(request: Envelope) -> list[Poison]:
    """A valid request, sent unsigned, altered after signing, under a key nobody issued, signed long ago
    or in the future, and with another portal's key: each refused before parsing, with its reason."""
    keyring = tool_keyring(Settings())[0]
    web, app = keyring.current_for("portal-web"), keyring.current_for("portal-app")
    stranger = SigningKey("stolen-key-1", "portal-web", b"s" * 48)
    raw = request.model_dump_json().encode()
    altered = raw.replace(request.payload.appointment_id.encode(), b"someone-elses-appt", 1)
    now = int(time.time())
    cases = [
        ("unsigned", "signature_missing", raw, None),
        ("altered", "signature_invalid", altered, signature_headers(raw, web, signed_at=now)),
        ("unknown_key", "signature_unknown_key", raw, signature_headers(raw, stranger, signed_at=now)),
        ("expired", "signature_expired", raw, signature_headers(raw, web, signed_at=now - 3 * 86_400)),
        ("future", "signature_expired", raw, signature_headers(raw, web, signed_at=now + 3_600)),
        ("other_portals_key", "signature_producer_mismatch", raw, signature_headers(raw, app, signed_at=now)),
    ]
    return [
        Poison(
            f"request:signature_{kind}",
            reason,
            "requests",
            "modify.requested",
            body,
            CONTENT_TYPE,
            request.type,
            str(uuid4()),
            app_id=None,
            headers=headers,
        )
        for kind, reason, body, headers in cases
    ]


async def publish(broker: Broker, item: Poison) -> None:
    await broker.publish(
        broker.topology.exchange(item.exchange_role),
        item.routing_key,
        aio_pika.Message(
            item.body,
            content_type=item.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=item.message_id,
            correlation_id=f"poison-{item.message_id[:8]}",
            type=item.amqp_type,
            app_id=item.app_id,
            headers=item.headers,
        ),
    )
