"""Read-store queries for the API, each scoped by tenant (row-level security) and customer (in SQL).

Each runs in a transaction that sets the tenant: another tenant's or customer's rows are simply not
found."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.common import ArrivalWindow
from portal_api import models
from workers.runtime.database import TENANT_SETTING

UTC_ZONE = "UTC"


@asynccontextmanager
async def tenant_transaction(engine: AsyncEngine, tenant_id: str) -> AsyncIterator[AsyncConnection]:
    """One transaction that sees only `tenant_id`'s rows (the policies compare with the setting)."""
    async with engine.begin() as conn:
        await conn.execute(
            text("SELECT set_config(:name, :tenant, true)"), {"name": TENANT_SETTING, "tenant": tenant_id}
        )
        yield conn


_APPOINTMENT_COLUMNS = (
    "a.appointment_id, a.job_id, a.customer_id, a.business_unit, a.job_type, a.window_start, a.window_end, "
    "a.status, a.confirmation, a.version, a.updated_at, coalesce(u.time_zone, 'UTC') AS time_zone, "
    "n.reschedule_offered, n.reschedule_needs_approval, n.reschedule_reason_code, n.reschedule_reason, "
    "n.cancel_offered, n.cancel_needs_approval, n.cancel_reason_code, n.cancel_reason, n.offer_changes_at, "
    "coalesce(o.cancel_reason_required, false) AS cancel_reason_required, o.cancel_reasons"
)
_APPOINTMENT_FROM = (
    "FROM portal.appointments a "
    "LEFT JOIN portal.business_units u ON u.tenant_id = a.tenant_id AND u.business_unit = a.business_unit "
    "LEFT JOIN portal.offers_now n ON n.tenant_id = a.tenant_id AND n.appointment_id = a.appointment_id "
    "LEFT JOIN portal.appointment_offers o "
    "ON o.tenant_id = a.tenant_id AND o.appointment_id = a.appointment_id "
)
# Who may act on an appointment: its customer, or a named contact of its project (the gate's ownership
# rule; the gate's offer lists them, so the read store never disagrees with the gate).
_ACTS_ON = "(a.customer_id = :customer OR :customer = ANY(o.contact_ids))"
CUSTOMER_UPCOMING = text(
    f"SELECT {_APPOINTMENT_COLUMNS} {_APPOINTMENT_FROM}"
    f"WHERE a.tenant_id = :tenant AND {_ACTS_ON} AND a.window_end > now() "
    "ORDER BY a.window_start, a.appointment_id"
)
ONE_APPOINTMENT = text(
    f"SELECT {_APPOINTMENT_COLUMNS} {_APPOINTMENT_FROM}"
    f"WHERE a.tenant_id = :tenant AND a.appointment_id = :appointment AND {_ACTS_ON}"
)
TENANT_UPCOMING = text(
    f"SELECT {_APPOINTMENT_COLUMNS} {_APPOINTMENT_FROM}"
    "WHERE a.tenant_id = :tenant AND a.window_end > now() ORDER BY a.window_start, a.appointment_id LIMIT 500"
)
APPOINTMENTS_BY_ID = text(
    f"SELECT {_APPOINTMENT_COLUMNS} {_APPOINTMENT_FROM}"
    "WHERE a.tenant_id = :tenant AND a.appointment_id IN :ids"
).bindparams(bindparam("ids", expanding=True))
CUSTOMER_JOBS = text(
    "SELECT job_id, status, version FROM portal.jobs WHERE tenant_id = :tenant AND (customer_id = :customer "
    "OR job_id IN (SELECT c.job_id FROM portal.appointment_offers c "
    "WHERE c.tenant_id = :tenant AND :customer = ANY(c.contact_ids)))"
)
PICKABLE = text(
    "SELECT starts_at, ends_at, free FROM portal.pickable_windows "
    "WHERE tenant_id = :tenant AND appointment_id = :appointment "
    "AND (customer_id = :customer OR EXISTS (SELECT 1 FROM portal.appointment_offers c "
    "WHERE c.tenant_id = :tenant AND c.appointment_id = :appointment AND :customer = ANY(c.contact_ids))) "
    "ORDER BY starts_at LIMIT 200"
)
# Request ids are per tenant and portal (`producer`): a portal reads its own; the office names the portal
# when several have used the id (NULL: any, at most two rows to tell).
REQUEST_STATE = text(
    "SELECT r.request_id, r.appointment_id, r.action, r.status, r.reason_code, r.reason_text, r.updated_at, "
    "r.producer FROM portal.requests r WHERE r.tenant_id = :tenant AND r.request_id = :request "
    "AND (CAST(:producer AS text) IS NULL OR r.producer = :producer) ORDER BY r.producer LIMIT 2"
)
OWN_REQUEST = text(
    "SELECT request_id, appointment_id, action FROM portal_api.requests "
    "WHERE tenant_id = :tenant AND producer = :producer AND request_id = :request AND customer_id = :customer"
)
REQUEST_OF_CUSTOMER = text(
    "SELECT r.request_id FROM portal.requests r "
    "JOIN portal.appointments a ON a.tenant_id = r.tenant_id AND a.appointment_id = r.appointment_id "
    "WHERE r.tenant_id = :tenant AND r.producer = :producer AND r.request_id = :request "
    "AND (a.customer_id = :customer OR r.requester_id = :customer)"
)
APPROVALS = text(
    "SELECT r.request_id, r.producer, r.appointment_id, a.customer_id, r.requester_id, r.action, "
    "r.reason_code, r.reason_text, r.requested_at FROM portal.requests r "
    "LEFT JOIN portal.appointments a ON a.tenant_id = r.tenant_id AND a.appointment_id = r.appointment_id "
    "WHERE r.tenant_id = :tenant AND r.status = 'awaiting_approval' ORDER BY r.requested_at, r.request_id "
    "LIMIT 200"
)
RECENT_CHANGES = text(
    "SELECT occurred_at, appointment_id, entry, actor, action, status, request_id, reason_text, window_start "
    "FROM portal.audit_trail WHERE tenant_id = :tenant ORDER BY occurred_at DESC LIMIT 30"
)


