"""What the portal shows: read-store queries used by the demo, the e2e tests and operators."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.db.tables import portal_appointments, portal_jobs, portal_requests


@dataclass(frozen=True)
class AppointmentView:
    appointment_id: str
    job_id: str
    window_start: datetime
    window_end: datetime
    status: str
    confirmation: str
    version: int


@dataclass(frozen=True)
class RequestView:
    request_id: str
    status: str
    reason_code: str | None
    reason_text: str | None


async def appointments(engine: AsyncEngine, tenant_id: str, ids: list[str]) -> dict[str, AppointmentView]:
    t = portal_appointments
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(
                t.c.appointment_id,
                t.c.job_id,
                t.c.window_start,
                t.c.window_end,
                t.c.status,
                t.c.confirmation,
                t.c.version,
            ).where(t.c.tenant_id == tenant_id, t.c.appointment_id.in_(ids))
        )
        return {r.appointment_id: AppointmentView(*r) for r in rows}


async def request(engine: AsyncEngine, tenant_id: str, request_id: str) -> RequestView | None:
    t = portal_requests
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(t.c.request_id, t.c.status, t.c.reason_code, t.c.reason_text).where(
                    t.c.tenant_id == tenant_id, t.c.request_id == request_id
                )
            )
        ).first()
    return RequestView(*row) if row else None


async def job_status(engine: AsyncEngine, tenant_id: str, job_id: str) -> str | None:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                select(portal_jobs.c.status).where(
                    portal_jobs.c.tenant_id == tenant_id, portal_jobs.c.job_id == job_id
                )
            )
        ).scalar_one_or_none()


async def settings_version(
    engine: AsyncEngine, tenant_id: str, level: str = "business", key: str | None = None
) -> int | None:
    """The version of one of the business's settings layers (its own by default), if it has one."""
    from workers.policy_gate.store import layer_version

    async with engine.connect() as conn:
        return await layer_version(conn, tenant_id, level, key)
