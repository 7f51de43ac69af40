"""Dead letters of a namespace: read them without removing them, replay them where they came from, purge.

Reading takes every message of the selected dead-letter queues with basic.get and no ack, so they stay
owned by the queue; whatever is not replayed or purged is handed back (nack, requeue) when done.
The auditor reads its own copies (`<dead queue>.audit`, infra/topology.py) the same way: its user may
not read the real dead-letter queues, because reading a queue in RabbitMQ includes removing from it.
Replay publishes confirmed and mandatory, and only then acks the dead letter: a failure leaves it in place.
A dead letter goes back only by a route of its dead-letter queue's own worker (contracts/routes.py), and
only when its body is the message type that route carries: a replay can never put a message somewhere a
publisher could not, and the worker checks it again like any delivery (signature included).
"""

import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiormq.exceptions import ChannelNotFoundEntity

from apptctl.probe import missing_exchanges
from contracts.decoding import DecodeFailure, decode
from contracts.routes import SUBSCRIPTIONS, RouteTable
from infra.topology import AUDIT, DEAD_LETTER, Topology, audit_copy_of
from workers.runtime.broker import Broker

MAX_SWEEP = 10_000  # dead letters read per queue in one command
SAMPLE_IDS = 3

REASON = "x-dead-letter-reason"
DETAIL = "x-dead-letter-detail"
ORIGINAL_EXCHANGE = "x-original-exchange"
ORIGINAL_ROUTING_KEY = "x-original-routing-key"
DEAD_LETTERED_AT = "x-dead-lettered-at"
REPLAYED_FROM = "x-replayed-from"
REPLAY_COUNT = "x-replay-count"
# Headers that describe a dead-lettering (ours and the broker's); a replayed message carries none of them.
DEAD_LETTER_HEADER_PREFIXES = (
    "x-dead-letter-",
    "x-original-",
    "x-dead-lettered-",
    "x-first-death-",
    "x-last-death-",
)
BROKER_HEADERS = frozenset({"x-death", "x-delivery-count"})


class DeadLetterQueueMissing(Exception):
    def __init__(self, queue: str) -> None:
        super().__init__(
            f"queue {queue} does not exist: run `apptctl topology apply` (or check APPT_NAMESPACE)"
        )
        self.queue = queue


class UnknownQueue(ValueError):
    pass


def dead_letter_queues(topology: Topology) -> list[str]:
    return [spec.name for spec in topology.queues if spec.kind == DEAD_LETTER]


def resolve_queues(topology: Topology, name: str | None, *, audit: bool = False) -> list[str]:
    """The dead-letter queues `name` means: all of them, or one given as `policy_gate`,
    `appt.policy_gate` or `appt.policy_gate.dead`. With `audit`, the auditor's copies of them."""
    chosen = dead_letter_queues(topology) if name is None else None
    for spec in topology.queues if chosen is None else ():
        if spec.worker is not None and name in (spec.worker, spec.name, spec.dead_letter_queue):
            chosen = [spec.dead_letter_queue or ""]
            break
        if audit and spec.kind == AUDIT and name == spec.name:
            return [spec.name]
    if chosen is None:
        choices = ", ".join(dead_letter_queues(topology))
        raise UnknownQueue(
            f"no dead-letter queue {name!r} in namespace {topology.namespace!r}; choose one of {choices}"
        )
    return [audit_copy_of(queue) for queue in chosen] if audit else chosen


# --- reading ---------------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A header value as JSON-friendly data (bytes decoded, datetimes in ISO 8601)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _deaths(headers: dict[str, Any]) -> list[dict[str, Any]]:
    deaths = headers.get("x-death")
    return [d for d in deaths if isinstance(d, dict)] if isinstance(deaths, list) else []


def reason_of(headers: dict[str, Any]) -> str:
    """Our consumer's reason, else the broker's (`delivery_limit` for a crash loop), else `unknown`.

    The broker's is its latest death: a message that went through a delay queue first died there
    (`expired`, which is what `x-first-death-reason` keeps saying)."""
    if headers.get(REASON):
        return str(plain(headers[REASON]))
    deaths = _deaths(headers)
    if deaths and deaths[0].get("reason"):
        return str(plain(deaths[0]["reason"]))
    return str(plain(headers.get("x-first-death-reason") or "unknown"))


