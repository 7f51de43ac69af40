"""The gate's reads and writes: appointment facts (from scheduling), settings and decisions (policy)."""

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation
from contracts.office_v1 import ActionRules, PortalSettingsPayload
from infra.db.tables import appointments, decisions, portal_settings, project_contacts
from workers.policy_gate.rules import AppointmentFacts, Decision, PortalSettings


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
    contacts: frozenset[str] = frozenset()
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
    return AppointmentFacts(
        appointment_id=row.appointment_id,
        customer_id=row.customer_id,
        project_contacts=contacts,
        status=AppointmentStatus(row.status),
        confirmation=Confirmation(row.confirmation),
        window=ArrivalWindow(start=row.window_start, end=row.window_end),
        version=row.version,
    )


async def load_settings(connection: AsyncConnection, tenant_id: str) -> PortalSettings | None:
    row = (
        await connection.execute(select(portal_settings).where(portal_settings.c.tenant_id == tenant_id))
    ).first()
    if row is None:
        return None
    return PortalSettings(
        feature_enabled=row.feature_enabled,
        rules=ActionRules.model_validate(row.rules, strict=False),
        settings_version=row.settings_version,
    )


async def save_settings(connection: AsyncConnection, tenant_id: str, payload: PortalSettingsPayload) -> bool:
    """Store settings unless a newer version is already stored; True when they were applied."""
    values = dict(
        tenant_id=tenant_id,
        feature_enabled=payload.feature_enabled,
        rules=payload.rules.model_dump(mode="json"),
        settings_version=payload.settings_version,
        changed_by=payload.changed_by,
    )
    statement = insert(portal_settings).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=[portal_settings.c.tenant_id],
        set_={k: statement.excluded[k] for k in [*values, "updated_at"] if k != "tenant_id"},
        where=portal_settings.c.settings_version < statement.excluded.settings_version,
    ).returning(portal_settings.c.tenant_id)
    return (await connection.execute(statement)).first() is not None


async def record_decision(
    connection: AsyncConnection,
    *,
    tenant_id: str,
    request_id: str,
    message_id,
    appointment_id: str,
    action: str,
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
            action=action,
            outcome="approved" if decision.approved else "rejected",
            reason_code=decision.reason_code,
            reason_text=decision.reason_text,
            decided_on_version=decided_on_version,
            decided_at=decided_at,
        )
        .on_conflict_do_nothing()
        .returning(decisions.c.request_id)
    )
    return (await connection.execute(statement)).first() is not None
