"""Message fixtures: the file format, loading, validation against the contracts, replay-time rewrites.

Pure: reads fixture files, never the network. docs/fixtures.md describes the format for people.

A fixture file holds one fixture object or a JSON array of them. A fixture is one message as it goes on
the wire: where it is published (exchange role + routing key), its AMQP properties, and its body (a JSON
envelope, or raw text / base64 bytes for a message that is deliberately not one). A fixture marked
`expect.dead_letter` is intentionally invalid: validation checks it fails with exactly that reason.
"""

import base64
import gzip
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from uuid import UUID, uuid4, uuid5

import aio_pika
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from contracts.decoding import CONTENT_TYPE, DecodeFailure, decode, encode
from contracts.envelope import Envelope
from contracts.portal_v1 import ModifyRequested
from contracts.reasons import DeadLetterReason
from contracts.routes import topic_matches
from contracts.signing import PORTAL_ROLE
from contracts.types import TenantId
from infra.topology import EXCHANGE_ROLES, SUBSCRIPTIONS
from workers.runtime.broker import to_amqp

FORMAT_VERSION = 1
# Ids derived on replay (a rewritten tenant) come from this namespace, so the same rewrite gives the same id.
REPLAY_ID_NAMESPACE = UUID("5b0f4f0e-3c4e-4d59-9a43-6f1e2f7c9a10")
REQUEST_STATUSES = ("pending", "awaiting_approval", "rejected", "completed", "failed")
# Dead-letter reasons a message alone causes (decoding, or a valid message where no consumer handles it);
# the others depend on how a worker behaves, so a fixture can't promise them.
FROM_A_MESSAGE = frozenset(
    {
        DeadLetterReason.MESSAGE_TOO_LARGE,
        DeadLetterReason.WRONG_CONTENT_TYPE,
        DeadLetterReason.MALFORMED_JSON,
        DeadLetterReason.UNKNOWN_MESSAGE_TYPE,
        DeadLetterReason.UNSUPPORTED_SCHEMA_VERSION,
        DeadLetterReason.SCHEMA_VIOLATION,
        DeadLetterReason.PROPERTIES_MISMATCH,
        DeadLetterReason.ROUTE_TYPE_MISMATCH,  # a valid message published on another type's route
        DeadLetterReason.SIGNATURE_MISSING,  # a portal message with `signed: false`
    }
)
_TENANT_PATTERN = re.compile(TenantId.__metadata__[0].pattern)
# An ISO 8601 date-time with a timezone: the only strings a time shift touches.
_AWARE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Properties(_Model):
    """AMQP basic properties. For a valid message replay publishes what our runtime derives from the body
    (`to_amqp`); these are checked (content_type, type) and otherwise kept for the record. For a malformed
    one they are published as given (always persistent)."""

    content_type: str | None = CONTENT_TYPE
    content_encoding: str | None = None
    delivery_mode: int | None = 2
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: datetime | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    headers: dict[str, Any] = Field(default_factory=dict)


class Expect(_Model):
    """What should happen: dead-lettered with a reason, or (for a modify request) the request's outcome."""

    dead_letter: DeadLetterReason | None = None
    request_status: Literal[REQUEST_STATUSES] | None = None  # type: ignore[valid-type]
    reason_code: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "Expect":
        if self.dead_letter is not None and (self.request_status or self.reason_code):
            raise ValueError("expect either dead_letter or request_status/reason_code, not both")
        if self.dead_letter is None and self.request_status is None:
            raise ValueError("expect needs dead_letter or request_status")
        if self.dead_letter is not None and self.dead_letter not in FROM_A_MESSAGE:
            raise ValueError(f"dead_letter {self.dead_letter.value} depends on a worker, not on the message")
        return self


BODY_FIELDS = ("message", "body", "body_base64", "body_gzip_base64")


