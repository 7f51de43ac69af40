"""`apptctl reconcile` as an operator runs it, against requests the real workers handled; then the
database is corrupted the ways a bug would, and the command must say so and exit 1."""

import asyncio
import json
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from apptctl import reconcile
from apptctl.reconcile import SentRequest, write_manifest
from apptctl.scenario_runner import publish_all
from apptctl.scenarios import window_on
from contracts.portal_v1 import Cancel, Reschedule
from tests.e2e.test_delivery_guarantees import booked_world, booking, outcome, request
from workers.runtime.settings import Settings

pytestmark = pytest.mark.integration
LATER = datetime.now(UTC) + timedelta(days=9)


async def apptctl_reconcile(settings: Settings, *args: str) -> tuple[int, dict | str, str]:
    env = {
        **os.environ,
        "AMQP_URL": settings.amqp_url,
        "DATABASE_URL": settings.database_url,
        "APPT_NAMESPACE": settings.namespace,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apptctl.main", "reconcile", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    body = out.decode()
    return process.returncode, json.loads(body) if "--json" in args else body, err.decode()


async def handled_world(broker, engine) -> tuple[str, list]:
    """One tenant, three appointments (one job each), three requests handled to the end."""
    tenant = await booked_world(broker, engine, [("apt-1", "job-1"), ("apt-2", "job-2"), ("apt-3", "job-3")])
    requests = [
        request(tenant, "apt-1", Reschedule(new_window=window_on(LATER, 10))),
        request(tenant, "apt-2", Cancel(reason="moving away")),
        request(tenant, "apt-9", Cancel(reason="not mine")),  # no such appointment: rejected
    ]
    await publish_all(broker, requests)
    for r in requests:
        assert (await outcome(engine, tenant, r.correlation_id)).status != "pending"
    return tenant, requests


def manifest(requests) -> list[SentRequest]:
    return [
        SentRequest(
            r.tenant_id,
            r.correlation_id,
            str(r.message_id),
            r.payload.appointment_id,
            r.payload.change.action,
            r.occurred_at,
        )
        for r in requests
    ]


async def settled(engine, settings, tenant, **kwargs):
    async def clean():
        report = await reconcile.check(
            engine, amqp_url=settings.amqp_url, namespace=settings.namespace, tenants=[tenant], **kwargs
        )
        return report if report.ok else None

    from apptctl.scenario_runner import wait_until

    return await wait_until(clean, 15, interval_s=0.2)


async def test_reconcile_passes_on_a_healthy_pipeline_and_fails_on_each_corruption(
    workers, broker, engine, settings, tmp_path
):
    tenant, requests = await handled_world(broker, engine)
    assert await settled(engine, settings, tenant), "the pipeline did not settle clean"
    sent = tmp_path / "sent.jsonl"
    write_manifest(sent, manifest(requests))

    code, data, err = await apptctl_reconcile(
        settings, "--json", "--tenant", tenant, "--sent", str(sent), "--grace", "0"
    )
    assert code == 0, (data, err)
    assert data["requests"]["applied"] == 2 and data["requests"]["rejected"] == 1
    assert data["violations"] == [] and data["checked"]["appointments"] == 3
    code, text_report, _ = await apptctl_reconcile(settings, "--tenant", tenant, "--grace", "0")
    assert code == 0 and "reconcile: OK" in text_report

    # A request nobody recorded (e.g. published but lost before the gate) is lost.
    ghost = SentRequest(
        tenant, "req-ghost", str(uuid.uuid4()), "apt-3", "cancel", datetime.now(UTC) - timedelta(minutes=5)
    )
    write_manifest(sent, [*manifest(requests), ghost])
    code, data, _ = await apptctl_reconcile(
        settings, "--json", "--tenant", tenant, "--sent", str(sent), "--grace", "0"
    )
    assert code == 1 and data["requests"]["lost"] == 1
    assert [v["request_id"] for v in data["request_verdicts"]] == ["req-ghost"]

    async with engine.begin() as conn:
        # the read store falls behind the schedule on one appointment ...
        await conn.execute(
            text(
                "UPDATE portal.appointments SET version = version - 1 "
                "WHERE tenant_id = :t AND appointment_id = 'apt-1'"
            ),
            {"t": tenant},
        )
        # ... and someone changes another one without a request (no event, no decision)
        await conn.execute(
            text(
                "UPDATE scheduling.appointments SET window_start = window_start + interval '1 day', "
                "window_end = window_end + interval '1 day', version = version + 1, "
                "customer_reschedules = customer_reschedules + 1 "
                "WHERE tenant_id = :t AND appointment_id = 'apt-3'"
            ),
            {"t": tenant},
        )
    code, data, _ = await apptctl_reconcile(settings, "--json", "--tenant", tenant, "--grace", "0")
    assert code == 1
    kinds = set(data["violations_by_kind"])
    assert {"read_store_behind", "unexplained_change", "reschedule_count_mismatch"} <= kinds, data[
        "violations"
    ]

    # scoping: another tenant is clean; so is a window after the corruption
    code, data, _ = await apptctl_reconcile(settings, "--json", "--tenant", "nobody-here", "--grace", "0")
    assert code == 0 and data["checked"]["requests"] == 0
    code, data, _ = await apptctl_reconcile(
        settings, "--json", "--tenant", tenant, "--since", "2099-01-01T00:00:00+00:00"
    )
    assert code == 0 and data["checked"]["appointments"] == 0
    code, _, err = await apptctl_reconcile(settings, "--since", "yesterday")
    assert code == 2 and "--since" in err


async def test_reconcile_counts_dead_letters_by_reason_without_removing_them(
    workers, broker, engine, settings
):
    from apptctl.scenario_runner import publish_malformed, wait_until

    tenant, _ = await handled_world(broker, engine)
    await publish_malformed(broker)

    async def both_dead() -> dict | None:
        report = await reconcile.check(
            engine, amqp_url=settings.amqp_url, namespace=settings.namespace, tenants=[tenant]
        )
        letters = report.dead_letters or {}
        return letters if sum(sum(r.values()) for r in letters.values()) >= 2 else None

    letters = await wait_until(both_dead, 15, interval_s=0.2)
    assert letters == {
        f"{settings.namespace}.policy_gate.dead": {"malformed_json": 1},
        f"{settings.namespace}.portal_sync.dead": {"malformed_json": 1},
    }
    again = await reconcile.check(
        engine, amqp_url=settings.amqp_url, namespace=settings.namespace, tenants=[tenant]
    )
    assert again.dead_letters == letters  # reading took nothing away


async def test_job_active_appointments_follow_every_booking(workers, broker, engine, settings):
    """Two visits booked on one job, then one canceled: the portal's job row must count 2, then 1."""
    tenant = await booked_world(broker, engine, [("apt-1", "job-1"), ("apt-2", "job-1")])
    report = await settled(engine, settings, tenant)
    assert report is not None, "the read store's job row does not count both bookings"
    cancel = request(tenant, "apt-1", Cancel(reason="one visit is enough"))
    await publish_all(broker, [cancel])
    assert (await outcome(engine, tenant, cancel.correlation_id)).status == "completed"
    assert await settled(engine, settings, tenant) is not None


async def test_a_job_with_several_bookings_reconciles_clean(workers, broker, engine, settings):
    """Two bookings on one job and one on another: once the read store caught up, the reconciler reports
    nothing (this was the one defect the fault suite found: the job's active count went stale)."""
    from apptctl.scenario_runner import wait_until

    tenant = await booked_world(broker, engine, [("apt-1", "job-1"), ("apt-2", "job-1")])
    await publish_all(broker, [booking(tenant, "apt-3", "job-2")])
    last: list = []

    async def only_the_known_defect():
        report = await reconcile.check(engine, tenants=[tenant])
        last[:] = [report]
        settled = report.checked["appointments"] == 3 and not report.violations
        return report if settled else None

    report = await wait_until(only_the_known_defect, 20, interval_s=0.2)
    assert report is not None, reconcile.render(last[0])


async def test_reconcile_names_the_stage_where_messages_were_lost(workers, broker, engine, settings):
    """A negative control for the fault suite's "0 lost": with portal_sync stopped, its queue purged (as a
    broker losing messages would) after the requests were decided, every request is lost, and the
    reconciler says the outcome never reached portal_sync."""
    from apptctl.scenario_runner import wait_until

    tenant = await booked_world(broker, engine, [("apt-1", "job-1"), ("apt-2", "job-2")])
    await workers["portal_sync"].stop()
    requests = [
        request(tenant, "apt-1", Cancel(reason="moving away")),
        request(tenant, "apt-2", Reschedule(new_window=window_on(LATER, 11))),
    ]
    await publish_all(broker, requests)

    async def decided_not_projected() -> bool:
        report = await reconcile.check(engine, tenants=[tenant], grace_s=3600)
        stages = {v.request_id: (v.cls.value, v.stage) for v in report.verdicts}
        return stages == {r.correlation_id: ("in_flight", "broker -> portal_sync") for r in requests}

    assert await wait_until(decided_not_projected, 20, interval_s=0.2)
    channel = await broker.connection.channel()
    await (await channel.declare_queue(broker.topology.queue_of("portal_sync").name, passive=True)).purge()
    await channel.close()
    report = await reconcile.check(
        engine, amqp_url=settings.amqp_url, namespace=settings.namespace, tenants=[tenant]
    )
    lost = {v.request_id: v.stage for v in report.verdicts if v.cls.value == "lost"}
    assert lost == {r.correlation_id: "broker -> portal_sync" for r in requests}, reconcile.render(report)
    assert {"lost_request", "event_not_consumed"} <= {v.kind.value for v in report.violations}
