"""`apptctl trace REQUEST_ID`: one request's whole path, read from the database and the dead-letter queues.

The decision (with the rule and the setting behind it), every event that followed (the outbox keeps them
for APPT_OUTBOX_RETENTION_S after publishing), the read-store rows the portal shows, the audit trail
entries, the dead letters carrying the request id, and the time each step took from the request.
Reads only: dead letters are taken without ack and handed back.
"""

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aio_pika
from sqlalchemy import select, union
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from apptctl import dlq
from infra.db import tables
from infra.topology import build
from workers.runtime.settings import Settings

CONNECT_TIMEOUT_S = 5.0
DEAD_LETTER_SWEEP = 5_000  # dead letters read per queue looking for the request


@dataclass
class Step:
    """Something that happened to the request, at a time."""

    at: datetime
    what: str


@dataclass
class TenantTrace:
    tenant_id: str
    request: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    appointment: dict[str, Any] | None = None
    audit: list[dict[str, Any]] = field(default_factory=list)

    def steps(self) -> list[Step]:
        found: list[Step] = []
        if self.request and self.request.get("requested_at"):
            found.append(Step(self.request["requested_at"], "requested (the portal's time)"))
        if self.decision:
            found.append(Step(self.decision["decided_at"], f"decided: {self.decision['outcome']}"))
            if self.decision.get("office_decided_at"):
                found.append(Step(self.decision["office_decided_at"], "office decided"))
        for event in self.events:
            found.append(
                Step(event["created_at"], f"{event['message_type']} committed by {event['producer']}")
            )
            if event["published_at"]:
                found.append(Step(event["published_at"], f"{event['message_type']} published"))
        if self.request and self.request.get("replied_at"):
            found.append(Step(self.request["replied_at"], f"reply sent to {self.request['reply_to']}"))
        return sorted(found, key=lambda step: step.at)


@dataclass
class Trace:
    request_id: str
    tenants: list[TenantTrace]
    dead_letters: list[dlq.DeadLetter]
    dead_letters_error: str | None = None

    @property
    def found(self) -> bool:
        return bool(self.tenants or self.dead_letters)

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            return value.isoformat() if isinstance(value, datetime) else value

        return {
            "request_id": self.request_id,
            "found": self.found,
            "tenants": [
                {
                    "tenant_id": t.tenant_id,
                    "request": _plain_row(t.request),
                    "decision": _plain_row(t.decision),
                    "events": [_plain_row(e) for e in t.events],
                    "appointment": _plain_row(t.appointment),
                    "audit": [_plain_row(a) for a in t.audit],
                    "steps": [{"at": plain(s.at), "what": s.what} for s in t.steps()],
                }
                for t in self.tenants
            ],
            "dead_letters": [letter.to_json() | {"dead_lettered_at": plain(letter.dead_lettered_at)}
                             for letter in self.dead_letters],
            "dead_letters_error": self.dead_letters_error,
        }  # fmt: skip


def _plain_row(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        k: (v.isoformat() if isinstance(v, datetime) else str(v) if k == "message_id" else v)
        for k, v in row.items()
    }


# --- gathering -----------------------------------------------------------------------------------------


async def _one(connection: AsyncConnection, statement) -> dict[str, Any] | None:
    row = (await connection.execute(statement)).mappings().first()
    return dict(row) if row else None


async def _all(connection: AsyncConnection, statement) -> list[dict[str, Any]]:
    return [dict(row) for row in (await connection.execute(statement)).mappings()]


async def _tenants_of(connection: AsyncConnection, request_id: str) -> list[str]:
    d, r, o = tables.decisions, tables.portal_requests, tables.outbox
    statement = union(
        select(d.c.tenant_id).where(d.c.request_id == request_id),
        select(r.c.tenant_id).where(r.c.request_id == request_id),
        select(o.c.tenant_id).where(o.c.correlation_id == request_id),
    )
    return sorted(row[0] for row in await connection.execute(statement))


async def _tenant_trace(connection: AsyncConnection, tenant_id: str, request_id: str) -> TenantTrace:
    d, r, o = tables.decisions, tables.portal_requests, tables.outbox
    a, v = tables.portal_audit_trail, tables.portal_appointments
    trace = TenantTrace(tenant_id)
    trace.request = await _one(
        connection,
        select(r.c.appointment_id, r.c.requester_id, r.c.action, r.c.status, r.c.reason_code, r.c.reason_text,
               r.c.requested_at, r.c.reply_to, r.c.replied_at)
        .where(r.c.tenant_id == tenant_id, r.c.request_id == request_id),
    )  # fmt: skip
    trace.decision = await _one(
        connection,
        select(d.c.message_id, d.c.appointment_id, d.c.action, d.c.outcome, d.c.reason_code, d.c.reason_text,
               d.c.rule, d.c.setting, d.c.setting_level, d.c.decided_on_version, d.c.decided_at,
               d.c.change, d.c.office_decided_by, d.c.office_decided_at)
        .where(d.c.tenant_id == tenant_id, d.c.request_id == request_id),
    )  # fmt: skip
    trace.events = await _all(
        connection,
        select(o.c.message_id, o.c.message_type, o.c.producer, o.c.routing_key, o.c.created_at,
               o.c.published_at)
        .where(o.c.tenant_id == tenant_id, o.c.correlation_id == request_id)
        .order_by(o.c.created_at, o.c.id),
    )  # fmt: skip
    trace.audit = await _all(
        connection,
        select(a.c.occurred_at, a.c.entry, a.c.actor, a.c.action, a.c.reason_code, a.c.window_start,
               a.c.window_end, a.c.status, a.c.version)
        .where(a.c.tenant_id == tenant_id, a.c.request_id == request_id)
        .order_by(a.c.occurred_at, a.c.recorded_at),
    )  # fmt: skip
    appointment_id = (trace.request or trace.decision or {}).get("appointment_id")
    if appointment_id:
        trace.appointment = await _one(
            connection,
            select(v.c.appointment_id, v.c.job_id, v.c.status, v.c.confirmation, v.c.window_start,
                   v.c.window_end, v.c.version)
            .where(v.c.tenant_id == tenant_id, v.c.appointment_id == appointment_id),
        )  # fmt: skip
    return trace


