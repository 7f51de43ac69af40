"""The orchestrator: reset, seed, run each system through the same phases, print the numbers."""

import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import asyncpg
import psutil

from apptctl.processes import WorkerProcesses
from bench import counters, peer_dramatiq, peer_faststream, rt_stage, seed
from bench.common import (
    BARE_EXCHANGE,
    OURS_NAMESPACE,
    RUNTIME_NAMESPACE,
    STAGES,
    amqp_url,
    asyncpg_dsn,
    bare_queue,
    database_url,
    runtime_queue,
)
from bench.measure import Monitor, peak_rss_mb, percentile
from contracts.catalog import POLICY_GATE
from infra import topology as topology_module
from workers.registry import WORKER_NAMES
from workers.runtime.broker import Broker

ROOT = Path(__file__).resolve().parent.parent
PHASE_MIN_DRAIN_S = 3
RSS_LIMIT_MB = 120  # the target for a worker's peak resident memory
# --profile NAME: which system runs that process.
PROFILE_TARGETS = {
    **{name: "ours" for name in WORKER_NAMES},
    **{f"bare{s}": "bare" for s in STAGES},
    **{f"rt_stage{s}": "runtime" for s in STAGES},
    **{f"dramatiq{s}": "dramatiq" for s in STAGES},
    **{f"faststream{s}": "faststream" for s in STAGES},
}
SYSTEMS = ("ours", "bare", "runtime", "dramatiq", "faststream")
# The systems that run the same three trivial stages (bench.hops), with their stage processes' modules.
STAGE_SYSTEMS = {
    "bare": "bench.bare",
    "runtime": "bench.rt_stage",
    "dramatiq": "bench.peer_dramatiq",
    "faststream": "bench.peer_faststream",
}
STAGE_PREFIX = {"bare": "bare", "runtime": "rt_stage", "dramatiq": "dramatiq", "faststream": "faststream"}
# How a time budget is shared among the systems still to run (their run times on a quiet machine).
BUDGET_WEIGHTS = {"ours": 0.33, "bare": 0.17, "runtime": 0.2, "dramatiq": 0.15, "faststream": 0.15}
TERMINAL = ["completed", "rejected", "failed"]
# PostgreSQL's cumulative statistics lag by up to a second per backend: a per-phase approximation.
XACTS_SQL = (
    "SELECT xact_commit + xact_rollback, sessions FROM pg_stat_database WHERE datname = current_database()"
)
# The bench database's backends and the server's own processes (no database), not other databases'.
PG_PIDS_SQL = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() OR datname IS NULL"


async def postgres_pids(db: asyncpg.Connection) -> set[int]:
    return {row[0] for row in await db.fetch(PG_PIDS_SQL)}


@dataclass(frozen=True)
class Phase:
    key: str
    rate: float | None  # None: max (backlog-bounded)
    duration_s: float
    measured: bool = True

    @property
    def label(self) -> str:
        return "warm-up" if not self.measured else ("max" if self.rate is None else f"{self.rate:g}/s")


@dataclass(frozen=True)
class Plan:
    phases: tuple[Phase, ...]
    max_count: dict[str, int]  # per system: at most this many messages in the max phase
    backlog: int
    drain_timeout_s: float  # after the load generator is done, how long the pipeline may take to finish
    budget_s: float | None = None  # the whole run; drains are cut short to stay within it


# Quick: 7 s per rate, because OURS needs about three times as long again to work off 200/s on 2 cores,
# and the five systems, set-up included, must fit in about three minutes.
QUICK = Plan(
    (Phase("w", 50, 1, measured=False), Phase("r50", 50, 7), Phase("r200", 200, 7), Phase("max", None, 5)),
    {"ours": 1500, "bare": 5000, "runtime": 4000, "dramatiq": 4000, "faststream": 4000},
    backlog=200,
    drain_timeout_s=15,
    budget_s=170,
)
FULL = Plan(
    (
        Phase("w", 50, 2, measured=False),
        Phase("r50", 50, 20),
        Phase("r200", 200, 20),
        Phase("r400", 400, 20),
        Phase("max", None, 20),
    ),
    {"ours": 6000, "bare": 20000, "runtime": 12000, "dramatiq": 12000, "faststream": 12000},
    backlog=200,
    drain_timeout_s=150,
)


@dataclass
class PhaseResult:
    phase: Phase
    sent: int = 0
    failed_publishes: int = 0
    done: int = 0
    unfinished: int = 0  # not done when the drain time ran out; counted in percentiles as lower bounds
    throughput: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    outcomes: Counter = field(default_factory=Counter)
    wall_s: float = 0.0
    machine_busy_percent: float = 0.0
    transactions_per_request: float = 0.0  # committed + rolled back in the bench database, all clients
    new_connections: int = 0  # sessions opened to the bench database during the phase
    others_percent: float = 0.0  # of the machine, used by processes this run did not measure
    # OURS: each process's deliveries and publishes for this phase's requests (bench/counters.py)
    flow: dict[str, counters.Flow] = field(default_factory=dict)

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def p_text(self, q: float) -> str:
        """The percentile, marked '>' when it falls among unfinished requests (a lower bound)."""
        bound = self.unfinished and 100 * self.unfinished / max(self.sent, 1) > 100 - q
        return f"{'>' if bound else ''}{self.p(q):.1f}"


