"""The gate's reads and writes: appointment facts (scheduling, read-only), settings layers with their
history, decisions by request id, and the offer timelines it last computed (policy).

`GateStore` is what the handlers need, as a protocol; `PostgresGateStore` runs the statements below on a
unit of work's transaction and `of(uow)` gives the handlers theirs (tests/fakes/gate_store.py is the
in-memory one, held to the same behaviour by tests/integration/test_store_fakes.py)."""

import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple, Protocol
from uuid import UUID

import asyncpg

from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation
from contracts.office_v2 import ScopeLevel, SettingsLayer, SettingsScope
from workers.policy_gate.rules import AppointmentFacts, Decision, ProjectFacts
from workers.policy_gate.settings import ScopedLayer
from workers.runtime.database import UnitOfWork

BUSINESS_KEY = ""  # the business layer has no key; '' keeps the primary key simple


# The facts of one appointment and the settings layers that apply to it, in one round trip (the hottest
# read of the gate: every decision and every offer refresh). A prepared statement on the driver. The
# layers are those `settings.applicable_scopes` names: business, business unit, job type, project.
_FACTS_AND_LAYERS = """
SELECT now() AS transaction_now, a.appointment_id, a.job_id, a.customer_id, a.business_unit, a.job_type,
       a.project_id, a.window_start, a.window_end, a.status, a.confirmation, a.version,
       a.customer_reschedules, a.zone,
       p.portal_locked, p.starts_at, p.ends_at,
       (SELECT array_agg(c.contact_id) FROM scheduling.project_contacts c
         WHERE c.tenant_id = a.tenant_id AND c.project_id = a.project_id) AS contacts,
       (SELECT json_agg(json_build_array(l.level, l.scope_key, l.settings_version, l.settings::text))
          FROM policy.settings_layers l
         WHERE l.tenant_id = a.tenant_id
           AND ((l.level = 'business' AND l.scope_key = '')
             OR (l.level = 'business_unit' AND l.scope_key = a.business_unit)
             OR (l.level = 'job_type' AND l.scope_key = a.job_type)
             OR (l.level = 'project' AND l.scope_key = a.project_id))) AS layers
  FROM scheduling.appointments a
  LEFT JOIN scheduling.projects p ON p.tenant_id = a.tenant_id AND p.project_id = a.project_id
 WHERE a.tenant_id = $1 AND a.appointment_id = $2
"""


@lru_cache(maxsize=4096)
def _layer(level: str, key: str, version: int, document: str) -> ScopedLayer:
    """A stored layer, parsed and validated once per version (layers change rarely, are read always)."""
    return ScopedLayer(
        ScopeLevel(level), key or None, SettingsLayer.model_validate_json(document, strict=False), version
    )


async def load_facts_and_layers(
    uow: UnitOfWork, tenant_id: str, appointment_id: str
) -> tuple[AppointmentFacts | None, list[ScopedLayer]]:
    """The appointment's facts (None when it is not there) and the settings layers that apply to it.
    The same round trip reads the transaction's clock (`uow.now()` then costs nothing)."""
    row = await uow.driver.fetchrow(_FACTS_AND_LAYERS, tenant_id, appointment_id)
    if row is None:
        return None, []
    uow.saw_now(row["transaction_now"])
    project = None
    if row["project_id"] is not None:
        project = ProjectFacts(
            project_id=row["project_id"],
            contacts=frozenset(row["contacts"] or ()),
            portal_locked=bool(row["portal_locked"]),
            starts_at=row["starts_at"],
            ends_at=row["ends_at"],
        )
    facts = AppointmentFacts(
        appointment_id=row["appointment_id"],
        customer_id=row["customer_id"],
        business_unit=row["business_unit"],
        job_type=row["job_type"],
        project=project,
        status=AppointmentStatus(row["status"]),
        confirmation=Confirmation(row["confirmation"]),
        window=ArrivalWindow.model_construct(start=row["window_start"], end=row["window_end"]),
        version=row["version"],
        customer_reschedules=row["customer_reschedules"],
        job_id=row["job_id"],
        zone=row["zone"],
    )
    layers = [_layer(level, key, version, document) for level, key, version, document in row["layers"] or ()]
    return facts, layers