def local(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone)


def zone_of(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError):
        return ZoneInfo(UTC_ZONE)


def local_window(start: datetime, end: datetime, zone_name: str) -> models.LocalWindow:
    zone = zone_of(zone_name)
    return models.LocalWindow(start=local(start, zone), end=local(end, zone), time_zone=zone.key)


def _action(offered, needs_approval, code, reason) -> models.ActionOffer:
    if offered is None:  # no offer computed yet: nothing may be done until the gate said so
        return models.ActionOffer(
            offered=False,
            needs_approval=False,
            reason_code="offer_not_ready",
            reason="Online changes are not available for this appointment yet. Please try again shortly.",
        )
    return models.ActionOffer(
        offered=bool(offered), needs_approval=bool(needs_approval), reason_code=code, reason=reason
    )


def appointment(row) -> models.Appointment:
    return models.Appointment(**_appointment_fields(row))


def _appointment_fields(row) -> dict:
    reschedule = _action(
        row.reschedule_offered,
        row.reschedule_needs_approval,
        row.reschedule_reason_code,
        row.reschedule_reason,
    )
    cancel = _action(row.cancel_offered, row.cancel_needs_approval, row.cancel_reason_code, row.cancel_reason)
    if row.status in ("canceled", "done"):
        closed = models.ActionOffer(
            offered=False,
            needs_approval=False,
            reason_code="appointment_closed",
            reason=f"This appointment is {row.status}, so it can't be changed.",
        )
        reschedule = cancel = closed
    return dict(
        appointment_id=row.appointment_id,
        job_id=row.job_id,
        business_unit=row.business_unit,
        job_type=row.job_type,
        status=row.status,
        confirmation=row.confirmation,
        version=row.version,
        window=ArrivalWindow(start=row.window_start, end=row.window_end),
        local_window=local_window(row.window_start, row.window_end, row.time_zone),
        offers=models.Offers(
            modify=reschedule.offered or cancel.offered,
            reschedule=reschedule,
            cancel=models.CancelOffer(
                **cancel.model_dump(),
                reason_required=row.cancel_reason_required,
                reasons=row.cancel_reasons,
            ),
            until=row.offer_changes_at,
        ),
    )


