"""`apptctl status`: a namespace's queues, dead letters and outbox backlog, judged as a monitoring check.

Each problem has a severity, and the exit code is the worst of them, as monitoring plugins (Nagios,
Icinga, Sensu) read it: 0 ok, 1 warning, 2 critical, 3 unknown. Critical outranks warning, which outranks
unknown: a known problem is reported even when something else could not be found out.
"""

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractConnection
from aiormq.exceptions import ChannelAccessRefused
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from apptctl import dlq
from apptctl.management import ManagementApi, ManagementUnavailable, QueueCounts, vhost_of
from apptctl.probe import queue_declaration
from infra.db.tables import outbox
from infra.nodes import connect_first
from infra.topology import Topology, build
from workers.runtime.settings import Settings

CONNECT_TIMEOUT_S = 5.0
STATUS_SWEEP = 2_000  # dead letters read per queue to count reasons; beyond that counts are lower bounds
DEFAULT_OUTBOX_MAX_AGE_S = 60.0

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
SEVERITY = {OK: "ok", WARNING: "warning", CRITICAL: "critical", UNKNOWN: "unknown"}
_RANK = {OK: 0, UNKNOWN: 1, WARNING: 2, CRITICAL: 3}  # which state wins when there are several


@dataclass(frozen=True)
class Problem:
    severity: int
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass
class QueueStatus:
    name: str
    kind: str  # "work", "dead-letter", "dead-letter-audit" (the auditor's copies) or "delay" (retries
    # waiting for their next attempt; no consumer)
    worker: str | None
    exists: bool | None = None  # None: could not ask the broker
    ready: int | None = None
    unacknowledged: int | None = None
    consumers: int | None = None
    oldest_message_age_s: float | None = None
    max_length: int | None = None  # a capped queue (the feed's unrouted events) drops its oldest beyond


@dataclass
class DeadLetterCounts:
    total: int
    by_reason: dict[str, int]
    truncated: bool = False


@dataclass
class OutboxStatus:
    max_age_s: float
    unpublished: int | None = None
    oldest_unpublished_age_s: float | None = None
    error: str | None = None


@dataclass
class Status:
    namespace: str
    vhost: str
    queues: list[QueueStatus]
    outbox: OutboxStatus
    dead_letters: dict[str, DeadLetterCounts] = field(default_factory=dict)
    broker_error: str | None = None
    management_error: str | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        """0 ok, 1 warning, 2 critical, 3 unknown: the worst problem's severity."""
        return max((p.severity for p in self.problems), key=_RANK.__getitem__, default=OK)

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "vhost": self.vhost,
            "healthy": self.healthy,
            "state": SEVERITY[self.exit_code],
            "exit_code": self.exit_code,
            "problems": [p.text for p in self.problems],
            "problem_severities": [SEVERITY[p.severity] for p in self.problems],
            "broker": {"reachable": self.broker_error is None, "error": self.broker_error},
            "management_api": {"reachable": self.management_error is None, "error": self.management_error},
            "queues": [asdict(q) for q in self.queues],
            "dead_letters": {name: asdict(counts) for name, counts in self.dead_letters.items()},
            "outbox": asdict(self.outbox),
        }


def _age_s(when: datetime | None, now: datetime) -> float | None:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return round(max((now - when).total_seconds(), 0.0), 3)


def initial_queues(topology: Topology) -> list[QueueStatus]:
    return [
        QueueStatus(spec.name, spec.kind, spec.worker, max_length=spec.arguments.get("x-max-length"))
        for spec in topology.queues
    ]


# --- gathering ---------------------------------------------------------------------------------------


async def _declare_counts(connection: AbstractConnection, queue: QueueStatus) -> None:
    """Live ready and consumer counts from a passive declare (a missing queue closes the channel)."""
    declared = await queue_declaration(connection, queue.name)
    queue.exists = declared is not None
    if declared is not None:
        queue.ready = declared.message_count
        queue.consumers = declared.consumer_count


def _apply_management(queue: QueueStatus, counts: QueueCounts | None, now: datetime) -> None:
    """Management counts where the broker has them; consumers stay the live AMQP count when known."""
    if counts is None:
        if queue.exists is None:
            queue.exists = False
        return
    if queue.exists is None:
        queue.exists = True
        queue.consumers = counts.consumers
    if counts.ready is not None:
        queue.ready = counts.ready
    queue.unacknowledged = counts.unacknowledged
    if counts.head_message_timestamp:
        queue.oldest_message_age_s = _age_s(datetime.fromtimestamp(counts.head_message_timestamp, UTC), now)


