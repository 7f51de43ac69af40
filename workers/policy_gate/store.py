"""The gate's reads and writes: appointment facts (scheduling, read-only), settings layers with their
history, decisions by request id, and the offer timelines it last computed (policy)."""

from datetime import datetime
from uuid import UUID

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation
from contracts.office_v2 import ScopeLevel, SettingsLayer, SettingsScope
from infra.db.tables import (
    appointments,
    decisions,
    offers,
    project_contacts,
    projects,
    settings_history,
    settings_layers,
)
from workers.policy_gate.rules import AppointmentFacts, Decision, ProjectFacts
from workers.policy_gate.settings import ScopedLayer, applicable_scopes

BUSINESS_KEY = ""  # the business layer has no key; '' keeps the primary key simple


async def load_facts(
    connection: AsyncConnection, tenant_id: str, appointment_id: str
) -> AppointmentFacts | None:
    row = (
        await connection.execute(
            select(appointments).where(
                appointments.c.tenant_id == tenant_id, appointments.c.appointment_id == appointment_id
            )
        )
    ).first()
    if row is None:
        return None
    project = None
    if row.project_id is not None:
        contacts = frozenset(
            (
                await connection.execute(
                    select(project_contacts.c.contact_id).where(
                        project_contacts.c.tenant_id == tenant_id,
                        project_contacts.c.project_id == row.project_id,
                    )
                )
            ).scalars()
        )
        details = (
            await connection.execute(
                select(projects).where(
                    projects.c.tenant_id == tenant_id, projects.c.project_id == row.project_id
                )
            )
        ).first()
        project = ProjectFacts(
            project_id=row.project_id,
            contacts=contacts,
            portal_locked=bool(details and details.portal_locked),
            starts_at=details.starts_at if details else None,
            ends_at=details.ends_at if details else None,
        )
    return AppointmentFacts(
        appointment_id=row.appointment_id,
        customer_id=row.customer_id,
        business_unit=row.business_unit,
        job_type=row.job_type,
        project=project,
        status=AppointmentStatus(row.status),
        confirmation=Confirmation(row.confirmation),
        window=ArrivalWindow(start=row.window_start, end=row.window_end),
        version=row.version,
        customer_reschedules=row.customer_reschedules,
        job_id=row.job_id,
        zone=row.zone,
    )


async def load_layers(
    connection: AsyncConnection, tenant_id: str, business_unit: str, job_type: str, project_id: str | None
) -> list[ScopedLayer]:
    """The settings layers that apply to one appointment (one query)."""
    scopes = applicable_scopes(business_unit, job_type, project_id)
    wanted = or_(
        *(
            and_(settings_layers.c.level == level.value, settings_layers.c.scope_key == (key or BUSINESS_KEY))
            for level, key in scopes
        )
    )
    rows = await connection.execute(
        select(settings_layers).where(settings_layers.c.tenant_id == tenant_id, wanted)
    )
    return [
        ScopedLayer(
            ScopeLevel(r.level),
            r.scope_key or None,
            SettingsLayer.model_validate(r.settings, strict=False),
            r.settings_version,
        )
        for r in rows
    ]


async def layer_version(
    connection: AsyncConnection,
    tenant_id: str,
    level: str = ScopeLevel.BUSINESS.value,
    key: str | None = None,
) -> int | None:
    return (
        await connection.execute(
            select(settings_layers.c.settings_version).where(
                settings_layers.c.tenant_id == tenant_id,
                settings_layers.c.level == level,
                settings_layers.c.scope_key == (key or BUSINESS_KEY),
            )
        )
    ).scalar_one_or_none()


async def save_layer(
    connection: AsyncConnection,
    tenant_id: str,
    scope: SettingsScope,
    layer: SettingsLayer,
    *,
    settings_version: int,
    changed_by: str,
    message_id: UUID,
) -> bool:
    """Store a layer unless the same or a newer version is stored; keep the change in the history.
    True when it was applied."""
    key = scope.key or BUSINESS_KEY
    document = layer.model_dump(mode="json", exclude_none=True)
    previous = (
        await connection.execute(
            select(settings_layers.c.settings, settings_layers.c.settings_version)
            .where(
                settings_layers.c.tenant_id == tenant_id,
                settings_layers.c.level == scope.level.value,
                settings_layers.c.scope_key == key,
            )
            .with_for_update()
        )
    ).first()
    if previous is not None and previous.settings_version >= settings_version:
        return False
    statement = insert(settings_layers).values(
        tenant_id=tenant_id,
        level=scope.level.value,
        scope_key=key,
        settings=document,
        settings_version=settings_version,
        changed_by=changed_by,
    )
    await connection.execute(
        statement.on_conflict_do_update(
            index_elements=[
                settings_layers.c.tenant_id,
                settings_layers.c.level,
                settings_layers.c.scope_key,
            ],
            set_={
                k: statement.excluded[k] for k in ("settings", "settings_version", "changed_by", "updated_at")
            },
        )
    )
    await connection.execute(
        insert(settings_history).values(
            tenant_id=tenant_id,
            level=scope.level.value,
            scope_key=key,
            settings_version=settings_version,
            settings=document,
            previous=previous.settings if previous else None,
            changed_by=changed_by,
            message_id=message_id,
        )
    )
    return True


