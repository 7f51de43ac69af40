"""The fault suite's load: tenants with settings and booked appointments, then a mix of modify requests
(reschedules, cancels, refusals, some needing the office's approval), published the way a portal must.

A third of the jobs are in a business unit that manages capacity (`COMMERCIAL`: arrival windows with a
few places each, set by `office.capacity.updated` in the set-up, which lands in any order with the
bookings). The office keeps writing those appointments while the requests run (tests/faults/office.py):
versioned records for half of them (booked as version 2), version 1 records for the others.

Every request is built with tests/factories.py; the office's part (settings, bookings, approvals) goes
through the real pipeline like everything else.
"""

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from apptctl.reconcile import SentRequest
from contracts.common import ArrivalWindow, Confirmation, ContactRole
from contracts.envelope import Envelope
from contracts.office_v2 import (
    CancelSettings,
    Permission,
    RescheduleSettings,
    ScopeLevel,
    SettingsLayer,
)
from contracts.portal_v1 import ModifyRequested
from infra.db.tables import portal_appointments, portal_requests, settings_layers
from tests import factories
from tests.conftest import unique_tenant
from tests.waiting import eventually
from workers.runtime.broker import Broker

APPROVAL_JOB_TYPE = "panel-upgrade"  # the office must approve changes of these
JOB_TYPES = ("water-heater-service", "drain-cleaning", "rtu-maintenance", APPROVAL_JOB_TYPE)
CANCEL_REASONS = ("Fixed it myself", "Schedule conflict", "No longer needed")
MAX_RESCHEDULES = 3
RESIDENTIAL, COMMERCIAL = "residential", "commercial"  # the second manages capacity
COMMERCIAL_PLACES = 3
CAPACITY_CHUNK = 50  # windows per office.capacity.updated (each its own capacity_version)
# Rules the gate applies before it looks at a new window: an earlier request may have canceled the
# appointment, or used up its reschedules.
BEFORE_THE_WINDOW = ("appointment_not_modifiable", "reschedule_limit_reached")


@dataclass(frozen=True)
class Booking:
    tenant_id: str
    appointment_id: str
    job_id: str
    customer_id: str
    contact_id: str | None  # a project lead who may act too
    window: ArrivalWindow
    job_type: str
    business_unit: str = RESIDENTIAL
    versioned: bool = False  # booked (and written by the office) with version 2 records


@dataclass(frozen=True)
class Expect:
    """What a request must end as, where the mix makes it certain (None: any terminal outcome)."""

    status: str
    reason_codes: frozenset[str] = frozenset()


@dataclass
class Plan:
    label: str
    tenants: list[str]
    settings: list[Envelope] = field(default_factory=list)
    capacity: list[Envelope] = field(default_factory=list)
    commercial_windows: list[ArrivalWindow] = field(default_factory=list)
    bookings: list[Booking] = field(default_factory=list)
    booking_messages: list[Envelope] = field(default_factory=list)
    requests: list[ModifyRequested] = field(default_factory=list)
    expect: dict[str, Expect] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def setup(self) -> list[Envelope]:
        return [*self.settings, *self.capacity, *self.booking_messages]

    @property
    def office_written(self) -> list[Booking]:
        """The appointments the office keeps writing during the load (those of the commercial unit)."""
        return [b for b in self.bookings if b.business_unit == COMMERCIAL]

    def sent(self, sent_at: dict[str, float] | None = None) -> list[SentRequest]:
        """The manifest for the reconciler: every request once, whatever how often it was delivered."""
        return [
            SentRequest(
                tenant_id=r.tenant_id,
                request_id=r.correlation_id,
                message_id=str(r.message_id),
                appointment_id=r.payload.appointment_id,
                action=r.payload.change.action,
                sent_at=datetime.fromtimestamp(sent_at[r.correlation_id], UTC)
                if sent_at and r.correlation_id in sent_at
                else None,
            )
            for r in self.requests
        ]


def _settings(tenant: str, version: int) -> list[Envelope]:
    allow = Permission.ALLOW
    business = SettingsLayer(
        feature_enabled=True,
        reschedule=RescheduleSettings(
            confirmed=allow, unconfirmed=allow, max_horizon_days=365, max_customer_reschedules=MAX_RESCHEDULES
        ),
        cancel=CancelSettings(confirmed=allow, unconfirmed=allow, reason_required=True),
    )
    approval = Permission.REQUIRE_APPROVAL
    needs_office = SettingsLayer(
        reschedule=RescheduleSettings(confirmed=approval, unconfirmed=approval),
        cancel=CancelSettings(confirmed=approval, unconfirmed=approval),
    )
    return [
        factories.settings_layer_updated(tenant=tenant, settings=business, settings_version=version),
        factories.settings_layer_updated(
            tenant=tenant,
            level=ScopeLevel.JOB_TYPE.value,
            key=APPROVAL_JOB_TYPE,
            settings=needs_office,
            settings_version=version,
        ),
    ]