@dataclass
class SystemResult:
    key: str
    title: str
    process_names: list[str]
    phases: list[PhaseResult] = field(default_factory=list)
    peak_rss_mb: dict[str, float | None] = field(default_factory=dict)
    dead_letters: int = 0

    def phase(self, key: str) -> PhaseResult | None:
        return next((r for r in self.phases if r.phase.key == key), None)


@dataclass
class System:
    key: str
    title: str
    exchange: str
    routing_key: str
    first_queue: str
    work_queues: list[str]
    dead_queues: list[str]
    count_sql: str
    done_sql: str
    sign_as: str | None = None  # the portal producer whose key signs the load (our pipeline checks it)
    # How the load generator's body is made from a request's id and bytes (Dramatiq's own message format)
    body_of: Callable[[str, str], bytes] | None = None


OURS_DONE_WHERE = "FROM portal.requests WHERE request_id LIKE $1 AND status = ANY($2::text[])"
HOPS_DONE_WHERE = "FROM bench.hops WHERE stage = 3 AND id LIKE $1 AND $2::text[] IS NOT NULL"


def systems() -> dict[str, System]:
    ours_topology = topology_module.build(OURS_NAMESPACE)
    rt_topology = rt_stage.topology()
    return {
        "ours": System(
            "ours",
            "OURS: policy_gate -> modify_handler -> portal_sync (real rules, real schedule, read store)",
            ours_topology.exchange("requests"),
            "modify.requested",
            ours_topology.queue_of(POLICY_GATE.name).name,
            [q.name for q in ours_topology.queues if q.worker is not None],
            [q.name for q in ours_topology.queues if q.kind == topology_module.DEAD_LETTER],
            f"SELECT count(*) {OURS_DONE_WHERE}",
            f"SELECT request_id, status, extract(epoch FROM updated_at)::float8 {OURS_DONE_WHERE}",
            sign_as="portal-web",
        ),
        "bare": System(
            "bare",
            "BARE: 3 x (aio-pika consume -> 1 PostgreSQL tx -> confirmed publish -> ack)",
            BARE_EXCHANGE,
            "s1",
            bare_queue(1),
            [bare_queue(s) for s in STAGES],
            [],
            f"SELECT count(*) {HOPS_DONE_WHERE}",
            f"SELECT id, 'completed', extract(epoch FROM at)::float8 {HOPS_DONE_WHERE}",
        ),
        "runtime": System(
            "runtime",
            "RUNTIME: 3 trivial stages on our runtime (decode, inbox, outbox + relay, logging)",
            rt_topology.exchange(rt_stage.RUNTIME_ROLE),
            "stage1",
            runtime_queue(1),
            [runtime_queue(s) for s in STAGES],
            [q.name for q in rt_topology.queues if q.name.endswith(".dead")],
            f"SELECT count(*) {HOPS_DONE_WHERE}",
            f"SELECT id, 'completed', extract(epoch FROM at)::float8 {HOPS_DONE_WHERE}",
        ),
        "dramatiq": System(
            "dramatiq",
            "DRAMATIQ: 3 actors (RabbitmqBroker, confirm_delivery, quorum queues, 1 PostgreSQL tx each)",
            peer_dramatiq.exchange_name(),
            peer_dramatiq.actor_name(1),
            peer_dramatiq.queue_name(1),
            [peer_dramatiq.queue_name(s) for s in STAGES],
            [],
            f"SELECT count(*) {HOPS_DONE_WHERE}",
            f"SELECT id, 'completed', extract(epoch FROM at)::float8 {HOPS_DONE_WHERE}",
            body_of=peer_dramatiq.first_message,
        ),
        "faststream": System(
            "faststream",
            "FASTSTREAM: 3 subscribers (RabbitBroker, confirms, persist, quorum, 1 PostgreSQL tx each)",
            peer_faststream.exchange_name(),
            peer_faststream.routing_key(1),
            peer_faststream.queue_name(1),
            [peer_faststream.queue_name(s) for s in STAGES],
            [],
            f"SELECT count(*) {HOPS_DONE_WHERE}",
            f"SELECT id, 'completed', extract(epoch FROM at)::float8 {HOPS_DONE_WHERE}",
        ),
    }


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# --- broker set-up ------------------------------------------------------------------------------------
async def reset_broker(url: str) -> None:
    """Delete and redeclare the three namespaces' exchanges and queues."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await topology_module.delete(channel, topology_module.build(OURS_NAMESPACE))
        await topology_module.delete(channel, rt_stage.topology())
        for stage in STAGES:
            await channel.queue_delete(bare_queue(stage))
        await channel.exchange_delete(BARE_EXCHANGE)

        await topology_module.declare(channel, topology_module.build(OURS_NAMESPACE))
        await topology_module.declare(channel, rt_stage.topology())
        exchange = await channel.declare_exchange(BARE_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
        for stage in STAGES:
            queue = await channel.declare_queue(
                bare_queue(stage), durable=True, arguments={"x-queue-type": "quorum"}
            )
            await queue.bind(exchange, routing_key=f"s{stage}")
        for peer in (peer_dramatiq, peer_faststream):
            await peer.delete(channel)
            await peer.declare(channel)


async def wait_consumers(
    url: str, queues: list[str], alive: Callable[[], bool], timeout_s: float = 60, each: int = 1
) -> None:
    """Until every queue has `each` consumers (one per replica); raises if a process died."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        deadline = time.monotonic() + timeout_s
        while True:
            if not alive():
                raise RuntimeError("a stage process exited during start-up (see its log)")
            counts = [
                (await channel.declare_queue(q, passive=True)).declaration_result.consumer_count
                for q in queues
            ]
            if all(c >= each for c in counts):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no consumer on {queues} after {timeout_s}s")
            await asyncio.sleep(0.2)


