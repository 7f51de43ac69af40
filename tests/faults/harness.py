"""One fault run: seed tenants, start the workers as supervised processes, publish load while a fault
plays, wait for quiescence, reconcile, and record the numbers for docs/reliability.md."""

import asyncio
import contextlib
import json
import logging
import os
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aio_pika
import asyncpg
from sqlalchemy.engine import make_url

from apptctl import reconcile
from apptctl.reconcile import Report, Violation
from infra.security.rabbitmq import ManagementClient
from infra.topology import Topology
from tests.faults import office
from tests.faults.load import Office, Plan, build_plan, publish_confirmed, publish_paced, wait_for_setup
from tests.faults.supervisor import Supervisor
from tests.waiting import eventually
from workers.registry import WORKER_NAMES
from workers.runtime.broker import Broker
from workers.runtime.database import asyncpg_dsn, create_engine
from workers.runtime.settings import Settings

log = logging.getLogger(__name__)

# CI profile: ~2,000 requests across the suite; `make soak` sets APPT_FAULTS_SCALE=10 (~20,000).
SCALE = float(os.environ.get("APPT_FAULTS_SCALE", "1"))
ROOT = Path(__file__).resolve().parents[2]
REPORT_DIR = Path(os.environ.get("APPT_FAULTS_REPORT_DIR", ROOT / "build" / "faults"))
SETTLE_S = float(os.environ.get("APPT_FAULTS_SETTLE_S", "90"))


def known_defect(violation: Violation) -> bool:
    """Defects found by this suite and not yet fixed, tolerated by name so they stay visible in the
    report. None now: the one it found (a job's active count going stale) is fixed."""
    return False


def blocking(report: Report) -> list[Violation]:
    return [v for v in report.violations if not known_defect(v)]


def scaled(n: int) -> int:
    return max(10, round(n * SCALE))


def timeout_s(base_s: float) -> int:
    """A test's time limit, grown with the load."""
    return int(base_s * max(1.0, SCALE))


def load_seconds(requests: int, floor_s: float = 8.0) -> float:
    """How long to spread the load over: long enough for the faults to land while it runs."""
    return max(floor_s, requests / 40)


@dataclass
class Numbers:
    """One scenario's line in docs/reliability.md."""

    scenario: str
    requests: int = 0
    published: int = 0  # request messages on the wire, duplicates included
    poison: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    office: dict[str, int] = field(default_factory=dict)  # the office records' outcomes, by kind
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    dead_lettered: int = 0
    violations: int = 0
    known_defects: int = 0
    read_store_regressions: int = 0
    duration_s: float = 0.0
    settle_s: float = 0.0
    scale: float = SCALE
    result: str = "fail"
    finished_at: str = ""

    def write(self) -> None:
        REPORT_DIR.mkdir(parents=True, exist_ok=True)
        self.finished_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        (REPORT_DIR / f"{self.scenario}.json").write_text(json.dumps(asdict(self), indent=2) + "\n")


class ReadStoreMonitor:
    """Watches the read store while the run goes on: a version that goes down, or a request outcome that
    changes after it was final, is a regression a portal user would see."""

    RANK = {"pending": 0, "awaiting_approval": 1, "rejected": 2, "completed": 2, "failed": 2}

    def __init__(self, dsn: str, tenants: list[str]) -> None:
        self._dsn = dsn
        self._tenants = tenants
        self._versions: dict[tuple[str, str], int] = {}
        self._status: dict[str, str] = {}
        self.regressions: list[str] = []
        self.polls = 0
        self._stop = asyncio.Event()

    async def poll(self, connection: asyncpg.Connection) -> None:
        for table, key in (("appointments", "appointment_id"), ("jobs", "job_id")):
            rows = await connection.fetch(
                f"SELECT {key} AS id, version FROM portal.{table} WHERE tenant_id = ANY($1::text[])",
                self._tenants,
            )
            for row in rows:
                seen = self._versions.get((table, row["id"]))
                if seen is not None and row["version"] < seen:
                    self.regressions.append(f"{table} {row['id']}: v{seen} -> v{row['version']}")
                self._versions[(table, row["id"])] = max(row["version"], seen or 0)
        rows = await connection.fetch(
            "SELECT request_id, status FROM portal.requests WHERE tenant_id = ANY($1::text[])", self._tenants
        )
        for row in rows:
            seen = self._status.get(row["request_id"])
            now = row["status"]
            if seen is not None and (
                self.RANK[now] < self.RANK[seen] or (self.RANK[seen] == 2 and now != seen)
            ):
                self.regressions.append(f"request {row['request_id']}: {seen} -> {now}")
            if seen is None or self.RANK[now] >= self.RANK[seen]:
                self._status[row["request_id"]] = now
        self.polls += 1

    async def run(self, interval_s: float = 0.1) -> None:
        connection: asyncpg.Connection | None = None
        while not self._stop.is_set():
            try:
                if connection is None or connection.is_closed():
                    connection = await asyncpg.connect(self._dsn, timeout=5)
                await self.poll(connection)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                connection = None  # the database is being restarted: look again shortly
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval_s)
        if connection is not None and not connection.is_closed():
            await connection.close()

    def stop(self) -> None:
        self._stop.set()