def _capacity(tenant: str, windows: list[ArrivalWindow], version: int) -> list[Envelope]:
    """The commercial unit's windows, COMMERCIAL_PLACES places each, in chunks (a capacity_version each)."""
    places = COMMERCIAL_PLACES
    return [
        factories.capacity_updated(
            tenant=tenant,
            business_unit=COMMERCIAL,
            windows=[
                {"date": w.start.date(), "start": w.start.time(), "end": w.end.time(), "places": places}
                for w in windows[i : i + CAPACITY_CHUNK]
            ],
            capacity_version=version + i,
            change_id=f"capacity-{i}",
        )
        for i in range(0, len(windows), CAPACITY_CHUNK)
    ]


def _window(now: datetime, days: int, hour: int, hours: int = 2) -> ArrivalWindow:
    day = (now + timedelta(days=days)).date()
    start = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
    return factories.arrival_window(start=start, hours=hours)


def build_plan(n_requests: int, *, seed: int, label: str, tenants: int = 2) -> Plan:
    """`n_requests` requests over about n/2 appointments (so many get more than one request, and later
    ones meet a moved, canceled or changed appointment) in `tenants` fresh tenants."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    plan = Plan(label, [unique_tenant("f") for _ in range(tenants)])
    version = int(now.timestamp() * 1000)
    for tenant in plan.tenants:
        plan.settings.extend(_settings(tenant, version))
    appointments = max(4, n_requests // 2)
    # Windows of the commercial unit: four a day from day 3 on, about one for every two of its bookings.
    plan.commercial_windows = [
        _window(now, 3 + n // 4, 8 + 2 * (n % 4)) for n in range(max(8, appointments // 6))
    ]
    for tenant in plan.tenants:
        plan.capacity.extend(_capacity(tenant, plan.commercial_windows, version))
    job = 0
    while len(plan.bookings) < appointments:
        tenant = plan.tenants[job % tenants]
        job_id, customer = f"job-{job}", f"cust-{job % 97}"
        job_type = APPROVAL_JOB_TYPE if job % 12 == 5 else JOB_TYPES[job % 3]
        project = None
        contact = None
        if job % 10 == 3:
            contact = f"lead-{job}"
            project = factories.project(f"prj-{job}", {contact: ContactRole.PROJECT_LEAD})
        # a third of the jobs (none on a project) in the commercial unit, half of those versioned
        unit = COMMERCIAL if job % 3 == 0 and project is None else RESIDENTIAL
        versioned = unit == COMMERCIAL and job % 6 == 0
        for visit in range(2 if job % 4 == 1 else 1):
            appointment_id = f"apt-{job}-{visit}"
            if unit == COMMERCIAL:
                window = plan.commercial_windows[(job + visit) % len(plan.commercial_windows)]
            else:
                window = _window(now, 3 + (job * 3 + visit * 2) % 18, 7 + (job + visit) % 9)
            booking = Booking(
                tenant, appointment_id, job_id, customer, contact, window, job_type, unit, versioned
            )
            plan.bookings.append(booking)
            plan.booking_messages.append(
                factories.appointment_recorded(
                    tenant=tenant,
                    appointment_id=appointment_id,
                    job_id=job_id,
                    customer_id=customer,
                    business_unit=unit,
                    job_type=job_type,
                    project=project,
                    window=window,
                    confirmation=Confirmation.CONFIRMED if job % 3 else Confirmation.UNCONFIRMED,
                    change_id=f"book-{label}-{appointment_id}",
                    **({"office_revision": 1} if versioned else {}),
                )
            )
        job += 1
    for i in range(n_requests):
        plan.requests.append(_request(plan, rng, now, i))
    return plan


def _request(plan: Plan, rng: random.Random, now: datetime, i: int) -> ModifyRequested:
    booking = rng.choice(plan.bookings)
    request_id = f"req-{plan.label}-{i}"
    requester = booking.contact_id if booking.contact_id and rng.random() < 0.5 else booking.customer_id
    appointment_id = booking.appointment_id
    roll = rng.random()
    expect: Expect | None = None
    if roll < 0.45:
        kind = "reschedule"
        if booking.business_unit == COMMERCIAL:  # into one of its unit's windows (full or not)
            change = factories.reschedule(rng.choice(plan.commercial_windows))
        else:
            change = factories.reschedule(_window(now, 25 + rng.randrange(35), 8 + rng.randrange(8)))
    elif roll < 0.68:
        kind = "cancel"
        change = factories.cancel(rng.choice(CANCEL_REASONS))
    elif roll < 0.74:
        kind = "stranger"
        requester = f"stranger-{i}"
        change = factories.cancel("not mine")
        expect = Expect("rejected", frozenset({"appointment_not_found"}))
    elif roll < 0.79:
        kind = "unknown_appointment"
        appointment_id = f"apt-missing-{i}"
        change = factories.reschedule()
        expect = Expect("rejected", frozenset({"appointment_not_found"}))
    elif roll < 0.85:
        kind = "same_window"
        change = factories.reschedule(booking.window)
    elif roll < 0.90:
        kind = "cancel_without_reason"
        change = factories.cancel(None)
        expect = Expect("rejected", frozenset({"cancel_reason_required", "appointment_not_modifiable"}))
    elif roll < 0.95:
        kind = "too_far"
        change = factories.reschedule(_window(now, 400, 9))
        expect = Expect("rejected", frozenset({"new_window_too_far", *BEFORE_THE_WINDOW}))
    else:
        kind = "in_the_past"
        change = factories.reschedule(_window(now, -2, 9))
        expect = Expect("rejected", frozenset({"new_window_in_past", *BEFORE_THE_WINDOW}))
    plan.kinds[kind] = plan.kinds.get(kind, 0) + 1
    if expect is not None:
        plan.expect[request_id] = expect
    return factories.modify_requested(
        tenant=booking.tenant_id,
        appointment_id=appointment_id,
        requester_id=requester,
        change=change,
        request_id=request_id,
        producer="portal-web",
    )


# --- publishing ------------------------------------------------------------------------------------------


async def publish_confirmed(broker: Broker, message: Envelope, *, give_up_after_s: float = 180.0) -> None:
    """Publish until the broker confirms, as a portal must: a failed or unconfirmed publish is retried
    with the same message id (the pipeline drops the copy if the first one did arrive)."""
    deadline = time.monotonic() + give_up_after_s
    delay = 0.1
    while True:
        try:
            await broker.publish_message(message)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def publish_paced(
    broker: Broker, messages: list[Envelope], duration_s: float, sent_at: dict[str, float] | None = None
) -> None:
    """Spread the messages evenly over `duration_s` (a steady load while faults happen), each confirmed."""
    if not messages:
        return
    loop = asyncio.get_running_loop()
    started = loop.time()
    pending: set[asyncio.Task] = set()

    async def one(message: Envelope) -> None:
        await publish_confirmed(broker, message)
        if sent_at is not None:
            sent_at.setdefault(message.correlation_id, time.time())

    for i, message in enumerate(messages):
        due = started + duration_s * i / len(messages)
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        task = asyncio.create_task(one(message))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)


async def wait_for_setup(engine: AsyncEngine, plan: Plan, timeout_s: float = 60.0) -> None:
    """Until every tenant's settings and every booking are in (the read store shows the bookings)."""

    async def counts() -> tuple[int, int]:
        async with engine.connect() as conn:
            layers = (
                await conn.execute(
                    select(settings_layers.c.tenant_id).where(settings_layers.c.tenant_id.in_(plan.tenants))
                )
            ).all()
            booked = (
                await conn.execute(
                    select(portal_appointments.c.appointment_id).where(
                        portal_appointments.c.tenant_id.in_(plan.tenants)
                    )
                )
            ).all()
        return len(layers), len(booked)

    async def set_up() -> tuple[int, int] | None:
        layers, booked = await counts()
        return (layers, booked) if layers >= 2 * len(plan.tenants) and booked >= len(plan.bookings) else None

    await eventually(
        set_up, f"the set-up ({2 * len(plan.tenants)} layers, {len(plan.bookings)} bookings)", timeout_s, 0.2
    )


