"""Fairness and rate limits on the real pipeline: one tenant's flood does not starve another tenant, and one
customer cannot fire hundreds of reschedules.

The flood tests run the workers as processes of their own, as deployed (in this process, the workers and
the flood's publisher would share one event loop, and one stage's work would delay the others').

The flood is APPT_FLOOD_REQUESTS signed requests (default 2,000 here; `make bench-flood` runs 10,000 and
prints the figures) for one appointment of one tenant, published as fast as the broker confirms them,
while another tenant's customers reschedule their own appointments, one every 100 ms. The victim's
publish-to-final latency (publish time to the read store's final status) should stay under 1 s at p95:
a speed target, asserted by `make bench-flood` (APPT_FLOOD_TARGET_S) and printed here.
"""

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from apptctl import readstore
from apptctl.processes import WorkerProcesses
from apptctl.scenario_runner import publish_all, wait_until
from contracts.office_v2 import RateLimitSettings, RescheduleSettings, SettingsLayer
from contracts.reasons import RejectionCode, customer_text
from tests import factories as f
from tests.conftest import unique_tenant
from workers.runtime.broker import Broker

FLOOD = int(os.environ.get("APPT_FLOOD_REQUESTS", "2000"))
VICTIM_APPOINTMENTS = 20
VICTIM_EVERY_S = 0.1
FINAL = ("completed", "rejected", "failed")


def _layer(**rate_limits: int) -> SettingsLayer:
    return SettingsLayer(
        feature_enabled=True,
        reschedule=RescheduleSettings(confirmed="allow", unconfirmed="allow"),
        rate_limits=RateLimitSettings(**rate_limits) if rate_limits else None,
    )


async def _publish_flood(broker, messages, in_flight: int = 100) -> None:
    """As fast as the broker confirms, `in_flight` unconfirmed at a time (a busy portal)."""
    limit = asyncio.Semaphore(in_flight)

    async def one(message) -> None:
        async with limit:
            await broker.publish_message(message)

    await asyncio.gather(*(one(m) for m in messages))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def _final_rows(engine, tenant: str, prefix: str) -> list:
    async with engine.connect() as connection:
        return (
            await connection.execute(
                text(
                    "SELECT request_id, status, reason_code, reason_text, updated_at FROM portal.requests "
                    "WHERE tenant_id = :t AND request_id LIKE :p AND status = ANY(:final)"
                ),
                {"t": tenant, "p": f"{prefix}%", "final": list(FINAL)},
            )
        ).all()


async def _booked(engine, tenant: str, ids: list[str]) -> bool:
    return len(await readstore.appointments(engine, tenant, ids)) == len(ids)


async def test_a_customer_cannot_reschedule_one_appointment_200_times(workers, broker, engine):
    tenant = unique_tenant("limits")
    await publish_all(
        broker,
        [
            f.settings_layer_updated(
                tenant=tenant, settings=_layer(requester_burst=3, requester_per_minute=6)
            ),
            f.appointment_recorded(tenant=tenant, appointment_id="apt-1", customer_id="cust-1"),
        ],
    )
    assert await wait_until(lambda: _booked(engine, tenant, ["apt-1"]), 30)
    requests = [
        f.modify_requested(
            tenant=tenant,
            appointment_id="apt-1",
            requester_id="cust-1",
            change=f.reschedule(f.arrival_window(8 + i % 5)),
            request_id=f"again-{i}-{uuid.uuid4().hex[:6]}",
        )
        for i in range(200)
    ]
    started = time.monotonic()
    await publish_all(broker, requests)

    async def answered() -> list | None:
        rows = await _final_rows(engine, tenant, "again-")
        return rows if len(rows) == 200 else None

    rows = await wait_until(answered, 120)
    assert rows, "not every request got an answer"
    elapsed = time.monotonic() - started
    limited = [r for r in rows if r.reason_code == RejectionCode.RATE_LIMITED]
    completed = [r for r in rows if r.status == "completed"]
    # A burst of 3, then one every 10 s: however long the run took, at most 3 + elapsed/10 got through.
    assert 1 <= len(completed) <= 3 + int(elapsed / 10) + 1
    assert len(limited) >= 200 - 3 - int(elapsed / 10) - 1
    assert {r.reason_text for r in limited} == {customer_text(RejectionCode.RATE_LIMITED)}
    assert {r.status for r in limited} == {"rejected"}

    # Another customer of the same business is not affected by cust-1's limit.
    other = f.modify_requested(
        tenant=tenant, appointment_id="apt-1", requester_id="cust-2", request_id="other-customer"
    )
    await publish_all(broker, [other])
    view = await wait_until(lambda: _final_view(engine, tenant, "other-customer"), 30)
    assert view is not None and view.reason_code == RejectionCode.APPOINTMENT_NOT_FOUND

    # A refused request sent again (same request id, new message) keeps its first answer.
    first = limited[0]
    again = f.modify_requested(
        tenant=tenant, appointment_id="apt-1", requester_id="cust-1", request_id=first.request_id
    )
    await publish_all(broker, [again])
    await asyncio.sleep(1.0)
    async with engine.connect() as connection:
        decided = (
            await connection.execute(
                text(
                    "SELECT count(*), min(reason_code) FROM policy.decisions "
                    "WHERE tenant_id = :t AND request_id = :r"
                ),
                {"t": tenant, "r": first.request_id},
            )
        ).one()
    assert tuple(decided) == (1, "rate_limited")


