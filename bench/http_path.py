"""The HTTP path (issue 13): requests through the portal HTTP API at fixed rates and at the maximum;
latency from the POST to the outcome seen on the office's event stream (p50/p95/p99) and the API's CPU
per request. `python -m bench.http_path [--quick]`; `make bench` runs it after the message-flow systems
and adds `api_p99_ms_at_50=<n>` to its last line.

Own database (`appt_<prefix>api`) and namespace (`<prefix>api`); the real workers and the API each in
their own process (the API's CPU is read with psutil); the schedule and settings are the message-flow
bench's (bench/seed.py), requests only from the jobs' customers (the API acts for one customer).
"""

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
from sqlalchemy.engine import make_url

from apptctl.portal_keys import tool_keyring
from apptctl.processes import WorkerProcesses
from bench import seed
from bench.common import PREFIX, amqp_url, asyncpg_dsn, database_url
from bench.measure import percentile
from contracts.portal_v1 import Reschedule
from infra import topology as topology_module
from portal_api.keys import hash_key
from workers.runtime.settings import Settings

NAMESPACE = f"{PREFIX}api"
FINAL = {"completed", "rejected", "failed"}


@dataclass(frozen=True)
class Phase:
    name: str
    rate: float | None  # requests per second; None: as fast as `concurrency` callers go
    seconds: float
    concurrency: int = 64


FULL = (Phase("50/s", 50, 20), Phase("100/s", 100, 15), Phase("max", None, 15))
QUICK = (Phase("50/s", 50, 8), Phase("max", None, 6))


@dataclass
class PhaseResult:
    phase: Phase
    sent: int = 0
    refused: int = 0
    resent: int = 0  # POSTs sent again (same Idempotency-Key) after a dropped connection
    latencies_ms: list[float] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    api_cpu_s: float = 0.0

    def line(self) -> str:
        lat = sorted(self.latencies_ms)
        seen = len(lat)
        return (
            f"  {self.phase.name:>6}: {self.sent} sent ({self.sent / self.wall_s:.0f}/s), "
            f"{seen} outcomes seen, {self.refused} refused, {self.resent} resent; "
            f"POST->outcome on SSE p50 {percentile(lat, 50):.0f} / "
            f"p95 {percentile(lat, 95):.0f} / p99 {percentile(lat, 99):.0f} ms; "
            f"API CPU {1000 * self.api_cpu_s / max(self.sent, 1):.2f} ms/request; outcomes {self.outcomes}"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_api(port: int, env: dict, log_path: Path) -> subprocess.Popen:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "portal_api", "--port", str(port)], env=env, stdout=log, stderr=log
        )


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _body(target: seed.Target, i: int, now: datetime) -> tuple[str, dict]:
    change = seed.modify_request("api", i, target, now).payload.change
    if isinstance(change, Reschedule):
        return "reschedule", {"new_window": change.new_window.model_dump(mode="json")}
    return "cancel", {"reason": change.reason}


class Outcomes:
    """The office streams of every tenant: when each request's final outcome was seen."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[float, str]] = {}
        self.ready = 0
        self.reconnects = 0  # streams reopened after the connection dropped

    async def follow(self, client: httpx.AsyncClient, tenant: str) -> None:
        """Read the tenant's office stream until cancelled; a dropped stream is reopened where it broke
        off (`Last-Event-ID`), as a browser's EventSource does."""
        last_id: str | None = None
        while True:
            headers = {"X-Tenant-Id": tenant} | ({"Last-Event-ID": last_id} if last_id else {})
            try:
                async with client.stream("GET", "/v1/office/events", headers=headers) as response:
                    data = None
                    async for line in response.aiter_lines():
                        if line.startswith("id:"):
                            last_id = line[3:].strip() or last_id
                        elif line.startswith("data:"):
                            data = line[5:].strip()
                        elif line == "" and data is not None:
                            event, data = json.loads(data), None
                            if event.get("view") == "ready":
                                self.ready += 1
                                continue
                            for change in event.get("changes", ()):  # feed v2: the views one change touched
                                if change.get("view") == "request" and change.get("status") in FINAL:
                                    seen = (time.monotonic(), change["status"])
                                    self.seen.setdefault(change["request_id"], seen)
            except httpx.TransportError:
                self.reconnects += 1
            await asyncio.sleep(0.2)