def _retry_env(settings: Settings) -> dict[str, str]:
    """The delay-queue tiers the test topology was declared with (when the runtime has them)."""
    delays = getattr(settings, "retry_delays", None)
    return {"APPT_RETRY_DELAYS_S": delays} if delays else {}


class FaultRun:
    """Everything one scenario needs; use through `fault_run(...)`."""

    def __init__(
        self, scenario: str, settings: Settings, topology: Topology, log_dir: Path, plan: Plan, **supervisor
    ) -> None:
        self.scenario = scenario
        self.settings = settings
        self.topology = topology
        self.log_dir = log_dir
        self.plan = plan
        self.numbers = Numbers(scenario, requests=len(plan.requests))
        self.engine = create_engine(settings.database_url, pool_size=3)
        self.broker = Broker(
            settings.amqp_url, topology, name=f"faults-portal-{scenario}", signer=settings.keyring()
        )
        self.management = ManagementClient(settings.rabbitmq_management_url)
        self.admin_dsn = asyncpg_dsn(settings.database_url)
        self.database = make_url(settings.database_url).database or ""
        self.workers = Supervisor(
            {
                "AMQP_URL": settings.amqp_url,
                "DATABASE_URL": settings.database_url,
                "APPT_NAMESPACE": topology.namespace,
                "APPT_OUTBOX_POLL_S": "0.5",
                # The relay takes over what a killed worker committed but never published after this
                # long (30 s in production): shorter here, so a run settles sooner.
                "APPT_OUTBOX_GRACE_S": "5",
                "APPT_TRANSIENT_RETRY_DELAY_S": "0.1",
                "APPT_DRAIN_TIMEOUT_S": "5",
                "APPT_DB_POOL_SIZE": "3",  # README, Tests: within the suite's connection budget
                "APPT_STARTUP_RETRY_S": "120",
                "LOG_LEVEL": "INFO",
                **_retry_env(settings),
            },
            log_dir,
            **supervisor,
        )
        self.monitor = ReadStoreMonitor(self.admin_dsn, plan.tenants)
        self.office = Office(self.engine, self.broker, plan.tenants)
        self.writer = office.OfficeWriter(self.engine, self.broker, plan, seed=zlib.crc32(scenario.encode()))
        self.office_facts = office.OfficeFacts()
        self.sent_at: dict[str, float] = {}
        self._tasks: list[asyncio.Task] = []
        self._started = time.monotonic()

    async def start(self) -> None:
        await self.broker.connect(retry_for_s=30)
        self.workers.start()
        await self.workers.wait_consuming(self.settings.amqp_url, self.topology, timeout_s=60)
        self.workers.supervise()
        await asyncio.gather(*(publish_confirmed(self.broker, m) for m in self.plan.setup))
        await wait_for_setup(self.engine, self.plan)
        self._tasks = [asyncio.create_task(self.monitor.run()), asyncio.create_task(self.office.run())]
        self._started = time.monotonic()

    async def publish_requests(self, duration_s: float, copies: list | None = None) -> None:
        """Publish the plan's requests (or `copies`, e.g. with duplicates) spread over `duration_s`."""
        messages = copies if copies is not None else self.plan.requests
        self.numbers.published += len(messages)
        await asyncio.gather(
            publish_paced(self.broker, messages, duration_s, self.sent_at), self.write_office(duration_s)
        )

    async def write_office(self, duration_s: float) -> None:
        """The office writes its commercial appointments meanwhile (tests/faults/office.py)."""
        await self.writer.write(duration_s, self.writer.records_for(len(self.plan.requests)))

    def office_messages(self) -> list:
        return office.office_messages(self.plan, self.writer, self.office.sent)

    async def reconcile(self, grace_s: float = 0.0) -> Report:
        return await reconcile.check(
            self.engine,
            amqp_url=self.settings.amqp_url,
            namespace=self.topology.namespace,
            tenants=self.plan.tenants,
            sent=self.plan.sent(self.sent_at),
            grace_s=grace_s,
        )

    async def queues_empty(self) -> bool:
        assert self.broker.connection is not None
        channel = await self.broker.connection.channel()
        try:
            # work queues and, where the runtime has them, the delay queues retries wait in
            for spec in self.topology.queues:
                if spec.worker is None:
                    continue
                queue = await channel.declare_queue(spec.name, passive=True)
                if queue.declaration_result.message_count:
                    return False
        finally:
            await channel.close()
        return True

    async def settle(self, timeout_s: float = SETTLE_S) -> Report:
        """Wait for quiescence (every request finished, queues empty, nothing waiting for the office),
        then reconcile once more a moment later so late duplicates would show."""
        started = time.monotonic()
        report: Report | None = None
        while True:
            try:
                report = await self.reconcile()
                quiet = not blocking(report) and report.counts["waiting"] == 0 and await self.queues_empty()
                if quiet:  # and every office message answered (its outcome in the read store)
                    self.office_facts = await office.gather(self.engine, self.plan.tenants)
                    quiet = office.answered(self.office_facts, self.office_messages())
            except (OSError, aio_pika.exceptions.AMQPError, asyncpg.PostgresError):
                quiet = False
            if report is not None:
                log.info("settle %.1fs quiet=%s %s violations=%d", time.monotonic() - started, quiet,
                         report.counts, len(report.violations))  # fmt: skip
            if quiet:
                await asyncio.sleep(1.0)
                report = await self.reconcile()
                self.office_facts = await office.gather(self.engine, self.plan.tenants)
                if not blocking(report):
                    break
            if time.monotonic() - started > timeout_s:
                break
            await asyncio.sleep(0.5)
        assert report is not None
        self.numbers.settle_s = round(time.monotonic() - started, 1)
        return report

    def record(self, report: Report) -> None:
        counts = report.counts
        n = self.numbers
        n.outcomes = {k: v for k, v in counts.items() if v}
        n.lost, n.duplicated, n.unexpected = counts["lost"], counts["duplicated"], counts["unexpected"]
        n.dead_lettered = counts["dead_lettered"]
        n.office = office.tally(self.office_facts, self.writer)
        n.violations = len(blocking(report))
        n.known_defects = len(report.violations) - n.violations
        n.read_store_regressions = len(self.monitor.regressions)
        n.restarts = sum(self.workers.starts.values()) - len(WORKER_NAMES)
        n.duration_s = round(time.monotonic() - self._started, 1)

    def assert_clean(self, report: Report, *, dead_letters_allowed: bool = False) -> None:
        """The suite's verdict: 0 lost, 0 duplicated, 0 unexpected, read store == truth, no regression,
        no worker crashed by itself, and the requests the mix makes certain ended as they must."""
        self.record(report)
        problems = []
        if blocking(report):
            problems.append(reconcile.render(report, limit=30))
        if report.counts["in_flight"]:
            problems.append(f"{report.counts['in_flight']} request(s) still in flight")
        if report.counts["dead_lettered"] and not dead_letters_allowed:
            dead = [v for v in report.verdicts if v.cls is reconcile.RequestClass.DEAD_LETTERED][:10]
            problems.append(f"valid requests dead-lettered: {dead}")
        if report.counts["waiting"]:
            problems.append(f"{report.counts['waiting']} request(s) still wait for the office")
        if self.monitor.regressions:
            problems.append(f"read store went backwards: {self.monitor.regressions[:10]}")
        if self.workers.unexpected_exits:
            problems.append(f"workers exited on their own: {self.workers.unexpected_exits[:10]}")
        office_problems = office.problems(self.office_facts, self.office_messages(), self.writer)
        if office_problems:
            problems.append(f"{len(office_problems)} office message(s) without one true outcome: " +
                            "; ".join(office_problems[:10]))  # fmt: skip
        by_id = {v.request_id: v for v in report.verdicts}
        for request_id, expect in self.plan.expect.items():
            verdict = by_id.get(request_id)
            status = {"applied": "completed"}.get(verdict.cls.value, verdict.cls.value) if verdict else None
            if status != expect.status or (expect.reason_codes and verdict.reason not in expect.reason_codes):
                problems.append(f"{request_id}: {verdict}, expected {expect}")
                break
        self.numbers.result = "fail" if problems else "pass"
        self.numbers.write()
        assert not problems, "\n".join(problems) + f"\nworker logs: {self.log_dir}"

    async def close(self) -> None:
        self.office.stop()
        self.monitor.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.workers.stop_supervising()
        await asyncio.to_thread(self.workers.stop, 20)
        await self.broker.close()
        await self.engine.dispose()