async def _final_view(engine, tenant: str, request_id: str):
    view = await readstore.request(engine, tenant, request_id)
    return view if view is not None and view.status in FINAL else None


async def _victim_latencies(broker, engine, flood_tenant: str, victim: str, settings) -> dict:
    """The flood goes through `broker`'s connection; the victim's portal has its own connection."""
    flood = [
        f.modify_requested(
            tenant=flood_tenant,
            appointment_id="apt-f",
            requester_id=f"cust-{i % 50}",
            change=f.reschedule(f.arrival_window(9 + i % 7)),
            request_id=f"flood-{i}",
        )
        for i in range(FLOOD)
    ]
    sent_at: dict[str, datetime] = {}

    victim_portal = Broker(
        settings.amqp_url, broker.topology, name="victim-portal", signer=settings.keyring()
    )
    await victim_portal.connect()

    async def victims() -> None:
        for i in range(VICTIM_APPOINTMENTS):
            request = f.modify_requested(
                tenant=victim,
                appointment_id=f"apt-v{i}",
                requester_id=f"cust-v{i}",
                change=f.reschedule(f.arrival_window(12)),
                request_id=f"victim-{i}",
            )
            sent_at[request.correlation_id] = datetime.now(UTC)
            await victim_portal.publish_message(request)
            await asyncio.sleep(VICTIM_EVERY_S)

    started = time.monotonic()
    flooding = asyncio.create_task(_publish_flood(broker, flood))
    await asyncio.sleep(0.3)  # the victim starts behind a backlog
    try:
        await victims()
    finally:
        await victim_portal.close()
    await flooding
    flood_s = time.monotonic() - started

    async def victims_done() -> list | None:
        rows = await _final_rows(engine, victim, "victim-")
        return rows if len(rows) == VICTIM_APPOINTMENTS else None

    rows = await wait_until(victims_done, 180, interval_s=0.25)
    assert rows, "the victim's requests never finished"
    latencies = [(r.updated_at - sent_at[r.request_id]).total_seconds() for r in rows]
    async with engine.connect() as connection:
        gate = dict(
            (
                await connection.execute(
                    text("SELECT request_id, decided_at FROM policy.decisions WHERE tenant_id = :t"),
                    {"t": victim},
                )
            ).all()
        )
    if os.environ.get("APPT_FLOOD_DEBUG"):  # where each victim's time went: gate decision, then final
        for r in sorted(rows, key=lambda r: sent_at[r.request_id]):
            sent = sent_at[r.request_id]
            print(
                r.request_id,
                (gate[r.request_id] - sent).total_seconds(),
                (r.updated_at - sent).total_seconds(),
            )

    async def flood_done() -> list | None:
        found = await _final_rows(engine, flood_tenant, "flood-")
        return found if len(found) == FLOOD else None

    flood_rows = await wait_until(flood_done, 600, interval_s=0.5)
    assert flood_rows, "the flood was not answered in full"
    answered_s = time.monotonic() - started
    figures = {
        "flood_requests": FLOOD,
        "flood_answered_s": round(answered_s, 1),
        "flood_rate_per_s": round(FLOOD / flood_s),
        "victim_p50_s": round(_percentile(latencies, 50), 3),
        "victim_p95_s": round(_percentile(latencies, 95), 3),
        "victim_p99_s": round(_percentile(latencies, 99), 3),
        "victim_statuses": sorted({r.status for r in rows}),
        "refused_rate_limited": sum(r.reason_code == RejectionCode.RATE_LIMITED for r in flood_rows),
    }
    print("fairness:", " ".join(f"{k}={v}" for k, v in figures.items()))
    return figures


