"""A worker's memory: idle after start, and at its peak while it works off a backlog.

`python -m bench.memory [--backlog N] [--workers policy_gate,modify_handler,portal_sync]`

Own database `appt_<BENCH_PREFIX>mem` and namespace `<BENCH_PREFIX>mem` (dropped and deleted at the end).
1. The three workers start on empty queues; the gate gets the bench's settings, the schedule is seeded
   (bench/seed.py, as `make bench` does): each worker's **idle** RSS, then they stop.
2. N signed modify requests are published while no worker runs: a backlog of N in the gate's queue and
   in portal_sync's (a portal request goes to both).
3. Each worker in turn runs alone until its queue is worked off, its output piling up for the next:
   the gate (N requests), modify_handler (the gate's N approvals), portal_sync (the requests, their
   outcomes, the offers: about 3N). Its peak (`VmHWM`) and its RSS when done.

Memory figures are valid on a busy machine (CPU timings here are not: none are printed). See
docs/benchmarks.md#a-workers-memory.
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import asyncpg

from apptctl.portal_keys import tool_keyring
from apptctl.processes import WorkerProcesses
from bench import seed
from bench.common import PREFIX, amqp_url, asyncpg_dsn, database_url
from infra import topology as topology_module
from infra.db.admin import drop_database
from infra.db.names import inbox_table
from workers.registry import WORKER_NAMES
from workers.runtime.broker import Broker
from workers.runtime.settings import Settings

NAMESPACE = f"{PREFIX}mem"
SAMPLE_S = 0.05


def log(text: str) -> None:
    print(f"[memory {time.strftime('%H:%M:%S')}] {text}", flush=True)


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def workers_of(env: dict[str, str], names: list[str], log_dir: Path) -> WorkerProcesses:
    return WorkerProcesses(
        env, log_dir, commands={name: [sys.executable, "-m", f"workers.{name}"] for name in names}
    )


async def wait_consuming(channel, topology, group: WorkerProcesses, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if not all(group.alive().values()):
            raise RuntimeError("a worker exited during start-up (see its log)")
        counts = [
            (await channel.declare_queue(topology.queue_of(n).name, passive=True)).declaration_result
            for n in group.processes
        ]
        if all(c.consumer_count for c in counts):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the workers did not start consuming")
        await asyncio.sleep(0.2)


async def queue_depth(channel, topology, name: str) -> int:
    queue = await channel.declare_queue(topology.queue_of(name).name, passive=True)
    return queue.declaration_result.message_count


async def work_off(
    name: str, env, log_dir: Path, channel, topology, db: asyncpg.Connection, timeout_s: float
) -> dict[str, float]:
    """Run `name` alone until its queue is empty and its inbox has not grown for 1.5 s."""
    backlog = await queue_depth(channel, topology, name)
    group = workers_of(env, [name], log_dir)
    group.start()
    pid = group.processes[name].pid
    began = time.monotonic()
    try:
        await wait_consuming(channel, topology, group)
        last, since, high = -1, time.monotonic(), 0.0
        while time.monotonic() - began < timeout_s:
            high = max(high, memory_mb(pid)["VmRSS"])
            handled = await db.fetchval(f"SELECT count(*) FROM {inbox_table(name)}")
            if handled != last:
                last, since = handled, time.monotonic()
            elif time.monotonic() - since > 1.5 and await queue_depth(channel, topology, name) == 0:
                break
            await asyncio.sleep(SAMPLE_S)
        else:
            log(f"{name}: not done after {timeout_s:.0f} s; measured what it reached")
        done = memory_mb(pid)
    finally:
        codes = group.stop()
    if any(codes.values()):
        log(f"{name}: exit code {codes[name]} (see {log_dir / (name + '.log')})")
    return {"backlog": backlog, "peak": done["VmHWM"], "end": done["VmRSS"], "sampled": high}


async def main_async(backlog: int, names: list[str], timeout_s: float) -> int:
    amqp = amqp_url()
    db_url = database_url().rsplit("/", 1)[0] + f"/appt_{PREFIX}mem"
    log_dir = Path(tempfile.mkdtemp(prefix="appt-memory-"))
    keyring, key_env = tool_keyring(Settings())
    env = {
        **os.environ,
        **key_env,
        "AMQP_URL": amqp,
        "DATABASE_URL": db_url,
        "APPT_NAMESPACE": NAMESPACE,
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),
        # A backlog of thousands in seconds: every request approved, none refused by the rate limits.
        "APPT_RATE_TENANT_PER_MINUTE": "600000",
        "APPT_RATE_TENANT_BURST": "100000",
    }
    log(f"database {db_url.rsplit('/', 1)[-1]}, namespace {NAMESPACE}, logs {log_dir}")
    await seed.reset_database(db_url)
    topology = await topology_module.apply(amqp, NAMESPACE)
    connection = await aio_pika.connect(amqp)
    db = await asyncpg.connect(asyncpg_dsn(db_url))
    results: dict[str, dict[str, float]] = {}
    try:
        channel = await connection.channel()
        now = datetime.now(UTC)
        schedule = seed.plan_schedule(backlog, now)

        # 1. Idle: all three on empty queues; the gate then takes the settings; the schedule is written.
        group = workers_of(env, list(WORKER_NAMES), log_dir)
        group.start()
        try:
            await wait_consuming(channel, topology, group)
            await asyncio.sleep(1.0)
            idle = {n: memory_mb(p.pid)["VmRSS"] for n, p in group.processes.items()}
            office = Broker(amqp, topology, name="memory-office")
            await office.connect()
            try:
                settings = seed.settings_messages(now)
                await asyncio.gather(*(office.publish_message(m) for m in settings))
            finally:
                await office.close()
            deadline = time.monotonic() + 60
            while await db.fetchval("SELECT count(*) FROM policy.settings_layers") < len(settings):
                if time.monotonic() > deadline:
                    raise TimeoutError("the settings did not reach policy_gate")
                await asyncio.sleep(0.2)
            await seed.write_schedule(db_url, schedule)
        finally:
            group.stop()

        # 2. The backlog, published while nothing consumes.
        portal = Broker(amqp, topology, name="memory-portal", signer=keyring)
        await portal.connect()
        try:
            requests = [seed.modify_request("mem", i, t, now) for i, t in enumerate(schedule.targets)]
            for start in range(0, len(requests), 200):
                await asyncio.gather(*(portal.publish_message(m) for m in requests[start : start + 200]))
        finally:
            await portal.close()
        log(
            f"{len(requests)} requests published; idle RSS "
            + ", ".join(f"{n} {v:.0f} MB" for n, v in idle.items())
        )

        # 3. Each worker alone through its backlog.
        for name in [n for n in WORKER_NAMES if n in names]:
            results[name] = {
                "idle": idle[name],
                **await work_off(name, env, log_dir, channel, topology, db, timeout_s),
            }
            r = results[name]
            log(
                f"{name}: backlog {r['backlog']:.0f}, idle {r['idle']:.0f} MB, peak {r['peak']:.0f} MB, "
                f"after {r['end']:.0f} MB"
            )
    finally:
        await db.close()
        channel = await connection.channel()
        await topology_module.delete(channel, topology)
        await connection.close()
        await drop_database(db_url)
    print()
    print(f"memory (MB, backlog {backlog} requests): worker idle peak after-backlog")
    for name, r in results.items():
        print(f"  {name:15} {r['idle']:5.0f} {r['peak']:5.0f} {r['end']:5.0f}  (queue {r['backlog']:.0f})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--backlog", type=int, default=3000, help="modify requests in the backlog")
    parser.add_argument(
        "--workers", default=",".join(WORKER_NAMES), help="comma-separated, in pipeline order"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds per worker at most")
    args = parser.parse_args()
    names = [n.strip() for n in args.workers.split(",") if n.strip()]
    return asyncio.run(main_async(args.backlog, names, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
