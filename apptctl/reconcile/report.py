"""The reconciliation report, pure data: request classes, violation kinds, verdicts and the counts."""

from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class RequestClass(StrEnum):
    APPLIED = "applied"
    REJECTED = "rejected"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    WAITING = "waiting"
    IN_FLIGHT = "in_flight"
    LOST = "lost"
    DUPLICATED = "duplicated"
    UNEXPECTED = "unexpected"


TERMINAL = frozenset(
    {RequestClass.APPLIED, RequestClass.REJECTED, RequestClass.FAILED, RequestClass.DEAD_LETTERED}
)
PROBLEMS = frozenset({RequestClass.LOST, RequestClass.DUPLICATED, RequestClass.UNEXPECTED})


class Kind(StrEnum):
    """Stable violation codes."""

    LOST_REQUEST = "lost_request"
    DUPLICATED_EFFECT = "duplicated_effect"
    UNEXPECTED_REQUEST = "unexpected_request"
    EFFECT_WITHOUT_REQUEST = "effect_without_request"
    OUTCOME_MISMATCH = "outcome_mismatch"
    READ_STORE_MISSING = "read_store_missing"
    READ_STORE_EXTRA = "read_store_extra"
    READ_STORE_BEHIND = "read_store_behind"
    READ_STORE_AHEAD = "read_store_ahead"
    READ_STORE_DIVERGED = "read_store_diverged"
    VERSION_REGRESSION = "version_regression"
    VERSION_GAP = "version_gap"
    UNEXPLAINED_CHANGE = "unexplained_change"
    RESCHEDULE_COUNT_MISMATCH = "reschedule_count_mismatch"
    DEAD_LETTER_WITHOUT_REASON = "dead_letter_without_reason"
    OUTBOX_STUCK = "outbox_stuck"
    EVENT_NOT_CONSUMED = "event_not_consumed"
    CAPACITY_MISMATCH = "capacity_mismatch"
    LOST_UPDATE = "lost_update"


@dataclass(frozen=True)
class Verdict:
    tenant_id: str
    request_id: str
    appointment_id: str | None
    action: str | None
    cls: RequestClass
    reason: str | None = None  # reason code, dead-letter reason
    stage: str | None = None  # where a lost request stopped
    detail: str | None = None


@dataclass(frozen=True)
class Violation:
    kind: Kind
    tenant_id: str | None
    subject: str  # "request req-1", "appointment apt-7", "job job-3", "message <id>"
    detail: str


@dataclass
class Report:
    now: datetime
    verdicts: list[Verdict]
    violations: list[Violation]
    dead_letters: dict[str, dict[str, int]] | None  # queue -> reason -> count (None: not read)
    checked: dict[str, int]
    notes: list[str]

    @property
    def counts(self) -> dict[str, int]:
        counts = Counter(v.cls.value for v in self.verdicts)
        return {cls.value: counts.get(cls.value, 0) for cls in RequestClass}

    @property
    def ok(self) -> bool:
        return not self.violations

    def violations_of(self, *kinds: Kind) -> list[Violation]:
        return [v for v in self.violations if v.kind in kinds]

    def to_json(self, *, all_requests: bool = False) -> dict[str, Any]:
        shown = [v for v in self.verdicts if all_requests or v.cls not in TERMINAL | {RequestClass.WAITING}]
        return {
            "ok": self.ok,
            "now": self.now.isoformat(),
            "requests": self.counts,
            "violations_by_kind": dict(Counter(v.kind.value for v in self.violations)),
            "violations": [{**asdict(v), "kind": v.kind.value} for v in self.violations],
            "request_verdicts": [{**asdict(v), "cls": v.cls.value} for v in shown],
            "dead_letters": self.dead_letters,
            "checked": self.checked,
            "notes": self.notes,
        }
