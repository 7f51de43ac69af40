"""`apptctl fixtures record`: capture what is published to a worker's queue from now on, as fixture files.

The recording never takes a message from a worker: it declares a temporary queue (exclusive, auto-delete,
gone with the connection) with the same bindings as the worker's queue, so the broker routes a copy of
every message to it. Only what is published after the binding is recorded; messages already waiting in
the worker's queue are not.
"""

import asyncio
import base64
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from apptctl.dlq import plain
from apptctl.fixtures import FORMAT_VERSION, dump, iso
from contracts.decoding import DecodeFailure, decode
from infra.topology import WORKERS, QueueSpec, Topology

_SEQUENCE = re.compile(r"^(\d{6,})-")


class UnknownWorkQueue(ValueError):
    pass


def resolve_work_queue(topology: Topology, name: str) -> QueueSpec:
    """A worker's queue, named as `policy_gate` or `appt.policy_gate`."""
    for worker in WORKERS:
        spec = topology.queue_of(worker)
        if name in (worker, spec.name):
            return spec
    raise UnknownWorkQueue(
        f"no worker queue {name!r} in namespace {topology.namespace!r}; choose one of {', '.join(WORKERS)}"
    )


@dataclass
class Recording:
    queue: str
    written: list[Path] = field(default_factory=list)
    stopped_by: str = "count"  # count, timeout or interrupt


def _properties(incoming: AbstractIncomingMessage) -> dict[str, Any]:
    timestamp = incoming.timestamp
    if timestamp is not None and timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    values = {
        "content_type": incoming.content_type,
        "content_encoding": incoming.content_encoding,
        "delivery_mode": int(incoming.delivery_mode) if incoming.delivery_mode else None,
        "priority": incoming.priority,
        "correlation_id": incoming.correlation_id,
        "reply_to": incoming.reply_to,
        "expiration": None if incoming.expiration is None else str(incoming.expiration),
        "message_id": incoming.message_id,
        "timestamp": iso(timestamp) if timestamp else None,
        "type": incoming.type,
        "user_id": incoming.user_id,
        "app_id": incoming.app_id,
    }
    properties = {k: v for k, v in values.items() if v is not None}
    # content_type is kept even when absent: a missing one is a fact about the message (wrong_content_type).
    properties.setdefault("content_type", None)
    properties["headers"] = plain(dict(incoming.headers or {}))
    return properties


def fixture_from_delivery(
    incoming: AbstractIncomingMessage, *, exchange_role: str, queue: str, anchor: datetime
) -> dict[str, Any]:
    """One delivery as a fixture. An undecodable one is marked with the reason a worker would give it."""
    properties = _properties(incoming)
    body = incoming.body
    result = decode(body, content_type=incoming.content_type, property_type=incoming.type)
    data: dict[str, Any] = {
        "fixture_format": FORMAT_VERSION,
        "description": f"recorded from {queue}'s bindings at {iso(datetime.now(UTC))}",
        "anchor": iso(anchor),
        "exchange": exchange_role,
        "routing_key": incoming.routing_key or "",
        "properties": properties,
    }
    if not isinstance(result, DecodeFailure):
        data["message"] = json.loads(body)
        return data
    try:
        data["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        data["body_base64"] = base64.b64encode(body).decode()
    data["expect"] = {"dead_letter": result.reason.value}
    return data


def _next_sequence(out: Path) -> int:
    """Continue after the highest number already in `out`, so a second recording sorts after the first."""
    numbers = [int(m.group(1)) for p in out.glob("*.json") if (m := _SEQUENCE.match(p.name))]
    return max(numbers, default=0) + 1


def _write(out: Path, sequence: int, fixture: dict[str, Any]) -> Path:
    kind = fixture.get("message", {}).get("type") if "message" in fixture else None
    kind = kind or f"malformed-{fixture['expect']['dead_letter']}"
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(kind))[:80]
    path = out / f"{sequence:06d}-{safe}.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(dump(fixture), encoding="utf-8")
    os.replace(partial, path)
    return path


async def record(
    connection: AbstractConnection,
    topology: Topology,
    spec: QueueSpec,
    out: Path,
    *,
    count: int | None,
    timeout_s: float | None,
    stop: asyncio.Event,
    on_ready: Callable[[str], None],
) -> Recording:
    """Record into `out` (an existing folder) until `count` messages, `timeout_s`, or `stop` is set."""
    roles = {exchange.name: exchange.role for exchange in topology.exchanges}
    recording = Recording(spec.name)
    anchor = datetime.now(UTC).replace(microsecond=0)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=min(count or 100, 100))
    # Classic, exclusive, auto-delete: a private copy that disappears with this connection.
    queue = await channel.declare_queue(
        f"{topology.namespace}.record.{uuid4().hex[:8]}",
        durable=False,
        exclusive=True,
        auto_delete=True,
        arguments={"x-queue-type": "classic"},
    )
    for binding in spec.bindings:
        await queue.bind(topology.exchange(binding.exchange_role), routing_key=binding.routing_key)
    deliveries: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    await queue.consume(deliveries.put, no_ack=False)
    bindings = ", ".join(f"{topology.exchange(b.exchange_role)} {b.routing_key}" for b in spec.bindings)
    on_ready(
        f"recording what is published to {spec.name}'s bindings ({bindings}) from now on into {out}"
        + (f"; stops after {count} message(s)" if count else "")
        + (f"; stops after {timeout_s:g} s" if timeout_s else "")
        + "; Ctrl-C stops"
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s if timeout_s else None
    sequence = _next_sequence(out)
    try:
        while count is None or len(recording.written) < count:
            if stop.is_set():
                recording.stopped_by = "interrupt"
                break
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                recording.stopped_by = "timeout"
                break
            try:
                incoming = await asyncio.wait_for(deliveries.get(), timeout=min(remaining or 0.25, 0.25))
            except TimeoutError:
                continue
            fixture = fixture_from_delivery(
                incoming,
                exchange_role=roles.get(incoming.exchange or "", incoming.exchange or ""),
                queue=spec.name,
                anchor=anchor,
            )
            recording.written.append(_write(out, sequence, fixture))
            sequence += 1
            await incoming.ack()
    finally:
        await channel.close()
    return recording