async def purge(url: str, queues: list[str]) -> int:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        total = 0
        for q in queues:
            queue = await channel.declare_queue(q, passive=True)
            total += (await queue.purge()).message_count or 0
        return total


async def dead_letter_count(url: str, queues: list[str]) -> int:
    if not queues:
        return 0
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        total = 0
        for q in queues:
            total += (await channel.declare_queue(q, passive=True)).declaration_result.message_count or 0
        return total


# --- stage processes ----------------------------------------------------------------------------------
def replica_names(stage: str, replicas: int) -> list[str]:
    """`policy_gate`, `policy_gate#2`, ...: one process each, competing on the stage's queue."""
    return [stage if r == 1 else f"{stage}#{r}" for r in range(1, replicas + 1)]


def stage_of(process_name: str) -> str:
    return process_name.split("#", 1)[0]


def processes(
    env: dict[str, str], log_dir: Path, argv_of: dict[str, list[str]], replicas: int = 1
) -> WorkerProcesses:
    """The stage processes of one system (`argv_of`: stage -> command), `replicas` of each, started and
    stopped (SIGTERM, drain, kill after 30 s) the way apptctl runs the workers."""
    commands = {name: argv for stage, argv in argv_of.items() for name in replica_names(stage, replicas)}
    return WorkerProcesses(env, log_dir, commands=commands)


def ours_commands() -> dict[str, list[str]]:
    return {name: [sys.executable, "-m", f"workers.{name}"] for name in WORKER_NAMES}


def stage_commands(module: str, prefix: str) -> dict[str, list[str]]:
    return {f"{prefix}{s}": [sys.executable, "-m", module, "--stage", str(s)] for s in STAGES}