_LAYER_VERSION = """
SELECT settings_version FROM policy.settings_layers WHERE tenant_id = $1 AND level = $2 AND scope_key = $3
"""


async def layer_version(
    driver: asyncpg.Connection,
    tenant_id: str,
    level: str = ScopeLevel.BUSINESS.value,
    key: str | None = None,
) -> int | None:
    return await driver.fetchval(_LAYER_VERSION, tenant_id, level, key or BUSINESS_KEY)


_LOCK_LAYER = """
SELECT settings::text AS settings, settings_version FROM policy.settings_layers
 WHERE tenant_id = $1 AND level = $2 AND scope_key = $3
   FOR UPDATE
"""
_SAVE_LAYER = """
INSERT INTO policy.settings_layers (tenant_id, level, scope_key, settings, settings_version, changed_by)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (tenant_id, level, scope_key) DO UPDATE
   SET settings = EXCLUDED.settings, settings_version = EXCLUDED.settings_version,
       changed_by = EXCLUDED.changed_by, updated_at = EXCLUDED.updated_at
"""
_RECORD_LAYER_CHANGE = """
INSERT INTO policy.settings_history (tenant_id, level, scope_key, settings_version, settings, previous,
                                     changed_by, message_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""


async def save_layer(
    driver: asyncpg.Connection,
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
    level = scope.level.value
    document = json.dumps(layer.model_dump(mode="json", exclude_none=True))  # jsonb: JSON text
    previous = await driver.fetchrow(_LOCK_LAYER, tenant_id, level, key)
    if previous is not None and previous["settings_version"] >= settings_version:
        return False
    await driver.execute(_SAVE_LAYER, tenant_id, level, key, document, settings_version, changed_by)
    await driver.execute(
        _RECORD_LAYER_CHANGE,
        tenant_id,
        level,
        key,
        settings_version,
        document,
        previous["settings"] if previous is not None else None,
        changed_by,
        message_id,
    )
    return True


_BUSINESS_RATE_LIMITS = """
SELECT settings->'rate_limits', settings_version FROM policy.settings_layers
 WHERE tenant_id = $1 AND level = 'business' AND scope_key = ''
"""


async def load_business_rate_limits(driver: asyncpg.Connection, tenant_id: str) -> tuple[dict, int]:
    """The rate limits the business layer sets (field -> value; empty when it sets none) and its version
    (0 without a business layer)."""
    row = await driver.fetchrow(_BUSINESS_RATE_LIMITS, tenant_id)
    if row is None:
        return {}, 0
    stored, version = row
    if stored is None:
        return {}, version
    return (json.loads(stored) if isinstance(stored, str) else dict(stored)), version


_RECORD_DECISION = """
INSERT INTO policy.decisions (tenant_id, request_id, message_id, appointment_id, requester_id, change, action,
                              outcome, rule, setting, setting_level, reason_code, reason_text,
                              decided_on_version, decided_at, producer)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
ON CONFLICT DO NOTHING
RETURNING request_id
"""
_DECIDED_REQUEST = """
SELECT appointment_id, requester_id, change FROM policy.decisions
 WHERE tenant_id = $1 AND producer = $2 AND request_id = $3
"""


async def same_request(
    driver: asyncpg.Connection,
    *,
    tenant_id: str,
    request_id: str,
    producer: str,
    appointment_id: str,
    requester_id: str,
    change: dict,
) -> bool:
    """Is the decided request with this portal's id the same request (same appointment, requester and
    change)? A request id means one request of one portal: anything else reusing it is refused. (Another
    portal's request under the same id is another request: decisions are keyed by tenant, producer and
    request id, migration 0017.)"""
    row = await driver.fetchrow(_DECIDED_REQUEST, tenant_id, producer, request_id)
    if row is None:
        return False
    stored_change = row["change"] if isinstance(row["change"], dict) else json.loads(row["change"])
    return (
        row["appointment_id"] == appointment_id
        and row["requester_id"] == requester_id
        and stored_change == change
    )


async def record_decision(
    driver: asyncpg.Connection,
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
    producer: str,
) -> bool:
    """Store the decision by request id; False when this request id was already decided."""
    stored = await driver.fetchval(
        _RECORD_DECISION,
        tenant_id,
        request_id,
        message_id,
        appointment_id,
        requester_id,
        json.dumps(change),  # jsonb: the connection's codec takes JSON text
        change["action"],
        decision.outcome.value,
        decision.rule,
        decision.setting,
        decision.setting_level,
        decision.reason_code,
        decision.reason_text,
        decided_on_version,
        decided_at,
        producer,
    )
    return stored is not None


_RECORD_REFUSAL = """
INSERT INTO policy.decisions (tenant_id, request_id, message_id, appointment_id, requester_id, change, action,
                              outcome, rule, setting, setting_level, reason_code, reason_text,
                              decided_on_version, decided_at, producer)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'rejected', $8, $9, $10, $11, $12, NULL, now(), $13)
