"""`python -m bench --scale [--quick]` (`make bench-scale`): the numbers docs/scaling.md is built from.

1. **Replicas.** Max throughput of OURS and RUNTIME with one and with two processes per stage, each
   after a short warm-up, in the same run (so the ratio is comparable), with CPU ms per request per
   stage (the sum over its replicas).
2. **Gate decision time against the size of the schedule.** policy_gate alone, against 1,000 and then
   1,000,000 appointments (seeded server-side with INSERT ... SELECT generate_series: seconds, not
   minutes), offered 50 requests/s on appointments picked uniformly at random from all of them.
   Reported: the gate's own time per decision (its `message.handled` duration: decode, transaction with
   the inbox claim, facts, settings, decision record and outbox row, commit, ack), the latency from the
   publish to the start of the decision's transaction, and the gate's CPU ms per request. Flat means
   the same at both sizes: every query the gate runs is an index lookup by (tenant, appointment).
3. **A business-wide settings change at that size.** One tenant's business layer changes (an eighth of
   the schedule: 12,500 appointments in the quick run, 125,000 in the full one) while the gate decides
   20 requests/s of the same tenant. Reported: how long until every one of its offers is recomputed,
   in how many `offers.refresh` chunks, each chunk's time, and the decisions' time meanwhile.
"""

import asyncio
import json
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import asyncpg

from apptctl.portal_keys import tool_keyring
from bench import seed
from bench.common import OURS_NAMESPACE, RUNTIME_NAMESPACE, amqp_url, asyncpg_dsn, database_url, runtime_queue
from bench.measure import peak_rss_mb, percentile
from bench.run import (
    ROOT,
    Phase,
    Plan,
    System,
    SystemResult,
    apply_settings,
    log,
    ours_commands,
    processes,
    reset_broker,
    run_system,
    stage_commands,
    stage_of,
    systems,
    wait_consumers,
    wait_quiet,
)
from contracts.catalog import POLICY_GATE
from contracts.office_v2 import PortalSettingsUpdatedV2, PortalSettingsV2Payload
from infra import topology as topology_module
from workers.registry import WORKER_NAMES
from workers.runtime.broker import Broker
from workers.runtime.settings import Settings

GATE = POLICY_GATE.name

SIZES = (1_000, 1_000_000)


def _plans(quick: bool, replicas: int) -> Plan:
    """Warm-up, then max; phase keys carry the replica count so both runs' requests stay apart."""
    max_s = 6 if quick else 15
    return Plan(
        (Phase(f"w{replicas}", 50, 1 if quick else 2, measured=False), Phase(f"max{replicas}", None, max_s)),
        {"ours": 2500 if quick else 6000, "runtime": 5000 if quick else 12000},
        backlog=200,
        drain_timeout_s=20 if quick else 60,
    )


def _per_stage(cpu: dict[str, float]) -> dict[str, float]:
    stages: dict[str, float] = {}
    for name, ms in cpu.items():
        if name in ("broker", "postgres", "loadgen"):
            stages[name] = ms
        else:
            stages[stage_of(name)] = stages.get(stage_of(name), 0.0) + ms
    return stages