# --- one phase ----------------------------------------------------------------------------------------
async def run_phase(
    system: System,
    phase: Phase,
    messages: list,
    plan: Plan,
    monitor: Monitor,
    db: asyncpg.Connection,
    work_dir: Path,
    deadline: float,
    profile: tuple[int, Path] | None = None,
) -> PhaseResult:
    tag = f"{system.key}-{phase.key}"
    plan_file = work_dir / f"{tag}.plan.jsonl"
    out_file = work_dir / f"{tag}.sent.json"
    seed.write_plan(plan_file, messages, system.body_of)
    command = [
        sys.executable, "-m", "bench.loadgen", "--plan", str(plan_file), "--out", str(out_file),
        "--exchange", system.exchange, "--routing-key", system.routing_key,
        "--duration", str(phase.duration_s), "--watch-queue", system.first_queue,
        "--backlog", str(plan.backlog),
    ]  # fmt: skip
    if phase.rate is not None:
        command += ["--rate", str(phase.rate)]
    if system.sign_as is not None:
        command += ["--sign-as", system.sign_as]
    xacts_before, sessions_before = await db.fetchrow(XACTS_SQL)
    before = monitor.snapshot(await postgres_pids(db))
    started = time.monotonic()
    loader = await asyncio.create_subprocess_exec(*command, cwd=ROOT, env=os.environ.copy())
    spy = None
    if profile is not None:
        pid, spy_out = profile
        spy = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--rate", "200",
            "--duration", str(int(phase.duration_s)), "--nonblocking", "--gil", "--format", "raw",
            "--output", str(spy_out),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    if await loader.wait() != 0:
        raise RuntimeError(f"load generator failed in phase {tag}")
    loaded = json.loads(out_file.read_text())
    sent = {item_id: t for item_id, t in loaded["sent"]}
    result = PhaseResult(phase, sent=len(sent), failed_publishes=loaded["failed"])
    like = f"{tag}-%"
    drain_until = min(time.monotonic() + plan.drain_timeout_s, deadline)
    while True:
        finished = await db.fetchval(system.count_sql, like, TERMINAL)
        if finished >= len(sent) or time.monotonic() > drain_until:
            break
        await asyncio.sleep(0.2)
    after = monitor.snapshot(await postgres_pids(db))
    gave_up_at = time.time()
    xacts_after, sessions_after = await db.fetchrow(XACTS_SQL)
    if spy is not None:
        await spy.wait()
    result.wall_s = time.monotonic() - started
    rows = await db.fetch(system.done_sql, like, TERMINAL)
    done_at: list[float] = []
    for item_id, status, at in rows:
        if item_id in sent:
            result.outcomes[status] += 1
            result.latencies_ms.append((at - sent[item_id]) * 1000)
            done_at.append(at)
    result.done = len(done_at)
    if result.done < len(sent):
        # Out of time: what is still queued is dropped so the next phase starts clean; each unfinished
        # request counts with the latency it had reached (a lower bound).
        finished_ids = {row[0] for row in rows}
        for item_id, t in sent.items():
            if item_id not in finished_ids:
                result.latencies_ms.append((gave_up_at - t) * 1000)
        result.unfinished = len(sent) - result.done
        dropped = await purge(amqp_url(), system.work_queues)
        await asyncio.sleep(1.0)
        dropped += await purge(amqp_url(), system.work_queues)
        log(f"{system.key}: {result.unfinished} requests unfinished after the drain time; purged {dropped}")
    result.latencies_ms.sort()
    if done_at:
        span = max(done_at) - min(sent.values())
        result.throughput = result.done / span if span > 0 else 0.0
    spent = Monitor.delta(before, after)
    spent["loadgen"] = loaded["cpu_s"]
    result.machine_busy_percent = Monitor.machine_busy_percent(before, after)
    wall = after["wall"] - before["wall"]
    measured = sum(v for v in spent.values() if v == v)  # NaN-safe
    busy = after["machine_busy"] - before["machine_busy"]
    result.others_percent = 100 * max(0.0, busy - measured) / (wall * (os.cpu_count() or 1)) if wall else 0.0
    result.cpu_ms_per_request = {k: v * 1000 / max(result.done, 1) for k, v in spent.items()}
    result.transactions_per_request = (xacts_after - xacts_before) / max(result.done, 1)
    result.new_connections = sessions_after - sessions_before
    return result


_WORK_DONE = """
SELECT (SELECT count(*) FROM messaging.inbox)
     + (SELECT count(*) FROM messaging.outbox WHERE published_at IS NULL)
"""


