"""portal_sync's read store in memory (`workers.portal_sync.store.PortalStore`): the views by their keys,
with the real store's version gates, request precedence, reply claim and one audit line per fact."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from workers.portal_sync.projection import TERMINAL_REQUEST_STATUSES, advances_from
from workers.portal_sync.store import RecordedRequest, Writes, Written

# The version-gated views: part -> (its key without the tenant, its version column), as the tables'.
UPSERTS: dict[str, tuple[tuple[str, ...], str]] = {
    "appointment": (("appointment_id",), "version"),
    "offer": (("appointment_id",), "offer_version"),
    "available_window": (("business_unit", "zone", "starts_at"), "version"),
    "business_unit": (("business_unit",), "capacity_version"),
    "job": (("job_id",), "version"),
}
_REPLY_FIELDS = ("request_id", "appointment_id", "action", "status", "reason_code", "reason_text", "reply_to")


def _meaning(line: dict) -> tuple:
    """What makes an audit line one fact (the unique index `audit_trail_by_meaning`, migration 0009)."""
    return (line["appointment_id"], line["entry"], line.get("request_id") or "", line.get("version") or -1)


class FakePortalStore:
    """Rows by (tenant, key...) per part: `views[part]`, `office_outcomes`, `requests` (by tenant, portal
    and request id) and `audit` (by tenant and message id)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)  # the transaction's clock (FakeUnitOfWork sets it)
        self.views: dict[str, dict[tuple, dict[str, Any]]] = {name: {} for name in UPSERTS}
        self.office_outcomes: dict[tuple[str, Any], dict[str, Any]] = {}
        self.requests: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.audit: dict[tuple[str, Any], dict[str, Any]] = {}

    async def write(self, tenant_id: str, writes: Writes) -> Written:
        rows = writes.rows()
        if not rows:
            return Written(None)
        # Every part of the real statement sees the store as it was before it (one snapshot): the
        # request's appointment is looked up first.
        appointment = None
        if "request" in rows:
            appointment = self.views["appointment"].get((tenant_id, rows["request"]["appointment_id"]))
        wrote = {name for name in UPSERTS if name in rows and self._upsert(tenant_id, name, rows[name])}
        if "office_outcome" in rows:
            row = rows["office_outcome"]
            key = (tenant_id, row["office_message_id"])
            # Kept once; like the real store's, not reported among the views written.
            self.office_outcomes.setdefault(key, {**row, "recorded_at": self.now})
        recorded = None
        if "request" in rows:
            recorded = self._request(tenant_id, rows["request"], appointment)
        if "audit" in rows:
            line = dict(rows["audit"])
            own = line.pop("own")
            if not own or (recorded is not None and writes.request.request_id == line.get("request_id")):
                self._audit(tenant_id, line)
        return Written(self.now, frozenset(wrote), recorded)

    async def write_many(self, tenant_id: str, batch: Sequence[Writes]) -> list[Written]:
        # The real store's rounds give each row the events in their order: one by one gives the same. An
        # event that writes nothing shares the first round's statement (its clock), when there is one.
        anything = any(writes.rows() for writes in batch)
        return [
            await self.write(tenant_id, writes) if writes.rows() or not anything else Written(self.now)
            for writes in batch
        ]

    def _upsert(self, tenant_id: str, name: str, row: dict) -> bool:
        """Insert, or overwrite only with a newer version; True when the row was written."""
        key_columns, version = UPSERTS[name]
        key = (tenant_id, *(row[c] for c in key_columns))
        current = self.views[name].get(key)
        if current is not None and not current[version] < row[version]:
            return False
        self.views[name][key] = {**(current or {}), **row, "updated_at": self.now}
        return True

    def _request(self, tenant_id: str, row: dict, appointment: dict | None) -> RecordedRequest | None:
        """The request part: pending fills in the request's details once; an outcome replaces only what
        it outranks; becoming final with a reply queue not yet answered claims the reply."""
        request_id, producer = row["request_id"], row["producer"]
        if producer is None:  # an outcome from before the portal travelled with it
            known = sorted(p for (t, p, r) in self.requests if (t, r) == (tenant_id, request_id))
            producer = known[0] if known else ""
        key = (tenant_id, producer, request_id)
        current = self.requests.get(key)
        pending = row["status"] == "pending"
        claimed = False
        if current is None:
            current = self.requests[key] = {
                **row,
                "producer": producer,
                "updated_at": self.now,
                "replied_at": None,
            }
        else:
            if pending and current["requested_at"] is not None:
                return None
            if not pending and current["status"] not in advances_from(row["status"]):
                return None
            claimed = current["replied_at"] is None and (
                (pending and row["reply_to"] is not None and current["status"] in TERMINAL_REQUEST_STATUSES)
                or (
                    not pending
                    and row["status"] in TERMINAL_REQUEST_STATUSES
                    and current["reply_to"] is not None
                )
            )
            if pending:
                current.update({c: row[c] for c in ("requester_id", "requested_at", "reply_to")})
            else:
                current.update({c: row[c] for c in ("status", "reason_code", "reason_text")})
                current["updated_at"] = self.now
            if claimed:
                current["replied_at"] = self.now
        return RecordedRequest(
            current["status"],
            None if appointment is None else appointment["customer_id"],
            None if appointment is None else appointment["job_id"],
            {c: current[c] for c in _REPLY_FIELDS} if claimed else None,
            producer,
        )

    def _audit(self, tenant_id: str, line: dict) -> None:
        """Once per message and once per fact."""
        if (tenant_id, line["message_id"]) in self.audit:
            return
        meaning = (tenant_id, *_meaning(line))
        if any((t, *_meaning(other)) == meaning for (t, _), other in self.audit.items()):
            return
        self.audit[(tenant_id, line["message_id"])] = {**line, "recorded_at": self.now}

    # --- reading, for tests ---

    def view(self, tenant_id: str, name: str, *key: Any) -> dict[str, Any] | None:
        return self.views[name].get((tenant_id, *key))

    def request(self, tenant_id: str, request_id: str, producer: str = "portal-web") -> dict[str, Any] | None:
        return self.requests.get((tenant_id, producer, request_id))

    def audit_entries(self, tenant_id: str, appointment_id: str) -> list[str]:
        """The appointment's audit trail: its entries in the order they happened."""
        lines = [
            line
            for (t, _), line in self.audit.items()
            if (t, line["appointment_id"]) == (tenant_id, appointment_id)
        ]
        return [line["entry"] for line in sorted(lines, key=lambda line: line["occurred_at"])]