async def _management_counts(settings: Settings, status: Status) -> None:
    try:
        api = ManagementApi(settings.rabbitmq_management_url, timeout_s=CONNECT_TIMEOUT_S)
        counts = await api.queues(status.vhost, [q.name for q in status.queues])
    except (ManagementUnavailable, ValueError) as exc:
        status.management_error = str(exc)
        return
    now = datetime.now(UTC)
    for queue in status.queues:
        _apply_management(queue, counts.get(queue.name), now)


async def _dead_letters(connection: AbstractConnection, status: Status) -> None:
    """Read every dead letter (they stay queued) to count them by reason; the count is exact."""
    names = [q.name for q in status.queues if q.kind == "dead-letter" and q.exists]
    try:
        sweep = await dlq.read(connection, names, limit=STATUS_SWEEP)
    except ChannelAccessRefused:
        # the auditor may not read the dead-letter queues (reading would let it remove them): the counts
        # of the passive declares stand, the reasons are in its copies
        for queue in status.queues:
            if queue.name in names:
                total = queue.ready or 0
                unread = {"(reasons: `apptctl dlq list --audit`)": total} if total else {}
                status.dead_letters[queue.name] = DeadLetterCounts(total, unread)
        return
    by_queue = dlq.counts_by_reason(sweep.letters)
    now = datetime.now(UTC)
    for queue in status.queues:
        if queue.name not in names:
            continue
        letters = [letter for letter in sweep.letters if letter.queue == queue.name]
        reasons = by_queue.get(queue.name, {})
        truncated = queue.name in sweep.truncated
        total = max(len(letters), queue.ready or 0) if truncated else len(letters)
        status.dead_letters[queue.name] = DeadLetterCounts(total, reasons, truncated)
        if not truncated:
            queue.ready = len(letters)
        stamps = [letter.born_at for letter in letters if letter.born_at is not None]
        queue.oldest_message_age_s = _age_s(min(stamps), now) if stamps else None


async def _broker_state(settings: Settings, status: Status) -> None:
    try:
        connection = await connect_first(settings.amqp_url, timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:
        status.broker_error = f"{type(exc).__name__}: {exc}"[:300]
        await _management_counts(settings, status)
        return
    async with connection:
        try:
            for queue in status.queues:
                await _declare_counts(connection, queue)
            await _management_counts(settings, status)
            await _dead_letters(connection, status)
        except Exception as exc:
            status.broker_error = f"{type(exc).__name__}: {exc}"[:300]


async def _outbox_state(database_url: str, result: OutboxStatus) -> None:
    engine = create_async_engine(
        database_url, poolclass=NullPool, connect_args={"timeout": CONNECT_TIMEOUT_S}
    )
    unpublished = outbox.c.published_at.is_(None)
    query = select(func.count(), func.extract("epoch", func.now() - func.min(outbox.c.created_at))).where(
        unpublished
    )
    try:
        async with engine.connect() as connection:
            count, age = (await connection.execute(query)).one()
        result.unpublished = int(count)
        result.oldest_unpublished_age_s = None if age is None else round(float(age), 3)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    finally:
        await engine.dispose()


# --- judging -----------------------------------------------------------------------------------------


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.0f}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def problems_of(status: Status) -> list[Problem]:
    problems: list[Problem] = []
    if status.broker_error is not None:
        problems.append(
            Problem(
                CRITICAL,
                f"RabbitMQ could not be queried ({status.broker_error}): is it running? "
                "`bash infra/services.sh` starts a local one; otherwise check AMQP_URL",
            )
        )
    elif status.management_error is not None:
        problems.append(
            Problem(
                UNKNOWN,
                f"the RabbitMQ management API is unreachable ({status.management_error}): unacknowledged "
                "counts and message ages are unknown; enable it (`rabbitmq-plugins enable "
                "rabbitmq_management`) or check RABBITMQ_MANAGEMENT_URL",
            )
        )
    missing = [queue.name for queue in status.queues if queue.exists is False]
    if missing:
        problems.append(
            Problem(
                CRITICAL,
                f"queue(s) {', '.join(missing)} do not exist: "
                "run `apptctl topology apply` (or check APPT_NAMESPACE)",
            )
        )
    for queue in status.queues:
        if queue.exists and queue.kind == "work" and queue.consumers == 0:
            problems.append(
                Problem(
                    CRITICAL,
                    f"queue {queue.name} has no consumer: start the worker (`apptctl worker {queue.worker}` "
                    "or `apptctl run`)",
                )
            )
        # (the auditor's dead-letter copies are capped too, and keeping only the newest is their design)
        capped = queue.kind == "sink" and queue.max_length
        if queue.exists and capped and (queue.ready or 0) >= (queue.max_length or 0):
            problems.append(
                Problem(
                    WARNING,
                    f"queue {queue.name} is at its cap of {queue.max_length} (the oldest are being dropped): "
                    "these are live-feed events no portal subscribed to; bind the portals' feed queues, "
                    "or ignore if no portal uses the feed",
                )
            )
    for name, counts in status.dead_letters.items():
        if counts.total:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.by_reason.items()))
            more = " or more" if counts.truncated else ""
            problems.append(
                Problem(
                    WARNING,
                    f"{counts.total}{more} dead letter(s) in {name} ({reasons}): inspect them with "
                    "`apptctl dlq list`, then `apptctl dlq replay` or `apptctl dlq purge`",
                )
            )
    box = status.outbox
    if box.error is not None:
        problems.append(
            Problem(
                CRITICAL,
                f"outbox unknown: the PostgreSQL query failed ({box.error}): "
                "check DATABASE_URL, run `apptctl migrate`",
            )
        )
    elif box.oldest_unpublished_age_s is not None and box.oldest_unpublished_age_s > box.max_age_s:
        oldest = fmt_age(box.oldest_unpublished_age_s)
        problems.append(
            Problem(
                WARNING,
                f"outbox: {box.unpublished} unpublished row(s), the oldest {oldest} old "
                f"(limit {fmt_age(box.max_age_s)}): check that the workers run and reach RabbitMQ "
                "(their logs say `outbox.publish_failed`)",
            )
        )
    return problems