ON CONFLICT DO NOTHING
RETURNING decided_at
"""


async def record_refusal(
    driver: asyncpg.Connection,
    *,
    tenant_id: str,
    request_id: str,
    message_id,
    appointment_id: str,
    requester_id: str,
    change: dict,
    decision: Decision,
    producer: str,
) -> datetime | None:
    """A refusal decided without reading anything (rate limits), stored by request id in one statement
    that also reads the clock: when it was decided, or None when the request was already decided."""
    return await driver.fetchval(
        _RECORD_REFUSAL,
        tenant_id,
        request_id,
        message_id,
        appointment_id,
        requester_id,
        json.dumps(change),
        change["action"],
        decision.rule,
        decision.setting,
        decision.setting_level,
        decision.reason_code,
        decision.reason_text,
        producer,
    )


class PendingApproval(NamedTuple):
    """A decided request still waiting for the office."""

    producer: str  # the request's portal
    request_id: str
    appointment_id: str
    requester_id: str | None
    action: str
    change: dict | None
    decided_on_version: int | None


_LOCK_PENDING_APPROVAL = """
SELECT producer, request_id, appointment_id, requester_id, action, change::text AS change, decided_on_version
  FROM policy.decisions
 WHERE tenant_id = $1 AND request_id = $2 AND ($3::text IS NULL OR producer = $3)
   AND outcome = 'needs_approval'
 ORDER BY producer
 LIMIT 2
   FOR UPDATE
"""


async def lock_pending_approvals(
    driver: asyncpg.Connection, tenant_id: str, request_id: str, producer: str | None
) -> list[PendingApproval]:
    """The decision rows of requests still waiting for the office under this id (of `producer`'s, or of
    any portal when None: more than one means the office must say whose), locked; at most two."""
    rows = await driver.fetch(_LOCK_PENDING_APPROVAL, tenant_id, request_id, producer)
    return [
        PendingApproval(*row.values())._replace(change=row["change"] and json.loads(row["change"]))
        for row in rows
    ]


_SETTLE_APPROVAL = """
UPDATE policy.decisions
   SET outcome = $3, rule = 'office_approval', reason_code = $4, reason_text = $5, office_decided_by = $6,
       office_decided_at = $7
 WHERE tenant_id = $1 AND request_id = $2 AND producer = $8
"""


async def settle_approval(
    driver: asyncpg.Connection,
    tenant_id: str,
    request_id: str,
    *,
    producer: str,
    approved: bool,
    reason_code: str | None,
    reason_text: str | None,
    decided_by: str,
    decided_at: datetime,
) -> None:
    await driver.execute(
        _SETTLE_APPROVAL,
        tenant_id,
        request_id,
        "approved" if approved else "rejected",
        reason_code,
        reason_text,
        decided_by,
        decided_at,
        producer,
    )


# Which appointments a settings layer covers: every appointment of the business, or those of one unit,
# job type or project; in id order (the lock order), after an id ('' for the first chunk), at most
# `limit` of them (NULL: all).
_UPCOMING = """
SELECT appointment_id FROM scheduling.appointments
 WHERE tenant_id = $1 AND window_start > $2 AND appointment_id > $3 {scope}
 ORDER BY appointment_id
 LIMIT $4
