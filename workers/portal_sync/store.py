"""Read-store writes. Each is one atomic statement so competing replicas can't interleave badly."""

from sqlalchemy import func, literal
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from infra.db.tables import portal_appointments, portal_jobs, portal_requests
from workers.portal_sync.projection import TERMINAL_REQUEST_STATUSES, RequestOutcome


async def upsert_appointment(conn: AsyncConnection, tenant_id: str, row: dict) -> bool:
    """Write the appointment unless the stored version is the same or newer; True when written."""
    statement = insert(portal_appointments).values(tenant_id=tenant_id, **row)
    statement = statement.on_conflict_do_update(
        index_elements=[portal_appointments.c.tenant_id, portal_appointments.c.appointment_id],
        set_={**{k: statement.excluded[k] for k in row if k != "appointment_id"}, "updated_at": func.now()},
        where=portal_appointments.c.version < statement.excluded.version,
    ).returning(literal(1))
    return (await conn.execute(statement)).first() is not None


async def upsert_job(conn: AsyncConnection, tenant_id: str, row: dict) -> bool:
    statement = insert(portal_jobs).values(tenant_id=tenant_id, **row)
    statement = statement.on_conflict_do_update(
        index_elements=[portal_jobs.c.tenant_id, portal_jobs.c.job_id],
        set_={**{k: statement.excluded[k] for k in row if k != "job_id"}, "updated_at": func.now()},
        where=portal_jobs.c.version < statement.excluded.version,
    ).returning(literal(1))
    return (await conn.execute(statement)).first() is not None


async def record_request(
    conn: AsyncConnection, tenant_id: str, outcome: RequestOutcome, requested_at
) -> None:
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
    )
    ex = statement.excluded
    terminal = tuple(TERMINAL_REQUEST_STATUSES)
    if outcome.status == "pending":
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.tenant_id, table.c.request_id],
            set_={"requester_id": ex.requester_id, "requested_at": ex.requested_at},
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
    await conn.execute(statement)