class Fixture(_Model):
    fixture_format: Literal[1]
    description: str | None = None
    anchor: AwareDatetime | None = Field(
        default=None, description="The 'now' the times were written for; replay shifts them by now - anchor."
    )
    exchange: Literal[EXCHANGE_ROLES] | None = None  # type: ignore[valid-type]
    routing_key: str | None = Field(default=None, max_length=255)
    properties: Properties | None = None
    message: Any = None
    body: str | None = None
    body_base64: str | None = None
    body_gzip_base64: str | None = None
    expect: Expect | None = None
    signed: bool = Field(
        default=True,
        description=(
            "A message to the portals' exchange is signed at replay with its producer's current key (the "
            "message's producer; for a raw body properties.app_id, else the keyring's first producer), "
            "unless it already carries signature headers. false: published unsigned (refused as "
            "signature_missing)."
        ),
    )

    @model_validator(mode="after")
    def _one_body(self) -> "Fixture":
        given = [name for name in BODY_FIELDS if name in self.model_fields_set]
        if len(given) != 1:
            got = ", ".join(given) or "none"
            raise ValueError(f"give exactly one of {', '.join(BODY_FIELDS)} (got {got})")
        if (self.exchange is None) != (self.routing_key is None):
            raise ValueError("give exchange and routing_key together (or neither, to derive both)")
        return self

    def body_bytes(self) -> bytes:
        if "message" in self.model_fields_set:
            return json.dumps(self.message, ensure_ascii=False, separators=(",", ":")).encode()
        if self.body is not None:
            return self.body.encode()
        if self.body_base64 is not None:
            return base64.b64decode(self.body_base64, validate=True)
        return gzip.decompress(base64.b64decode(self.body_gzip_base64 or "", validate=True))

    @property
    def props(self) -> Properties:
        return self.properties or Properties()

    @property
    def expected_dead_letter(self) -> DeadLetterReason | None:
        return self.expect.dead_letter if self.expect else None


@dataclass(frozen=True)
class Source:
    """Where a fixture came from: a file, and its position (1-based) when the file holds a list."""

    path: Path
    index: int | None = None

    def __str__(self) -> str:
        return f"{self.path}#{self.index}" if self.index is not None else str(self.path)


@dataclass(frozen=True)
class Checked:
    """One fixture after validation. `problem` is None when it is what it says it is: a valid message, or a
    malformed one that fails exactly as its `expect.dead_letter` says."""

    source: Source
    phase: int  # the file's position in the run: replay lets each file's messages settle before the next
    fixture: Fixture | None = None
    body: bytes = b""
    message: Envelope | None = None
    failure: DecodeFailure | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def malformed(self) -> bool:
        return self.fixture is not None and self.fixture.expected_dead_letter is not None

    @property
    def label(self) -> str:
        """How the summary counts it: the message type, or `malformed:<reason>`."""
        if self.fixture is not None and self.fixture.expected_dead_letter is not None:
            return f"malformed:{self.fixture.expected_dead_letter.value}"
        return self.message.type if self.message is not None else "invalid"

    @property
    def routing(self) -> tuple[str, str] | None:
        if self.fixture is not None and self.fixture.exchange is not None:
            return self.fixture.exchange, self.fixture.routing_key or ""
        if self.message is not None:
            return type(self.message).exchange_role, type(self.message).routing_key
        return None


# --- loading ---------------------------------------------------------------------------------------


class FixturePathError(Exception):
    """A path given on the command line does not exist or holds no fixture file."""


def fixture_files(paths: Sequence[Path]) -> list[Path]:
    """Files in the given order; a folder contributes its *.json files, recursively, sorted by path
    (hidden files and folders are skipped)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*.json")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise FixturePathError(f"{path}: no *.json fixture files in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FixturePathError(f"{path}: no such file or folder")
    return files


def _format_problem(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "<fixture>"
        parts.append(f"{where}: {item['msg']}")
    return "fixture format: " + "; ".join(parts)


def load_file(path: Path, phase: int) -> list[Checked]:
    """Every fixture of one file, validated. A file that is not a fixture file is one problem."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return [Checked(Source(path), phase, problem=f"cannot read: {exc}")]
    except json.JSONDecodeError as exc:
        return [Checked(Source(path), phase, problem=f"fixture file is not valid JSON: {exc}")]
    if isinstance(raw, list):
        if not raw:
            return [Checked(Source(path), phase, problem="fixture file holds an empty list")]
        items = [(Source(path, i), item) for i, item in enumerate(raw, start=1)]
    else:
        items = [(Source(path), raw)]
    return [validate(source, phase, item) for source, item in items]


def load(paths: Sequence[Path]) -> list[Checked]:
    """Every fixture under `paths`, in replay order (raises FixturePathError for a missing path)."""
    checked: list[Checked] = []
    for phase, path in enumerate(fixture_files(paths)):
        checked.extend(load_file(path, phase))
    return checked


# --- validation ------------------------------------------------------------------------------------


def validate(source: Source, phase: int, raw: Any) -> Checked:
    """One fixture against the fixture format and then the contracts (`contracts.decoding.decode`)."""
    if not isinstance(raw, dict) or "fixture_format" not in raw:
        return Checked(source, phase, problem='not a fixture: expected an object with "fixture_format": 1')
    try:
        fixture = Fixture.model_validate(raw)
    except ValidationError as exc:
        return Checked(source, phase, problem=_format_problem(exc))
    try:
        body = fixture.body_bytes()
    except (ValueError, OSError, EOFError) as exc:  # bad base64 or gzip
        return Checked(source, phase, fixture, problem=f"body cannot be read: {exc}")
    props = fixture.props
    result = decode(body, content_type=props.content_type, property_type=props.type)
    checked = Checked(source, phase, fixture, body)
    expected = fixture.expected_dead_letter
    if isinstance(result, DecodeFailure):
        return _check_undecodable(checked, result, expected)
    return _check_decoded(checked, result, expected)


