"""Read-store writes. Each is one atomic statement so competing replicas can't interleave badly.

They run on the unit of work's asyncpg connection (`uow.driver`) as prepared statements whose SQL is
built once per table and column set from the table definitions: portal_sync handles several deliveries
per request, and building a SQLAlchemy statement per call cost about a third of its CPU.
"""

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import asyncpg
from sqlalchemy import JSON, Table
from sqlalchemy.dialects.postgresql import JSONB

from infra.db.tables import (
    portal_appointment_offers,
    portal_appointments,
    portal_audit_trail,
    portal_available_windows,
    portal_business_units,
    portal_jobs,
    portal_office_outcomes,
)
from workers.portal_sync.projection import (
    REQUEST_RANK,
    TERMINAL_REQUEST_STATUSES,
    RequestOutcome,
    advances_from,
)

_TABLES = {
    table.fullname: table
    for table in (
        portal_appointments,
        portal_jobs,
        portal_appointment_offers,
        portal_available_windows,
        portal_audit_trail,
        portal_business_units,
    )
}


def _is_json(table: Table, column: str) -> bool:
    return isinstance(table.c[column].type, JSON | JSONB)


@lru_cache(maxsize=64)
def _upsert_sql(table_name: str, columns: tuple[str, ...], version: str) -> tuple[str, tuple[bool, ...]]:
    """INSERT ... ON CONFLICT DO UPDATE ... only when newer, for one table and column set; and which
    parameters are JSON (the connection's codec takes JSON text for them)."""
    table = _TABLES[table_name]
    key = [column.name for column in table.primary_key.columns]
    names = ("tenant_id", *columns)
    updates = [f"{c} = EXCLUDED.{c}" for c in columns if c not in key] + ["updated_at = now()"]
    sql = (
        f"INSERT INTO {table_name} AS t ({', '.join(names)}) "
        f"VALUES ({', '.join(f'${i}' for i in range(1, len(names) + 1))}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(updates)} "
        f"WHERE t.{version} < EXCLUDED.{version} RETURNING now()"
    )
    return sql, tuple(_is_json(table, name) for name in names)


def _values(row: dict, json_columns: tuple[bool, ...], tenant_id: str) -> list:
    values = [tenant_id, *row.values()]
    return [
        json.dumps(v) if is_json and v is not None else v
        for v, is_json in zip(values, json_columns, strict=True)
    ]


async def _upsert_if_newer(
    driver: asyncpg.Connection, table: Table, tenant_id: str, row: dict, version: str
) -> datetime | None:
    """Insert the row, or overwrite the stored one only when `row[version]` is newer: a late or repeated
    event never moves the read store backwards. When written, the transaction's clock (`now()`, for the
    feed event that announces it); None when not."""
    sql, json_columns = _upsert_sql(table.fullname, tuple(row), version)
    return await driver.fetchval(sql, *_values(row, json_columns, tenant_id))


async def upsert_business_unit(driver: asyncpg.Connection, tenant_id: str, row: dict) -> datetime | None:
    return await _upsert_if_newer(driver, portal_business_units, tenant_id, row, "capacity_version")


async def upsert_appointment(driver: asyncpg.Connection, tenant_id: str, row: dict) -> datetime | None:
    return await _upsert_if_newer(driver, portal_appointments, tenant_id, row, "version")


async def upsert_job(driver: asyncpg.Connection, tenant_id: str, row: dict) -> datetime | None:
    return await _upsert_if_newer(driver, portal_jobs, tenant_id, row, "version")


async def upsert_offer(driver: asyncpg.Connection, tenant_id: str, row: dict) -> datetime | None:
    return await _upsert_if_newer(driver, portal_appointment_offers, tenant_id, row, "offer_version")


async def upsert_available_window(driver: asyncpg.Connection, tenant_id: str, row: dict) -> datetime | None:
    return await _upsert_if_newer(driver, portal_available_windows, tenant_id, row, "version")


@lru_cache(maxsize=16)
def _append_sql(columns: tuple[str, ...]) -> tuple[str, tuple[bool, ...]]:
    names = ("tenant_id", *columns)
    sql = (
        f"INSERT INTO {portal_audit_trail.fullname} ({', '.join(names)}) "
        f"VALUES ({', '.join(f'${i}' for i in range(1, len(names) + 1))}) ON CONFLICT DO NOTHING"
    )
    return sql, tuple(_is_json(portal_audit_trail, name) for name in names)


async def append_audit(driver: asyncpg.Connection, tenant_id: str, entry: dict) -> None:
    """Add a line to the audit trail; a fact already there adds nothing, whatever message id carries it
    again (keyed by its message id and by its meaning: appointment, entry kind, request, version)."""
    sql, json_columns = _append_sql(tuple(entry))
    await driver.execute(sql, *_values(entry, json_columns, tenant_id))


