"""The bench's database and data set, and the modify requests the load generator offers.

Data set (ours): 8 tenants, each with layered settings that allow every change the bench asks for
(business layer + a business-unit and a job-type override), sent as office messages
(`office.portal_settings.updated` v2) through the real policy_gate. The schedule itself is written by
direct inserts (COPY) into scheduling.jobs / appointments / projects / project_contacts and the matching
read-store rows portal.appointments / portal.jobs, as modify_handler + portal_sync would have left them
after `office.appointment.recorded`: tens of thousands of bookings through the pipeline would take
longer than the whole quick run. Jobs are residential, commercial and construction work; one in ten is
a three-visit construction job on a project with a lead and a subcontractor; appointments are 3-21 days
ahead, a third of them unconfirmed.

Requests: each on a distinct appointment, so every one is approved and applied: ~6 in 7 reschedule to a
window 25-60 days ahead, 1 in 7 cancels (with a reason on the list the settings require); on
construction jobs every other request comes from the project's subcontractor instead of the customer.
"""

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import asyncpg

from bench.common import HOPS_DDL, asyncpg_dsn
from contracts.common import ArrivalWindow
from contracts.decoding import encode
from contracts.office_v2 import (
    CancelSettings,
    Permission,
    PortalSettingsUpdatedV2,
    PortalSettingsV2Payload,
    RescheduleSettings,
    ScopeLevel,
    SettingsLayer,
    SettingsScope,
)
from contracts.portal_v1 import Cancel, ModifyRequested, ModifyRequestedPayload, Reschedule
from infra.db.admin import drop_database, ensure_database
from infra.db.migrate import upgrade_async

TENANTS = (
    "sunny-plumbing",
    "metro-hvac",
    "oak-homes",
    "skyline-build",
    "bright-electric",
    "cool-air-services",
    "pipe-pros",
    "north-roofing",
)
JOB_TYPES = {
    "residential": ("water-heater-service", "drain-cleaning", "faucet-repair"),
    "commercial": ("rtu-maintenance", "boiler-inspection"),
    "construction": ("hvac-install", "ductwork-install", "electrical-rough-in"),
}
CANCEL_REASONS = ["Fixed it myself", "Schedule conflict", "No longer needed"]


@dataclass(frozen=True)
class Target:
    tenant_id: str
    appointment_id: str
    requester_id: str
    cancel: bool


async def reset_database(database_url: str) -> None:
    """Drop and recreate the bench database, migrate it, add the bench's own table."""
    await drop_database(database_url)
    await ensure_database(database_url)
    await upgrade_async(database_url)
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for statement in HOPS_DDL:
            await connection.execute(statement)
    finally:
        await connection.close()


def settings_messages(now: datetime) -> list[PortalSettingsUpdatedV2]:
    version = int(now.timestamp() * 1000)
    allow = Permission.ALLOW
    layers = (
        (
            SettingsScope(level=ScopeLevel.BUSINESS),
            SettingsLayer(
                feature_enabled=True,
                reschedule=RescheduleSettings(
                    confirmed=allow,
                    unconfirmed=allow,
                    min_notice_hours=24,
                    min_lead_hours=24,
                    max_horizon_days=120,
                    max_customer_reschedules=3,
                ),
                cancel=CancelSettings(
                    confirmed=allow, unconfirmed=allow, min_notice_hours=24, reason_required=True
                ),
            ),
        ),
        (
            SettingsScope(level=ScopeLevel.BUSINESS_UNIT, key="commercial"),
            SettingsLayer(reschedule=RescheduleSettings(min_lead_hours=48)),
        ),
        (
            SettingsScope(level=ScopeLevel.JOB_TYPE, key="hvac-install"),
            SettingsLayer(cancel=CancelSettings(allowed_reasons=CANCEL_REASONS)),
        ),
    )
    return [
        PortalSettingsUpdatedV2(
            message_id=uuid4(),
            tenant_id=tenant,
            correlation_id=f"bench-settings-{n}",
            occurred_at=now,
            producer="office",
            payload=PortalSettingsV2Payload(
                scope=scope, settings=layer, settings_version=version, changed_by="bench-admin"
            ),
        )
        for tenant in TENANTS
        for n, (scope, layer) in enumerate(layers)
    ]


@dataclass
class Schedule:
    """Rows for scheduling.* and portal.*, and the request targets among them (shuffled)."""

    tables: dict[str, tuple[str, list[str], list[tuple]]]  # name -> (schema, columns, records)
    targets: list[Target]