async def wait_idle(db: asyncpg.Connection, timeout_s: float, stable_s: float = 0.6) -> None:
    """Until the pipeline has nothing left in hand: a request counts as finished once the read store
    shows its outcome, but the events that follow it (the offer, the live feed) may still be on their
    way, and their work would be billed to the next phase. Idle = every delivery handled so far (the
    inbox) and every event still to publish (the outbox) unchanged for `stable_s`."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now_done = await db.fetchval(_WORK_DONE)
        if now_done != last:
            last, since = now_done, time.monotonic()
        elif time.monotonic() - since >= stable_s:
            return
        await asyncio.sleep(0.1)
    log(f"the pipeline was still busy after {timeout_s:.0f} s; the next phase starts anyway")


async def vacuum_if_no_autovacuum(db: asyncpg.Connection) -> None:
    """A production server vacuums as it goes (autovacuum is on by default); a server with it off lets
    every updated or deleted row of the phases before (outbox marks, read-store upserts) stay in the
    tables and indexes, and each phase would run slower than the last. So there the bench vacuums the
    bench database itself between phases (outside the measured time)."""
    if await db.fetchval("SHOW autovacuum") == "on":
        return
    began = time.monotonic()
    await db.execute("VACUUM (ANALYZE)")
    took = time.monotonic() - began
    log(f"vacuumed the bench database ({took:.1f} s; this server runs without autovacuum)")


async def run_system(
    system: System,
    start: Callable[[], dict[str, int]],
    stop: Callable[[], object],
    phase_messages: dict[str, list],
    plan: Plan,
    db: asyncpg.Connection,
    work_dir: Path,
    deadline: float = float("inf"),
    before_phases: Callable | None = None,
    profile: tuple[str, Path] | None = None,
    flow: Callable[[], Awaitable[dict[str, counters.Flow]]] | None = None,
) -> SystemResult:
    """`flow`: reads the processes' deliveries and publishes (OURS' metrics); read once the pipeline is
    idle before each phase and after the last, so a phase is billed for all its requests caused."""
    result = SystemResult(system.key, system.title, [])
    monitor = Monitor()
    try:
        pids = start()
        result.process_names = list(pids)
        for name, pid in pids.items():
            monitor.add(name, pid)
        if before_phases is not None:
            await before_phases()
        billing: tuple[PhaseResult, dict[str, counters.Flow]] | None = None
        for n, phase in enumerate(plan.phases):
            # Leave each later phase its load time plus a few seconds to drain.
            # Over budget, drains are cut short (unfinished requests are reported), never phases skipped.
            reserve = sum(p.duration_s + PHASE_MIN_DRAIN_S for p in plan.phases[n + 1 :])
            phase_deadline = max(deadline - reserve, time.monotonic() + phase.duration_s + PHASE_MIN_DRAIN_S)
            spy = None
            if profile is not None and phase.rate is None:
                spy = (pids[profile[0]], profile[1])
            await wait_idle(db, 30.0)
            await vacuum_if_no_autovacuum(db)
            if flow is not None:
                mark = await flow()
                if billing is not None:
                    billing[0].flow = counters.delta(mark, billing[1])
            log(f"{system.key}: phase {phase.label} ({len(phase_messages[phase.key])} messages ready)")
            phase_result = await run_phase(
                system, phase, phase_messages[phase.key], plan, monitor, db, work_dir, phase_deadline, spy
            )
            if flow is not None:
                billing = (phase_result, mark)
            if phase.measured:
                result.phases.append(phase_result)
        if flow is not None and billing is not None:
            await wait_idle(db, 30.0)
            billing[0].flow = counters.delta(await flow(), billing[1])
        result.peak_rss_mb = {name: peak_rss_mb(pid) for name, pid in pids.items()}
        result.dead_letters = await dead_letter_count(amqp_url(), system.dead_queues)
    finally:
        codes = stop()
        log(f"{system.key}: stopped (exit codes {codes})")
    return result


# --- report -------------------------------------------------------------------------------------------
def print_system(result: SystemResult) -> None:
    print(f"\n{result.title}")
    columns = [*result.process_names, "broker", "postgres", "loadgen"]
    print(
        f"  {'phase':>7} {'sent':>6} {'done':>6} {'thr/s':>6} {'p50ms':>8} {'p95ms':>8} {'p99ms':>8} "
        f"{'maxms':>8} | CPU ms/request: "
        + " ".join(f"{n:>14}" for n in columns)
        + " | tx/req new-conns | machine busy, others"
    )
    for r in result.phases:
        cpu = " ".join(f"{r.cpu_ms_per_request.get(n, float('nan')):14.2f}" for n in columns)
        print(
            f"  {r.phase.label:>7} {r.sent:>6} {r.done:>6} {r.throughput:6.0f} {r.p_text(50):>8} "
            f"{r.p_text(95):>8} {r.p_text(99):>8} {r.p_text(100):>8} | {'':16}{cpu} | "
            f"{r.transactions_per_request:6.1f} {r.new_connections:9d} | "
            f"{r.machine_busy_percent:11.0f}% {r.others_percent:5.0f}%"
        )
    rss = ", ".join(f"{n} {v:.0f} MB" for n, v in result.peak_rss_mb.items() if v is not None)
    print(f"  peak RSS: {rss}")
    for r in result.phases:
        if r.flow:
            per = counters.per_request(r.flow, r.done)
            print(f"  {r.phase.label:>7} {counters.text(per, result.process_names)}")
    problems = []
    for r in result.phases:
        if r.failed_publishes:
            problems.append(f"{r.phase.label}: {r.failed_publishes} publishes failed")
        if r.unfinished:
            problems.append(f"{r.phase.label}: {r.unfinished} requests not finished in the drain time")
        odd = {k: v for k, v in r.outcomes.items() if k != "completed"}
        if odd:
            problems.append(f"{r.phase.label}: outcomes other than completed {odd}")
        if r.others_percent > 15:
            problems.append(f"{r.phase.label}: other processes used {r.others_percent:.0f}% of the machine")
    if result.dead_letters:
        problems.append(f"{result.dead_letters} dead letters")
    for name, rss in result.peak_rss_mb.items():
        if rss is not None and rss >= RSS_LIMIT_MB:
            problems.append(f"{name} peaked at {rss:.0f} MB (target < {RSS_LIMIT_MB} MB)")
    print("  problems: " + ("; ".join(problems) if problems else "none"))


def ratio(a: float | None, b: float | None) -> float:
    return a / b if a and b else float("nan")


def summary_line(results: dict[str, SystemResult]) -> str:
    """The last line. A phase that did not run gives nan; p99 of a phase with unfinished
    requests is a lower bound (see PhaseResult.p_text)."""

    def thr(key: str) -> float | None:
        phase = results[key].phase("max") if key in results else None
        return phase.throughput if phase else None

    def p99_at_200(key: str) -> float | None:
        phase = results[key].phase("r200") if key in results else None
        return phase.p(99) if phase else None

    def cpu_per_hop(key: str) -> float:
        """CPU ms its three stage processes spent per request, per hop, at max (PostgreSQL, the broker
        and the load generator left out: the framework's own cost)."""
        phase = results[key].phase("max") if key in results else None
        if phase is None:
            return float("nan")
        own = [phase.cpu_ms_per_request.get(name, float("nan")) for name in results[key].process_names]
        return sum(own) / len(STAGES) if own else float("nan")

    def flow_per_request() -> counters.Flow:
        """OURS' deliveries and publishes per finished request over all measured phases (all workers)."""
        phases = [p for p in results["ours"].phases if p.flow] if "ours" in results else []
        if not phases:
            return counters.Flow(float("nan"), float("nan"))
        total = sum((f for p in phases for f in p.flow.values()), counters.Flow())
        done = max(sum(p.done for p in phases), 1)
        return counters.Flow(total.deliveries / done, total.publishes / done)

    ours, bare = thr("ours"), thr("bare")
    flow = flow_per_request()
    return (
        f"bench: throughput_ratio={ratio(ours, bare):.2f}"
        f" p99_ratio_at_200={ratio(p99_at_200('ours'), p99_at_200('bare')):.2f}"
        f" runtime_ratio={ratio(thr('runtime'), bare):.2f}"
        f" dramatiq_ratio={ratio(thr('dramatiq'), bare):.2f}"
        f" faststream_ratio={ratio(thr('faststream'), bare):.2f}"
        f" ours_rps={ours or float('nan'):.0f} bare_rps={bare or float('nan'):.0f}"
        f" runtime_cpu_ms_per_hop={cpu_per_hop('runtime'):.2f} bare_cpu_ms_per_hop={cpu_per_hop('bare'):.2f}"
        f" deliveries_per_request={flow.deliveries:.2f} publishes_per_request={flow.publishes:.2f}"
    )


def to_json(results: dict[str, SystemResult]) -> dict:
    return {
        key: {
            "peak_rss_mb": r.peak_rss_mb,
            "dead_letters": r.dead_letters,
            "phases": [
                {
                    "phase": p.phase.label,
                    "sent": p.sent,
                    "done": p.done,
                    "throughput": p.throughput,
                    "p50_ms": p.p(50),
                    "p95_ms": p.p(95),
                    "p99_ms": p.p(99),
                    "max_ms": p.p(100),
                    "cpu_ms_per_request": p.cpu_ms_per_request,
                    "outcomes": dict(p.outcomes),
                    "machine_busy_percent": p.machine_busy_percent,
                    "others_percent": p.others_percent,
                    "transactions_per_request": p.transactions_per_request,
                    "new_connections": p.new_connections,
                    "unfinished": p.unfinished,
                    "flow_per_request": {
                        name: {"deliveries": f.deliveries, "publishes": f.publishes}
                        for name, f in counters.per_request(p.flow, p.done).items()
                    }
                    if p.flow
                    else None,
                }
                for p in r.phases
            ],
        }
        for key, r in results.items()
    }


# --- the run ------------------------------------------------------------------------------------------
def _stage_queues(system: System) -> Callable[[int], str]:
    return lambda stage: system.work_queues[stage - 1]


def _phase_counts(plan: Plan, key: str) -> dict[str, int]:
    return {p.key: plan.max_count[key] if p.rate is None else int(p.rate * p.duration_s) for p in plan.phases}


async def wait_quiet(limit_s: float, busy_below: float = 20.0) -> None:
    """Wait (at most `limit_s`) until the machine is nearly idle: other people's test runs share it."""
    if limit_s <= 0:
        return
    deadline = time.monotonic() + limit_s
    while True:
        busy = await asyncio.to_thread(psutil.cpu_percent, 2.0)
        if busy < busy_below or time.monotonic() > deadline:
            log(
                f"machine {busy:.0f}% busy before the run"
                + ("" if busy < busy_below else " (gave up waiting)")
            )
            return
        await asyncio.sleep(1.0)


async def apply_settings(amqp: str, topology, db: asyncpg.Connection, now: datetime) -> None:
    """The tenants' settings, sent as office messages through the real policy_gate; waits for them.
    Sent before the schedule is written (see seed.plan_schedule); a second call changes nothing."""
    broker = Broker(amqp, topology, name="bench-office")
    await broker.connect()
    settings = seed.settings_messages(now)
    try:
        await asyncio.gather(*(broker.publish_message(m) for m in settings))
    finally:
        await broker.close()
    deadline = time.monotonic() + 30
    while await db.fetchval("SELECT count(*) FROM policy.settings_layers") < len(settings):
        if time.monotonic() > deadline:
            raise TimeoutError("the settings did not reach policy_gate in time")
        await asyncio.sleep(0.2)


async def main_async(
    quick: bool, only: list[str], profile: str | None, quiet_s: float = 0, replicas: int = 1
) -> int:
    await wait_quiet(quiet_s)
    plan = QUICK if quick else FULL
    spy_out = None
    if profile is not None:
        plan = Plan(
            (Phase("w", 50, 1, measured=False), Phase("max", None, 15)), plan.max_count, plan.backlog, 40
        )
        only = [PROFILE_TARGETS[profile]]
    began = time.monotonic()
    amqp, db_url = amqp_url(), database_url()
    work_dir = Path(tempfile.mkdtemp(prefix="appt-bench-"))
    log(f"bench {'quick' if quick else 'full'}: database {db_url.rsplit('/', 1)[-1]}, work dir {work_dir}")
    log(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f} (shared with other runs)")
    await reset_broker(amqp)
    await seed.reset_database(db_url)
    now = datetime.now(UTC)
    counts = {key: _phase_counts(plan, key) for key in SYSTEMS}
    schedule = seed.plan_schedule(sum(counts["ours"].values()), now)
    targets = schedule.targets
    log(f"reset; schedule planned: {len(targets)} request targets in {len(seed.TENANTS)} tenants")

    messages: dict[str, dict[str, list]] = {}
    offset = 0
    messages["ours"] = {}
    for phase_key, n in counts["ours"].items():
        batch = targets[offset : offset + n]
        offset += n
        messages["ours"][phase_key] = [
            seed.modify_request(f"ours-{phase_key}", i, t, now) for i, t in enumerate(batch)
        ]
    for key in STAGE_SYSTEMS:
        messages[key] = {
            phase_key: [
                seed.modify_request(f"{key}-{phase_key}", i, seed.synthetic_target(i), now) for i in range(n)
            ]
            for phase_key, n in counts[key].items()
        }

    db = await asyncpg.connect(asyncpg_dsn(db_url))
    defs = systems()
    base_env = {
        **os.environ,
        "AMQP_URL": amqp,
        "DATABASE_URL": db_url,
        "BENCH_DATABASE_URL": db_url,
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    results: dict[str, SystemResult] = {}
    deadline = began + plan.budget_s if plan.budget_s else float("inf")

    def system_deadline(key: str) -> float:
        """This system's share of what is left of the budget (weighted by typical run time)."""
        remaining = [k for k in SYSTEMS if k in only and k not in results]
        share = BUDGET_WEIGHTS[key] / sum(BUDGET_WEIGHTS[k] for k in remaining)
        now = time.monotonic()
        return now + share * (deadline - now) if deadline != float("inf") else deadline

    try:
        if "ours" in only:
            # Each OURS process serves its metrics on its own port (the deliveries and publishes counted).
            names = [name for stage in ours_commands() for name in replica_names(stage, replicas)]
            metrics_base = counters.free_port_block(len(names))
            metrics_ports = {name: metrics_base + index for index, name in enumerate(names)}
            ours_env = {
                **base_env,
                "APPT_NAMESPACE": OURS_NAMESPACE,
                "APPT_METRICS_PORT": str(metrics_base),
                "APPT_METRICS_HOST": "127.0.0.1",
            }
            workers = processes(ours_env, work_dir / "logs", ours_commands(), replicas)
            ours_topology = topology_module.build(OURS_NAMESPACE)

            def start_ours() -> dict[str, int]:
                workers.start()
                return {name: p.pid for name, p in workers.processes.items()}

            async def setup_ours() -> None:
                queues = [ours_topology.queue_of(name).name for name in WORKER_NAMES]
                await wait_consumers(amqp, queues, lambda: all(workers.alive().values()), each=replicas)
                await apply_settings(amqp, ours_topology, db, now)
                await seed.write_schedule(db_url, schedule)
                log(f"ours: consuming ({replicas} per stage), settings applied, schedule seeded")

            spy_out = work_dir / f"pyspy-{profile}.txt" if profile else None
            results["ours"] = await run_system(
                defs["ours"], start_ours, workers.stop, messages["ours"], plan, db, work_dir,
                system_deadline("ours"), setup_ours, (profile, spy_out) if profile else None,
                flow=lambda: counters.scrape(metrics_ports),
            )  # fmt: skip
        for key, module in STAGE_SYSTEMS.items():
            if key not in only:
                continue
            prefix, queue_of = STAGE_PREFIX[key], _stage_queues(defs[key])
            env = {**base_env, "APPT_NAMESPACE": RUNTIME_NAMESPACE}
            if key == "runtime":
                # The trivial stages pass modify.requested along their own exchanges, not the portals':
                # the portal signature check (one HMAC-SHA256 per request, in OURS' gate) is not theirs.
                env["APPT_REQUIRE_SIGNATURES"] = "false"
            # The baseline stays one process per stage: replicas are ours to prove.
            n = replicas if key == "runtime" else 1
            stages = processes(env, work_dir, stage_commands(module, prefix), n)

            def start_stages(stages: WorkerProcesses = stages) -> dict[str, int]:
                stages.start()
                return {name: p.pid for name, p in stages.processes.items()}

            async def wait_stages(stages: WorkerProcesses = stages, queue_of=queue_of, key=key, n=n) -> None:
                queues = [queue_of(s) for s in STAGES]
                await wait_consumers(amqp, queues, lambda: all(stages.alive().values()), each=n)
                log(f"{key}: stage processes consuming")

            spy_out = work_dir / f"pyspy-{profile}.txt" if profile else None
            results[key] = await run_system(
                defs[key], start_stages, stages.stop, messages[key], plan, db, work_dir,
                system_deadline(key), wait_stages, (profile, spy_out) if profile else None,
            )  # fmt: skip
    finally:
        await db.close()

    if profile is not None:
        print_system(results[only[0]])
        print_profile(spy_out)
        return 0

    for key in SYSTEMS:
        if key in results:
            print_system(results[key])
    (work_dir / "results.json").write_text(json.dumps(to_json(results), indent=2))
    print(f"\nresults: {work_dir / 'results.json'}; worker logs: {work_dir}")
    print(f"run took {time.monotonic() - began:.0f} s")
    api_summary = ""
    if "ours" in only:  # the HTTP path (bench/http_path.py): its own database, namespace and processes
        from bench.http_path import run_http_path

        print("\nHTTP path (portal API -> workers -> SSE):")
        try:
            api_summary = " " + (await run_http_path(quick, log=log))[1]
        except Exception as exc:  # the message-flow figures above still make the last line
            log(f"the HTTP path failed: {exc!r}")
            api_summary = " http_path=failed"
    print(summary_line(results) + api_summary)
    return 1 if api_summary == " http_path=failed" else 0


PACKAGES = (
    ("sqlalchemy/", "SQLAlchemy (statement building, compile cache, result rows)"),
    ("asyncpg/", "asyncpg (protocol, prepared statements)"),
    ("pydantic", "pydantic (validate, dump)"),
    ("aio_pika/", "aio-pika / aiormq / pamqp (AMQP)"),
    ("aiormq/", "aio-pika / aiormq / pamqp (AMQP)"),
    ("pamqp/", "aio-pika / aiormq / pamqp (AMQP)"),
    ("structlog/", "structlog + logging + json (log lines)"),
    ("logging/", "structlog + logging + json (log lines)"),
    ("json/", "structlog + logging + json (log lines)"),
    ("asyncio/", "asyncio event loop, transports"),
    ("greenlet", "asyncio event loop, transports"),
    ("workers/", "our code (workers/, contracts/, infra/)"),
    ("contracts/", "our code (workers/, contracts/, infra/)"),
    ("infra/", "our code (workers/, contracts/, infra/)"),
)
_GENERIC = ("runpy>", "asyncio/", "entrypoint.py", "__main__.py", "greenlet", "<module> (", "main (bench/")


def _package(frame: str) -> str:
    where = frame.rpartition("(")[2]
    for prefix, label in PACKAGES:
        if where.startswith(prefix) or f"/{prefix}" in where:
            return label
    return "other / C code without a Python frame" if not where else "other Python"


def print_profile(path: Path | None, top: int = 15) -> None:
    """A py-spy raw (collapsed) profile, sampled only while the worker held the GIL (~ its Python CPU):
    own samples by package, the top own frames, and the top inclusive frames of our code and SQLAlchemy.
    SQLAlchemy's async layer runs the sync execute in a greenlet, whose stacks py-spy shows as separate
    roots, so inclusive numbers of our callers miss the part spent inside Connection.execute."""
    if path is None or not path.exists():
        print("\nprofile: py-spy produced nothing (is ptrace allowed here?)")
        return
    own: Counter = Counter()
    packages: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f.strip()]
        total += count
        leaf = frames[-1] if frames else ""
        own[leaf or "<no Python frame>"] += count
        packages[_package(leaf)] += count
        for frame in set(frames):
            if not any(g in frame for g in _GENERIC):
                inclusive[frame] += count
    if not total:
        print("\nprofile: no samples")
        return
    print(f"\nprofile: {total} samples while holding the GIL ({path})")
    print("  own time by package:")
    for label, n in packages.most_common():
        print(f"    {100 * n / total:5.1f}%  {label}")
    print("  top own frames:")
    for frame, n in own.most_common(top):
        print(f"    {100 * n / total:5.1f}%  {frame}")
    print("  top inclusive frames (event-loop plumbing left out):")
    for frame, n in inclusive.most_common(top):
        print(f"    {100 * n / total:5.1f}%  {frame}")