def target_of(headers: dict[str, Any]) -> tuple[str, str] | None:
    """Where the message was first published: (exchange, routing key), or None when nothing says."""
    exchange, routing_key = plain(headers.get(ORIGINAL_EXCHANGE)), plain(headers.get(ORIGINAL_ROUTING_KEY))
    if exchange or routing_key:
        return str(exchange or ""), str(routing_key or "")
    deaths = _deaths(headers)
    if deaths:
        first = deaths[-1]  # x-death lists the most recent death first
        keys = plain(first.get("routing-keys") or [])
        return str(plain(first.get("exchange", ""))), str(keys[0] if keys else "")
    return None


def replay_target(
    topology: Topology, headers: dict[str, Any], work_queue: str | None
) -> tuple[str, str] | None:
    """Where a dead letter goes back to, from what is believable.

    A worker's dead letter (`x-dead-lettered-by`, and no death in the work queue) carries the route it
    really came by in `x-original-*` (the consumer writes it from the delivery). A broker's dead letter (a
    crash loop: the broker's `x-death` entry for the work queue) carries the publisher's headers as they
    were, ours included, so `x-original-*` is believed only when that entry says it came by the return
    exchange (a retry copy: the worker wrote them); otherwise the entry's exchange and routing key are
    the route."""
    entry = next((d for d in _deaths(headers) if work_queue and plain(d.get("queue")) == work_queue), None)
    if entry is None:
        # no death in the work queue: the worker dead-lettered it (a broker dead letter always has one)
        return target_of(headers) if headers.get("x-dead-lettered-by") is not None else None
    exchange = str(plain(entry.get("exchange", "")))
    if exchange and exchange == topology.return_exchange:
        return target_of({k: v for k, v in headers.items() if k != "x-death"})
    keys = plain(entry.get("routing-keys") or [])
    return exchange, str(keys[0] if keys else "")


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    message_id: str | None
    reason: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    body: bytes

    @property
    def detail(self) -> str | None:
        value = self.headers.get(DETAIL)
        return None if value is None else str(plain(value))

    @property
    def timestamp(self) -> datetime | None:
        value = self.properties.get("timestamp")
        return value if isinstance(value, datetime) else None

    @property
    def dead_lettered_at(self) -> datetime | None:
        """When it was dead-lettered: our header, else the broker's latest x-death time."""
        when: Any = None
        with contextlib.suppress(KeyError, ValueError):
            when = datetime.fromisoformat(str(plain(self.headers[DEAD_LETTERED_AT])))
        deaths = _deaths(self.headers)
        if when is None and deaths:
            when = deaths[0].get("time")
        if not isinstance(when, datetime):
            return None
        return when if when.tzinfo else when.replace(tzinfo=UTC)

    @property
    def born_at(self) -> datetime | None:
        """The message's own timestamp when it has one, else when it was dead-lettered."""
        return self.timestamp or self.dead_lettered_at

    def to_json(self, *, with_body: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "queue": self.queue,
            "message_id": self.message_id,
            "reason": self.reason,
            "detail": self.detail,
            "properties": plain(self.properties),
            "headers": plain(self.headers),
        }
        if with_body:
            data["body"] = self.body.decode("utf-8", errors="replace")
        return data


def letter_of(queue: str, incoming: AbstractIncomingMessage) -> DeadLetter:
    headers = dict(incoming.headers or {})
    properties = {
        "content_type": incoming.content_type,
        "content_encoding": incoming.content_encoding,
        "correlation_id": incoming.correlation_id,
        "type": incoming.type,
        "app_id": incoming.app_id,
        "timestamp": incoming.timestamp,
        "delivery_mode": int(incoming.delivery_mode) if incoming.delivery_mode else None,
    }
    return DeadLetter(queue, incoming.message_id, reason_of(headers), headers, properties, incoming.body)


@dataclass
class Held:
    letter: DeadLetter
    incoming: AbstractIncomingMessage


@dataclass
class Sweep:
    """Every dead letter of some queues, taken without ack; `release()` hands back the rest."""

    channel: AbstractChannel
    held: list[Held] = field(default_factory=list)
    truncated: set[str] = field(default_factory=set)

    async def take_all(self, queue_name: str, limit: int) -> None:
        try:
            queue = await self.channel.declare_queue(queue_name, passive=True)
        except ChannelNotFoundEntity as exc:
            raise DeadLetterQueueMissing(queue_name) from exc
        for _ in range(limit):
            incoming = await queue.get(no_ack=False, fail=False)
            if incoming is None:
                return
            self.held.append(Held(letter_of(queue_name, incoming), incoming))
        self.truncated.add(queue_name)

    @property
    def letters(self) -> list[DeadLetter]:
        return [h.letter for h in self.held]

    async def release(self) -> None:
        """Requeue everything not acked (one nack for all), then close the channel."""
        with contextlib.suppress(Exception):
            if not self.channel.is_closed:
                underlay = await self.channel.get_underlay_channel()
                await underlay.basic_nack(delivery_tag=0, multiple=True, requeue=True)
        with contextlib.suppress(Exception):
            await self.channel.close()