async def _start_processes(settings, topology, log_dir, **env: str) -> WorkerProcesses:
    group = WorkerProcesses(
        {
            "AMQP_URL": settings.amqp_url,
            "DATABASE_URL": settings.database_url,
            "APPT_NAMESPACE": topology.namespace,
            "APPT_RETRY_DELAYS_S": settings.retry_delays,
            "LOG_LEVEL": os.environ.get("APPT_FLOOD_LOG_LEVEL", "WARNING"),
            # Within the suite's connection budget (README): three workers on small pools.
            "APPT_DB_POOL_SIZE": "4",
            **env,
        },
        log_dir,
    )
    group.start()
    try:
        await group.wait_consuming(settings.amqp_url, topology)
    except Exception:
        group.stop(timeout_s=10)
        raise
    return group


async def test_one_tenants_flood_does_not_starve_another_tenant(settings, topology, broker, engine, tmp_path):
    group = await _start_processes(settings, topology, tmp_path)
    try:
        await _flood_with_lanes_and_limits(broker, engine, settings)
    finally:
        group.stop(timeout_s=30)


async def _flood_with_lanes_and_limits(broker, engine, settings) -> None:
    flood_tenant, victim = unique_tenant("flood"), unique_tenant("victim")
    await publish_all(
        broker,
        [
            f.settings_layer_updated(
                tenant=flood_tenant, settings=_layer(tenant_burst=20, tenant_per_minute=600)
            ),
            f.appointment_recorded(tenant=flood_tenant, appointment_id="apt-f", customer_id="cust-0"),
            f.settings_layer_updated(tenant=victim, settings=_layer()),
            *[
                f.appointment_recorded(
                    tenant=victim,
                    appointment_id=f"apt-v{i}",
                    job_id=f"job-v{i}",
                    customer_id=f"cust-v{i}",
                    change_id=f"book-v{i}",
                )
                for i in range(VICTIM_APPOINTMENTS)
            ],
        ],
    )
    ids = [f"apt-v{i}" for i in range(VICTIM_APPOINTMENTS)]
    assert await wait_until(lambda: _booked(engine, victim, ids), 30)
    assert await wait_until(lambda: _booked(engine, flood_tenant, ["apt-f"]), 30)

    figures = await _victim_latencies(broker, engine, flood_tenant, victim, settings)

    assert figures["victim_statuses"] == ["completed"]
    # The flood's tenant gets its burst (20) and 10 a second for as long as the gate took to answer it.
    admitted = FLOOD - figures["refused_rate_limited"]
    assert 20 <= admitted <= 20 + 10 * figures["flood_answered_s"] + 10, figures
    # The figure (victim p95 under 1 s) is a speed target: `make bench-flood` measures and
    # asserts it (APPT_FLOOD_TARGET_S); the suite checks the behaviour and prints the figures.
    target = os.environ.get("APPT_FLOOD_TARGET_S")
    if target:
        assert figures["victim_p95_s"] < float(target), figures


async def test_without_tenant_lanes_the_same_flood_starves_the_victim(
    settings, topology, broker, engine, tmp_path
):
    """The control (`make bench-flood`): plain FIFO workers (APPT_FAIR_WINDOW=0), no limits on the flood's
    tenant; shows what the lanes and limits are for."""
    if not os.environ.get("APPT_FLOOD_CONTROL"):
        pytest.skip("the FIFO control runs in `make bench-flood` (APPT_FLOOD_CONTROL=1)")
    group = await _start_processes(settings, topology, tmp_path, APPT_FAIR_WINDOW="0")
    try:
        flood_tenant, victim = unique_tenant("flood"), unique_tenant("victim")
        await publish_all(
            broker,
            [
                f.settings_layer_updated(tenant=flood_tenant, settings=_layer()),
                f.appointment_recorded(tenant=flood_tenant, appointment_id="apt-f", customer_id="cust-0"),
                f.settings_layer_updated(tenant=victim, settings=_layer()),
                *[
                    f.appointment_recorded(
                        tenant=victim,
                        appointment_id=f"apt-v{i}",
                        job_id=f"job-v{i}",
                        customer_id=f"cust-v{i}",
                        change_id=f"book-v{i}",
                    )
                    for i in range(VICTIM_APPOINTMENTS)
                ],
            ],
        )
        ids = [f"apt-v{i}" for i in range(VICTIM_APPOINTMENTS)]
        assert await wait_until(lambda: _booked(engine, victim, ids), 30)
        figures = await _victim_latencies(broker, engine, flood_tenant, victim, settings)
        assert figures["victim_p95_s"] > 1.0, figures
    finally:
        group.stop(timeout_s=30)