async def replicas_run(quick: bool, work_dir: Path, base_env: dict[str, str]) -> list[dict]:
    amqp, db_url = amqp_url(), database_url()
    await reset_broker(amqp)
    await seed.reset_database(db_url)
    now = datetime.now(UTC)
    plans = {n: _plans(quick, n) for n in (1, 2)}
    needed = sum(p.max_count["ours"] + 50 * p.phases[0].duration_s for p in plans.values())
    schedule = seed.plan_schedule(int(needed), now)
    targets = schedule.targets
    written = False
    db = await asyncpg.connect(asyncpg_dsn(db_url))
    defs = systems()
    rows: list[dict] = []
    offset = 0
    try:
        for n, plan in plans.items():
            for key in ("ours", "runtime"):
                messages: dict[str, list] = {}
                for phase in plan.phases:
                    count = plan.max_count[key] if phase.rate is None else int(phase.rate * phase.duration_s)
                    if key == "ours":
                        batch, offset = targets[offset : offset + count], offset + count
                        messages[phase.key] = [
                            seed.modify_request(f"ours-{phase.key}", i, t, now) for i, t in enumerate(batch)
                        ]
                    else:
                        messages[phase.key] = [
                            seed.modify_request(f"runtime-{phase.key}", i, seed.synthetic_target(i), now)
                            for i in range(count)
                        ]
                result = await _run(
                    key, n, plan, messages, defs, db, work_dir, base_env, now, None if written else schedule
                )
                written = written or key == "ours"
                phase = result.phases[-1]
                rows.append(
                    {
                        "system": key,
                        "replicas": n,
                        "throughput": phase.throughput,
                        "done": phase.done,
                        "sent": phase.sent,
                        "cpu_ms_per_request": _per_stage(phase.cpu_ms_per_request),
                        "others_percent": phase.others_percent,
                        "peak_rss_mb": result.peak_rss_mb,
                    }
                )
                log(f"{key} x{n}: {phase.throughput:.0f}/s ({phase.others_percent:.0f}% others)")
    finally:
        await db.close()
    return rows


async def _run(
    key: str,
    n: int,
    plan: Plan,
    messages: dict,
    defs: dict[str, System],
    db,
    work_dir: Path,
    base_env,
    now,
    schedule: seed.Schedule | None,
) -> SystemResult:
    amqp = amqp_url()
    if key == "ours":
        env = {**base_env, "APPT_NAMESPACE": OURS_NAMESPACE}
        group = processes(env, work_dir / f"ours-x{n}", ours_commands(), n)
        topology = topology_module.build(OURS_NAMESPACE)
        queues = [topology.queue_of(name).name for name in WORKER_NAMES]

        async def ready() -> None:
            await wait_consumers(amqp, queues, lambda: all(group.alive().values()), each=n)
            await apply_settings(amqp, topology, db, now)
            if schedule is not None:  # after the settings, as in bench.run
                await seed.write_schedule(database_url(), schedule)

    else:
        # trivial stages on their own exchanges: no portal signature to check (bench/run.py)
        env = {**base_env, "APPT_NAMESPACE": RUNTIME_NAMESPACE, "APPT_REQUIRE_SIGNATURES": "false"}
        group = processes(env, work_dir / f"runtime-x{n}", stage_commands("bench.rt_stage", "rt_stage"), n)
        queues = [runtime_queue(s) for s in (1, 2, 3)]

        async def ready() -> None:
            await wait_consumers(amqp, queues, lambda: all(group.alive().values()), each=n)

    def start() -> dict[str, int]:
        group.start()
        return {name: p.pid for name, p in group.processes.items()}

    log(f"{key}: {n} replica(s) per stage")
    return await run_system(defs[key], start, group.stop, messages, plan, db, work_dir, before_phases=ready)


# --- the gate against 1k and 1M appointments -----------------------------------------------------------
def _gate_system() -> System:
    topology = topology_module.build(OURS_NAMESPACE)
    where = "FROM policy.decisions WHERE request_id LIKE $1 AND $2::text[] IS NOT NULL"
    return System(
        "gate",
        "policy_gate alone",
        topology.exchange("requests"),
        "modify.requested",
        topology.queue_of(GATE).name,
        [q.name for q in topology.queues if q.worker is not None],
        [],
        f"SELECT count(*) {where}",
        # decided_at is the decision transaction's start (now()); the gate's own time is in its log.
        f"SELECT request_id, 'completed', extract(epoch FROM decided_at)::float8 {where}",
        sign_as="portal-web",
    )