async def collect(settings: Settings, outbox_max_age_s: float = DEFAULT_OUTBOX_MAX_AGE_S) -> Status:
    topology = build(settings.namespace, settings.retry_delays_s)
    status = Status(
        settings.namespace,
        vhost_of(settings.amqp_url),
        initial_queues(topology),
        OutboxStatus(outbox_max_age_s),
    )
    await _broker_state(settings, status)
    await _outbox_state(settings.database_url, status.outbox)
    status.problems = problems_of(status)
    return status


# --- showing -----------------------------------------------------------------------------------------


def _cell(value: int | None) -> str:
    return "?" if value is None else str(value)


def render(status: Status) -> str:
    width = max(len(q.name) for q in status.queues) + 2
    lines = [
        f"namespace {status.namespace} (vhost {status.vhost})",
        f"{'QUEUE':<{width}}{'READY':>7}{'UNACKED':>9}{'CONSUMERS':>11}{'OLDEST':>9}",
    ]
    for q in status.queues:
        if q.exists is False:
            lines.append(f"{q.name:<{width}}  (missing)")
            continue
        consumers = _cell(q.consumers) if q.kind == "work" else "-"
        lines.append(
            f"{q.name:<{width}}{_cell(q.ready):>7}{_cell(q.unacknowledged):>9}{consumers:>11}"
            f"{fmt_age(q.oldest_message_age_s):>9}"
        )
    if status.management_error is not None and status.broker_error is None:
        lines.append("unacked, oldest: ? = unknown (the management API is unreachable; see below)")
    if status.broker_error is not None:
        lines.append("dead letters: unknown")
    elif any(c.total for c in status.dead_letters.values()):
        lines.append("dead letters:")
    else:
        lines.append("dead letters: none")
    for name, counts in status.dead_letters.items():
        for reason, n in sorted(counts.by_reason.items(), key=lambda item: -item[1]):
            lines.append(f"  {name}  {reason}: {n}")
    box = status.outbox
    if box.error is None:
        lines.append(
            f"outbox: {box.unpublished} unpublished, oldest {fmt_age(box.oldest_unpublished_age_s)} "
            f"(limit {fmt_age(box.max_age_s)})"
        )
    state = SEVERITY[status.exit_code].upper()
    if status.healthy:
        lines.append("status: healthy")
    elif status.exit_code == UNKNOWN:
        lines.append(f"status: UNKNOWN ({len(status.problems)} problem(s))")
    else:
        lines.append(f"status: UNHEALTHY, {state} ({len(status.problems)} problem(s))")
    lines.extend(f"  - [{SEVERITY[p.severity]}] {p.text}" for p in status.problems)
    return "\n".join(lines)