async def _run_phase(
    phase: Phase, client: httpx.AsyncClient, targets: list, outcomes: Outcomes, api_pid: int, now: datetime
) -> PhaseResult:
    result = PhaseResult(phase)
    sent_at: dict[str, float] = {}
    cursor = iter(enumerate(targets))
    cpu_before, began = _cpu(api_pid), time.monotonic()
    stop = began + phase.seconds

    async def send_one() -> bool:
        try:
            i, target = next(cursor)
        except StopIteration:
            return False
        action, body = _body(target, i, now)
        request_id = f"api-{phase.name.replace('/', '')}-{i}"
        customer = target.requester_id
        t0 = time.monotonic()
        for attempt in range(4):  # a keep-alive connection the server closed: send again, same key
            try:
                response = await client.post(
                    f"/v1/appointments/{target.appointment_id}/{action}",
                    json=body,
                    headers={"X-Tenant-Id": target.tenant_id, "X-Customer-Id": customer,
                             "Idempotency-Key": request_id, "If-Match": '"1"'},
                )  # fmt: skip
                break
            except httpx.TransportError:
                if attempt == 3:
                    raise
                result.resent += 1
                await asyncio.sleep(0.1 * (attempt + 1))
        result.sent += 1
        if response.status_code == 202:
            sent_at[request_id] = t0
        else:
            result.refused += 1
        return True

    if phase.rate is not None:
        tasks = []
        n = int(phase.rate * phase.seconds)
        for k in range(n):
            delay = began + k / phase.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send_one()))
        await asyncio.gather(*tasks)
    else:

        async def caller() -> None:
            while time.monotonic() < stop and await send_one():
                pass

        await asyncio.gather(*(caller() for _ in range(phase.concurrency)))
    result.wall_s = time.monotonic() - began
    # Wait for the outcomes (bounded), then account the API's CPU over the whole phase.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(r not in outcomes.seen for r in sent_at):  # noqa: ASYNC110
        await asyncio.sleep(0.1)  # a bounded check of a dict the stream readers fill
    result.api_cpu_s = _cpu(api_pid) - cpu_before
    for request_id, t0 in sent_at.items():
        if request_id in outcomes.seen:
            t_seen, status = outcomes.seen[request_id]
            result.latencies_ms.append(1000 * (t_seen - t0))
            result.outcomes[status] = result.outcomes.get(status, 0) + 1
    return result


async def run_http_path(quick: bool, log=print) -> tuple[list[PhaseResult], str]:
    """Everything, then (results, the summary item `api_p99_ms_at_50=<n>`)."""
    from bench.run import apply_settings  # the message-flow bench's settings, through the real gate

    phases = QUICK if quick else FULL
    amqp = amqp_url()
    db_url = make_url(database_url()).set(database=f"appt_{PREFIX}api").render_as_string(hide_password=False)
    work_dir = Path(tempfile.mkdtemp(prefix="appt-bench-api-"))
    log(f"api: database {db_url.rsplit('/', 1)[-1]}, namespace {NAMESPACE}, work dir {work_dir}")
    await seed.reset_database(db_url)
    topology = await topology_module.apply(amqp, NAMESPACE, Settings().retry_delays_s)
    now = datetime.now(UTC)
    needed = sum(int((p.rate or 200) * p.seconds) for p in phases) + 200
    schedule = seed.plan_schedule(int(needed * 1.4), now)
    targets = [t for t in schedule.targets if t.requester_id.startswith("cust-")]
    portal_key, office_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    keys = {
        "keys": [
            {"id": "bench-portal", "kind": "portal", "sha256": hash_key(portal_key),
             "tenants": list(seed.TENANTS), "producer": "portal-web"},
            {"id": "bench-office", "kind": "office", "sha256": hash_key(office_key),
             "tenants": list(seed.TENANTS)},
        ]
    }  # fmt: skip
    env = {
        **os.environ,
        **tool_keyring(Settings())[1],
        "AMQP_URL": amqp,
        "DATABASE_URL": db_url,
        "APPT_NAMESPACE": NAMESPACE,
        "APPT_API_KEYS": json.dumps(keys),
        "APPT_API_KEYS_FILE": "",
        "APPT_API_DB_POOL_SIZE": "10",
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
    }
    workers = WorkerProcesses(env, work_dir)
    api_process = None
    results: list[PhaseResult] = []
    try:
        workers.start()
        await workers.wait_consuming(amqp, topology, timeout_s=60)
        import asyncpg

        db = await asyncpg.connect(asyncpg_dsn(db_url))
        try:
            await apply_settings(amqp, topology, db, now)
        finally:
            await db.close()
        await seed.write_schedule(db_url, schedule)
        port = _free_port()
        api_process = _start_api(port, env, work_dir / "api.log")
        base = f"http://127.0.0.1:{port}"
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
        async with (
            httpx.AsyncClient(base_url=base, timeout=60, limits=limits,
                              headers={"Authorization": f"Bearer {portal_key}"}) as client,
            httpx.AsyncClient(base_url=base, timeout=None,
                              headers={"Authorization": f"Bearer {office_key}"}) as office,
        ):  # fmt: skip
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await client.get("/healthz")).json().get("feed"):
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or api_process.poll() is not None:
                    raise RuntimeError(f"the API did not start (see {work_dir / 'api.log'})")
                await asyncio.sleep(0.2)
            outcomes = Outcomes()
            streams = [asyncio.create_task(outcomes.follow(office, tenant)) for tenant in seed.TENANTS]
            while outcomes.ready < len(seed.TENANTS):  # noqa: ASYNC110 - the readers count, no event
                await asyncio.sleep(0.05)
            offset = 0
            for phase in phases:
                share = targets[offset:]
                result = await _run_phase(phase, client, share, outcomes, api_process.pid, now)
                offset += result.sent
                results.append(result)
                log(result.line())
            for task in streams:
                task.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
    finally:
        if api_process is not None:
            api_process.terminate()
            try:
                api_process.wait(30)
            except subprocess.TimeoutExpired:
                api_process.kill()
        workers.stop()
    at_50 = next((r for r in results if r.phase.rate == 50), None)
    p99 = percentile(sorted(at_50.latencies_ms), 99) if at_50 else float("nan")
    return results, f"api_p99_ms_at_50={p99:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_path", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="50/s for 8 s and a 6 s max phase")
    args = parser.parse_args()
    print("HTTP path (portal API -> workers -> SSE):")
    _, summary = asyncio.run(run_http_path(args.quick))
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
