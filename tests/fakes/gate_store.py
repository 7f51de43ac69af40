"""The gate's store in memory (`workers.policy_gate.store.GateStore`): appointment facts seeded by the test,
settings layers with their history, decisions by request id, offers."""

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from contracts.office_v2 import ScopeLevel, SettingsLayer, SettingsScope
from workers.policy_gate.rules import AppointmentFacts, Decision, Outcome
from workers.policy_gate.settings import ScopedLayer
from workers.policy_gate.store import BUSINESS_KEY, ApprovedChange, PendingApproval

# Which field of the facts a layer's key is compared with, per level (the business layer applies to all).
_SCOPE_FIELD = {
    ScopeLevel.BUSINESS_UNIT: "business_unit",
    ScopeLevel.JOB_TYPE: "job_type",
    ScopeLevel.PROJECT: "project_id",
}


class FakeGateStore:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)  # the transaction's clock (FakeUnitOfWork sets it)
        self.appointments: dict[tuple[str, str], AppointmentFacts] = {}
        self.layers: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []
        self.decisions: dict[tuple[str, str, str], dict[str, Any]] = {}  # by tenant, portal, request id
        self.offers: dict[tuple[str, str], dict[str, Any]] = {}

    # --- what the scheduling worker writes and the gate only reads ---

    def add_appointment(self, tenant_id: str, facts: AppointmentFacts) -> None:
        self.appointments[(tenant_id, facts.appointment_id)] = facts

    # --- GateStore ---

    async def load_facts_and_layers(
        self, tenant_id: str, appointment_id: str
    ) -> tuple[AppointmentFacts | None, list[ScopedLayer]]:
        facts = self.appointments.get((tenant_id, appointment_id))
        if facts is None:
            return None, []
        layers = []
        for (tenant, level, key), row in self.layers.items():
            scope = ScopeLevel(level)
            applies = (
                key == BUSINESS_KEY
                if scope is ScopeLevel.BUSINESS
                else getattr(facts, _SCOPE_FIELD[scope]) == key
            )
            if tenant == tenant_id and applies:
                settings = SettingsLayer.model_validate_json(row["settings"], strict=False)
                layers.append(ScopedLayer(scope, key or None, settings, row["settings_version"]))
        return facts, layers

    async def load_business_rate_limits(self, tenant_id: str) -> tuple[dict, int]:
        row = self.layers.get((tenant_id, ScopeLevel.BUSINESS.value, BUSINESS_KEY))
        if row is None:
            return {}, 0
        return json.loads(row["settings"]).get("rate_limits") or {}, row["settings_version"]

    async def save_layer(
        self,
        tenant_id: str,
        scope: SettingsScope,
        layer: SettingsLayer,
        *,
        settings_version: int,
        changed_by: str,
        message_id: UUID,
    ) -> bool:
        key = (tenant_id, scope.level.value, scope.key or BUSINESS_KEY)
        document = json.dumps(layer.model_dump(mode="json", exclude_none=True))
        previous = self.layers.get(key)
        if previous is not None and previous["settings_version"] >= settings_version:
            return False
        self.layers[key] = {
            "settings": document,
            "settings_version": settings_version,
            "changed_by": changed_by,
        }
        self.history.append(
            {
                "scope": key,
                "settings_version": settings_version,
                "settings": document,
                "previous": previous["settings"] if previous else None,
                "changed_by": changed_by,
                "message_id": message_id,
            }
        )
        return True

    async def same_request(
        self,
        *,
        tenant_id: str,
        request_id: str,
        producer: str,
        appointment_id: str,
        requester_id: str,
        change: dict,
    ) -> bool:
        row = self.decisions.get((tenant_id, producer, request_id))
        return row is not None and (
            row["appointment_id"] == appointment_id
            and row["requester_id"] == requester_id
            and row["change"] == change
        )

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
    ) -> bool:
        if (tenant_id, producer, request_id) in self.decisions:
            return False
        self.decisions[(tenant_id, producer, request_id)] = {
            "request_id": request_id,
            "message_id": message_id,
            "appointment_id": appointment_id,
            "requester_id": requester_id,
            "change": json.loads(json.dumps(change)),  # as jsonb keeps it
            "action": change["action"],
            "outcome": decision.outcome.value,
            "rule": decision.rule,
            "setting": decision.setting,
            "setting_level": decision.setting_level,
            "reason_code": decision.reason_code,
            "reason_text": decision.reason_text,
            "decided_on_version": decided_on_version,
            "decided_at": decided_at,
            "producer": producer,
            "office_decided_by": None,
            "office_decided_at": None,
        }
        return True

    async def record_refusal(self, *, decision: Decision, **request: Any) -> datetime | None:
        refused = replace(decision, outcome=Outcome.REJECTED)  # the statement says 'rejected' itself
        recorded = await self.record_decision(
            **request, decision=refused, decided_on_version=None, decided_at=self.now
        )
        return self.now if recorded else None

    async def lock_pending_approvals(
        self, tenant_id: str, request_id: str, producer: str | None
    ) -> list[PendingApproval]:
        waiting = sorted(
            (portal, row)
            for (tenant, portal, request), row in self.decisions.items()
            if (tenant, request) == (tenant_id, request_id)
            and producer in (None, portal)
            and row["outcome"] == Outcome.NEEDS_APPROVAL.value
        )
        return [
            PendingApproval(
                portal,
                row["request_id"],
                row["appointment_id"],
                row["requester_id"],
                row["action"],
                row["change"],
                row["decided_on_version"],
            )
            for portal, row in waiting[:2]
        ]

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
    ) -> None:
        row = self.decisions.get((tenant_id, producer, request_id))
        if row is None:
            return
        row.update(
            outcome=(Outcome.APPROVED if approved else Outcome.REJECTED).value,
            rule="office_approval",
            reason_code=reason_code,
            reason_text=reason_text,
            office_decided_by=decided_by,
            office_decided_at=decided_at,
        )

    async def upcoming_appointments(
        self,
        tenant_id: str,
        after: datetime,
        level: ScopeLevel = ScopeLevel.BUSINESS,
        key: str | None = None,
        *,
        after_id: str | None = None,
        limit: int | None = None,
    ) -> list[str]:
        ids = sorted(
            appointment_id
            for (tenant, appointment_id), facts in self.appointments.items()
            if tenant == tenant_id
            and facts.window.start > after
            and appointment_id > (after_id or "")
            and (level is ScopeLevel.BUSINESS or getattr(facts, _SCOPE_FIELD[level]) == key)
        )
        return ids if limit is None else ids[:limit]

    async def lock_offers(self, tenant_id: str, appointment_ids: list[str]) -> dict[str, dict[str, Any]]:
        for appointment_id in appointment_ids:
            self.offers.setdefault(
                (tenant_id, appointment_id),
                {
                    "appointment_id": appointment_id,
                    "offer_version": 0,
                    "appointment_version": 0,
                    "segments": [],
                    "pick": None,
                    "terms": None,
                    "carried_request_id": None,
                },
            )
        return {
            appointment_id: self.offers[(tenant_id, appointment_id)]
            for appointment_id in sorted(appointment_ids)
        }

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
    ) -> None:
        row = self.offers.get((tenant_id, appointment_id))
        if row is None:
            return
        # as jsonb keeps them: JSON values, not the objects they came from
        row.update(
            offer_version=offer_version,
            appointment_version=appointment_version,
            segments=json.loads(json.dumps(segments)),
            pick=json.loads(json.dumps(pick)),
            terms=json.loads(json.dumps(terms)),
            computed_at=computed_at,
            carried_request_id=carried_request_id,
        )

    async def approved_change(
        self, tenant_id: str, request_id: str, appointment_id: str
    ) -> ApprovedChange | None:
        approved = [
            row
            for (tenant, _, request), row in self.decisions.items()
            if (tenant, request) == (tenant_id, request_id)
            and row["appointment_id"] == appointment_id
            and row["outcome"] == Outcome.APPROVED.value
        ]
        if not approved:
            return None
        latest = max(approved, key=lambda row: row["decided_at"])
        return ApprovedChange(latest["change"], latest["decided_on_version"])
