"""The committed AsyncAPI document: current with the models, complete, and a well-formed AsyncAPI 3.0 file."""

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts import asyncapi
from contracts.decoding import encode
from contracts.envelope import Envelope
from contracts.reasons import CUSTOMER_TEXT, DeadLetterReason, FailureCode, RejectionCode
from contracts.registry import MESSAGE_CLASSES, type_name
from infra.topology import WORKERS, build
from tests.factories import one_of_each

DOCUMENT = asyncapi.build_document()
TOPOLOGY = build()
# Component keys per the AsyncAPI 3.0 JSON schema; channel, operation and message keys kept to the
# identifier-safe subset so code generators can name things after them.
COMPONENT_KEY = re.compile(r"^[\w.\-]+$")
IDENTIFIER = re.compile(r"^[A-Za-z0-9_\-]+$")


def resolve(pointer: str) -> object:
    """Follow a local JSON pointer ("#/a/b") inside the document; KeyError if it leads nowhere."""
    assert pointer.startswith("#/"), f"not a local reference: {pointer}"
    node: object = DOCUMENT
    for raw in pointer[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), f"{pointer}: {part!r} is inside a non-object"
        node = node[part]
    return node


def refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def channel_of(cls: type[Envelope]) -> dict:
    matches = [
        channel
        for channel in DOCUMENT["channels"].values()
        if channel["address"] == cls.routing_key
        and channel["bindings"]["amqp"]["exchange"]["name"] == TOPOLOGY.exchange(cls.exchange_role)
    ]
    assert len(matches) == 1, f"{cls.__name__}: expected one channel, found {len(matches)}"
    return matches[0]


def operations_for(cls: type[Envelope], action: str) -> dict[str, dict]:
    wanted = f"#/components/messages/{cls.__name__}"
    return {
        key: op
        for key, op in DOCUMENT["operations"].items()
        if op["action"] == action and any(resolve(ref["$ref"]) == {"$ref": wanted} for ref in op["messages"])
    }


# --- freshness ------------------------------------------------------------------------------------


def test_committed_document_is_current() -> None:
    committed = asyncapi.DEFAULT_OUTPUT.read_text(encoding="utf-8")
    assert committed == asyncapi.render(), (
        "contracts/asyncapi.json is stale: run `python -m contracts.asyncapi`"
    )


def test_render_is_deterministic_json_with_a_trailing_newline() -> None:
    text = asyncapi.render()
    assert text == asyncapi.render()
    assert text.endswith("}\n")
    assert json.loads(text) == DOCUMENT


