"""Read-store writes: what one event writes is ONE statement; a batch of events is one statement per round.

The parts of an event's writes (its appointment, offer, free time, business unit, job, office outcome,
the request it answers with its reply claim, and its audit line) are data-modifying CTEs of one statement:
`WITH appointment AS (INSERT ... SELECT ... FROM unnest($2::varchar[], ...) ON CONFLICT ... RETURNING
...), request AS (...), audit AS (...) SELECT now(), <what each part wrote>`. Every part takes its rows
as arrays (`unnest`), so the same statement writes one event's rows or those of every event of a batch
(`workers/runtime/batch.py` hands portal_sync up to APPT_BATCH_MAX deliveries in one transaction):
one round trip instead of one per row. PostgreSQL runs every part exactly once, on one snapshot, and the
statement is atomic, so competing replicas can't interleave badly. The SQL is built once per shape (which
parts, which columns) from the table definitions and prepared once per connection; values are only ever
parameters.

Rounds: one statement must not write one row twice (ON CONFLICT DO UPDATE refuses it) and its parts do not
see each other's rows, so events of a batch that touch the same row (an appointment, a request, an offer,
a job, a free time) go in separate statements, in their order: each round holds at most one event per
row, and the result is the one the events would have had one by one.

The guarantees each part keeps:
- version-gated upserts: a row is overwritten only by a newer version (a late, repeated or reordered event
  never moves the portal backwards); the result says which events' rows were written;
- a request's status only moves up its rank (`projection.advances_from`); pending only fills in the
  request's own details, once;
- the reply is claimed in the request's own part (`replied_at` set where the row becomes final with a
  reply queue not yet answered), so it goes out once whichever of the request and its outcome came last;
- an audit line once per fact (its message id and its meaning are unique); a request's own line only with
  its first sighting (the request part wrote its row);
- tenant row-level security: every row carries the transaction's one tenant (batches are per tenant).

`PortalStore` is what the handler needs, as a protocol; `PostgresPortalStore` runs the statements below on
a unit of work's transaction and `of(uow)` gives the handler its store (tests/fakes/portal_store.py is the
in-memory one, held to the same behaviour by tests/integration/test_store_fakes.py).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Protocol

import asyncpg
from sqlalchemy import ARRAY, JSON, DateTime, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB

from infra.db.tables import (
    portal_appointment_offers,
    portal_appointments,
    portal_audit_trail,
    portal_available_windows,
    portal_business_units,
    portal_jobs,
    portal_office_outcomes,
    portal_requests,
)
from workers.portal_sync.projection import RequestOutcome
from workers.runtime.database import UnitOfWork

# The version-gated parts: CTE name -> (table, version column).
_UPSERTS = {
    "appointment": (portal_appointments, "version"),
    "offer": (portal_appointment_offers, "offer_version"),
    "available_window": (portal_available_windows, "version"),
    "business_unit": (portal_business_units, "capacity_version"),
    "job": (portal_jobs, "version"),
}
_TABLES = {
    **{name: table for name, (table, _) in _UPSERTS.items()},
    "office_outcome": portal_office_outcomes,
    "request": portal_requests,
    "audit": portal_audit_trail,
}
_REQUEST_COLUMNS = (
    "request_id",
    "appointment_id",
    "requester_id",
    "action",
    "status",
    "reason_code",
    "reason_text",
    "requested_at",
    "reply_to",
    "producer",
)
_DIALECT = postgresql.dialect()


def _key(table: Table) -> list[str]:
    """The primary key without the tenant (a batch is one tenant's)."""
    return [c.name for c in table.primary_key.columns if c.name != "tenant_id"]


def _sql_type(table: Table, column: str) -> str:
    return table.c[column].type.compile(dialect=_DIALECT)


def _is_json(table: Table, column: str) -> bool:
    return isinstance(table.c[column].type, JSON | JSONB)


def _is_array(table: Table, column: str) -> bool:
    return isinstance(table.c[column].type, ARRAY)


def _unnest(table: Table, columns: Sequence[str], first: int, extra: Sequence[str] = ()) -> str:
    """`unnest($first::type[], ...) AS u(columns..., extra...)`: the rows as one array per column. An
    array column travels as JSONB (unnest would flatten an array of arrays)."""
    types = ["JSONB" if _is_array(table, c) else _sql_type(table, c) for c in columns] + ["BOOLEAN"] * len(
        extra
    )
    arrays = ", ".join(f"${first + i}::{t}[]" for i, t in enumerate(types))
    return f"unnest({arrays}) AS u({', '.join([*columns, *extra])})"


# A request's portal (its key with the tenant and request id, migration 0017): an outcome event from
# before the portal travelled with it (NULL) means the one request with that id, or '' when none is known.
_REQUEST_PRODUCER = (
    "COALESCE(u.producer, (SELECT r.producer FROM portal.requests r WHERE r.tenant_id = $1::VARCHAR(64) "
    "AND r.request_id = u.request_id ORDER BY r.producer LIMIT 1), '')"
)


def _select_list(table: Table, columns: Sequence[str], tenant_param: str) -> str:
    def column(c: str) -> str:
        if _is_array(table, c):
            element = _sql_type(table, c)
            return f"ARRAY(SELECT jsonb_array_elements_text(u.{c}))::{element}"
        if table is portal_requests and c == "producer":
            return _REQUEST_PRODUCER
        return f"u.{c}"

    return ", ".join([f"{tenant_param}::{_sql_type(table, 'tenant_id')}", *(column(c) for c in columns)])


def _into(table: Table, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table.fullname} AS t ({', '.join(['tenant_id', *columns])}) "


def _upsert_part(name: str, columns: tuple[str, ...], first: int) -> str:
    """INSERT ... ON CONFLICT DO UPDATE ... only when newer; returns the keys of the rows it wrote."""
    table, version = _UPSERTS[name]
    key = _key(table)
    updates = [f"{c} = EXCLUDED.{c}" for c in columns if c not in key] + ["updated_at = now()"]
    return (
        _into(table, columns)
        + f"SELECT {_select_list(table, columns, '$1')} FROM {_unnest(table, columns, first)} "
        f"ON CONFLICT (tenant_id, {', '.join(key)}) DO UPDATE SET {', '.join(updates)} "
        f"WHERE t.{version} < EXCLUDED.{version} RETURNING {', '.join(f't.{k}' for k in key)}"
    )


def _office_outcome_part(columns: tuple[str, ...], first: int) -> str:
    table = portal_office_outcomes
    return (
        _into(table, columns)
        + f"SELECT {_select_list(table, columns, '$1')} FROM {_unnest(table, columns, first)} "
        "ON CONFLICT DO NOTHING RETURNING t.office_message_id"
    )


# projection.REQUEST_RANK and TERMINAL_REQUEST_STATUSES in SQL, written out (no value is pasted into SQL
# text; tests/unit/test_projection.py checks that they agree): an outcome replaces only the statuses it
# outranks, and pending only fills in the details of a request not seen yet.
_PENDING = "EXCLUDED.status = 'pending'"
_REQUEST_WRITTEN_WHEN = (
    "(EXCLUDED.status = 'pending' AND t.requested_at IS NULL)"
    " OR (EXCLUDED.status = 'awaiting_approval' AND t.status IN ('pending'))"
    " OR (EXCLUDED.status = 'completed' AND t.status IN ('awaiting_approval', 'pending'))"
    " OR (EXCLUDED.status = 'failed' AND t.status IN ('awaiting_approval', 'pending'))"
    " OR (EXCLUDED.status = 'rejected' AND t.status IN ('awaiting_approval', 'pending'))"
)
# The reply is claimed where the row becomes final with a reply queue not yet answered: a final outcome
# for a request whose queue is known, or the request (its queue) after its final outcome.
_CLAIM_REPLY = (
    "replied_at = CASE WHEN t.replied_at IS NULL AND ("
    "(EXCLUDED.status = 'pending' AND EXCLUDED.reply_to IS NOT NULL"
    " AND t.status IN ('completed', 'failed', 'rejected'))"
    " OR (EXCLUDED.status IN ('completed', 'failed', 'rejected') AND t.reply_to IS NOT NULL)"
    ") THEN now() ELSE t.replied_at END"
)
_TERMINAL_SQL = "('completed', 'failed', 'rejected')"


def _request_part(first: int) -> str:
    """The requests, whatever their status: pending only fills in the request's own details, once (a
    request id re-sent or reused later changes nothing: its first sighting stands), and an outcome that
    came first then owes its reply; an outcome replaces only a status it outranks (the first terminal
    outcome is final), and becoming final with a reply queue not yet answered claims the reply."""
    table = portal_requests
    columns = _REQUEST_COLUMNS

    def when_pending(column: str) -> str:
        return f"{column} = CASE WHEN {_PENDING} THEN EXCLUDED.{column} ELSE t.{column} END"

    def when_outcome(column: str) -> str:
        return f"{column} = CASE WHEN {_PENDING} THEN t.{column} ELSE EXCLUDED.{column} END"

    updates = ", ".join(
        [
            *(when_pending(c) for c in ("requester_id", "requested_at", "reply_to")),
            *(when_outcome(c) for c in ("status", "reason_code", "reason_text")),
            f"updated_at = CASE WHEN {_PENDING} THEN t.updated_at ELSE now() END",
            _CLAIM_REPLY,
        ]
    )
    # `replied_at = now()` on a row this statement wrote means this statement claimed the reply: an
    # earlier claim in the same transaction (a batch) left the row final, and a final row is never
    # written again (no status outranks it; pending needs requested_at unset, which a reply queue never
    # has), so it cannot come back with that claim.
    return (
        _into(table, columns)
        + f"SELECT {_select_list(table, columns, '$1')} FROM {_unnest(table, columns, first)} "
        f"ON CONFLICT (tenant_id, producer, request_id) DO UPDATE SET {updates} "
        f"WHERE {_REQUEST_WRITTEN_WHEN} "
        "RETURNING t.request_id, t.producer, t.appointment_id, t.action, t.status, t.reason_code, "
        "t.reason_text, "
        "t.reply_to, t.replied_at IS NOT NULL AND t.replied_at = now() AS reply_claimed, "
        "(SELECT a.customer_id FROM portal.appointments a "
        "WHERE a.tenant_id = t.tenant_id AND a.appointment_id = t.appointment_id) AS customer_id, "
        "(SELECT a.job_id FROM portal.appointments a "
        "WHERE a.tenant_id = t.tenant_id AND a.appointment_id = t.appointment_id) AS job_id"
    )


def _audit_part(columns: tuple[str, ...], first: int, with_request: bool) -> str:
    """A line once per fact; a request's own line (`own`) only when the request part wrote its row."""
    table = portal_audit_trail
    unnest = _unnest(table, columns, first, extra=("own",))
    where = " WHERE NOT u.own OR u.request_id IN (SELECT request_id FROM request)" if with_request else ""
    return (
        _into(table, columns)
        + f"SELECT {_select_list(table, columns, '$1')} FROM {unnest}{where} ON CONFLICT DO NOTHING"
    )


# A part's shape: (name, its columns). A statement is built once per tuple of shapes.
Shape = tuple[str, tuple[str, ...]]


def _part_sql(shape: Shape, first: int, names: frozenset[str]) -> str:
    name, columns = shape
    if name in _UPSERTS:
        return _upsert_part(name, columns, first)
    if name == "office_outcome":
        return _office_outcome_part(columns, first)
    if name == "request":
        return _request_part(first)
    if name == "audit":
        return _audit_part(columns, first, "request" in names)
    raise ValueError(f"unknown read-store part {name!r}")


def _arity(shape: Shape) -> int:
    name, columns = shape
    return len(columns) + (1 if name == "audit" else 0)


def _written_column(name: str) -> str:
    """What the main SELECT reports of a part: the keys it wrote (JSON), or the request rows."""
    if name == "request":
        return "(SELECT json_agg(request) FROM request) AS request"
    keys = _key(_TABLES[name])
    return f"(SELECT json_agg(json_build_array({', '.join(keys)})) FROM {name}) AS {name}"


@lru_cache(maxsize=128)
def statement_sql(shapes: tuple[Shape, ...]) -> str:
    """The one statement for these parts ($1 is the tenant; then each part's arrays)."""
    names = frozenset(name for name, _ in shapes)
    ctes, first = [], 2
    for shape in shapes:
        ctes.append(f"{shape[0]} AS ({_part_sql(shape, first, names)})")
        first += _arity(shape)
    reported = [_written_column(name) for name, _ in shapes if name != "audit"]
    return f"WITH {', '.join(ctes)} SELECT {', '.join(['now() AS now', *reported])}"


@dataclass(frozen=True)
class Writes:
    """What one event writes into the read store (projection's rows; None: nothing of that kind)."""

    appointment: dict | None = None
    offer: dict | None = None
    available_window: dict | None = None
    business_unit: dict | None = None
    job: dict | None = None
    office_outcome: dict | None = None
    request: RequestOutcome | None = None
    requested_at: datetime | None = None  # set when the event is the request itself
    audit: dict | None = None
    # The audit line is the request's own: written only with the request's first sighting.
    audit_if_recorded: bool = False

    def rows(self) -> dict[str, dict]:
        """Each part's row, in a fixed order."""
        rows = {name: getattr(self, name) for name in (*_UPSERTS, "office_outcome")}
        if self.request is not None:
            r = self.request
            rows["request"] = dict(
                request_id=r.request_id,
                appointment_id=r.appointment_id,
                requester_id=r.requester_id,
                action=r.action,
                status=r.status,
                reason_code=r.reason_code,
                reason_text=r.reason_text,
                requested_at=self.requested_at,
                reply_to=r.reply_to,
                producer=r.producer,
            )
        if self.audit is not None:
            rows["audit"] = {**self.audit, "own": self.audit_if_recorded and self.request is not None}
        return {name: row for name, row in rows.items() if row is not None}

    def touches(self) -> set[tuple[str, tuple]]:
        """The rows it writes or reads (its request's appointment: where the request's feed event goes):
        two events that share one go in separate rounds."""
        touched = set()
        for name, row in self.rows().items():
            if name in _UPSERTS:
                touched.add((name, tuple(row[k] for k in _key(_TABLES[name]))))
        if self.request is not None:
            # By request id alone: an outcome without its portal finds the request's row by id, so it
            # must come after the request's own statement.
            touched.add(("request", (self.request.request_id,)))
            touched.add(("appointment", (self.request.appointment_id,)))
        return touched


def _parameter(table: Table, column: str, value):
    if value is not None and (_is_json(table, column) or _is_array(table, column)):
        return json.dumps(value)
    return value


@dataclass(frozen=True)
class RecordedRequest:
    status: str  # the row's, after the statement
    # The appointment's customer and job as the read store knew them before this statement (None before
    # its first event): where the feed event about the request goes when the event has no snapshot.
    customer_id: str | None
    job_id: str | None
    # The request's final outcome when this statement claimed its reply (send it); else None.
    reply: dict | None
    producer: str = ""  # the request's portal (the row's key)


@dataclass(frozen=True)
class Written:
    """What the statement changed for one event."""

    now: datetime | None  # the transaction's clock (None: there was nothing to write)
    rows: frozenset[str] = field(default_factory=frozenset)  # the upsert parts that wrote its row
    request: RecordedRequest | None = None  # the request part wrote its row

    def __contains__(self, part: str) -> bool:
        return part in self.rows


_REPLY_FIELDS = ("request_id", "appointment_id", "action", "status", "reason_code", "reason_text", "reply_to")


def rounds(batch: Sequence[Writes]) -> list[list[int]]:
    """The events' indexes, in rounds: an event goes in the round after the last one holding an event that
    touches a row it touches (so every row sees the events in their order)."""
    last_round: dict[tuple[str, tuple], int] = {}
    placed: list[list[int]] = []
    for index, writes in enumerate(batch):
        touched = writes.touches()
        round_ = 1 + max((last_round.get(t, -1) for t in touched), default=-1)
        for t in touched:
            last_round[t] = round_
        while len(placed) <= round_:
            placed.append([])
        placed[round_].append(index)
    return placed


def _normalized(table: Table, keys: list[str], values: list) -> tuple:
    """A key as the statement reported it (JSON) in Python's terms."""
    return tuple(
        datetime.fromisoformat(v) if isinstance(table.c[k].type, DateTime) and isinstance(v, str) else v
        for k, v in zip(keys, values, strict=True)
    )


def _decoded(value):
    """json as SQLAlchemy's asyncpg codec decodes it, or as plain asyncpg does (text)."""
    return json.loads(value) if isinstance(value, str) else (value or [])


async def _write_round(driver: asyncpg.Connection, tenant_id: str, batch: list[Writes]) -> list[Written]:
    rows = [writes.rows() for writes in batch]
    names = [
        name for name in (*_UPSERTS, "office_outcome", "request", "audit") if any(name in r for r in rows)
    ]
    if not names:
        return [Written(None) for _ in batch]
    shapes: list[Shape] = []
    parameters: list = [tenant_id]
    for name in names:
        table = _TABLES[name]
        part_rows = [r[name] for r in rows if name in r]
        columns = _REQUEST_COLUMNS if name == "request" else _columns(table, part_rows)
        shapes.append((name, columns))
        for column in columns:
            parameters.append([_parameter(table, column, row.get(column)) for row in part_rows])
        if name == "audit":
            parameters.append([row["own"] for row in part_rows])
    result = await driver.fetchrow(statement_sql(tuple(shapes)), *parameters)
    written_keys = {
        name: {_normalized(_TABLES[name], _key(_TABLES[name]), k) for k in _decoded(result[name])}
        for name in names
        if name not in ("request", "audit")
    }
    requests = {r["request_id"]: r for r in _decoded(result["request"])} if "request" in names else {}
    outcomes = []
    for writes, row in zip(batch, rows, strict=True):
        wrote = frozenset(
            name
            for name, keys in written_keys.items()
            if name in row and tuple(row[name][k] for k in _key(_TABLES[name])) in keys
        )
        recorded = None
        if writes.request is not None and (r := requests.get(writes.request.request_id)) is not None:
            reply = {k: r[k] for k in _REPLY_FIELDS} if r["reply_claimed"] else None
            recorded = RecordedRequest(r["status"], r["customer_id"], r["job_id"], reply, r["producer"])
        outcomes.append(Written(result["now"], wrote, recorded))
    return outcomes


def _columns(table: Table, rows: list[dict]) -> tuple[str, ...]:
    """Every column any of the rows sets, in the table's order (a row without one sets NULL)."""
    used = {c for row in rows for c in row if c != "own"}
    return tuple(c.name for c in table.columns if c.name in used)


async def write_many(driver: asyncpg.Connection, tenant_id: str, batch: Sequence[Writes]) -> list[Written]:
    """Everything the events of one tenant's transaction write: one statement per round (one for a batch
    whose events touch distinct rows), results in the events' order."""
    results: list[Written | None] = [None] * len(batch)
    for indexes in rounds(batch):
        written = await _write_round(driver, tenant_id, [batch[i] for i in indexes])
        for index, one in zip(indexes, written, strict=True):
            results[index] = one
    return [r if r is not None else Written(None) for r in results]


async def write(driver: asyncpg.Connection, tenant_id: str, writes: Writes) -> Written:
    """One event's writes, in one statement (nothing at all when it writes nothing)."""
    return (await write_many(driver, tenant_id, [writes]))[0]


class PortalStore(Protocol):
    """The read store as portal_sync's handler uses it, on one transaction (a unit of work's)."""

    async def write(self, tenant_id: str, writes: Writes) -> Written:
        """Project one event (what it writes, what the read store took of it)."""
        ...

    async def write_many(self, tenant_id: str, batch: Sequence[Writes]) -> list[Written]:
        """Project the events of one tenant's batch, in their order; results in that order."""
        ...


class PostgresPortalStore:
    """`PortalStore` on a unit of work's transaction: the statements above, through its one handle."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def write(self, tenant_id: str, writes: Writes) -> Written:
        return await write(self._uow.driver, tenant_id, writes)

    async def write_many(self, tenant_id: str, batch: Sequence[Writes]) -> list[Written]:
        return await write_many(self._uow.driver, tenant_id, batch)


def of(uow: UnitOfWork) -> PortalStore:
    """The read store in this unit of work: the one it carries (a test's `FakeUnitOfWork` holds an
    in-memory store), else PostgreSQL on its transaction."""
    carried = getattr(uow, "store", None)
    return carried if carried is not None else PostgresPortalStore(uow)
