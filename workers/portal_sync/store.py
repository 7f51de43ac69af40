"""Read-store writes. Each is one atomic statement so competing replicas can't interleave badly."""

from sqlalchemy import func, literal, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from infra.db.tables import (
    portal_appointment_offers,
    portal_appointments,
    portal_audit_trail,
    portal_available_windows,
    portal_jobs,
    portal_requests,
)
from workers.portal_sync.projection import TERMINAL_REQUEST_STATUSES, RequestOutcome


async def _upsert_if_newer(conn: AsyncConnection, table, tenant_id: str, row: dict, version: str) -> bool:
    """Insert the row, or overwrite the stored one only when `row[version]` is newer: a late or repeated
    event never moves the read store backwards. True when written."""
    key = [column.name for column in table.primary_key.columns]
    statement = insert(table).values(tenant_id=tenant_id, **row)
    statement = statement.on_conflict_do_update(
        index_elements=key,
        set_={**{k: statement.excluded[k] for k in row if k not in key}, "updated_at": func.now()},
        where=table.c[version] < statement.excluded[version],
    ).returning(literal(1))
    return (await conn.execute(statement)).first() is not None


async def upsert_appointment(conn: AsyncConnection, tenant_id: str, row: dict) -> bool:
    return await _upsert_if_newer(conn, portal_appointments, tenant_id, row, "version")


async def upsert_job(conn: AsyncConnection, tenant_id: str, row: dict) -> bool:
    return await _upsert_if_newer(conn, portal_jobs, tenant_id, row, "version")


async def upsert_offer(conn: AsyncConnection, tenant_id: str, row: dict) -> bool:
    return await _upsert_if_newer(conn, portal_appointment_offers, tenant_id, row, "offer_version")


async def upsert_available_window(conn: AsyncConnection, tenant_id: str, row: dict) -> bool:
    return await _upsert_if_newer(conn, portal_available_windows, tenant_id, row, "version")


async def append_audit(conn: AsyncConnection, tenant_id: str, entry: dict) -> None:
    """Add a line to the audit trail; a redelivered event adds nothing (keyed by its message id)."""
    await conn.execute(
        insert(portal_audit_trail).values(tenant_id=tenant_id, **entry).on_conflict_do_nothing()
    )


async def record_request(
    conn: AsyncConnection, tenant_id: str, outcome: RequestOutcome, requested_at
) -> bool:
    """Pending never overwrites an outcome; the first outcome is final. The request's own details
    (requester, time) are filled in whenever the request itself is seen, whichever came first."""
    table = portal_requests
    statement = insert(table).values(
        tenant_id=tenant_id,
        request_id=outcome.request_id,
        appointment_id=outcome.appointment_id,
        requester_id=outcome.requester_id,
        action=outcome.action,
        status=outcome.status,
        reason_code=outcome.reason_code,
        reason_text=outcome.reason_text,
        requested_at=requested_at,
        reply_to=outcome.reply_to,
    )
    ex = statement.excluded
    terminal = tuple(TERMINAL_REQUEST_STATUSES)
    if outcome.status == "pending":
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.tenant_id, table.c.request_id],
            set_={"requester_id": ex.requester_id, "requested_at": ex.requested_at, "reply_to": ex.reply_to},
        )
    elif outcome.status == "awaiting_approval":
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.tenant_id, table.c.request_id],
            set_={
                "status": ex.status,
                "reason_code": ex.reason_code,
                "reason_text": ex.reason_text,
                "updated_at": func.now(),
            },
            where=table.c.status == "pending",
        )
    else:
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.tenant_id, table.c.request_id],
            set_={
                "status": ex.status,
                "reason_code": ex.reason_code,
                "reason_text": ex.reason_text,
                "updated_at": func.now(),
            },
            where=table.c.status.not_in(terminal),
        )
    return (await conn.execute(statement.returning(literal(1)))).first() is not None


async def claim_reply(conn: AsyncConnection, tenant_id: str, request_id: str):
    """The request's final outcome, if it has one and names a reply queue not yet answered; marks it
    answered in the same transaction, so the reply goes out once whichever event came last."""
    t = portal_requests
    return (
        await conn.execute(
            update(t)
            .where(
                t.c.tenant_id == tenant_id,
                t.c.request_id == request_id,
                t.c.status.in_(tuple(TERMINAL_REQUEST_STATUSES)),
                t.c.reply_to.is_not(None),
                t.c.replied_at.is_(None),
            )
            .values(replied_at=func.now())
            .returning(
                t.c.request_id,
                t.c.appointment_id,
                t.c.action,
                t.c.status,
                t.c.reason_code,
                t.c.reason_text,
                t.c.reply_to,
            )
        )
    ).first()


async def owner_of(
    conn: AsyncConnection, tenant_id: str, appointment_id: str
) -> tuple[str | None, str | None]:
    """(customer, job) of an appointment as the read store knows it, for routing a feed event."""
    t = portal_appointments
    row = (
        await conn.execute(
            select(t.c.customer_id, t.c.job_id).where(
                t.c.tenant_id == tenant_id, t.c.appointment_id == appointment_id
            )
        )
    ).first()
    return (row.customer_id, row.job_id) if row else (None, None)