def _check_undecodable(
    checked: Checked, failure: DecodeFailure, expected: DeadLetterReason | None
) -> Checked:
    fixture = checked.fixture
    assert fixture is not None
    problem = None
    if expected is None:
        problem = f"{failure.reason.value}: {failure.detail}"
    elif failure.reason != expected:
        problem = (
            f"marked expect.dead_letter={expected.value}, but it fails with "
            f"{failure.reason.value}: {failure.detail}"
        )
    elif fixture.exchange is None:
        problem = "a malformed fixture needs exchange and routing_key (they cannot come from its body)"
    return Checked(checked.source, checked.phase, fixture, checked.body, None, failure, problem)


def _check_decoded(checked: Checked, message: Envelope, expected: DeadLetterReason | None) -> Checked:
    fixture = checked.fixture
    assert fixture is not None
    cls = type(message)
    own_route = (cls.exchange_role, cls.routing_key)
    given = (fixture.exchange, fixture.routing_key) if fixture.exchange is not None else own_route
    problem = None
    if expected == DeadLetterReason.ROUTE_TYPE_MISMATCH:
        if given == own_route:
            problem = (
                f"marked expect.dead_letter=route_type_mismatch, but a {message.type} on "
                f"{given[0]}/{given[1]} is where it belongs: publish it somewhere its consumers don't handle"
            )
    elif expected == DeadLetterReason.SIGNATURE_MISSING:
        if fixture.signed or cls.exchange_role != PORTAL_ROLE:
            problem = (
                "marked expect.dead_letter=signature_missing: give `signed: false` and a message portals "
                "publish (it is signed at replay otherwise)"
            )
    elif expected is not None:
        problem = f"marked expect.dead_letter={expected.value}, but it is a valid {message.type}"
    elif given != own_route:
        problem = (
            f"a {message.type} v{message.schema_version} is published to {own_route[0]}/{own_route[1]}, "
            f"not {given[0]}/{given[1]}: fix the routing, or mark it "
            'expect.dead_letter "route_type_mismatch"'
        )
    elif fixture.expect is not None and not isinstance(message, ModifyRequested):
        problem = "expect.request_status applies to modify.requested messages only"
    return Checked(checked.source, checked.phase, fixture, checked.body, message, None, problem)


# --- rewriting for a replay ------------------------------------------------------------------------


class RewriteError(ValueError):
    pass


