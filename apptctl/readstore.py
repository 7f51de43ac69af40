"""What the portal shows: read-store queries used by the demo, the e2e tests and operators."""

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from sqlalchemy import bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.db.tables import portal_appointments, portal_jobs, portal_office_outcomes, portal_requests


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


@dataclass(frozen=True)
class OfferView:
    """What the portal offers for an appointment right now (the view `portal.offers_now`)."""

    appointment_id: str
    offer_version: int
    modify_offered: bool
    reschedule_offered: bool
    reschedule_needs_approval: bool
    reschedule_reason_code: str | None
    reschedule_reason: str | None
    cancel_offered: bool
    cancel_needs_approval: bool
    cancel_reason_code: str | None
    cancel_reason: str | None
    offer_changes_at: datetime | None


OFFERS_NOW = text(
    "SELECT appointment_id, offer_version, modify_offered, reschedule_offered, reschedule_needs_approval, "
    "reschedule_reason_code, reschedule_reason, cancel_offered, cancel_needs_approval, cancel_reason_code, "
    "cancel_reason, offer_changes_at FROM portal.offers_now "
    "WHERE tenant_id = :tenant_id AND appointment_id IN :ids"
).bindparams(bindparam("ids", expanding=True))


async def offers(engine: AsyncEngine, tenant_id: str, ids: list[str]) -> dict[str, OfferView]:
    async with engine.connect() as conn:
        rows = await conn.execute(OFFERS_NOW, {"tenant_id": tenant_id, "ids": list(ids)})
        return {r.appointment_id: OfferView(*r) for r in rows}


@dataclass(frozen=True)
class PickableWindow:
    starts_at: datetime
    ends_at: datetime
    free: int


PICKABLE = text(
    "SELECT starts_at, ends_at, free FROM portal.pickable_windows "
    "WHERE tenant_id = :tenant_id AND appointment_id = :appointment_id ORDER BY starts_at"
)


async def pickable_windows(engine: AsyncEngine, tenant_id: str, appointment_id: str) -> list[PickableWindow]:
    """The times the portal lets the customer pick for this appointment now (free places, lead time,
    horizon, project dates; empty while a reschedule is not offered)."""
    async with engine.connect() as conn:
        rows = await conn.execute(PICKABLE, {"tenant_id": tenant_id, "appointment_id": appointment_id})
        return [PickableWindow(*r) for r in rows]


@dataclass(frozen=True)
class AuditLine:
    occurred_at: datetime
    entry: str
    actor: str
    request_id: str | None
    action: str | None
    reason_code: str | None
    reason_text: str | None
    window_start: datetime | None
    window_end: datetime | None
    previous_window_start: datetime | None
    status: str | None
    version: int | None
    rule: str | None  # for the gate's answers: which rule and setting (at which level) decided
    setting: str | None
    setting_level: str | None


AUDIT = text(
    "SELECT a.occurred_at, a.entry, a.actor, a.request_id, a.action, a.reason_code, a.reason_text, "
    "a.window_start, a.window_end, a.previous_window_start, a.status, a.version, "
    "CASE WHEN a.entry IN ('rejected','awaiting_approval','rescheduled','canceled') THEN d.rule END, "
    "CASE WHEN a.entry IN ('rejected','awaiting_approval','rescheduled','canceled') THEN d.setting END, "
    "CASE WHEN a.entry IN ('rejected','awaiting_approval','rescheduled','canceled') THEN d.setting_level END "
    "FROM portal.audit_trail a "
    "LEFT JOIN policy.decisions d ON d.tenant_id = a.tenant_id AND d.request_id = a.request_id "
    "WHERE a.tenant_id = :tenant_id AND a.appointment_id = :appointment_id "
    "ORDER BY a.occurred_at, a.recorded_at"
)


async def audit_trail(engine: AsyncEngine, tenant_id: str, appointment_id: str) -> list[AuditLine]:
    """Everything that happened to an appointment, in order, with the rule behind each answer."""
    async with engine.connect() as conn:
        rows = await conn.execute(AUDIT, {"tenant_id": tenant_id, "appointment_id": appointment_id})
        return [AuditLine(*r) for r in rows]


async def request(
    engine: AsyncEngine, tenant_id: str, request_id: str, producer: str | None = None
) -> RequestView | None:
    """The read store's row of the request (request ids are per portal: `producer`'s, or any portal's)."""
    t = portal_requests
    query = select(t.c.request_id, t.c.status, t.c.reason_code, t.c.reason_text).where(
        t.c.tenant_id == tenant_id, t.c.request_id == request_id
    )
    if producer is not None:
        query = query.where(t.c.producer == producer)
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
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
    from workers.runtime.database import UnitOfWork

    async with UnitOfWork(engine, "apptctl") as uow:  # read only: rolled back
        return await layer_version(uow.driver, tenant_id, level, key)


@dataclass(frozen=True)
class OfficeOutcomeView:
    """What became of one office message (portal.office_outcomes)."""

    office_message_id: UUID
    message_type: str
    status: str
    subject: str | None
    reason_code: str | None
    reason_text: str | None
    current_state: dict | None


async def office_outcome(
    engine: AsyncEngine, tenant_id: str, office_message_id: UUID
) -> OfficeOutcomeView | None:
    t = portal_office_outcomes
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    t.c.office_message_id,
                    t.c.message_type,
                    t.c.status,
                    t.c.subject,
                    t.c.reason_code,
                    t.c.reason_text,
                    t.c.current_state,
                ).where(t.c.tenant_id == tenant_id, t.c.office_message_id == office_message_id)
            )
        ).first()
        return None if row is None else OfficeOutcomeView(*row)