@asynccontextmanager
async def holding(
    connection: AbstractConnection, queues: Sequence[str], limit: int = MAX_SWEEP
) -> AsyncIterator[Sweep]:
    sweep = Sweep(await connection.channel(publisher_confirms=False))
    try:
        for name in queues:
            await sweep.take_all(name, limit)
        yield sweep
    finally:
        await sweep.release()


async def read(connection: AbstractConnection, queues: Sequence[str], limit: int = MAX_SWEEP) -> Sweep:
    """The dead letters of `queues`, left where they are (the returned sweep's channel is closed)."""
    async with holding(connection, queues, limit) as sweep:
        return sweep


# --- grouping ----------------------------------------------------------------------------------------


@dataclass
class Group:
    queue: str
    reason: str
    count: int = 0
    sample_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "reason": self.reason,
            "count": self.count,
            "sample_ids": self.sample_ids,
        }


def group(letters: Iterable[DeadLetter]) -> list[Group]:
    """Dead letters grouped by queue and reason, largest group first within a queue."""
    groups: dict[tuple[str, str], Group] = {}
    for letter in letters:
        entry = groups.setdefault((letter.queue, letter.reason), Group(letter.queue, letter.reason))
        entry.count += 1
        if letter.message_id and len(entry.sample_ids) < SAMPLE_IDS:
            entry.sample_ids.append(letter.message_id)
    return sorted(groups.values(), key=lambda g: (g.queue, -g.count, g.reason))