class Office:
    """Plays the office: decides every request that waits for its approval (approves two in three)."""

    def __init__(self, engine: AsyncEngine, broker: Broker, tenants: list[str]) -> None:
        self._engine = engine
        self._broker = broker
        self._tenants = tenants
        self.decided: dict[str, bool] = {}
        self.sent: list[Envelope] = []  # the decisions, each an office message that gets an outcome
        self._stop = asyncio.Event()

    async def run(self, interval_s: float = 0.3) -> None:
        while not self._stop.is_set():
            try:
                await self.decide_waiting()
            except Exception:  # the database may be away during a fault; try again
                pass
            try:
                await asyncio.wait_for(self._stop.wait(), interval_s)
            except TimeoutError:
                pass

    async def decide_waiting(self) -> None:
        t = portal_requests
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(t.c.tenant_id, t.c.request_id).where(
                    t.c.tenant_id.in_(self._tenants), t.c.status == "awaiting_approval"
                )
            )
            waiting = [(tenant, request_id) for tenant, request_id in rows if request_id not in self.decided]
        for tenant, request_id in waiting:
            approved = len(self.decided) % 3 != 2
            self.decided[request_id] = approved
            decision = factories.approval_decided(
                request_id,
                tenant=tenant,
                approved=approved,
                reason=None if approved else "The crew is booked that week",
            )
            self.sent.append(decision)
            await publish_confirmed(self._broker, decision)

    def stop(self) -> None:
        self._stop.set()