"""
_UPCOMING_IN = {
    ScopeLevel.BUSINESS: _UPCOMING.format(scope=""),
    ScopeLevel.BUSINESS_UNIT: _UPCOMING.format(scope="AND business_unit = $5"),
    ScopeLevel.JOB_TYPE: _UPCOMING.format(scope="AND job_type = $5"),
    ScopeLevel.PROJECT: _UPCOMING.format(scope="AND project_id = $5"),
}


async def upcoming_appointments(
    driver: asyncpg.Connection,
    tenant_id: str,
    after: datetime,
    level: ScopeLevel = ScopeLevel.BUSINESS,
    key: str | None = None,
    *,
    after_id: str | None = None,
    limit: int | None = None,
) -> list[str]:
    """Ids of the appointments (of a business unit, job type or project) that start after a moment, in
    id order (the lock order); with `after_id` and `limit`, the next chunk of them."""
    arguments: list = [tenant_id, after, after_id or "", limit]
    if level is not ScopeLevel.BUSINESS:
        arguments.append(key)
    return [row[0] for row in await driver.fetch(_UPCOMING_IN[level], *arguments)]


_CREATE_OFFER = """
INSERT INTO policy.offers (tenant_id, appointment_id) SELECT $1, unnest($2::text[])
ON CONFLICT DO NOTHING
"""
_LOCK_OFFERS = """
SELECT appointment_id, offer_version, appointment_version, segments, pick, terms, carried_request_id
  FROM policy.offers
 WHERE tenant_id = $1 AND appointment_id = ANY($2::text[])
 ORDER BY appointment_id
   FOR UPDATE
"""


async def lock_offers(driver: asyncpg.Connection, tenant_id: str, appointment_ids: list[str]) -> dict:
    """The stored offers of some appointments, locked in id order (created empty the first time); by
    appointment id. Taken before the facts are read, so two gates computing the same appointment's offer
    take turns and the later one reads the later facts."""
    await driver.execute(_CREATE_OFFER, tenant_id, appointment_ids)
    return {
        row["appointment_id"]: row for row in await driver.fetch(_LOCK_OFFERS, tenant_id, appointment_ids)
    }


_SAVE_OFFER = """
UPDATE policy.offers
   SET offer_version = $3, appointment_version = $4, segments = $5, pick = $6, computed_at = $7, terms = $8,
       carried_request_id = $9
 WHERE tenant_id = $1 AND appointment_id = $2
"""


async def save_offer(
    driver: asyncpg.Connection,
    tenant_id: str,
    appointment_id: str,
    *,
    offer_version: int,
    appointment_version: int,
    segments: list[dict],
    pick: dict,
    computed_at: datetime,
    terms: dict,
    carried_request_id: str | None = None,
) -> None:
    """Store the gate's current offer; `carried_request_id`: the request whose approval carries it (it
    reaches the portal only if that change is applied), None: announced on its own."""
    await driver.execute(
        _SAVE_OFFER,
        tenant_id,
        appointment_id,
        offer_version,
        appointment_version,
        json.dumps(segments),
        json.dumps(pick),
        computed_at,
        json.dumps(terms),
        carried_request_id,
    )


class ApprovedChange(NamedTuple):
    change: dict
    decided_on_version: int


# Request ids are per portal (migration 0017): of the requests under this id, the one for this appointment
# (two portals' approved requests under one id for one appointment: the later decision carried the offer).
_APPROVED_CHANGE = """
SELECT change::text AS change, decided_on_version FROM policy.decisions
 WHERE tenant_id = $1 AND request_id = $2 AND appointment_id = $3 AND outcome = 'approved'
 ORDER BY decided_at DESC LIMIT 1