def counts_by_reason(letters: Iterable[DeadLetter]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for letter in letters:
        per_queue = counts.setdefault(letter.queue, {})
        per_queue[letter.reason] = per_queue.get(letter.reason, 0) + 1
    return counts


# --- selecting, replaying, purging -------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command acts on; no criterion means all of them."""

    message_id: str | None = None
    reason: str | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if self.message_id is not None and letter.message_id != self.message_id:
            return False
        return self.reason is None or letter.reason == self.reason


def replayed_message(letter: DeadLetter) -> aio_pika.Message:
    """The dead letter as first published: same body, ids and properties, dead-letter headers removed,
    `x-replayed-from` and an incremented `x-replay-count` added."""
    headers = {
        key: value
        for key, value in letter.headers.items()
        if key not in BROKER_HEADERS and not key.startswith(DEAD_LETTER_HEADER_PREFIXES)
    }
    previous = letter.headers.get(REPLAY_COUNT, 0)
    headers[REPLAYED_FROM] = letter.queue
    headers[REPLAY_COUNT] = (previous if isinstance(previous, int) else 0) + 1
    p = letter.properties
    return aio_pika.Message(
        letter.body,
        headers=headers,
        content_type=p.get("content_type"),
        content_encoding=p.get("content_encoding"),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=letter.message_id,
        correlation_id=p.get("correlation_id"),
        type=p.get("type"),
        app_id=p.get("app_id"),
        timestamp=p.get("timestamp"),
    )


@dataclass
class Failure:
    letter: DeadLetter
    error: str


@dataclass
class ReplayResult:
    matched: int = 0
    replayed: list[tuple[DeadLetter, str, str]] = field(default_factory=list)  # letter, exchange, key
    failed: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def owner_of(topology: Topology, dead_letter_queue: str) -> str | None:
    """The worker whose dead-letter queue this is."""
    for spec in topology.queues:
        if spec.worker is not None and spec.dead_letter_queue == dead_letter_queue:
            return spec.worker
    return None


def replay_refusal(topology: Topology, letter: DeadLetter, target: tuple[str, str]) -> str | None:
    """Why `letter` may not be replayed to `target`, or None: the target must be a route of the dead
    queue's own worker, and a body that decodes must be the type that route carries."""
    worker = owner_of(topology, letter.queue)
    if worker is None or worker not in SUBSCRIPTIONS:
        return f"refused: {letter.queue} belongs to no worker with declared routes"
    table = RouteTable.of(worker, topology.exchange_names())
    exchange, routing_key = target
    if target not in table.targets:
        routes = ", ".join(f"{e} / {k}" for e, k in sorted(table.targets))
        return (
            f"refused: {exchange or '(default exchange)'} / {routing_key[:100]} is not a route of {worker} "
            f"(its routes: {routes}); a dead letter goes back only to its own worker"
        )
    decoded = decode(letter.body, content_type=letter.properties.get("content_type"))
    if not isinstance(decoded, DecodeFailure):
        refusal = table.refusal(exchange, routing_key, decoded.type, decoded.schema_version)
        if refusal is not None:
            return f"refused: {refusal}"
    return None


def _target(topology: Topology, letter: DeadLetter) -> tuple[str, str] | None:
    worker = owner_of(topology, letter.queue)
    work_queue = topology.queue_of(worker).name if worker is not None else None
    return replay_target(topology, letter.headers, work_queue)


async def _replay_one(broker: Broker, held: Held, missing: set[str], result: ReplayResult) -> None:
    letter = held.letter
    target = _target(broker.topology, letter)
    if target is None:
        result.failed.append(
            Failure(letter, "no x-original-exchange / x-death header says where it came from")
        )
        return
    refusal = replay_refusal(broker.topology, letter, target)
    if refusal is not None:
        result.failed.append(Failure(letter, refusal))
        return
    exchange, routing_key = target
    if exchange in missing:
        result.failed.append(
            Failure(letter, f"exchange {exchange} does not exist: run `apptctl topology apply`")
        )
        return
    try:
        await broker.publish(exchange, routing_key, replayed_message(letter))
    except Exception as exc:
        result.failed.append(Failure(letter, f"publish to {exchange} / {routing_key} failed: {exc!r}"[:500]))
        return
    result.replayed.append((letter, exchange, routing_key))
    try:
        await held.incoming.ack()
    except Exception as exc:
        result.warnings.append(
            f"{letter.message_id}: replayed, but could not be removed from {letter.queue} ({exc!r}); "
            "replaying it again is harmless (consumers dedupe on the message id)"
        )


async def replay(broker: Broker, queues: Sequence[str], selection: Selection) -> ReplayResult:
    """Republish each selected dead letter to its original exchange and routing key, then ack it."""
    assert broker.connection is not None, "connect the broker first"
    result = ReplayResult()
    async with holding(broker.connection, queues) as sweep:
        chosen = [held for held in sweep.held if selection.matches(held.letter)]
        result.matched = len(chosen)
        targets = {t[0] for t in (_target(broker.topology, h.letter) for h in chosen) if t is not None}
        missing = await missing_exchanges(broker.connection, targets)
        for held in chosen:
            await _replay_one(broker, held, missing, result)
    return result


async def purge(
    connection: AbstractConnection, queues: Sequence[str], selection: Selection
) -> dict[str, int]:
    """Remove the selected dead letters for good; returns how many per queue."""
    removed: dict[str, int] = {}
    async with holding(connection, queues) as sweep:
        for held in sweep.held:
            if selection.matches(held.letter):
                await held.incoming.ack()
                removed[held.letter.queue] = removed.get(held.letter.queue, 0) + 1
    return removed


# --- showing -----------------------------------------------------------------------------------------


def pretty_body(body: bytes) -> str:
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        text = body.decode("utf-8", errors="replace")
        return text if text.isprintable() or "\n" in text else repr(body)


def human_age(seconds: float) -> str:
    """`42 s`, `5 min`, `3 h 20 min`, `4 days`: how long ago, for a person."""
    whole = max(int(seconds), 0)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 86_400:
        hours, minutes = divmod(whole // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days = whole // 86_400
    return f"{days} day{'s' if days > 1 else ''}"


def describe(letter: DeadLetter, now: datetime | None = None) -> str:
    """A dead letter for a person: where, when it was set aside, why, properties, headers, body."""
    now = now or datetime.now(UTC)
    when = letter.dead_lettered_at  # not the message's own timestamp: a portal may send an old one
    dead = (
        f"dead-lettered {human_age((now - when).total_seconds())} ago ({when.isoformat(timespec='seconds')})"
        if when
        else "dead-lettered: when unknown (no x-dead-lettered-at or x-death time)"
    )
    lines = [
        f"message {letter.message_id} in {letter.queue}",
        dead,
        f"reason: {letter.reason}",
        f"detail: {letter.detail or '-'}",
        "properties:",
        *(f"  {k}: {plain(v)}" for k, v in letter.properties.items() if v is not None),
        "headers:",
        *(f"  {line}" for line in json.dumps(plain(letter.headers), indent=2, sort_keys=True).splitlines()),
        f"body ({len(letter.body)} bytes):",
        pretty_body(letter.body),
    ]
    return "\n".join(lines)
