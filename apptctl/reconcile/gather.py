"""The edge: the facts read from PostgreSQL, the dead letters from RabbitMQ, the portal's manifest."""

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from apptctl.reconcile.facts import (
    ACTIVE_STATUSES,
    APPOINTMENT_EVENTS,
    APPROVED,
    AWAITING,
    CANCELED,
    FAILED,
    GATE,
    JOB_CHANGED,
    REJECTED,
    RESCHEDULED,
    SCHEDULER,
    AppointmentState,
    DeadLetterRef,
    DecisionRow,
    Event,
    Facts,
    JobState,
    RequestRow,
    SentRequest,
    SlotUsage,
)
from contracts.common import ModifyAction


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _snapshot(tenant_id: str, s: dict) -> AppointmentState:
    return AppointmentState(
        tenant_id=tenant_id,
        appointment_id=s["appointment_id"],
        job_id=s["job_id"],
        customer_id=s["customer_id"],
        project_id=s.get("project_id"),
        business_unit=s["business_unit"],
        job_type=s["job_type"],
        window_start=_time(s["window"]["start"]),
        window_end=_time(s["window"]["end"]),
        status=s["status"],
        confirmation=s["confirmation"],
        version=s["version"],
    )


def event_from_row(row: Any) -> Event:
    """An outbox row (id, message_id, producer, message_type, tenant_id, correlation_id, published_at,
    created_at, body) with the payload fields the checks use."""
    base = dict(
        id=row.id,
        message_id=str(row.message_id),
        producer=row.producer,
        type=row.message_type,
        tenant_id=row.tenant_id,
        correlation_id=row.correlation_id,
        published=row.published_at is not None,
        created_at=row.created_at,
    )
    try:
        payload = json.loads(bytes(row.body)).get("payload") or {}
    except (ValueError, AttributeError):
        return Event(**base)
    kind = row.message_type
    if kind == APPROVED:
        return Event(
            **base,
            request_id=row.correlation_id,
            appointment_id=payload.get("appointment_id"),
            action=(payload.get("change") or {}).get("action"),
        )
    if kind in (REJECTED, AWAITING, FAILED):
        return Event(
            **base,
            request_id=payload.get("request_id"),
            appointment_id=payload.get("appointment_id"),
            action=payload.get("action"),
            reason_code=payload.get("reason_code"),
        )
    if kind in APPOINTMENT_EVENTS:
        snapshot = _snapshot(row.tenant_id, payload["appointment"])
        return Event(
            **base,
            request_id=payload.get("request_id"),
            appointment_id=snapshot.appointment_id,
            action={RESCHEDULED: ModifyAction.RESCHEDULE.value, CANCELED: ModifyAction.CANCEL.value}.get(
                kind
            ),
            initiated_by=payload.get("initiated_by"),
            appointment=snapshot,
            based_on_version=payload.get("based_on_version"),
        )
    if kind == JOB_CHANGED:
        return Event(
            **base,
            job=JobState(
                tenant_id=row.tenant_id,
                job_id=payload["job_id"],
                customer_id=payload["customer_id"],
                status=payload["status"],
                version=payload["version"],
                active_appointments=payload["active_appointments"],
            ),
        )
    return Event(**base)


def dead_letter_ref(letter: Any) -> DeadLetterRef:
    """An `apptctl.dlq.DeadLetter` as the checker sees it (tenant from the header or the body, if any)."""
    headers = letter.headers or {}
    tenant = headers.get("x-tenant-id")
    message_type = letter.properties.get("type")
    if tenant is None or message_type is None:
        try:
            body = json.loads(letter.body)
            if isinstance(body, dict):
                tenant = tenant or body.get("tenant_id")
                message_type = message_type or body.get("type")
        except ValueError:
            pass
    if isinstance(tenant, bytes):
        tenant = tenant.decode("utf-8", "replace")
    return DeadLetterRef(
        queue=letter.queue,
        message_id=letter.message_id,
        reason=letter.reason,
        correlation_id=letter.properties.get("correlation_id"),
        tenant_id=tenant if isinstance(tenant, str) else None,
        type=message_type if isinstance(message_type, str) else None,
    )


def load_manifest(path: Path) -> list[SentRequest]:
    """JSON lines: {"tenant_id", "request_id", "message_id", "appointment_id", "action", "sent_at"?}."""
    sent = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        sent.append(
            SentRequest(
                tenant_id=item["tenant_id"],
                request_id=item["request_id"],
                message_id=str(item["message_id"]),
                appointment_id=item["appointment_id"],
                action=item["action"],
                sent_at=_time(item.get("sent_at")),
            )
        )
    return sent


def write_manifest(path: Path, sent: Iterable[SentRequest]) -> None:
    with path.open("w") as out:
        for s in sent:
            item = {**asdict(s), "sent_at": s.sent_at.isoformat() if s.sent_at else None}
            out.write(json.dumps(item) + "\n")


