"""Tenant and customer isolation, by numbers: 500 requests that reach across tenants or customers, on the
real pipeline, and a checksum of every row the victims own, before and after, that must not move.

The attacks (each a validly signed request from a real portal, so they reach the rules):
- another tenant's appointment ids, asked for in the attacker's own tenant;
- the victim's tenant id with the attacker's customer id (another customer of the same business);
- a customer id that exists in the victim's tenant, sent in the attacker's tenant;
- a project contact acting on an appointment outside their project, or on a same-named project of
  another tenant;
mixing reschedules (with and without expected_version) and cancels. Every one must be rejected as
`appointment_not_found` (the portal learns nothing about what exists), and then one genuine request
shows the pipeline was live throughout and that the checksum does see a change.
"""

import asyncio
import random
import uuid

from sqlalchemy import text

from apptctl import readstore
from apptctl.scenario_runner import publish_all, wait_until
from contracts.common import ContactRole
from tests import factories as f
from tests.conftest import unique_tenant

ATTEMPTS = 500
CUSTOMERS = 4  # per tenant: cust-0..3, each with one job and appointment; cust-0's is on project proj-1
# Every table that holds what a tenant owns (the schedule, the rules, the portal's view of them).
OWNED_TABLES = (
    "scheduling.appointments",
    "scheduling.jobs",
    "scheduling.projects",
    "scheduling.project_contacts",
    "scheduling.capacity_windows",
    "policy.settings_layers",
    "policy.offers",
    "portal.appointments",
    "portal.jobs",
    "portal.appointment_offers",
    "portal.available_windows",
)


def _world(tenant: str, tag: str) -> list:
    messages = [f.portal_settings_updated(tenant=tenant)]
    for i in range(CUSTOMERS):
        project = f.project("proj-1", {f"lead-{tag}": ContactRole.PROJECT_LEAD}) if i == 0 else None
        messages.append(
            f.appointment_recorded(
                tenant=tenant,
                appointment_id=f"apt-{tag}-{i}",
                job_id=f"job-{tag}-{i}",
                customer_id=f"cust-{i}",
                project=project,
                window=f.arrival_window(3 + i),
                change_id=f"book-{tag}-{i}",
            )
        )
    return messages


async def checksum(engine, tenants: list[str]) -> dict[str, str]:
    """md5 of every row the tenants own, per table (rows in a stable order, as text)."""
    sums = {}
    async with engine.connect() as connection:
        for table in OWNED_TABLES:
            sums[table] = await connection.scalar(
                text(
                    f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                    f"FROM {table} t WHERE tenant_id = ANY(:tenants)"
                ),
                {"tenants": tenants},
            )
    return sums


async def settled_checksum(engine, tenants: list[str]) -> dict[str, str]:
    """The checksum once the bookings' consequences (the gate's offers, their read-store rows) stopped
    arriving: the same twice, a second apart."""
    previous = await checksum(engine, tenants)
    for _ in range(60):
        await asyncio.sleep(1)
        current = await checksum(engine, tenants)
        if current == previous:
            return current
        previous = current
    raise AssertionError("the victims' rows never settled")


def attacks(victims: dict[str, str], attacker: str, rng: random.Random) -> list:
    """ATTEMPTS requests, none of which may touch anything (victims: tenant -> tag)."""
    made = []
    tags = list(victims.items())
    while len(made) < ATTEMPTS:
        victim, tag = rng.choice(tags)
        i = rng.randrange(CUSTOMERS)
        other = rng.choice([c for c in range(CUSTOMERS) if c != i])
        _, foreign_tag = rng.choice([t for t in tags if t[0] != victim])
        kind = len(made) % 5
        if kind == 0:  # the victim's appointment, asked for in the attacker's tenant, as its owner's id
            tenant, appointment, requester = attacker, f"apt-{tag}-{i}", f"cust-{i}"
        elif kind == 1:  # same business, another customer's appointment
            tenant, appointment, requester = victim, f"apt-{tag}-{i}", f"cust-{other}"
        elif kind == 2:  # another tenant's appointment id inside the victim's tenant
            tenant, appointment, requester = victim, f"apt-{foreign_tag}-{i}", f"cust-{i}"
        elif kind == 3:  # a project lead, on an appointment outside their project
            tenant, appointment, requester = victim, f"apt-{tag}-{rng.randrange(1, CUSTOMERS)}", f"lead-{tag}"
        else:  # another tenant's lead of a same-named project
            tenant, appointment, requester = victim, f"apt-{tag}-0", f"lead-{foreign_tag}"
        change = (
            f.cancel(rng.choice([None, "not mine, but cancel it"]))
            if rng.random() < 0.4
            else f.reschedule(f.arrival_window(rng.randint(5, 20)))
        )
        made.append(
            f.modify_requested(
                tenant=tenant,
                appointment_id=appointment,
                requester_id=requester,
                change=change,
                expected_version=rng.choice([None, 1]),
                request_id=f"attack-{len(made)}-{uuid.uuid4().hex[:8]}",
            )
        )
    return made


async def test_500_requests_across_tenants_and_customers_change_nothing(workers, broker, engine):
    victims = {unique_tenant("victim"): "a", unique_tenant("victim"): "b"}
    attacker = unique_tenant("attacker")
    await publish_all(broker, [m for tenant, tag in victims.items() for m in _world(tenant, tag)])
    await publish_all(broker, [f.portal_settings_updated(tenant=attacker)])

    async def booked() -> bool:
        for tenant, tag in victims.items():
            ids = [f"apt-{tag}-{i}" for i in range(CUSTOMERS)]
            if len(await readstore.appointments(engine, tenant, ids)) < CUSTOMERS:
                return False
        return await readstore.settings_version(engine, attacker) is not None

    assert await wait_until(booked, 30)
    before = await settled_checksum(engine, list(victims))
    sent = attacks(victims, attacker, random.Random(500))

    await publish_all(broker, sent)

    async def all_answered() -> list | None:
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    text(
                        "SELECT request_id, status, reason_code FROM portal.requests "
                        "WHERE request_id LIKE 'attack-%' AND status <> 'pending' AND tenant_id = ANY(:t)"
                    ),
                    {"t": [*victims, attacker]},
                )
            ).all()
        return rows if len(rows) == ATTEMPTS else None

    answered = await wait_until(all_answered, 120)
    assert answered, "not every attack got an answer"
    outcomes = {(status, code) for _, status, code in answered}
    assert outcomes == {("rejected", "appointment_not_found")}
    assert await checksum(engine, list(victims)) == before

    # The pipeline was live all along, and the checksum does notice a real change.
    victim, tag = next(iter(victims.items()))
    genuine = f.modify_requested(
        tenant=victim,
        appointment_id=f"apt-{tag}-1",
        requester_id="cust-1",
        change=f.cancel("plans changed"),
        request_id=f"genuine-{uuid.uuid4().hex[:8]}",
    )
    await publish_all(broker, [genuine])

    async def completed():
        view = await readstore.request(engine, victim, genuine.correlation_id)
        return view if view is not None and view.status == "completed" else None

    assert await wait_until(completed, 30)
    after = await checksum(engine, list(victims))
    assert after["scheduling.appointments"] != before["scheduling.appointments"]