async def record_decision(
    connection: AsyncConnection,
    *,
    tenant_id: str,
    request_id: str,
    message_id,
    appointment_id: str,
    requester_id: str,
    change: dict,
    decision: Decision,
    decided_on_version: int | None,
    decided_at: datetime,
) -> bool:
    """Store the decision by request id; False when this request was already decided (a re-sent request)."""
    statement = (
        insert(decisions)
        .values(
            tenant_id=tenant_id,
            request_id=request_id,
            message_id=message_id,
            appointment_id=appointment_id,
            requester_id=requester_id,
            change=change,
            action=change["action"],
            outcome=decision.outcome.value,
            rule=decision.rule,
            setting=decision.setting,
            setting_level=decision.setting_level,
            reason_code=decision.reason_code,
            reason_text=decision.reason_text,
            decided_on_version=decided_on_version,
            decided_at=decided_at,
        )
        .on_conflict_do_nothing()
        .returning(decisions.c.request_id)
    )
    return (await connection.execute(statement)).first() is not None


async def lock_pending_approval(connection: AsyncConnection, tenant_id: str, request_id: str):
    """The decision row of a request still waiting for the office, locked; None if there is none."""
    return (
        await connection.execute(
            select(decisions)
            .where(
                decisions.c.tenant_id == tenant_id,
                decisions.c.request_id == request_id,
                decisions.c.outcome == "needs_approval",
            )
            .with_for_update()
        )
    ).first()


async def settle_approval(
    connection: AsyncConnection,
    tenant_id: str,
    request_id: str,
    *,
    approved: bool,
    reason_code: str | None,
    reason_text: str | None,
    decided_by: str,
    decided_at: datetime,
) -> None:
    await connection.execute(
        update(decisions)
        .where(decisions.c.tenant_id == tenant_id, decisions.c.request_id == request_id)
        .values(
            outcome="approved" if approved else "rejected",
            rule="office_approval",
            reason_code=reason_code,
            reason_text=reason_text,
            office_decided_by=decided_by,
            office_decided_at=decided_at,
        )
    )


# Which appointments a settings layer covers: every appointment of the business, or those of one unit,
# job type or project.
_SCOPE_COLUMN = {
    ScopeLevel.BUSINESS_UNIT: appointments.c.business_unit,
    ScopeLevel.JOB_TYPE: appointments.c.job_type,
    ScopeLevel.PROJECT: appointments.c.project_id,
}


async def upcoming_appointments(
    connection: AsyncConnection,
    tenant_id: str,
    after: datetime,
    level: ScopeLevel = ScopeLevel.BUSINESS,
    key: str | None = None,
) -> list[str]:
    """Ids of the appointments (of a business unit, job type or project) that start after a moment, in
    id order (the lock order)."""
    statement = select(appointments.c.appointment_id).where(
        appointments.c.tenant_id == tenant_id, appointments.c.window_start > after
    )
    if level is not ScopeLevel.BUSINESS:
        statement = statement.where(_SCOPE_COLUMN[level] == key)
    return list((await connection.execute(statement.order_by(appointments.c.appointment_id))).scalars())


async def lock_offer(connection: AsyncConnection, tenant_id: str, appointment_id: str):
    """The stored offer of an appointment, locked (created empty the first time). Taken before the facts
    are read, so two gates computing the same appointment's offer take turns and the later one reads
    the later facts."""
    await connection.execute(
        insert(offers).values(tenant_id=tenant_id, appointment_id=appointment_id).on_conflict_do_nothing()
    )
    return (
        await connection.execute(
            select(offers.c.offer_version, offers.c.appointment_version, offers.c.segments, offers.c.pick)
            .where(offers.c.tenant_id == tenant_id, offers.c.appointment_id == appointment_id)
            .with_for_update()
        )
    ).one()


async def save_offer(
    connection: AsyncConnection,
    tenant_id: str,
    appointment_id: str,
    *,
    offer_version: int,
    appointment_version: int,
    segments: list[dict],
    pick: dict,
    computed_at: datetime,
) -> None:
    await connection.execute(
        update(offers)
        .where(offers.c.tenant_id == tenant_id, offers.c.appointment_id == appointment_id)
        .values(
            offer_version=offer_version,
            appointment_version=appointment_version,
            segments=segments,
            pick=pick,
            computed_at=computed_at,
        )
    )