async def customer_jobs(conn: AsyncConnection, tenant: str, customer: str) -> list[models.Job]:
    params = {"tenant": tenant, "customer": customer}
    rows = (await conn.execute(CUSTOMER_UPCOMING, params)).all()
    jobs = {r.job_id: r for r in (await conn.execute(CUSTOMER_JOBS, params)).all()}
    by_job: dict[str, list[models.Appointment]] = {}
    for row in rows:
        by_job.setdefault(row.job_id, []).append(appointment(row))
    for job_id in jobs:
        by_job.setdefault(job_id, [])
    return [
        models.Job(
            job_id=job_id,
            status=jobs[job_id].status if job_id in jobs else None,
            version=jobs[job_id].version if job_id in jobs else None,
            appointments=appointments,
        )
        for job_id, appointments in sorted(by_job.items())
    ]


async def customer_appointment(conn: AsyncConnection, tenant: str, customer: str, appointment_id: str):
    """The appointment's row if it is this customer's, else None."""
    return (
        await conn.execute(
            ONE_APPOINTMENT, {"tenant": tenant, "customer": customer, "appointment": appointment_id}
        )
    ).one_or_none()


async def pickable(conn: AsyncConnection, tenant: str, customer: str, appointment_id: str, zone_name: str):
    rows = await conn.execute(
        PICKABLE, {"tenant": tenant, "customer": customer, "appointment": appointment_id}
    )
    return [
        models.PickableTime(
            window=ArrivalWindow(start=r.starts_at, end=r.ends_at),
            local_window=local_window(r.starts_at, r.ends_at, zone_name),
            free=r.free,
        )
        for r in rows
    ]


class AmbiguousRequest(Exception):
    """Requests of more than one portal carry this id: the caller must say whose."""


async def request_state(conn: AsyncConnection, tenant: str, request_id: str, producer: str | None):
    """The read store's row of `producer`'s request with this id (of any portal's when None, and then
    AmbiguousRequest when several portals used it)."""
    params = {"tenant": tenant, "request": request_id, "producer": producer}
    rows = (await conn.execute(REQUEST_STATE, params)).all()
    if len(rows) > 1:
        raise AmbiguousRequest(request_id)
    return rows[0] if rows else None


async def own_request(conn: AsyncConnection, tenant: str, customer: str, producer: str, request_id: str):
    """The API's record of the customer's request (sent with this portal's key), or the read store's when
    it was sent over AMQP."""
    params = {"tenant": tenant, "customer": customer, "request": request_id, "producer": producer}
    row = (await conn.execute(OWN_REQUEST, params)).one_or_none()
    if row is not None:
        return row
    return (await conn.execute(REQUEST_OF_CUSTOMER, params)).one_or_none()


async def approvals(conn: AsyncConnection, tenant: str) -> list[models.Approval]:
    rows = (await conn.execute(APPROVALS, {"tenant": tenant})).all()
    ids = [r.appointment_id for r in rows]
    appointments = (
        {
            a.appointment_id: appointment(a)
            for a in await conn.execute(APPOINTMENTS_BY_ID, {"tenant": tenant, "ids": ids})
        }
        if ids
        else {}
    )
    return [
        models.Approval(
            request_id=r.request_id,
            portal=r.producer or None,
            appointment_id=r.appointment_id,
            customer_id=r.customer_id,
            requester_id=r.requester_id,
            action=r.action,
            reason_code=r.reason_code,
            reason=r.reason_text,
            requested_at=r.requested_at,
            appointment=appointments.get(r.appointment_id),
        )
        for r in rows
    ]


async def board(conn: AsyncConnection, tenant: str) -> models.Board:
    rows = (await conn.execute(TENANT_UPCOMING, {"tenant": tenant})).all()
    changes = (await conn.execute(RECENT_CHANGES, {"tenant": tenant})).all()
    return models.Board(
        tenant_id=tenant,
        appointments=[
            models.BoardAppointment(
                **_appointment_fields(r), customer_id=r.customer_id, updated_at=r.updated_at
            )
            for r in rows
        ],
        recent_changes=[
            models.Change(
                occurred_at=c.occurred_at,
                appointment_id=c.appointment_id,
                entry=c.entry,
                actor=c.actor,
                action=c.action,
                status=c.status,
                request_id=c.request_id,
                reason=c.reason_text,
                window_start=c.window_start,
            )
            for c in changes
        ],
    )


def now() -> datetime:
    return datetime.now(UTC)