@dataclass(frozen=True)
class Rewrite:
    """How a replay changes the messages. The default changes nothing but the times (see `shift_times`)."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    shift_times: bool = True
    fresh_ids: bool = False
    tenant_map: dict[str, str] = field(default_factory=dict)
    tenant_suffix: str = ""

    def __post_init__(self) -> None:
        if self.tenant_suffix and not re.fullmatch(r"[a-z0-9-]+", self.tenant_suffix):
            raise RewriteError(
                f"--tenant-suffix {self.tenant_suffix!r}: use lowercase letters, digits and '-' only"
            )

    def tenant(self, tenant_id: str) -> str:
        new = self.tenant_map.get(tenant_id, tenant_id) + self.tenant_suffix
        if not _TENANT_PATTERN.match(new):
            raise RewriteError(
                f"tenant {tenant_id!r} would become {new!r}, which is not a valid tenant id "
                "(lowercase letters, digits and '-', at most 63 characters)"
            )
        return new

    def delta(self, anchor: datetime | None) -> timedelta:
        if not self.shift_times or anchor is None:
            return timedelta(0)
        return timedelta(seconds=int((self.now - anchor).total_seconds()))


def parse_tenant_map(pairs: Iterable[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise RewriteError(f"--tenant takes OLD=NEW, got {pair!r}")
        mapping[old] = new
    return mapping


def shift_times(value: Any, delta: timedelta) -> Any:
    """Every timezone-aware ISO 8601 string in a JSON value moved by `delta` (offsets and 'Z' kept)."""
    if not delta:
        return value
    if isinstance(value, dict):
        return {k: shift_times(v, delta) for k, v in value.items()}
    if isinstance(value, list):
        return [shift_times(v, delta) for v in value]
    if isinstance(value, str) and _AWARE_TIME.match(value):
        moved = (datetime.fromisoformat(value) + delta).isoformat()
        return moved.replace("+00:00", "Z") if value.endswith("Z") else moved
    return value


def derived_id(message_id: str, tenant_id: str) -> str:
    """The id a message gets when replayed under another tenant: stable, so a second replay dedupes."""
    return str(uuid5(REPLAY_ID_NAMESPACE, f"{message_id}|{tenant_id}"))


@dataclass(frozen=True)
class Outgoing:
    """A checked fixture ready to publish."""

    checked: Checked
    exchange_role: str
    routing_key: str
    amqp: aio_pika.Message
    message: Envelope | None  # the rewritten message; None for a malformed one

    @property
    def message_id(self) -> str | None:
        return self.amqp.message_id


def prepare(checked: Sequence[Checked], rewrite: Rewrite) -> tuple[list[Outgoing], list[Checked]]:
    """Apply `rewrite` to every valid fixture and re-validate it; malformed ones keep their bytes (only a
    fresh message id when asked). Returns what to publish and the fixtures the rewrite made invalid."""
    fresh: dict[str, str] = {}
    if rewrite.fresh_ids:
        for item in checked:
            if item.message is not None:
                fresh[str(item.message.message_id)] = str(uuid4())
    outgoing: list[Outgoing] = []
    broken: list[Checked] = []
    for item in checked:
        assert item.ok and item.fixture is not None
        route = item.routing
        assert route is not None
        if item.malformed:
            outgoing.append(Outgoing(item, *route, _raw_amqp(item, rewrite), None))
            continue
        try:
            message = _rewritten(item, rewrite, fresh)
        except RewriteError as exc:
            broken.append(Checked(item.source, item.phase, item.fixture, item.body, problem=str(exc)))
            continue
        outgoing.append(Outgoing(item, *route, to_amqp(message), message))
    return outgoing, broken


def _rewritten(item: Checked, rewrite: Rewrite, fresh: dict[str, str]) -> Envelope:
    assert item.message is not None and item.fixture is not None
    data = shift_times(json.loads(encode(item.message)), rewrite.delta(item.fixture.anchor))
    old_tenant = data["tenant_id"]
    tenant = rewrite.tenant(old_tenant)
    data["tenant_id"] = tenant
    for key in ("message_id", "causation_id"):
        old = data.get(key)
        if old is None:
            continue
        if old in fresh:
            data[key] = fresh[old]
        elif tenant != old_tenant and not (rewrite.fresh_ids and key == "message_id"):
            data[key] = derived_id(old, tenant)
    result = decode(json.dumps(data).encode())
    if isinstance(result, DecodeFailure):
        raise RewriteError(f"invalid after rewriting: {result.reason.value}: {result.detail}")
    return result


def _raw_amqp(item: Checked, rewrite: Rewrite) -> aio_pika.Message:
    props = item.fixture.props if item.fixture else Properties()
    timestamp = props.timestamp
    if timestamp is not None and timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    return aio_pika.Message(
        item.body,
        headers=dict(props.headers),
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=props.priority,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        expiration=None,  # a replayed fixture must not expire before a worker saw it
        message_id=str(uuid4()) if rewrite.fresh_ids else (props.message_id or _body_id(item)),
        timestamp=timestamp,
        type=props.type,
        user_id=props.user_id,
        app_id=props.app_id,
    )


def _body_id(item: Checked) -> str | None:
    """A decodable (misrouted) message without a message_id property still carries its body's id."""
    return str(item.message.message_id) if item.message is not None else None


# --- routing: who consumes a message ----------------------------------------------------------------


def consumers_of(exchange_role: str, routing_key: str) -> list[str]:
    """The workers whose queue a message published there reaches."""
    return [
        worker
        for worker, bindings in SUBSCRIPTIONS.items()
        if any(
            b.exchange_role == exchange_role and topic_matches(b.routing_key, routing_key) for b in bindings
        )
    ]


# --- writing ---------------------------------------------------------------------------------------


def fixture_of(
    message: Envelope,
    *,
    anchor: datetime | None = None,
    description: str | None = None,
    expect: dict | None = None,
) -> dict:
    """A valid message as a fixture object (properties are derived from the body on replay)."""
    data: dict[str, Any] = {"fixture_format": FORMAT_VERSION}
    if description:
        data["description"] = description
    if anchor is not None:
        data["anchor"] = iso(anchor)
    cls = type(message)
    data["exchange"], data["routing_key"] = cls.exchange_role, cls.routing_key
    data["message"] = json.loads(encode(message))
    if expect:
        data["expect"] = expect
    return data


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def dump(value: Any, *, compact: bool = False) -> str:
    """A fixture file's text: indented, or (compact) one fixture per line for big generated lists."""
    if compact and isinstance(value, list):
        lines = [json.dumps(item, ensure_ascii=False, separators=(",", ":")) for item in value]
        return "[\n" + ",\n".join(lines) + "\n]\n"
    return json.dumps(value, ensure_ascii=False, indent=2) + "\n"
