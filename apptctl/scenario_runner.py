"""Publish a World's messages through the real broker and judge what the read store then shows."""

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import uuid4

import aio_pika
from sqlalchemy.ext.asyncio import AsyncEngine

from apptctl import readstore
from apptctl.scenarios import Scenario, World
from contracts.decoding import CONTENT_TYPE
from contracts.office_v1 import ApprovalDecided, ApprovalDecidedPayload
from infra.topology import DEAD_LETTER
from workers.runtime.broker import Broker

TERMINAL = frozenset({"rejected", "completed", "failed"})


@dataclass
class ScenarioResult:
    scenario: Scenario
    request: readstore.RequestView | None = None
    appointment: readstore.AppointmentView | None = None
    job_status: str | None = None
    offer: readstore.OfferView | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


async def publish_all(broker: Broker, messages) -> None:
    await asyncio.gather(*(broker.publish_message(m) for m in messages))


async def wait_until(check, timeout_s: float, interval_s: float = 0.1):
    """Poll `check()` (async, returns a truthy result when done) until done or the time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(interval_s)


async def wait_for_setup(engine: AsyncEngine, world: World, timeout_s: float = 30.0) -> bool:
    """True once every booking is in the read store (so the source of truth has it) and settings apply."""

    async def ready() -> bool:
        for message in world.settings:
            scope = getattr(message.payload, "scope", None)
            level, key = (scope.level.value, scope.key) if scope else ("business", None)
            version = await readstore.settings_version(engine, message.tenant_id, level, key)
            if version is None or version < message.payload.settings_version:
                return False
        for message in world.bookings:
            found = await readstore.appointments(engine, message.tenant_id, [message.payload.appointment_id])
            if not found:
                return False
        return True

    return await wait_until(ready, timeout_s)


async def baseline(engine: AsyncEngine, world: World) -> dict[str, readstore.AppointmentView]:
    by_tenant: dict[str, list[str]] = {}
    for booking in world.bookings:
        by_tenant.setdefault(booking.tenant_id, []).append(booking.payload.appointment_id)
    views: dict[str, readstore.AppointmentView] = {}
    for tenant_id, ids in by_tenant.items():
        views.update(await readstore.appointments(engine, tenant_id, ids))
    return views


async def observe(engine: AsyncEngine, scenario: Scenario, before: dict) -> ScenarioResult:
    tenant = scenario.tenant_id
    appointment_id = scenario.request.payload.appointment_id
    expect = scenario.expect
    result = ScenarioResult(scenario)
    result.request = await readstore.request(engine, tenant, scenario.request.correlation_id)
    ids = [appointment_id, *expect.unchanged_appointments]
    now = await readstore.appointments(engine, tenant, ids)
    result.appointment = now.get(appointment_id)
    if result.appointment is not None:
        result.job_status = await readstore.job_status(engine, tenant, result.appointment.job_id)
    result.offer = (await readstore.offers(engine, tenant, [appointment_id])).get(appointment_id)
    problems = result.problems
    if result.request is None:
        problems.append("request not in read store")
    else:
        if result.request.status != expect.request_status:
            problems.append(f"request {result.request.status}, expected {expect.request_status}")
        if expect.reason_code and result.request.reason_code != expect.reason_code:
            problems.append(f"reason {result.request.reason_code}, expected {expect.reason_code}")
    appointment, original = result.appointment, before.get(appointment_id)
    if appointment is None or original is None:
        problems.append("appointment not in read store")
        return result
    if expect.appointment_status and appointment.status != expect.appointment_status:
        problems.append(f"appointment {appointment.status}, expected {expect.appointment_status}")
    if expect.window is None:
        if (appointment.window_start, appointment.window_end) != (original.window_start, original.window_end):
            problems.append("window changed but should not have")
        if expect.request_status != "completed" and appointment.version != original.version:
            problems.append(f"version moved {original.version} -> {appointment.version} on a refused request")
    elif (appointment.window_start, appointment.window_end) != (expect.window.start, expect.window.end):
        problems.append(
            f"window {appointment.window_start:%a %H:%M}, expected {expect.window.start:%a %H:%M}"
        )
    if expect.job_status and result.job_status != expect.job_status:
        problems.append(f"job {result.job_status}, expected {expect.job_status}")
    for other in expect.unchanged_appointments:
        if other in now and other in before and now[other].version != before[other].version:
            problems.append(f"{other} changed but should not have")
    return result


async def run_scenarios(
    engine: AsyncEngine, broker: Broker, world: World, timeout_s: float = 30.0
) -> list[ScenarioResult]:
    before = await baseline(engine, world)
    await publish_all(broker, [s.request for s in world.scenarios])
    approved: set[str] = set()

    async def settled() -> list[ScenarioResult] | None:
        results = [await observe(engine, s, before) for s in world.scenarios]
        for result in results:
            await _office_approves_if_waiting(broker, result, approved)
        done = all(r.request is not None and r.request.status in TERMINAL for r in results)
        return results if done and all(r.passed for r in results) else None

    results = await wait_until(settled, timeout_s, interval_s=0.2)
    return results or [await observe(engine, s, before) for s in world.scenarios]


async def _office_approves_if_waiting(broker: Broker, result: ScenarioResult, approved: set[str]) -> None:
    """Play the office's part: approve a request the scenario expects to wait for approval."""
    scenario = result.scenario
    if (
        not scenario.expect.office_approves
        or result.request is None
        or result.request.status != "awaiting_approval"
    ):
        return
    request_id = scenario.request.correlation_id
    if request_id in approved:
        return
    approved.add(request_id)
    await broker.publish_message(
        ApprovalDecided(
            message_id=uuid4(),
            tenant_id=scenario.tenant_id,
            correlation_id=f"approval-{request_id}",
            occurred_at=datetime.now(UTC),
            producer="office",
            payload=ApprovalDecidedPayload(request_id=request_id, approved=True, decided_by="csr-office"),
        )
    )


@dataclass
class DeadLetter:
    queue: str
    reason: str
    detail: str


async def publish_malformed(broker: Broker, body: bytes = b'{"type": "modify.requested", "payload": ') -> str:
    """Publish bytes that are not a valid message where portals publish requests; returns its message id."""
    message_id = str(uuid4())
    await broker.publish(
        broker.topology.exchange("requests"),
        "modify.requested",
        aio_pika.Message(
            body,
            content_type=CONTENT_TYPE,
            message_id=message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            app_id="portal-web",  # a portal's bug, not an intruder: signed, so it fails on its body
        ),
    )
    return message_id


async def take_dead_letters(broker: Broker, message_id: str, expected: int, timeout_s: float = 15.0):
    """Remove the dead letters carrying `message_id` from every dead-letter queue and return them.
    Other dead letters are left where they were (returned to their queue when our channel closes)."""
    found: list[DeadLetter] = []
    dead_queues = [q.name for q in broker.topology.queues if q.kind == DEAD_LETTER]  # not the audit copies

    async def sweep() -> bool:
        assert broker.connection is not None
        channel = await broker.connection.channel()
        try:
            for name in dead_queues:
                queue = await channel.declare_queue(name, passive=True)
                for _ in range(10_000):
                    message = await queue.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    if message.message_id == message_id:
                        headers = message.headers or {}
                        found.append(
                            DeadLetter(
                                name,
                                str(headers.get("x-dead-letter-reason")),
                                str(headers.get("x-dead-letter-detail")),
                            )
                        )
                        await message.ack()
        finally:
            await channel.close()
        return len(found) >= expected

    await wait_until(sweep, timeout_s, interval_s=0.3)
    return found
