"""Models a standard generator (datamodel-code-generator) builds from contracts/asyncapi.json carry every
fixture message through a round trip that our decoder still accepts, constants (type, schema_version)
included, and refuse what the contract refuses."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel, ValidationError

from contracts.asyncapi import DEFAULT_OUTPUT
from contracts.decoding import decode
from contracts.envelope import Envelope
from contracts.registry import message_class
from tests.factories import modify_outcome, one_of_each

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GENERATOR = Path(sys.executable).with_name("datamodel-codegen")


def fixture_messages() -> list[tuple[str, dict]]:
    """(where, message) for every fixture that carries a message as JSON (not raw bytes)."""
    found = []
    for path in sorted(FIXTURES.rglob("*.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        for index, item in enumerate(raw if isinstance(raw, list) else [raw], start=1):
            message = item.get("message") if isinstance(item, dict) else None
            # malformed/ holds messages the contract refuses on purpose (unknown type, version, ...)
            if isinstance(message, dict) and isinstance(decode(json.dumps(message).encode()), Envelope):
                found.append((f"{path.relative_to(FIXTURES)}#{index}", item["message"]))
    return found


MESSAGES = fixture_messages()


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> ModuleType:
    """The components' schemas as one JSON Schema document, through the generator's command line."""
    work = tmp_path_factory.mktemp("generated")
    document = json.loads(DEFAULT_OUTPUT.read_text(encoding="utf-8"))
    schema = json.dumps(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": document["components"]["schemas"],
        }
    ).replace("#/components/schemas/", "#/$defs/")
    (work / "schemas.json").write_text(schema, encoding="utf-8")
    result = subprocess.run(
        [
            str(GENERATOR),
            "--input",
            str(work / "schemas.json"),
            "--input-file-type",
            "jsonschema",
            "--output",
            str(work / "appt_models.py"),
            "--output-model-type",
            "pydantic_v2.BaseModel",
            "--target-python-version",
            "3.11",
            "--formatters",
            "builtin",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    spec = importlib.util.spec_from_file_location("appt_models", work / "appt_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)  # a NameError here is what the generators hit
    return module


def ours(message: dict) -> type[Envelope]:
    cls = message_class(message["type"], message["schema_version"])
    assert cls is not None, message["type"]
    return cls


def test_the_fixtures_hold_messages_of_many_types() -> None:
    assert len({(m["type"], m["schema_version"]) for _, m in MESSAGES}) >= 5


def test_every_message_class_has_a_generated_model_of_the_same_name(generated: ModuleType) -> None:
    document = json.loads(DEFAULT_OUTPUT.read_text(encoding="utf-8"))
    for key in document["components"]["messages"]:
        if key != "DeadLetter":
            assert issubclass(getattr(generated, key), BaseModel), key


@pytest.mark.parametrize(("where", "message"), MESSAGES, ids=[where for where, _ in MESSAGES])
def test_a_fixture_message_round_trips_through_the_generated_model(
    generated: ModuleType, where: str, message: dict
) -> None:
    model = getattr(generated, ours(message).__name__)
    dumped = model.model_validate_json(json.dumps(message)).model_dump_json(by_alias=True).encode()

    decoded = decode(dumped, property_type=message["type"])

    assert isinstance(decoded, Envelope), decoded
    assert decoded == decode(json.dumps(message).encode(), property_type=message["type"])


@pytest.mark.parametrize("message", [*one_of_each(), modify_outcome()], ids=lambda m: m.type)
def test_every_message_type_and_the_reply_round_trip_through_the_generated_models(
    generated: ModuleType, message: Envelope
) -> None:
    body = message.model_dump_json()
    dumped = (
        getattr(generated, type(message).__name__).model_validate_json(body).model_dump_json(by_alias=True)
    )
    assert type(message).model_validate_json(dumped, strict=True) == message


def test_a_generated_publisher_sends_the_schema_version_constant(generated: ModuleType) -> None:
    _, request = next((w, m) for w, m in MESSAGES if m["type"] == "modify.requested")
    model = generated.ModifyRequested
    assert model.model_fields["schema_version"].annotation.__args__ == (1,)
    body = json.loads(model.model_validate(request).model_dump_json(by_alias=True))
    assert body["schema_version"] == 1 and body["type"] == "modify.requested"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schema_version": 2}, "schema_version"),
        ({"surprise": 1}, "surprise"),
        ({"tenant_id": "A B"}, "tenant_id"),
    ],
)
def test_the_generated_model_refuses_what_the_contract_refuses(
    generated: ModuleType, change: dict, field: str
) -> None:
    _, request = next((w, m) for w, m in MESSAGES if m["type"] == "modify.requested")
    with pytest.raises(ValidationError, match=field):
        generated.ModifyRequested.model_validate({**request, **change})


DOCUMENT = json.loads(DEFAULT_OUTPUT.read_text(encoding="utf-8"))
SCHEMAS = DOCUMENT["components"]["schemas"]


def test_schema_names_are_class_names_and_each_title_is_unique() -> None:
    for name, schema in SCHEMAS.items():
        assert name.isidentifier() and "__" not in name, name
        assert schema["title"] == name
    property_titles = [
        prop["title"]
        for schema in SCHEMAS.values()
        for prop in schema.get("properties", {}).values()
        if "enum" in prop and "title" in prop
    ]
    assert len(property_titles) == len(set(property_titles)) and not set(property_titles) & set(SCHEMAS)


def walk(node: object):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def test_every_constant_is_also_an_enum_of_its_one_value() -> None:
    constants = [node for node in walk(SCHEMAS) if "const" in node]
    assert constants and all(node.get("enum") == [node["const"]] for node in constants)
    assert SCHEMAS["ModifyRequested"]["properties"]["schema_version"]["enum"] == [1]
    assert "schema_version" in SCHEMAS["ModifyRequested"]["required"]


def test_the_reply_channel_is_the_reply_of_a_modify_request() -> None:
    reply = DOCUMENT["operations"]["portal_send_modify_requested"]["reply"]
    channel = DOCUMENT["channels"][reply["channel"]["$ref"].rsplit("/", 1)[1]]
    assert reply["address"]["location"] == "$message.payload#/payload/reply_to"
    assert channel["address"] is None  # known at runtime only: the request's reply_to
    assert channel["bindings"]["amqp"]["exchange"] == {
        "name": "appt.replies",
        "type": "direct",
        "durable": True,
        "autoDelete": False,
        "vhost": "/",
    }
    assert list(channel["messages"]) == ["ModifyOutcome"]
    assert DOCUMENT["components"]["messages"]["ModifyOutcome"]["name"] == "modify.outcome"
    senders = [
        name
        for name, op in DOCUMENT["operations"].items()
        if op["channel"] == reply["channel"] and op["action"] == "send"
    ]
    assert senders == ["portal_sync_send_modify_outcome"]