async def gate_run(quick: bool, work_dir: Path, base_env: dict[str, str]) -> list[dict]:
    amqp, db_url = amqp_url(), database_url()
    rate, seconds = 50, (6 if quick else 15)
    rows = []
    for size in SIZES:
        await reset_broker(amqp)
        await seed.reset_database(db_url)
        now = datetime.now(UTC)
        seeded = {}
        picks = random.Random(size).sample(range(size), min(size, rate * (seconds + 2)))
        warm, measured = picks[: rate * 2], picks[rate * 2 :]
        messages = {
            f"w{size}": [
                seed.modify_request(f"gate-w{size}", i, seed.scale_target(k), now) for i, k in enumerate(warm)
            ],
            f"n{size}": [
                seed.modify_request(f"gate-n{size}", i, seed.scale_target(k), now)
                for i, k in enumerate(measured)
            ],
        }
        plan = Plan(
            (Phase(f"w{size}", rate, 2, measured=False), Phase(f"n{size}", rate, seconds)),
            {},
            backlog=200,
            drain_timeout_s=30,
        )
        log_dir = work_dir / f"gate-{size}"
        env = {**base_env, "APPT_NAMESPACE": OURS_NAMESPACE}
        group = processes(env, log_dir, {GATE: ours_commands()[GATE]})
        topology = topology_module.build(OURS_NAMESPACE)
        db = await asyncpg.connect(asyncpg_dsn(db_url))
        try:

            async def ready(group=group, topology=topology, db=db, now=now, size=size, seeded=seeded) -> None:
                queue = topology.queue_of(GATE).name
                await wait_consumers(amqp, [queue], lambda: all(group.alive().values()))
                await apply_settings(amqp, topology, db, now)
                began = time.monotonic()
                await seed.seed_scale(db_url, size, now)
                seeded["s"] = time.monotonic() - began
                log(f"gate: {size:,} appointments seeded in {seeded['s']:.1f} s")

            def start(group=group) -> dict[str, int]:
                group.start()
                return {name: p.pid for name, p in group.processes.items()}

            result = await run_system(
                _gate_system(), start, group.stop, messages, plan, db, work_dir, before_phases=ready
            )
            explain = await _explain_facts(db, seed.scale_target(measured[0]))
        finally:
            await db.close()
        phase = result.phases[-1]
        handled = _durations(log_dir / f"{GATE}.log", "modify.requested", f"gate-n{size}-")
        rows.append(
            {
                "appointments": size,
                "seed_s": seeded.get("s", float("nan")),
                "sent": phase.sent,
                "decided": phase.done,
                "handled_ms": {q: percentile(handled, q) for q in (50, 95, 99)},
                "to_start_ms": {q: phase.p(q) for q in (50, 95, 99)},
                "cpu_ms_per_request": phase.cpu_ms_per_request.get(GATE),
                "others_percent": phase.others_percent,
                "facts_query": explain,
            }
        )
        log(f"gate at {size:,}: p50 {percentile(handled, 50):.1f} ms, p99 {percentile(handled, 99):.1f} ms")
    return rows


def _durations(log_file: Path, message_type: str, correlation_prefix: str = "") -> list[float]:
    """The gate's `message.handled` durations (ms) of one message type, sorted."""
    durations = []
    for line in log_file.read_text(errors="replace").splitlines():
        if '"message.handled"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("message_type") == message_type and str(entry.get("correlation_id", "")).startswith(
            correlation_prefix
        ):
            durations.append(float(entry["duration_ms"]))
    return sorted(durations)


def _business_change(tenant: str, now: datetime) -> PortalSettingsUpdatedV2:
    """The tenant's business layer again, with a longer notice: every upcoming offer changes."""
    business = seed.settings_messages(now)[0]
    layer = business.payload.settings.model_copy(
        update={"cancel": business.payload.settings.cancel.model_copy(update={"min_notice_hours": 48})}
    )
    return PortalSettingsUpdatedV2(
        message_id=uuid4(),
        tenant_id=tenant,
        correlation_id=f"settings-change-{tenant}",
        occurred_at=now,
        producer="office",
        payload=PortalSettingsV2Payload(
            scope=business.payload.scope,
            settings=layer,
            settings_version=business.payload.settings_version + 1,
            changed_by="bench",
        ),
    )