def _chunks(items: Sequence, size: int = 5000) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def gather(
    engine: Any,
    *,
    tenants: Sequence[str] | None = None,
    since: datetime | None = None,
    dead_letters: list[DeadLetterRef] | None = None,
    sent: list[SentRequest] | None = None,
) -> Facts:
    """Read what the database recorded, scoped to `tenants` (all when None) and to rows touched since
    `since` (all when None)."""
    from sqlalchemy import and_, func, or_, select, true

    from infra.db.tables import (
        appointments,
        decisions,
        inbox,
        jobs,
        outbox,
        portal_appointments,
        portal_jobs,
        portal_requests,
    )

    if tenants is not None:
        tenants = list(tenants)
        if sent is not None:
            sent = [s for s in sent if s.tenant_id in tenants]
        if dead_letters is not None:
            dead_letters = [x for x in dead_letters if x.tenant_id in tenants or x.tenant_id is None]

    def scoped(table, *time_columns):
        conditions = []
        if tenants is not None:
            conditions.append(table.c.tenant_id.in_(tenants))
        if since is not None and time_columns:
            conditions.append(or_(*(c >= since for c in time_columns)))
        return and_(true(), *conditions)

    async with engine.connect() as conn:
        now = (await conn.execute(select(func.now()))).scalar_one()
        facts = Facts(now=now, since=since, dead_letters=dead_letters, sent=sent)
        r = portal_requests
        for row in await conn.execute(
            select(
                r.c.tenant_id, r.c.request_id, r.c.appointment_id, r.c.action, r.c.status, r.c.reason_code,
                r.c.updated_at,
            ).where(scoped(r, r.c.requested_at, r.c.updated_at))
        ):  # fmt: skip
            facts.requests.append(RequestRow(*row))
        d = decisions
        for row in await conn.execute(
            select(
                d.c.tenant_id, d.c.request_id, d.c.message_id, d.c.appointment_id, d.c.action, d.c.outcome,
                d.c.reason_code, d.c.decided_at,
            ).where(scoped(d, d.c.decided_at))
        ):  # fmt: skip
            facts.decisions.append(DecisionRow(row[0], row[1], str(row[2]), *row[3:]))
        o = outbox
        rows = await conn.execute(
            select(
                o.c.id, o.c.message_id, o.c.producer, o.c.message_type, o.c.tenant_id, o.c.correlation_id,
                o.c.published_at, o.c.created_at, o.c.body,
            )
            .where(scoped(o, o.c.created_at), o.c.producer.in_((GATE, SCHEDULER)))
            .order_by(o.c.id)
        )  # fmt: skip
        facts.events = [event_from_row(row) for row in rows]

        def appointment_state(row, truth: bool) -> AppointmentState:
            return AppointmentState(
                tenant_id=row.tenant_id,
                appointment_id=row.appointment_id,
                job_id=row.job_id,
                customer_id=row.customer_id,
                project_id=row.project_id,
                business_unit=row.business_unit,
                job_type=row.job_type,
                window_start=row.window_start,
                window_end=row.window_end,
                status=row.status,
                confirmation=row.confirmation,
                version=row.version,
                updated_at=row.updated_at,
                customer_reschedules=row.customer_reschedules if truth else None,
            )

        facts.truth_appointments = [
            appointment_state(row, True)
            for row in await conn.execute(
                select(*_columns(appointments, truth=True)).where(
                    scoped(appointments, appointments.c.updated_at)
                )
            )
        ]
        facts.read_appointments = [
            appointment_state(row, False)
            for row in await conn.execute(
                select(*_columns(portal_appointments, truth=False)).where(
                    scoped(portal_appointments, portal_appointments.c.updated_at)
                )
            )
        ]
        await _complete_pairs(conn, facts, appointments, portal_appointments, appointment_state)
        active = func.count().filter(appointments.c.status.in_(ACTIVE_STATUSES))
        counts = {
            (row.tenant_id, row.job_id): row.active
            for row in await conn.execute(
                select(appointments.c.tenant_id, appointments.c.job_id, active.label("active"))
                .where(scoped(appointments))
                .group_by(appointments.c.tenant_id, appointments.c.job_id)
            )
        }
        facts.truth_jobs = [
            JobState(
                row.tenant_id, row.job_id, row.customer_id, row.status, row.version,
                counts.get((row.tenant_id, row.job_id), 0), row.updated_at,
            )
            for row in await conn.execute(select(*_job_columns(jobs)).where(scoped(jobs, jobs.c.updated_at)))
        ]  # fmt: skip
        facts.read_jobs = [
            JobState(
                row.tenant_id, row.job_id, row.customer_id, row.status, row.version,
                row.active_appointments, row.updated_at,
            )
            for row in await conn.execute(
                select(*_job_columns(portal_jobs, "active_appointments")).where(
                    scoped(portal_jobs, portal_jobs.c.updated_at)
                )
            )
        ]  # fmt: skip
        ids = {e.message_id for e in facts.events} | {x.message_id for x in facts.decisions}
        ids |= {s.message_id for s in sent or ()}
        for chunk in _chunks(sorted(ids)):
            rows = await conn.execute(
                select(inbox.c.consumer, inbox.c.message_id).where(inbox.c.message_id.in_(list(chunk)))
            )
            facts.consumed.update((consumer, str(message_id)) for consumer, message_id in rows)
        facts.capacity = await _capacity(conn, tenants)
    return facts