@contextlib.asynccontextmanager
async def fault_run(
    scenario: str,
    settings: Settings,
    topology: Topology,
    tmp_path: Path,
    *,
    requests: int,
    seed: int,
    tenants: int = 2,
    **supervisor,
) -> AsyncIterator[FaultRun]:
    plan = build_plan(requests, seed=seed, label=scenario.replace("_", "-")[:12], tenants=tenants)
    run = FaultRun(scenario, settings, topology, tmp_path / "logs", plan, **supervisor)
    try:
        await run.start()
        yield run
    finally:
        await run.close()


async def every(interval: Callable[[], float], action, until: asyncio.Event) -> None:
    """Run `action()` every `interval()` seconds until `until` is set."""
    while not until.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), interval())
        if not until.is_set():
            await action()


async def outbox_rows(run: FaultRun, roles: tuple[str, ...] = ("internal", "events")) -> list:
    """The published events of the run's tenants, oldest first."""
    from sqlalchemy import select

    from infra.db.tables import outbox

    async with run.engine.connect() as conn:
        rows = await conn.execute(
            select(outbox)
            .where(
                outbox.c.tenant_id.in_(run.plan.tenants),
                outbox.c.exchange_role.in_(roles),
                outbox.c.published_at.is_not(None),
            )
            .order_by(outbox.c.id)
        )
        return list(rows)