async def _database(settings: Settings, request_id: str, tenant: str | None) -> list[TenantTrace]:
    engine = create_async_engine(
        settings.database_url, poolclass=NullPool, connect_args={"timeout": CONNECT_TIMEOUT_S}
    )
    try:
        async with engine.connect() as connection:
            tenants = [tenant] if tenant else await _tenants_of(connection, request_id)
            traces = [await _tenant_trace(connection, t, request_id) for t in tenants]
    finally:
        await engine.dispose()
    return [t for t in traces if t.request or t.decision or t.events or t.audit]


async def _dead_letters(settings: Settings, request_id: str, tenant: str | None) -> list[dlq.DeadLetter]:
    topology = build(settings.namespace, settings.retry_delays_s)
    names = [q.name for q in topology.queues if q.kind == "dead-letter"]
    connection = await aio_pika.connect(settings.amqp_url, timeout=CONNECT_TIMEOUT_S)
    async with connection:
        sweep = await dlq.read(connection, names, limit=DEAD_LETTER_SWEEP)
    return [
        letter
        for letter in sweep.letters
        if letter.properties.get("correlation_id") == request_id
        and (tenant is None or dlq.plain(letter.headers.get("x-tenant-id")) in (None, tenant))
    ]


async def gather(settings: Settings, request_id: str, tenant: str | None = None) -> Trace:
    tenants = await _database(settings, request_id, tenant)
    trace = Trace(request_id, tenants, [])
    try:
        trace.dead_letters = await _dead_letters(settings, request_id, tenant)
    except Exception as exc:  # the database part still answers; say what is missing
        trace.dead_letters_error = f"{type(exc).__name__}: {exc}"[:300]
    return trace


# --- showing -------------------------------------------------------------------------------------------


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="milliseconds")


def _offset(at: datetime, start: datetime) -> str:
    ms = (at - start).total_seconds() * 1000
    return f"+{ms:,.0f} ms" if abs(ms) < 10_000 else f"+{ms / 1000:,.1f} s"


def render(trace: Trace) -> str:
    lines = [f"request {trace.request_id}"]
    if not trace.tenants:
        lines.append("  nothing in the database: no decision, no read-store row, no event")
    for t in trace.tenants:
        lines.append(f"tenant {t.tenant_id}")
        d = t.decision
        if d:
            why = f" ({d['reason_code']}: {d['reason_text']})" if d["reason_code"] else ""
            lines.append(f"  decision: {d['outcome']} {d['action']} of {d['appointment_id']}{why}")
            rule = d["rule"] or "-"
            setting = f"{d['setting']} (level {d['setting_level'] or '-'})" if d["setting"] else "-"
            lines.append(
                f"    rule: {rule}; setting: {setting}; on appointment version {d['decided_on_version']}"
            )
            if d["change"]:
                lines.append(f"    change: {json.dumps(d['change'], sort_keys=True)}")
            if d["office_decided_by"]:
                lines.append(
                    f"    office decision by {d['office_decided_by']} at {_time(d['office_decided_at'])}"
                )
        else:
            lines.append("  decision: none recorded")
        r = t.request
        if r:
            why = f" ({r['reason_code']}: {r['reason_text']})" if r["reason_code"] else ""
            reply = f"; reply to {r['reply_to']} at {_time(r['replied_at'])}" if r["reply_to"] else ""
            lines.append(f"  read store, request: {r['status']}{why}{reply}")
        if t.appointment:
            a = t.appointment
            lines.append(
                f"  read store, appointment {a['appointment_id']}: {a['status']}, {a['confirmation']}, "
                f"{_time(a['window_start'])} - {_time(a['window_end'])}, version {a['version']}"
            )
        lines.append(f"  events ({len(t.events)}):" if t.events else "  events: none in the outbox")
        for e in t.events:
            published = _time(e["published_at"]) if e["published_at"] else "NOT PUBLISHED"
            lines.append(
                f"    {e['message_type']:<28} by {e['producer']:<15} published {published}  {e['message_id']}"
            )
        if t.audit:
            lines.append("  audit trail:")
            for entry in t.audit:
                lines.append(f"    {_time(entry['occurred_at'])}  {entry['entry']} by {entry['actor']}")
        steps = t.steps()
        if steps:
            lines.append("  timings:")
            lines.extend(f"    {_offset(s.at, steps[0].at):>12}  {s.what}" for s in steps)
    if trace.dead_letters_error:
        lines.append(f"dead letters: unknown (RabbitMQ could not be read: {trace.dead_letters_error})")
    elif trace.dead_letters:
        lines.append(f"dead letters ({len(trace.dead_letters)}):")
        for letter in trace.dead_letters:
            lines.append(
                f"  {letter.queue}: {letter.reason} ({letter.detail or '-'}), "
                f"dead-lettered {_time(letter.dead_lettered_at)}  {letter.message_id}"
            )
    else:
        lines.append("dead letters: none")
    if not trace.found:
        lines.append(
            "no trace of this request id: check the id (the portal's request id, the messages' "
            "correlation_id), --tenant, APPT_NAMESPACE and DATABASE_URL"
        )
    return "\n".join(lines)
