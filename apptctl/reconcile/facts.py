"""The facts reconciliation reads, pure data: requests, decisions, events, appointments, jobs, places.

The message types and statuses they are compared by come from the contracts, the workers from the
catalog (contracts/catalog.py)."""

from dataclasses import dataclass, field
from datetime import datetime

from contracts.catalog import MODIFY_HANDLER, POLICY_GATE, PORTAL_SYNC
from contracts.events_v1 import (
    AppointmentCanceled,
    AppointmentRescheduled,
    AppointmentUpdated,
    JobStatusChanged,
    ModifyAwaitingApproval,
    ModifyFailed,
    ModifyRejected,
)
from contracts.internal_v1 import ModifyApproved
from contracts.registry import type_name
from workers.modify_handler.domain import ACTIVE_STATUSES as _ACTIVE
from workers.portal_sync.projection import TERMINAL_REQUEST_STATUSES

APPROVED = type_name(ModifyApproved)
REJECTED = type_name(ModifyRejected)
AWAITING = type_name(ModifyAwaitingApproval)
FAILED = type_name(ModifyFailed)
RESCHEDULED = type_name(AppointmentRescheduled)
CANCELED = type_name(AppointmentCanceled)
UPDATED = type_name(AppointmentUpdated)
JOB_CHANGED = type_name(JobStatusChanged)

GATE = POLICY_GATE.name
SCHEDULER = MODIFY_HANDLER.name
PROJECTOR = PORTAL_SYNC.name
EFFECTS = frozenset({RESCHEDULED, CANCELED})
APPOINTMENT_EVENTS = frozenset({RESCHEDULED, CANCELED, UPDATED})
REQUEST_EVENTS = frozenset({APPROVED, REJECTED, AWAITING, FAILED, RESCHEDULED, CANCELED})
ACTIVE_STATUSES = frozenset(status.value for status in _ACTIVE)
TERMINAL_PORTAL = TERMINAL_REQUEST_STATUSES

Key = tuple[str, str]  # (tenant_id, id)


@dataclass(frozen=True)
class RequestRow:
    """portal.requests: what the portal shows for a request."""

    tenant_id: str
    request_id: str
    appointment_id: str
    action: str
    status: str
    reason_code: str | None
    updated_at: datetime


@dataclass(frozen=True)
class DecisionRow:
    """policy.decisions: the gate's decision, one per request."""

    tenant_id: str
    request_id: str
    message_id: str
    appointment_id: str
    action: str
    outcome: str  # approved / rejected / needs_approval
    reason_code: str | None
    decided_at: datetime


@dataclass(frozen=True)
class AppointmentState:
    """One appointment row, from scheduling (truth) or portal (read store), or carried by an event."""

    tenant_id: str
    appointment_id: str
    job_id: str
    customer_id: str
    project_id: str | None
    business_unit: str
    job_type: str
    window_start: datetime
    window_end: datetime
    status: str
    confirmation: str
    version: int
    updated_at: datetime | None = None
    customer_reschedules: int | None = None  # truth only

    COMPARED = (
        "job_id",
        "customer_id",
        "project_id",
        "business_unit",
        "job_type",
        "window_start",
        "window_end",
        "status",
        "confirmation",
        "version",
    )

    def differences(self, other: "AppointmentState") -> list[str]:
        return [f for f in self.COMPARED if getattr(self, f) != getattr(other, f)]


@dataclass(frozen=True)
class JobState:
    tenant_id: str
    job_id: str
    customer_id: str
    status: str
    version: int
    active_appointments: int
    updated_at: datetime | None = None

    COMPARED = ("customer_id", "status", "version", "active_appointments")

    def differences(self, other: "JobState") -> list[str]:
        return [f for f in self.COMPARED if getattr(self, f) != getattr(other, f)]


@dataclass(frozen=True)
class Event:
    """One outbox row (an event a worker committed with its change), with what the checks need."""

    id: int
    message_id: str
    producer: str
    type: str
    tenant_id: str
    correlation_id: str
    published: bool
    created_at: datetime
    request_id: str | None = None
    appointment_id: str | None = None
    action: str | None = None
    reason_code: str | None = None
    initiated_by: str | None = None
    appointment: AppointmentState | None = None
    job: JobState | None = None
    based_on_version: int | None = None  # an office record's: the version it was built on


@dataclass(frozen=True)
class DeadLetterRef:
    """A dead letter, as far as the checker cares: where, what, and why."""

    queue: str
    message_id: str | None
    reason: str
    correlation_id: str | None = None
    tenant_id: str | None = None
    type: str | None = None


@dataclass(frozen=True)
class SentRequest:
    """A request the portal says it sent (and the broker confirmed); from a manifest file."""

    tenant_id: str
    request_id: str
    message_id: str
    appointment_id: str
    action: str
    sent_at: datetime | None = None


@dataclass(frozen=True)
class SlotUsage:
    """One arrival window: `booked` as its row records it, `held` = appointments holding a place in it."""

    tenant_id: str
    slot_key: str
    capacity: int
    booked: int
    held: int


@dataclass
class Facts:
    now: datetime
    requests: list[RequestRow] = field(default_factory=list)
    decisions: list[DecisionRow] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    truth_appointments: list[AppointmentState] = field(default_factory=list)
    read_appointments: list[AppointmentState] = field(default_factory=list)
    truth_jobs: list[JobState] = field(default_factory=list)
    read_jobs: list[JobState] = field(default_factory=list)
    # (consumer, message_id) pairs from messaging.inbox, for the message ids the checker asked about.
    consumed: set[tuple[str, str]] = field(default_factory=set)
    dead_letters: list[DeadLetterRef] | None = None  # None: not read
    sent: list[SentRequest] | None = None  # None: no manifest given
    since: datetime | None = None
    capacity: list[SlotUsage] | None = None  # None: no capacity records (yet)