def _columns(table, *, truth: bool) -> list:
    """Only the columns the checks read, so a database a migration behind (or ahead) still reconciles."""
    names = ["tenant_id", "updated_at", *AppointmentState.COMPARED, "appointment_id"]
    if truth:
        names.append("customer_reschedules")
    return [table.c[name] for name in names]


def _job_columns(table, *extra: str) -> list:
    return [
        table.c[name]
        for name in ("tenant_id", "job_id", "customer_id", "status", "version", "updated_at", *extra)
    ]


async def _complete_pairs(conn, facts: Facts, truth_table, read_table, build) -> None:
    """With `since`, a row touched on one side only still needs its counterpart to be compared."""
    from sqlalchemy import select

    if facts.since is None:
        return
    for rows, have, table, truth in (
        (facts.truth_appointments, facts.read_appointments, read_table, False),
        (facts.read_appointments, facts.truth_appointments, truth_table, True),
    ):
        known = {(a.tenant_id, a.appointment_id) for a in have}
        wanted: dict[str, list[str]] = defaultdict(list)
        for a in rows:
            if (a.tenant_id, a.appointment_id) not in known:
                wanted[a.tenant_id].append(a.appointment_id)
        for tenant_id, ids in wanted.items():
            for chunk in _chunks(ids):
                result = await conn.execute(
                    select(*_columns(table, truth=truth)).where(
                        table.c.tenant_id == tenant_id, table.c.appointment_id.in_(list(chunk))
                    )
                )
                have.extend(build(row, truth) for row in result)


async def _capacity(conn, tenants: Sequence[str] | None) -> list[SlotUsage] | None:
    """Each arrival window's capacity, its `booked` counter and the appointments holding a place in it
    (scheduling.capacity_windows, migration 0004)."""
    from sqlalchemy import and_, func, select

    from infra.db.tables import appointments, capacity_windows

    held = (
        select(
            appointments.c.tenant_id,
            appointments.c.business_unit,
            appointments.c.zone,
            appointments.c.window_start,
            func.count().label("held"),
        )
        .where(appointments.c.holds_place)
        .group_by(
            appointments.c.tenant_id,
            appointments.c.business_unit,
            appointments.c.zone,
            appointments.c.window_start,
        )
        .subquery()
    )
    w = capacity_windows
    statement = select(
        w.c.tenant_id, w.c.business_unit, w.c.zone, w.c.starts_at, w.c.capacity, w.c.booked,
        func.coalesce(held.c.held, 0),
    ).select_from(
        w.outerjoin(
            held,
            and_(
                held.c.tenant_id == w.c.tenant_id,
                held.c.business_unit == w.c.business_unit,
                held.c.zone == w.c.zone,
                held.c.window_start == w.c.starts_at,
            ),
        )
    )  # fmt: skip
    if tenants:
        statement = statement.where(w.c.tenant_id.in_(list(tenants)))
    rows = await conn.execute(statement)
    return [
        SlotUsage(tenant, f"{unit}/{zone or '-'}/{starts.isoformat()}", capacity, booked, count)
        for tenant, unit, zone, starts, capacity, booked, count in rows
    ]


async def read_dead_letters(amqp_url: str, namespace: str) -> list[DeadLetterRef]:
    """Every dead letter of the namespace, left where it is (taken without ack, handed back). The auditor,
    which may not read the dead-letter queues, reads its copies of them (which also keep the purged ones)."""
    from aiormq.exceptions import ChannelAccessRefused

    from apptctl import dlq
    from infra.nodes import connect_first
    from infra.topology import audit_copy_of, build

    # the queues work queues dead-letter into (not every queue without a worker is one)
    queues = sorted({spec.dead_letter_queue for spec in build(namespace).queues if spec.dead_letter_queue})
    connection = await connect_first(amqp_url, client_properties={"connection_name": "apptctl-reconcile"})
    async with connection:
        try:
            sweep = await dlq.read(connection, queues)
        except ChannelAccessRefused:
            sweep = await dlq.read(connection, [audit_copy_of(queue) for queue in queues])
    return [dead_letter_ref(letter) for letter in sweep.letters]
