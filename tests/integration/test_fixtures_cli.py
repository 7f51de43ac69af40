"""`apptctl fixtures replay|record` as an operator runs them, each in its own process, against the real
broker and database of the test's namespace (workers run in the test process where a test needs them)."""

import asyncio
import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from apptctl import readstore
from apptctl.scenario_runner import publish_malformed
from infra.topology import WORKERS
from tests import factories, waiting
from workers.runtime.settings import Settings

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PLUMBING = FIXTURES / "stories" / "01-residential-plumbing"
HVAC = FIXTURES / "stories" / "02-commercial-hvac"
ANCHOR = datetime(2026, 1, 5, 9, tzinfo=UTC)  # the library's anchor (apptctl.fixture_library)
# How long --check may wait. Generous: the session's database is shared, and a relay publishes any
# backlog an earlier test left in the outbox before this test's events.
CHECK_TIMEOUT = ("--timeout", "90")
eventually = partial(waiting.eventually, timeout_s=30.0, interval_s=0.1)


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "AMQP_URL": settings.amqp_url,
        "DATABASE_URL": settings.database_url,
        "APPT_NAMESPACE": settings.namespace,
    }


async def _spawn(settings: Settings, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apptctl.main",
        *args,
        env=_env(settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def apptctl(settings: Settings, *args: str, timeout_s: float = 120.0) -> Run:
    process = await _spawn(settings, *args)
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def suffix() -> str:
    return f"-{uuid.uuid4().hex[:6]}"


def fixtures_in(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    return data if isinstance(data, list) else [data]


async def queued(settings: Settings, topology) -> dict[str, int]:
    """Messages waiting in each worker queue of the namespace."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        counts = {}
        for worker in WORKERS:
            queue = await channel.declare_queue(topology.queue_of(worker).name, passive=True)
            counts[worker] = queue.declaration_result.message_count
        return counts


# --- replay ------------------------------------------------------------------------------------------


async def test_replaying_a_story_shows_its_outcome_in_the_read_store(settings, workers, engine):
    tenant_suffix = suffix()
    run = await apptctl(
        settings,
        "fixtures",
        "replay",
        str(PLUMBING),
        "--tenant-suffix",
        tenant_suffix,
        "--check",
        *CHECK_TIMEOUT,
        "--json",
    )
    assert run.code == 0, run.err
    summary = run.json()
    assert summary["ok"] is True and summary["invalid"] == 0
    assert summary["by_type"] == {
        "office.portal_settings.updated": 1,
        "office.appointment.recorded": 3,
        "modify.requested": 3,
    }
    assert summary["expectations"] == {"checked": 3, "unmet": []}

    tenant = f"sunny-plumbing{tenant_suffix}"
    requests = {f["message"]["correlation_id"]: f for f in fixtures_in(PLUMBING / "030-requests.json")}
    for request_id, fixture in requests.items():
        view = await readstore.request(engine, tenant, request_id)
        assert view is not None
        assert (view.status, view.reason_code or None) == (
            fixture["expect"]["request_status"],
            fixture["expect"].get("reason_code"),
        ) or view.status == fixture["expect"]["request_status"] == "completed"

    # The homeowner's move: the window is the fixture's new window, shifted from the anchor to now.
    move = requests["req-lib-heater-move"]["message"]["payload"]
    shown = (await readstore.appointments(engine, tenant, [move["appointment_id"]]))[move["appointment_id"]]
    written = datetime.fromisoformat(move["change"]["new_window"]["start"])
    shift = shown.window_start - written
    assert abs(shift - (datetime.now(UTC) - ANCHOR)).total_seconds() < 600
    assert (
        shown.window_end - shown.window_start
        == datetime.fromisoformat(move["change"]["new_window"]["end"]) - written
    )
    # The cancel closed the job too.
    drain = requests["req-lib-drain-cancel"]["message"]["payload"]["appointment_id"]
    canceled = (await readstore.appointments(engine, tenant, [drain]))[drain]
    assert canceled.status == "canceled"
    assert await readstore.job_status(engine, tenant, canceled.job_id) == "canceled"


async def test_replaying_twice_with_kept_ids_has_no_second_effect(settings, workers, engine):
    tenant_suffix = suffix()
    first = await apptctl(
        settings, "fixtures", "replay", str(HVAC), "--tenant-suffix", tenant_suffix, "--check", *CHECK_TIMEOUT
    )
    assert first.code == 0, first.err
    tenant = f"metro-hvac{tenant_suffix}"
    bookings = [f["message"]["payload"]["appointment_id"] for f in fixtures_in(HVAC / "020-bookings.json")]
    request_ids = [f["message"]["correlation_id"] for f in fixtures_in(HVAC / "030-requests.json")]
    before_appointments = await readstore.appointments(engine, tenant, bookings)
    before_requests = [await readstore.request(engine, tenant, r) for r in request_ids]
    duplicates_before = {name: w.consumer.counts.get("duplicate", 0) for name, w in workers.items()}

    again = await apptctl(
        settings, "fixtures", "replay", str(HVAC), "--tenant-suffix", tenant_suffix, "--json"
    )
    assert again.code == 0, again.err
    assert again.json()["published"] == sum(len(fixtures_in(f)) for f in sorted(HVAC.glob("*.json")))

    # Every worker a message reaches drops it as a duplicate: settings and requests at the gate, bookings
    # at the scheduler, requests in the read store.
    def dropped() -> bool:
        gained = {n: w.consumer.counts.get("duplicate", 0) - duplicates_before[n] for n, w in workers.items()}
        return gained["policy_gate"] >= 3 and gained["modify_handler"] >= 2 and gained["portal_sync"] >= 2

    await eventually(dropped, "the second replay's messages to be dropped as duplicates")
    assert await readstore.appointments(engine, tenant, bookings) == before_appointments
    assert [await readstore.request(engine, tenant, r) for r in request_ids] == before_requests


async def test_every_rejection_fixture_set_reaches_its_reason_code(settings, workers):
    run = await apptctl(
        settings,
        "fixtures",
        "replay",
        str(FIXTURES / "rejections"),
        "--tenant-suffix",
        suffix(),
        "--check",
        "--json",
        *CHECK_TIMEOUT,
    )
    assert run.code == 0, run.err
    summary = run.json()
    assert summary["expectations"]["unmet"] == []
    assert summary["expectations"]["checked"] == summary["by_type"]["modify.requested"] >= 16


async def test_malformed_fixtures_are_dead_lettered_with_their_declared_reasons(settings, workers):
    run = await apptctl(
        settings, "fixtures", "replay", str(FIXTURES / "malformed"), "--check", *CHECK_TIMEOUT, "--json"
    )
    assert run.code == 0, run.err
    summary = run.json()
    assert (
        summary["published"]
        == summary["expectations"]["checked"]
        == len(list((FIXTURES / "malformed").iterdir()))
    )
    assert all(name.startswith("malformed:") for name in summary["by_type"])


async def test_dry_run_validates_everything_and_publishes_nothing(settings, topology):
    run = await apptctl(settings, "fixtures", "replay", str(FIXTURES), "--dry-run")
    assert run.code == 0, run.err
    assert "dry run: nothing was published" in run.out
    assert "0 invalid" in run.out and "would publish" in run.out
    assert await queued(settings, topology) == dict.fromkeys(WORKERS, 0)


async def test_an_invalid_fixture_fails_with_its_file_and_reason_and_nothing_is_published(
    settings, topology, tmp_path
):
    shutil.copy(PLUMBING / "010-settings.json", tmp_path / "010-settings.json")
    broken = fixtures_in(PLUMBING / "030-requests.json")
    broken[1]["message"]["payload"]["change"]["reason"] = 42
    (tmp_path / "030-requests.json").write_text(json.dumps(broken))
    (tmp_path / "040-naive.json").write_text(
        json.dumps({**broken[0], "message": {**broken[0]["message"], "occurred_at": "2026-01-05T09:00:00"}})
    )

    run = await apptctl(settings, "fixtures", "replay", str(tmp_path), "--no-progress")

    assert run.code == 1
    assert "Traceback" not in run.err + run.out
    assert f"{tmp_path / '030-requests.json'}#2: schema_violation: payload.change.cancel.reason" in run.err
    assert f"{tmp_path / '040-naive.json'}: schema_violation: occurred_at" in run.err
    assert "2 invalid fixture(s): nothing was published" in run.err
    assert await queued(settings, topology) == dict.fromkeys(WORKERS, 0)


async def test_rate_limit_is_roughly_honoured(settings, topology, tmp_path):
    assert (
        await apptctl(settings, "fixtures", "generate", "load", "--count", "10", "--out", str(tmp_path))
    ).code == 0
    rate = 10.0
    run = await apptctl(
        settings, "fixtures", "replay", str(tmp_path), "--rate", str(rate), "--no-settle", "--json"
    )
    assert run.code == 0, run.err
    summary = run.json()
    assert summary["published"] == 21
    # 21 messages at 10 per second take about 2 s; only a generous lower bound, no speed target.
    assert summary["elapsed_s"] >= 0.7 * (summary["published"] - 1) / rate


# --- record ------------------------------------------------------------------------------------------


async def test_record_captures_what_is_published_while_it_records_without_taking_it(
    settings, topology, broker, tmp_path
):
    await broker.publish_message(factories.portal_settings_updated(tenant="before-recording"))
    out = tmp_path / "recorded"
    process = await _spawn(
        settings, "fixtures", "record", "policy_gate", "--out", str(out), "--count", "3", "--timeout", "60"
    )
    assert process.stderr is not None
    ready = await asyncio.wait_for(process.stderr.readline(), 30)
    assert b"recording what is published to" in ready, ready

    settings_message = factories.portal_settings_updated()
    request = factories.modify_requested()
    await broker.publish_message(settings_message)
    await broker.publish_message(factories.appointment_recorded())  # not bound to the gate: not recorded
    await broker.publish_message(request)
    malformed_id = await publish_malformed(broker, b"{not json")
    out_text, err_text = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err_text.decode()
    assert "recorded 3 message(s)" in out_text.decode()

    files = sorted(out.iterdir())
    assert [f.name.split("-", 1)[1] for f in files] == [
        "office.portal_settings.updated.json",
        "modify.requested.json",
        "malformed-malformed_json.json",
    ]
    recorded = [json.loads(f.read_text()) for f in files]
    assert recorded[0]["message"]["message_id"] == str(settings_message.message_id)
    assert recorded[1]["message"]["message_id"] == str(request.message_id)
    assert (recorded[1]["exchange"], recorded[1]["routing_key"]) == ("requests", "modify.requested")
    assert recorded[1]["properties"]["headers"]["x-tenant-id"] == request.tenant_id
    assert recorded[2]["properties"]["message_id"] == malformed_id
    assert recorded[2]["expect"] == {"dead_letter": "malformed_json"}

    # The gate's own queue still holds everything (the recording took copies), and the files replay.
    await eventually(lambda: _gate_holds(settings, topology, 4), "the gate's queue to keep its messages")
    check = await apptctl(settings, "fixtures", "replay", str(out), "--dry-run")
    assert check.code == 0, check.err


async def _gate_holds(settings: Settings, topology, count: int) -> bool:
    return (await queued(settings, topology))["policy_gate"] == count