def plan_schedule(targets_needed: int, now: datetime) -> Schedule:
    """Enough jobs for `targets_needed` requests plus ~30% appointments nobody touches; the request
    targets in a shuffled order. Nothing is written yet: the settings go through policy_gate first, while
    the schedule is empty, so the gate has no offers to recompute for thousands of seeded appointments
    (it refreshes an appointment's offers when the appointment changes, as in production)."""
    jobs, appointments, portal_appointments, portal_jobs = [], [], [], []
    projects, contacts = [], []
    candidates: list[Target] = []
    k = 0
    while len(appointments) < targets_needed * 1.3 + 10:
        tenant = TENANTS[k % len(TENANTS)]
        kind = k % 10
        unit = "residential" if kind < 6 else "commercial" if kind < 8 else "construction"
        job_type = JOB_TYPES[unit][k // 10 % len(JOB_TYPES[unit])]
        customer = f"cust-{(k // len(TENANTS)) % 3000}"
        job_id = f"job-{k}"
        project_id = None
        if unit == "construction":
            project_id = f"prj-{k // 40}"
            projects.append((tenant, project_id, False, None, None))
            contacts.append((tenant, project_id, f"lead-{k // 40}", "project_lead"))
            contacts.append((tenant, project_id, f"sub-{k // 40}", "subcontractor"))
        visits = 3 if kind == 9 else 1
        for v in range(visits):
            appointment_id = f"apt-{k}-{v}"
            day = now.date() + timedelta(days=3 + (k * 7 + v * 2) % 18)
            start = datetime(day.year, day.month, day.day, 7 + (k % 5) * 2, tzinfo=UTC)
            end = start + timedelta(hours=4 if unit == "construction" else 2)
            confirmation = "unconfirmed" if k % 3 == 0 else "confirmed"
            appointments.append(
                (tenant, appointment_id, job_id, customer, unit, job_type, project_id, start, end,
                 "scheduled", confirmation, 1, 0)
            )  # fmt: skip
            portal_appointments.append(
                (tenant, appointment_id, job_id, customer, project_id, unit, job_type, start, end,
                 "scheduled", confirmation, 1)
            )  # fmt: skip
            requester = customer
            if project_id is not None and len(candidates) % 2:
                requester = f"sub-{k // 40}"
            candidates.append(Target(tenant, appointment_id, requester, cancel=len(candidates) % 7 == 3))
        jobs.append((tenant, job_id, customer, "scheduled", 0))
        portal_jobs.append((tenant, job_id, customer, "scheduled", visits, 0))
        k += 1
    # Several construction jobs of a tenant share a project: one row (and one pair of contacts) each.
    projects = list({(p[0], p[1]): p for p in projects}.values())
    contacts = list({(c[0], c[1], c[2]): c for c in contacts}.values())
    random.Random(7).shuffle(candidates)
    return Schedule(
        {
            "scheduling.jobs": (
                "scheduling", ["tenant_id", "job_id", "customer_id", "status", "version"], jobs
            ),
            "scheduling.projects": (
                "scheduling",
                ["tenant_id", "project_id", "portal_locked", "starts_at", "ends_at"],
                projects,
            ),
            "scheduling.project_contacts": (
                "scheduling",
                ["tenant_id", "project_id", "contact_id", "role"],
                contacts,
            ),
            "scheduling.appointments": (
                "scheduling",
                [
                    "tenant_id", "appointment_id", "job_id", "customer_id", "business_unit", "job_type",
                    "project_id", "window_start", "window_end", "status", "confirmation", "version",
                    "customer_reschedules",
                ],
                appointments,
            ),
            "portal.appointments": (
                "portal",
                [
                    "tenant_id", "appointment_id", "job_id", "customer_id", "project_id", "business_unit",
                    "job_type", "window_start", "window_end", "status", "confirmation", "version",
                ],
                portal_appointments,
            ),
            "portal.jobs": (
                "portal",
                ["tenant_id", "job_id", "customer_id", "status", "active_appointments", "version"],
                portal_jobs,
            ),
        },
        candidates[:targets_needed],
    )  # fmt: skip


async def write_schedule(database_url: str, schedule: Schedule) -> None:
    """COPY every table in one transaction, then ANALYZE."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with connection.transaction():
            for name, (schema, columns, records) in schedule.tables.items():
                await connection.copy_records_to_table(
                    name.split(".", 1)[1], schema_name=schema, records=records, columns=columns
                )
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


# --scale: one residential job with one appointment per row, generated by the server (INSERT ... SELECT
# generate_series: one statement per table, no rows through Python), 3-21 days ahead, a third unconfirmed.
# Zero-padded ids arrive in index order, so the primary keys grow at their right edge (no page splits).
_SCALE_JOBS = """
INSERT INTO scheduling.jobs (tenant_id, job_id, customer_id, status, version)
SELECT ($2::text[])[1 + i % 8], 'job-s' || lpad(i::text, 8, '0'), 'cust-' || (i / 8) % 3000, 'scheduled', 0
FROM generate_series(0, $1 - 1) AS i
"""
_SCALE_APPOINTMENTS = """
INSERT INTO scheduling.appointments
    (tenant_id, appointment_id, job_id, customer_id, business_unit, job_type, project_id,
     window_start, window_end, status, confirmation, version, customer_reschedules)
SELECT ($2::text[])[1 + i % 8], 'apt-s' || lpad(i::text, 8, '0'), 'job-s' || lpad(i::text, 8, '0'),
       'cust-' || (i / 8) % 3000, 'residential',
       'drain-cleaning', NULL, w.start, w.start + interval '2 hours', 'scheduled',
       CASE WHEN i % 3 = 0 THEN 'unconfirmed' ELSE 'confirmed' END, 1, 0
FROM generate_series(0, $1 - 1) AS i,
     LATERAL (SELECT date_trunc('day', $3::timestamptz)
                     + make_interval(days => 3 + i % 18, hours => 7 + (i % 5) * 2) AS start) AS w
"""


async def seed_scale(database_url: str, appointments: int, now: datetime) -> None:
    """`appointments` jobs and appointments (`apt-s<i>`), server-side; see `scale_target`."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with connection.transaction():
            # Skip the per-row foreign-key checks (every job is written just before its appointment):
            # the bench database's own superuser session, the same data, a fraction of the time.
            await connection.execute("SET LOCAL session_replication_role = replica")
            await connection.execute(_SCALE_JOBS, appointments, list(TENANTS))
            await connection.execute(_SCALE_APPOINTMENTS, appointments, list(TENANTS), now)
        await connection.execute("ANALYZE scheduling.jobs")
        await connection.execute("ANALYZE scheduling.appointments")
    finally:
        await connection.close()


def scale_target(i: int) -> Target:
    """The i-th appointment `seed_scale` wrote, asked for by its customer; 1 in 7 cancels."""
    return Target(TENANTS[i % len(TENANTS)], f"apt-s{i:08d}", f"cust-{(i // 8) % 3000}", cancel=i % 7 == 3)


def modify_request(tag: str, i: int, target: Target, now: datetime) -> ModifyRequested:
    if target.cancel:
        change: Reschedule | Cancel = Cancel(reason=CANCEL_REASONS[i % len(CANCEL_REASONS)])
    else:
        day = now.date() + timedelta(days=25 + i % 35)
        start = datetime(day.year, day.month, day.day, 8 + (i % 4) * 2, tzinfo=UTC)
        change = Reschedule(new_window=ArrivalWindow(start=start, end=start + timedelta(hours=2)))
    return ModifyRequested(
        message_id=uuid4(),
        tenant_id=target.tenant_id,
        correlation_id=f"{tag}-{i}",
        occurred_at=now,
        producer="portal-web",
        payload=ModifyRequestedPayload(
            appointment_id=target.appointment_id, requester_id=target.requester_id, change=change
        ),
    )


def synthetic_target(i: int) -> Target:
    """For the bare and runtime stages: same message shape, nothing behind it in the database."""
    return Target(TENANTS[i % len(TENANTS)], f"apt-x{i}", f"cust-{i % 3000}", cancel=i % 7 == 3)


def write_plan(
    path: Path, messages: list[ModifyRequested], body_of: Callable[[str, str], bytes] | None = None
) -> None:
    """JSON lines for the load generator; `body_of(request_id, body)`: the body another system's first
    stage takes (Dramatiq's message, whose arguments are the request id and bytes), made here, unmeasured."""
    with path.open("w") as out:
        for m in messages:
            body = encode(m).decode()
            if body_of is not None:
                body = body_of(m.correlation_id, body).decode()
            item = {"id": m.correlation_id, "mid": str(m.message_id), "type": m.type, "body": body}
            out.write(json.dumps(item))
            out.write("\n")