async def republish(run: FaultRun, rows: list, *, new_ids: bool = False) -> list[str]:
    """Publish outbox rows again, as a relay that crashed after publishing (same message id) or a buggy
    producer re-emitting old events (`new_ids`: a fresh message id in body and properties, so the inbox
    cannot drop it and only the version guard protects the read store). Returns the message ids sent."""
    from uuid import uuid4

    from workers.runtime.broker import amqp_message

    sent = []
    for row in rows:
        body, message_id = bytes(row.body), str(row.message_id)
        if new_ids:
            document = json.loads(body)
            message_id = document["message_id"] = str(uuid4())
            body = json.dumps(document).encode()
        message = amqp_message(
            body,
            message_id=message_id,
            correlation_id=row.correlation_id,
            message_type=row.message_type,
            producer=row.producer,
            headers=row.headers,
        )
        await run.broker.publish(run.topology.exchange(row.exchange_role), row.routing_key, message)
        sent.append(message_id)
    return sent


async def consumed_all(run: FaultRun, consumer: str, message_ids: list[str], timeout_s: float = 60.0) -> None:
    """Until `consumer`'s inbox has every one of `message_ids`."""
    from sqlalchemy import any_, func, literal, select
    from sqlalchemy.dialects.postgresql import ARRAY

    from infra.db.tables import inbox

    # One array parameter, not one per id: at soak scale the replays outnumber PostgreSQL's 32,767
    # parameters of one statement.
    ids = literal(message_ids, ARRAY(inbox.c.message_id.type))

    async def seen() -> int:
        async with run.engine.connect() as conn:
            return (
                await conn.execute(
                    select(func.count()).where(inbox.c.consumer == consumer, inbox.c.message_id == any_(ids))
                )
            ).scalar_one()

    async def all_seen() -> bool:
        return await seen() >= len(message_ids)

    await eventually(
        all_seen, f"{consumer} consuming all {len(message_ids)} replayed messages", timeout_s, 0.3
    )