def test_check_flags_a_stale_file_then_passes_once_written(tmp_path: Path, capsys) -> None:
    target = tmp_path / "asyncapi.json"
    assert asyncapi.main(["--check", "--output", str(target)]) == 1  # missing counts as stale
    target.write_text("{}\n", encoding="utf-8")
    assert asyncapi.main(["--check", "--output", str(target)]) == 1
    assert "is stale: run `python -m contracts.asyncapi" in capsys.readouterr().err
    assert asyncapi.main(["--output", str(target)]) == 0
    assert asyncapi.main(["--check", "--output", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == asyncapi.render()


# --- AsyncAPI 3.0 shape ---------------------------------------------------------------------------


def test_top_level_shape() -> None:
    assert DOCUMENT["asyncapi"] == "3.0.0"
    allowed = {
        "asyncapi",
        "id",
        "info",
        "servers",
        "defaultContentType",
        "channels",
        "operations",
        "components",
    }
    assert all(key in allowed or key.startswith("x-") for key in DOCUMENT)
    assert DOCUMENT["info"]["title"] == "Appointment self-service messaging"
    assert DOCUMENT["info"]["version"] == asyncapi.CONTRACT_VERSION
    assert re.fullmatch(r"\d+\.\d+\.\d+", asyncapi.CONTRACT_VERSION)
    for word in ("policy_gate", "modify_handler", "portal_sync", "x-dead-letter-reason"):
        assert word in DOCUMENT["info"]["description"]
    for server in DOCUMENT["servers"].values():
        assert server["protocol"] == "amqp" and server["host"]


def test_every_ref_resolves_inside_the_document() -> None:
    found = list(refs(DOCUMENT))
    assert len(found) > 50
    for ref in found:
        resolve(ref)


def test_keys_are_safe_identifiers() -> None:
    for section in ("schemas", "messages"):
        for key in DOCUMENT["components"][section]:
            assert COMPONENT_KEY.match(key), key
    for key in [*DOCUMENT["channels"], *DOCUMENT["operations"]]:
        assert IDENTIFIER.match(key), key
    for channel in DOCUMENT["channels"].values():
        for key in channel["messages"]:
            assert IDENTIFIER.match(key), key


def test_operations_are_well_formed() -> None:
    for key, op in DOCUMENT["operations"].items():
        assert op["action"] in ("send", "receive"), key
        channel_ref = op["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/"), key
        # An operation's messages must be a subset of its channel's messages.
        for message in op["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), (key, message)
        assert op["bindings"]["amqp"]["bindingVersion"] == asyncapi.AMQP_BINDING_VERSION


def test_channels_are_amqp_routing_keys_on_declared_durable_exchanges() -> None:
    exchanges = {spec.name: spec.type.value for spec in TOPOLOGY.exchanges}
    for key, channel in DOCUMENT["channels"].items():
        amqp = channel["bindings"]["amqp"]
        assert amqp["is"] == "routingKey", key
        assert exchanges[amqp["exchange"]["name"]] == amqp["exchange"]["type"], key
        assert amqp["exchange"]["durable"] is True
        assert channel["messages"], key


def test_schemas_use_asyncapi_discriminators_and_require_the_tag() -> None:
    """AsyncAPI's discriminator is a property name; pydantic's OpenAPI-style object is not valid there."""
    found = 0
    for node in _schema_nodes(DOCUMENT["components"]["schemas"]):
        if "discriminator" in node:
            found += 1
            assert isinstance(node["discriminator"], str)
            for variant in node["oneOf"]:
                assert node["discriminator"] in resolve(variant["$ref"])["required"]
    assert found >= 2  # ModifyRequestedPayload.change and ModifyApprovedPayload.change


def _schema_nodes(node: object) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _schema_nodes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _schema_nodes(item)


def test_no_defs_left_behind() -> None:
    assert "$defs" not in json.dumps(DOCUMENT)


# --- completeness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=type_name)
def test_every_message_class_is_documented_with_its_route(cls: type[Envelope]) -> None:
    message = DOCUMENT["components"]["messages"][cls.__name__]
    assert message["name"] == type_name(cls)
    assert message["summary"] == cls.summary
    assert message["contentType"] == "application/json"
    assert message["correlationId"]["location"].startswith("$message.")
    assert message["bindings"]["amqp"]["messageType"] == type_name(cls)
    payload = resolve(message["payload"]["$ref"])
    assert payload["properties"]["type"]["const"] == type_name(cls)
    assert {"type", "schema_version", "payload"} <= set(payload["required"])
    assert message["headers"]["properties"]["x-message-type"]["const"] == type_name(cls)

    channel = channel_of(cls)
    assert channel["messages"][cls.__name__] == {"$ref": f"#/components/messages/{cls.__name__}"}


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=type_name)
def test_each_message_has_its_declared_publishers(cls: type[Envelope]) -> None:
    sends = operations_for(cls, "send")
    assert list(sends) == [
        f"{publisher}_send_{asyncapi.operation_subject(cls)}"
        for publisher in asyncapi.publishers_of(type_name(cls))
    ]


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=type_name)
def test_receive_operations_follow_the_topology(cls: type[Envelope]) -> None:
    expected = {
        queue.worker
        for queue in TOPOLOGY.queues
        if queue.worker is not None
        for binding in queue.bindings
        if binding.exchange_role == cls.exchange_role
        and asyncapi.topic_matches(binding.routing_key, cls.routing_key)
    }
    receivers = {key.split("_receive_")[0] for key in operations_for(cls, "receive")}
    assert receivers == expected
    for worker in expected:
        assert f"`{TOPOLOGY.queue_of(worker).name}`" in channel_of(cls)["description"]


def test_every_message_has_a_consumer_of_ours() -> None:
    """Except the live feed and replies, which are for others (a portal's own queue)."""
    for cls in MESSAGE_CLASSES:
        if cls.exchange_role not in ("feed", "reply"):
            assert operations_for(cls, "receive"), cls.__name__


def test_the_live_feed_says_how_to_bind_to_it() -> None:
    (feed,) = [
        c for c in DOCUMENT["channels"].values() if c["address"] == "{tenant_id}.{customer_id}.{job_id}"
    ]
    assert feed["bindings"]["amqp"]["exchange"]["name"] == TOPOLOGY.exchange("feed")


def test_every_worker_documents_its_dead_letters() -> None:
    for worker in WORKERS:
        op = DOCUMENT["operations"][f"{worker}_send_dead_letter"]
        channel = resolve(op["channel"]["$ref"])
        assert channel["address"] == TOPOLOGY.queue_of(worker).dead_letter_queue
        assert channel["bindings"]["amqp"]["exchange"]["name"] == TOPOLOGY.dead_letter_exchange
    headers = DOCUMENT["components"]["messages"]["DeadLetter"]["headers"]["properties"]
    assert headers["x-dead-letter-reason"]["enum"] == [str(reason) for reason in DeadLetterReason]


@pytest.mark.parametrize(
    ("topic", "key", "matches"),
    [
        ("#", "modify.rejected", True),
        ("#", "a", True),
        ("modify.requested", "modify.requested", True),
        ("modify.requested", "modify.approved", False),
        ("modify.*", "modify.failed", True),
        ("*", "modify.failed", False),
        ("office.#", "office.appointment.recorded", True),
        ("office.#", "office", True),
        ("#.recorded", "office.appointment.recorded", True),
        ("*.recorded", "office.appointment.recorded", False),
    ],
)
def test_topic_matching(topic: str, key: str, matches: bool) -> None:
    assert asyncapi.topic_matches(topic, key) is matches


def test_payload_schemas_describe_real_messages() -> None:
    """Top-level fields of a real encoded message fit the documented schema (no JSON Schema library here)."""
    for message in one_of_each():
        schema = resolve(f"#/components/schemas/{type(message).__name__}")
        body = json.loads(encode(message))
        assert set(body) <= set(schema["properties"])
        assert set(schema["required"]) <= set(body)
        payload = resolve(schema["properties"]["payload"]["$ref"])
        assert set(body["payload"]) <= set(payload["properties"])
        assert set(payload.get("required", ())) <= set(body["payload"])


def test_reason_codes_are_documented() -> None:
    codes = DOCUMENT["x-reason-codes"]
    for enum, key in ((RejectionCode, "RejectionCode"), (FailureCode, "FailureCode")):
        documented = codes[key]["codes"]
        assert list(documented) == [str(code) for code in enum]
        for code in enum:
            assert documented[code]["customerText"] == CUSTOMER_TEXT[code]
            assert "{" not in documented[code]["example"]
    dead = codes["DeadLetterReason"]["codes"]
    assert list(dead) == [str(reason) for reason in DeadLetterReason]
    assert all(entry["description"] for entry in dead.values())