_TERMINAL = tuple(TERMINAL_REQUEST_STATUSES)
# Keyed by tenant, portal and request id (migration 0017). An outcome event from before the portal travelled
# with it ($11 NULL) means the one request with that id (the old key), or '' when none is known yet.
_RECORD_REQUEST = """
INSERT INTO portal.requests AS t (tenant_id, request_id, appointment_id, requester_id, action, status,
                                  reason_code, reason_text, requested_at, reply_to, producer)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
        COALESCE($11, (SELECT r.producer FROM portal.requests r
                        WHERE r.tenant_id = $1::varchar AND r.request_id = $2::varchar
                        ORDER BY r.producer LIMIT 1), ''))
ON CONFLICT (tenant_id, producer, request_id) DO UPDATE SET {set} {where}
RETURNING now() AS now, t.status, t.reply_to IS NOT NULL AND t.replied_at IS NULL AS reply_owed, t.producer,
          (SELECT a.customer_id FROM portal.appointments a
            WHERE a.tenant_id = t.tenant_id AND a.appointment_id = t.appointment_id) AS customer_id,
          (SELECT a.job_id FROM portal.appointments a
            WHERE a.tenant_id = t.tenant_id AND a.appointment_id = t.appointment_id) AS job_id
"""
_OUTCOME_SET = (
    "status = EXCLUDED.status, reason_code = EXCLUDED.reason_code, reason_text = EXCLUDED.reason_text, "
)


def _advancing_from(status: str) -> str:
    """The WHERE that lets `status` replace only the statuses it outranks (projection.advances_from)."""
    return "WHERE t.status IN (" + ", ".join(f"'{s}'" for s in sorted(advances_from(status))) + ")"


_RECORD_BY_STATUS = {
    # Pending never overwrites an outcome: it only fills in the request's own details, once (a request
    # id re-sent or reused later changes nothing: its first sighting stands).
    "pending": _RECORD_REQUEST.format(
        set="requester_id = EXCLUDED.requester_id, requested_at = EXCLUDED.requested_at, "
        "reply_to = EXCLUDED.reply_to",
        where="WHERE t.requested_at IS NULL",
    ),
    # An outcome replaces only a status of a lower rank (the first terminal outcome is final).
    **{
        status: _RECORD_REQUEST.format(set=_OUTCOME_SET + "updated_at = now()", where=_advancing_from(status))
        for status in REQUEST_RANK
        if status != "pending"
    },
}


@dataclass(frozen=True)
class RecordedRequest:
    now: datetime  # the transaction's clock
    reply_due: bool  # final, with a reply queue not yet answered: claim_reply it
    # The appointment's customer and job as the read store knows them (None before its first event),
    # read in the same statement: where the feed event about the request is routed.
    customer_id: str | None
    job_id: str | None
    producer: str = ""  # the request's portal (the row's key)


async def record_request(
    driver: asyncpg.Connection, tenant_id: str, outcome: RequestOutcome, requested_at
) -> RecordedRequest | None:
    """Pending never overwrites an outcome; the first outcome is final. The request's own details
    (requester, time, reply queue) are filled in whenever the request itself is seen, whichever came
    first. None when nothing was written (a late or repeated outcome: a reply that was due became due,
    and was claimed, when the row last changed)."""
    sql = _RECORD_BY_STATUS[outcome.status]
    row = await driver.fetchrow(
        sql,
        tenant_id,
        outcome.request_id,
        outcome.appointment_id,
        outcome.requester_id,
        outcome.action,
        outcome.status,
        outcome.reason_code,
        outcome.reason_text,
        requested_at,
        outcome.reply_to,
        outcome.producer,
    )
    if row is None:
        return None
    return RecordedRequest(
        row["now"],
        row["reply_owed"] and row["status"] in _TERMINAL,
        row["customer_id"],
        row["job_id"],
        row["producer"],
    )


_CLAIM_REPLY = (
    """
UPDATE portal.requests SET replied_at = now()
 WHERE tenant_id = $1 AND producer = $3 AND request_id = $2 AND reply_to IS NOT NULL AND replied_at IS NULL
   AND status IN ("""
    + ", ".join(f"'{s}'" for s in _TERMINAL)
    + """)
RETURNING request_id, appointment_id, action, status, reason_code, reason_text, reply_to
"""
)


async def claim_reply(driver: asyncpg.Connection, tenant_id: str, request_id: str, producer: str):
    """The request's final outcome, if it has one and names a reply queue not yet answered; marks it
    answered in the same transaction, so the reply goes out once whichever event came last."""
    return await driver.fetchrow(_CLAIM_REPLY, tenant_id, request_id, producer)


_RECORD_OFFICE_OUTCOME = f"""
INSERT INTO {portal_office_outcomes.fullname} (tenant_id, office_message_id, correlation_id, message_type,
       schema_version, status, subject, reason_code, reason_text, current_state, occurred_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT DO NOTHING
RETURNING now()
"""


async def record_office_outcome(driver: asyncpg.Connection, tenant_id: str, row: dict) -> bool:
    """What became of an office message, once (one outcome per office message: a repeat adds nothing)."""
    current = row["current_state"]
    written = await driver.fetchval(
        _RECORD_OFFICE_OUTCOME,
        tenant_id,
        row["office_message_id"],
        row["correlation_id"],
        row["message_type"],
        row["schema_version"],
        row["status"],
        row["subject"],
        row["reason_code"],
        row["reason_text"],
        None if current is None else json.dumps(current),
        row["occurred_at"],
    )
    return written is not None