async def refresh_run(quick: bool, work_dir: Path, base_env: dict[str, str]) -> dict:
    """policy_gate alone: a business-wide settings change of one tenant over its whole schedule, with
    requests of that tenant decided meanwhile (section 3 of the module docstring)."""
    amqp, db_url = amqp_url(), database_url()
    size = 100_000 if quick else 1_000_000
    rate, timeout_s = 20, (180 if quick else 900)
    await reset_broker(amqp)
    await seed.reset_database(db_url)
    now = datetime.now(UTC)
    tenant = seed.scale_target(0).tenant_id
    log_dir = work_dir / "refresh"
    env = {**base_env, "APPT_NAMESPACE": OURS_NAMESPACE}
    group = processes(env, log_dir, {GATE: ours_commands()[GATE]})
    topology = topology_module.build(OURS_NAMESPACE)
    db = await asyncpg.connect(asyncpg_dsn(db_url))
    keyring = tool_keyring(Settings())[0]
    broker = Broker(amqp, topology, name="bench-refresh", signer=keyring)
    group.start()
    try:
        await wait_consumers(amqp, [topology.queue_of(GATE).name], lambda: all(group.alive().values()))
        await apply_settings(amqp, topology, db, now)
        await seed.seed_scale(db_url, size, now)
        covered = await db.fetchval(
            "SELECT count(*) FROM scheduling.appointments WHERE tenant_id = $1 AND window_start > now()",
            tenant,
        )
        log(f"refresh: {size:,} appointments seeded; {tenant} has {covered:,} upcoming")
        await broker.connect()
        began = time.monotonic()
        await broker.publish_message(_business_change(tenant, now))
        # The tenant's own appointments (scale_target deals them out round-robin over the tenants).
        tenants = len(seed.TENANTS)
        picks = [k * tenants for k in random.Random(7).sample(range(size // tenants), rate * timeout_s)]
        sent, done_at = 0, None
        while time.monotonic() - began < timeout_s:
            tick = time.monotonic()
            if done_at is None:  # requests while the refresh runs, none after it
                for _ in range(rate // 5):
                    if sent < len(picks):
                        target = seed.scale_target(picks[sent])
                        await broker.publish_message(seed.modify_request("refresh", sent, target, now))
                        sent += 1
                refreshed = await db.fetchval(
                    "SELECT count(*) FROM policy.offers WHERE tenant_id = $1 AND offer_version > 0", tenant
                )
                if refreshed >= covered:
                    done_at = time.monotonic() - began
                    break
            await asyncio.sleep(max(0.2 - (time.monotonic() - tick), 0))
        if done_at is None:
            log(f"refresh: not finished within {timeout_s} s")
        await asyncio.sleep(2)  # the last decisions' log lines
        rss = {name: peak_rss_mb(p.pid) for name, p in group.processes.items()}
    finally:
        await broker.close()
        await db.close()
        group.stop()
    gate_log = log_dir / f"{GATE}.log"
    chunks = _durations(gate_log, "offers.refresh")
    first = _durations(gate_log, "office.portal_settings.updated", "settings-change-")
    decided = _durations(gate_log, "modify.requested", "refresh-")
    return {
        "appointments": size,
        "covered": covered,
        "seconds": done_at,
        "chunks": len(chunks) + len(first),
        "chunk_ms": {q: percentile([*first, *chunks], q) for q in (50, 99, 100)},
        "decisions": len(decided),
        "decision_ms": {q: percentile(decided, q) for q in (50, 99)},
        "gate_peak_rss_mb": rss.get(GATE),
    }


def print_refresh(r: dict) -> None:
    print(
        "\nA business-wide settings change: every upcoming offer of one tenant recomputed,"
        " a chunk per transaction"
    )
    seconds = "not finished" if r["seconds"] is None else f"{r['seconds']:.1f} s"
    c, d = r["chunk_ms"], r["decision_ms"]
    print(
        f"  {r['covered']:,} of {r['appointments']:,} appointments: {seconds}, {r['chunks']} chunks,"
        f" chunk ms p50 {c[50]:.0f} / p99 {c[99]:.0f} / max {c[100]:.0f};"
        f" {r['decisions']} decisions meanwhile, ms p50 {d[50]:.1f} / p99 {d[99]:.1f};"
        f" gate peak RSS {r['gate_peak_rss_mb'] or float('nan'):.0f} MB"
    )


async def _explain_facts(db: asyncpg.Connection, target: seed.Target) -> str:
    """How PostgreSQL finds one appointment's facts (the gate's main read) and how long it took."""
    plan = await db.fetch(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING ON) SELECT * FROM scheduling.appointments"
        " WHERE tenant_id = $1 AND appointment_id = $2",
        target.tenant_id,
        target.appointment_id,
    )
    lines = [r[0] for r in plan]
    scan = next((line.strip() for line in lines if "Scan" in line), lines[0].strip())
    took = next((line.strip() for line in lines if line.startswith("Execution Time")), "")
    return f"{scan}; {took}"


# --- report --------------------------------------------------------------------------------------------
def print_replicas(rows: list[dict]) -> None:
    print("\nReplicas per stage: max throughput, and CPU ms per request per stage (summed over replicas)")
    print(f"  {'system':>8} {'replicas':>8} {'done':>6} {'thr/s':>6} | CPU ms/request per stage | others")
    for r in rows:
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_ms_per_request"].items())
        print(
            f"  {r['system']:>8} {r['replicas']:>8} {r['done']:>6} {r['throughput']:6.0f} | {cpu} |"
            f" {r['others_percent']:.0f}%"
        )
    for key in ("ours", "runtime"):
        one = next((r for r in rows if r["system"] == key and r["replicas"] == 1), None)
        two = next((r for r in rows if r["system"] == key and r["replicas"] == 2), None)
        if one and two and one["throughput"]:
            print(f"  {key}: 2 replicas / 1 replica = {two['throughput'] / one['throughput']:.2f}")


def print_gate(rows: list[dict]) -> None:
    print("\nGate decision time against the size of the schedule (50 requests/s, uniformly random targets)")
    print(
        f"  {'appointments':>12} {'seeded in':>9} {'decided':>9} | gate time per decision ms p50 / p95 / p99"
        " | publish -> decision start ms p50 / p99 | gate CPU ms/req | others"
    )
    for r in rows:
        h, s = r["handled_ms"], r["to_start_ms"]
        print(
            f"  {r['appointments']:>12,} {r['seed_s']:8.1f}s {r['decided']:>4}/{r['sent']:<4} |"
            f" {h[50]:8.1f} / {h[95]:6.1f} / {h[99]:6.1f} | {s[50]:8.1f} / {s[99]:7.1f} |"
            f" {r['cpu_ms_per_request'] or float('nan'):15.2f} | {r['others_percent']:.0f}%"
        )
        print(f"  {'':>12} facts query: {r['facts_query']}")
    if len(rows) == 2 and rows[0]["handled_ms"][50]:
        small, large = rows
        print(
            f"  1M / 1k: p50 x{large['handled_ms'][50] / small['handled_ms'][50]:.2f},"
            f" p99 x{large['handled_ms'][99] / small['handled_ms'][99]:.2f}"
        )


async def main_async(quick: bool, quiet_s: float = 0) -> int:
    await wait_quiet(quiet_s)
    began = time.monotonic()
    work_dir = Path(tempfile.mkdtemp(prefix="appt-bench-scale-"))
    log(f"bench scale {'quick' if quick else 'full'}: work dir {work_dir}")
    db_url = database_url()
    base_env = {
        **os.environ,
        "AMQP_URL": amqp_url(),
        "DATABASE_URL": db_url,
        "BENCH_DATABASE_URL": db_url,
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    replicas = await replicas_run(quick, work_dir, base_env)
    gate = await gate_run(quick, work_dir, base_env)
    refresh = await refresh_run(quick, work_dir, base_env)
    print_replicas(replicas)
    print_gate(gate)
    print_refresh(refresh)
    (work_dir / "scale.json").write_text(
        json.dumps({"replicas": replicas, "gate": gate, "refresh": refresh}, indent=2, default=str)
    )
    print(f"\nresults: {work_dir / 'scale.json'}; run took {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async("--quick" in sys.argv)))