"""


async def approved_change(
    driver: asyncpg.Connection, tenant_id: str, request_id: str, appointment_id: str
) -> ApprovedChange | None:
    """The change the gate approved under a request id for an appointment, and the appointment version it
    approved it on."""
    row = await driver.fetchrow(_APPROVED_CHANGE, tenant_id, request_id, appointment_id)
    if row is None:
        return None
    return ApprovedChange(json.loads(row["change"]), row["decided_on_version"])


class GateStore(Protocol):
    """The gate's store as its handlers use it, on one transaction (a unit of work's)."""

    async def load_facts_and_layers(
        self, tenant_id: str, appointment_id: str
    ) -> tuple[AppointmentFacts | None, list[ScopedLayer]]: ...

    async def load_business_rate_limits(self, tenant_id: str) -> tuple[dict, int]: ...

    async def save_layer(
        self,
        tenant_id: str,
        scope: SettingsScope,
        layer: SettingsLayer,
        *,
        settings_version: int,
        changed_by: str,
        message_id: UUID,
    ) -> bool: ...

    async def same_request(
        self,
        *,
        tenant_id: str,
        request_id: str,
        producer: str,
        appointment_id: str,
        requester_id: str,
        change: dict,
    ) -> bool: ...

    async def record_decision(
        self,
        *,
        tenant_id: str,
        request_id: str,
        message_id: UUID,
        appointment_id: str,
        requester_id: str,
        change: dict,
        decision: Decision,
        decided_on_version: int | None,
        decided_at: datetime,
        producer: str,
    ) -> bool: ...

    async def record_refusal(
        self,
        *,
        tenant_id: str,
        request_id: str,
        message_id: UUID,
        appointment_id: str,
        requester_id: str,
        change: dict,
        decision: Decision,
        producer: str,
    ) -> datetime | None: ...

    async def lock_pending_approvals(
        self, tenant_id: str, request_id: str, producer: str | None
    ) -> list[PendingApproval]: ...

    async def settle_approval(
        self,
        tenant_id: str,
        request_id: str,
        *,
        producer: str,
        approved: bool,
        reason_code: str | None,
        reason_text: str | None,
        decided_by: str,
        decided_at: datetime,
    ) -> None: ...

    async def upcoming_appointments(
        self,
        tenant_id: str,
        after: datetime,
        level: ScopeLevel = ScopeLevel.BUSINESS,
        key: str | None = None,
        *,
        after_id: str | None = None,
        limit: int | None = None,
    ) -> list[str]: ...

    async def lock_offers(
        self, tenant_id: str, appointment_ids: list[str]
    ) -> dict[str, Mapping[str, Any]]: ...

    async def save_offer(
        self,
        tenant_id: str,
        appointment_id: str,
        *,
        offer_version: int,
        appointment_version: int,
        segments: list[dict],
        pick: dict,
        computed_at: datetime,
        terms: dict,
        carried_request_id: str | None = None,
    ) -> None: ...

    async def approved_change(
        self, tenant_id: str, request_id: str, appointment_id: str
    ) -> ApprovedChange | None: ...


class PostgresGateStore:
    """`GateStore` on a unit of work's transaction: the statements above, through its one handle."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def load_facts_and_layers(self, tenant_id: str, appointment_id: str):
        return await load_facts_and_layers(self._uow, tenant_id, appointment_id)

    async def load_business_rate_limits(self, tenant_id: str):
        return await load_business_rate_limits(self._uow.driver, tenant_id)

    async def save_layer(self, *args, **kwargs):
        return await save_layer(self._uow.driver, *args, **kwargs)

    async def same_request(self, **kwargs):
        return await same_request(self._uow.driver, **kwargs)

    async def record_decision(self, **kwargs):
        return await record_decision(self._uow.driver, **kwargs)

    async def record_refusal(self, **kwargs):
        return await record_refusal(self._uow.driver, **kwargs)

    async def lock_pending_approvals(self, tenant_id: str, request_id: str, producer: str | None):
        return await lock_pending_approvals(self._uow.driver, tenant_id, request_id, producer)

    async def settle_approval(self, *args, **kwargs):
        return await settle_approval(self._uow.driver, *args, **kwargs)

    async def upcoming_appointments(self, *args, **kwargs):
        return await upcoming_appointments(self._uow.driver, *args, **kwargs)

    async def lock_offers(self, tenant_id: str, appointment_ids: list[str]):
        return await lock_offers(self._uow.driver, tenant_id, appointment_ids)

    async def save_offer(self, *args, **kwargs):
        return await save_offer(self._uow.driver, *args, **kwargs)

    async def approved_change(self, tenant_id: str, request_id: str, appointment_id: str):
        return await approved_change(self._uow.driver, tenant_id, request_id, appointment_id)


def of(uow: UnitOfWork) -> GateStore:
    """The gate's store in this unit of work: the one it carries (a test's `FakeUnitOfWork` holds an
    in-memory store), else PostgreSQL on its transaction."""
    carried = getattr(uow, "store", None)
    return carried if carried is not None else PostgresGateStore(uow)
