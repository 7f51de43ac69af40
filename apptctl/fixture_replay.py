"""`apptctl fixtures replay`: validate every fixture, publish them through the real broker, check them.

File by file, letting each file settle before the next, and optionally checking what they were expected
to do.

Nothing is published unless every fixture is valid (or intentionally malformed, as it says). Publishes go
through `workers.runtime.broker.Broker`: confirm channel, persistent, mandatory, with a timeout.
"""

import asyncio
import contextlib
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from apptctl import dlq
from apptctl.fixtures import Checked, Outgoing, Rewrite, consumers_of, prepare
from apptctl.portal_keys import tool_keyring
from apptctl.probe import missing_exchanges
from contracts.portal_v1 import ModifyRequested
from contracts.signing import SIGNATURE_HEADER, Keyring, KeyringError
from infra.db.tables import inbox, portal_requests
from infra.topology import build
from workers.runtime.broker import Broker, sign
from workers.runtime.database import create_engine
from workers.runtime.settings import Settings
from workers.runtime.signatures import PORTAL_ROLE

TERMINAL = frozenset({"rejected", "completed", "failed"})
SHOWN_PROBLEMS = 5  # unhandled messages / unmet expectations named one by one before "... and N more"
IN_FLIGHT = 64  # unconfirmed publishes at once


@dataclass(frozen=True)
class ReplayOptions:
    dry_run: bool = False
    rate: float = 0.0  # messages per second; 0 = as fast as confirms come back
    settle: bool = True  # before each file, wait until the workers handled the earlier files' messages
    check: bool = False  # afterwards, wait for every fixture's `expect` and compare
    skip_malformed: bool = False
    timeout_s: float = 30.0  # for one settle wait, and for the check
    progress: bool = True


@dataclass
class Summary:
    dry_run: bool = False
    files: int = 0
    validated: int = 0
    published: int = 0
    invalid: int = 0
    skipped: int = 0
    by_type: Counter = field(default_factory=Counter)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (source, what is wrong)
    expectations: int = 0
    unmet: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None  # why the replay stopped early
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.unmet and self.error is None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "files": self.files,
            "validated": self.validated,
            "published": self.published,
            "invalid": self.invalid,
            "skipped": self.skipped,
            "by_type": dict(sorted(self.by_type.items())),
            "problems": [{"source": s, "problem": p} for s, p in self.problems],
            "expectations": {
                "checked": self.expectations,
                "unmet": [{"source": s, "problem": p} for s, p in self.unmet],
            },
            "error": self.error,
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def render(self) -> str:
        counts = ", ".join(f"{name} {n}" for name, n in sorted(self.by_type.items())) or "nothing"
        verb = "would publish" if self.dry_run else "published"
        total = sum(self.by_type.values()) if self.dry_run else self.published
        lines = [
            f"{self.validated} fixture(s) in {self.files} file(s): "
            f"{self.invalid} invalid, {self.skipped} skipped",
            f"{verb} {total}: {counts}" + ("" if self.dry_run else f" ({self.elapsed_s:.1f} s)"),
        ]
        if self.expectations:
            lines.append(f"expectations: {self.expectations - len(self.unmet)} of {self.expectations} met")
        if self.dry_run:
            lines.append("dry run: nothing was published")
        return "\n".join(lines)


def _problem_lines(items: list[tuple[str, str]]) -> list[str]:
    return [f"{source}: {problem}" for source, problem in items]


def report(summary: Summary) -> tuple[str, str]:
    """(stdout, stderr) for a person: problems first, on stderr, then the summary."""
    err = _problem_lines(summary.problems)
    if summary.problems:
        err.append(
            f"{len(summary.problems)} invalid fixture(s): nothing was published. Fix them, or mark an "
            "intentionally broken one with expect.dead_letter (see docs/fixtures.md)"
        )
    err += [f"expectation not met: {line}" for line in _problem_lines(summary.unmet)]
    if summary.error:
        err.append(f"replay stopped: {summary.error}")
    return summary.render(), "\n".join(err)


# --- the replay -------------------------------------------------------------------------------------


async def replay(
    settings: Settings, checked: Sequence[Checked], rewrite: Rewrite, options: ReplayOptions
) -> Summary:
    summary = Summary(dry_run=options.dry_run)
    summary.files = len({c.source.path for c in checked})
    summary.validated = len(checked)
    invalid = [c for c in checked if not c.ok]
    if invalid:
        summary.invalid = len(invalid)
        summary.problems = [(str(c.source), c.problem or "") for c in invalid]
        return summary
    wanted = [c for c in checked if not (options.skip_malformed and c.malformed)]
    summary.skipped = len(checked) - len(wanted)
    outgoing, broken = prepare(wanted, rewrite)
    if broken:
        summary.invalid = len(broken)
        summary.problems = [(str(c.source), c.problem or "") for c in broken]
        return summary
    if options.dry_run:
        summary.by_type = Counter(o.checked.label for o in outgoing)
        return summary
    await _publish_all(settings, outgoing, options, summary)
    return summary


async def _publish_all(
    settings: Settings, outgoing: list[Outgoing], options: ReplayOptions, summary: Summary
) -> None:
    topology = build(settings.namespace)
    try:
        _sign_portal_messages(outgoing, tool_keyring(settings)[0])
    except (KeyringError, OSError) as exc:
        summary.error = f"cannot sign the portal messages: {exc} (APPT_PORTAL_KEYS / APPT_PORTAL_KEYS_FILE)"
        return
    broker = Broker(
        settings.amqp_url, topology, name="apptctl-fixtures", publish_timeout_s=settings.publish_timeout_s
    )
    engine: AsyncEngine | None = None
    started = time.monotonic()
    try:
        try:
            await broker.connect()
        except Exception as exc:
            summary.error = (
                f"RabbitMQ is unreachable at AMQP_URL ({exc}): start it (`bash infra/services.sh`) "
                "or set AMQP_URL"
            )
            return
        assert broker.connection is not None
        missing = await missing_exchanges(
            broker.connection, {topology.exchange(o.exchange_role) for o in outgoing}
        )
        if missing:
            summary.error = (
                f"exchange(s) {', '.join(sorted(missing))} do not exist: run `apptctl topology apply` "
                "(or check APPT_NAMESPACE)"
            )
            return
        if options.settle or options.check:
            engine = create_engine(settings.database_url, pool_size=1)
            try:
                async with engine.connect():
                    pass
            except Exception as exc:
                detail = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
                summary.error = (
                    f"PostgreSQL is unreachable at DATABASE_URL ({detail}): --settle and --check "
                    "read what the workers recorded; start it, set DATABASE_URL, or pass --no-settle"
                )
                return
        settler = Settler(engine) if engine is not None and options.settle else None
        await _publish_phases(broker, outgoing, options, summary, settler)
        if summary.error is None and options.check and engine is not None:
            await _check(engine, broker, outgoing, options.timeout_s, summary)
    finally:
        summary.elapsed_s = time.monotonic() - started
        await broker.close()
        if engine is not None:
            await engine.dispose()


def _sign_portal_messages(outgoing: list[Outgoing], keyring: Keyring) -> None:
    """Sign what goes to the portals' exchange, as the portal would (see `Fixture.signed`)."""
    for item in outgoing:
        fixture = item.checked.fixture
        if item.exchange_role != PORTAL_ROLE or (fixture is not None and not fixture.signed):
            continue
        if SIGNATURE_HEADER in (item.amqp.headers or {}):
            continue  # recorded with its signature: published as it was
        # The message's own producer when it is a portal; else (a raw body, or another producer's
        # message sent where portals publish) the app_id's or the keyring's first portal.
        named = [item.message.producer if item.message is not None else None, item.amqp.app_id]
        producer = next((p for p in named if p in keyring.current), next(iter(keyring.current)))
        sign(item.amqp, keyring.current_for(producer))


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Any]:
    """A rich progress bar on stderr, only for a person watching a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task("replay", total=total)
        yield lambda: progress.advance(task)


class _Pipeline:
    """Publishes in order with up to IN_FLIGHT unconfirmed at once (a confirm takes a disk write on a
    quorum queue, so waiting for each one in turn would make the broker's latency the replay's rate)."""

    def __init__(self, broker: Broker, summary: Summary, settler: "Settler | None", advance) -> None:
        self._broker = broker
        self._summary = summary
        self._settler = settler
        self._advance = advance
        self._slots = asyncio.Semaphore(IN_FLIGHT)
        self._tasks: set[asyncio.Task] = set()
        self.failure: tuple[Outgoing, BaseException] | None = None

    async def start(self, item: Outgoing) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._publish(item))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, item: Outgoing) -> None:
        try:
            exchange = self._broker.topology.exchange(item.exchange_role)
            await self._broker.publish(exchange, item.routing_key, item.amqp)
        except Exception as exc:
            self.failure = self.failure or (item, exc)
            return
        finally:
            self._slots.release()
        self._summary.published += 1
        self._summary.by_type[item.checked.label] += 1
        if self._settler is not None:
            self._settler.track(item)
        self._advance()

    async def drain(self) -> None:
        """Wait until everything started is confirmed (or failed)."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def _publish_phases(
    broker: Broker,
    outgoing: list[Outgoing],
    options: ReplayOptions,
    summary: Summary,
    settler: "Settler | None",
) -> None:
    loop = asyncio.get_running_loop()
    interval = 1.0 / options.rate if options.rate > 0 else 0.0
    next_at = loop.time()
    phase = None
    with _progress_bar(options.progress, len(outgoing)) as advance:
        pipeline = _Pipeline(broker, summary, settler, advance)
        try:
            for item in outgoing:
                if settler is not None and phase is not None and item.checked.phase != phase:
                    await pipeline.drain()
                    if pipeline.failure is not None:
                        break
                    unhandled = await settler.wait(options.timeout_s)
                    if unhandled:
                        summary.error = _unhandled_error(unhandled, options.timeout_s)
                        return
                    next_at = loop.time()  # the wait is not a debt to make up with a burst
                phase = item.checked.phase
                if interval:
                    delay = next_at - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    # Behind schedule (a slow confirm), catch up, but by at most a second's worth.
                    next_at = max(next_at, loop.time() - 1.0) + interval
                if pipeline.failure is not None:
                    break
                await pipeline.start(item)
        finally:
            await pipeline.drain()
        if pipeline.failure is not None:
            item, exc = pipeline.failure
            summary.error = f"{item.checked.source}: not published ({_publish_error(exc)})"


def _publish_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if "NO_ROUTE" in text or "unroutable" in text.lower():
        return f"no queue is bound for it: run `apptctl topology apply`, or check the routing key ({text})"
    if isinstance(exc, TimeoutError):
        return "the broker did not confirm in time (APPT_PUBLISH_TIMEOUT_S)"
    return f"{type(exc).__name__}: {text}"[:300]


# --- settling: has every worker the message reaches recorded it in its inbox? -----------------------


class Settler:
    """Tracks published valid messages until every worker they reach has them in its inbox, which it
    writes in the same transaction as the effect, so "in the inbox" means "handled and committed"."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.pending: dict[tuple[str, UUID], Outgoing] = {}

    def track(self, item: Outgoing) -> None:
        if item.message is None:  # malformed ones are dead-lettered, never handled
            return
        for worker in consumers_of(item.exchange_role, item.routing_key):
            self.pending[(worker, item.message.message_id)] = item

    async def _handled(self) -> set[tuple[str, UUID]]:
        ids = list({message_id for _, message_id in self.pending})
        found: set[tuple[str, UUID]] = set()
        async with self._engine.connect() as conn:
            for start in range(0, len(ids), 1000):
                rows = await conn.execute(
                    select(inbox.c.consumer, inbox.c.message_id).where(
                        inbox.c.message_id.in_(ids[start : start + 1000])
                    )
                )
                found.update((r.consumer, r.message_id) for r in rows)
        return found

    async def wait(self, timeout_s: float) -> list[tuple[str, Outgoing]]:
        """Wait until everything tracked was handled; returns what was not by the deadline."""
        deadline = time.monotonic() + timeout_s
        interval = 0.02
        while self.pending:
            for key in self._handled_keys(await self._handled()):
                self.pending.pop(key, None)
            if not self.pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, 0.5)
        return [(worker, item) for (worker, _), item in self.pending.items()]

    def _handled_keys(self, found: set[tuple[str, UUID]]) -> list[tuple[str, UUID]]:
        return [key for key in self.pending if key in found]


def _unhandled_error(unhandled: list[tuple[str, Outgoing]], timeout_s: float) -> str:
    shown = [f"{item.checked.source} ({item.checked.label}) by {worker}" for worker, item in unhandled]
    more = f" and {len(shown) - SHOWN_PROBLEMS} more" if len(shown) > SHOWN_PROBLEMS else ""
    return (
        f"{len(shown)} message(s) not handled within {timeout_s:g} s: "
        f"{'; '.join(shown[:SHOWN_PROBLEMS])}{more}. "
        "Are the workers running on this namespace and database? (`apptctl status`; a dead-lettered one: "
        "`apptctl dlq list`). Raise --timeout, or pass --no-settle to publish without waiting"
    )


# --- checking what the fixtures expected ------------------------------------------------------------


async def _check(
    engine: AsyncEngine, broker: Broker, outgoing: list[Outgoing], timeout_s: float, summary: Summary
) -> None:
    requests = [
        o
        for o in outgoing
        if isinstance(o.message, ModifyRequested) and o.checked.fixture and o.checked.fixture.expect
    ]
    dead = [o for o in outgoing if o.checked.malformed and o.message_id]
    summary.expectations = len(requests) + len(dead)
    results: dict[int, str | None] = {}  # id(outgoing) -> None (met) or why not
    last_seen: dict[int, str] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        waiting_requests = [o for o in requests if id(o) not in results]
        if waiting_requests:
            await _check_requests(engine, waiting_requests, results, last_seen)
        waiting_dead = [o for o in dead if id(o) not in results]
        if waiting_dead:
            await _check_dead_letters(broker, waiting_dead, results, last_seen)
        if len(results) == summary.expectations or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    for item in [*requests, *dead]:
        if id(item) not in results:
            results[id(item)] = f"{last_seen.get(id(item), 'nothing happened')} after {timeout_s:g} s"
        problem = results[id(item)]
        if problem is not None:
            summary.unmet.append((str(item.checked.source), problem))


async def _request_views(engine: AsyncEngine, keys: set[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """(tenant, request id) -> its portal.requests row where it has one (one query per tenant)."""
    t = portal_requests
    by_tenant: dict[str, list[str]] = {}
    for tenant_id, request_id in keys:
        by_tenant.setdefault(tenant_id, []).append(request_id)
    views = {}
    async with engine.connect() as conn:
        for tenant_id, ids in by_tenant.items():
            rows = await conn.execute(
                select(t.c.request_id, t.c.status, t.c.reason_code).where(
                    t.c.tenant_id == tenant_id, t.c.request_id.in_(ids)
                )
            )
            views.update({(tenant_id, r.request_id): r for r in rows})
    return views


async def _check_requests(engine: AsyncEngine, items: list[Outgoing], results: dict, last_seen: dict) -> None:
    messages = {id(item): item.message for item in items if isinstance(item.message, ModifyRequested)}
    views = await _request_views(engine, {(m.tenant_id, m.correlation_id) for m in messages.values()})
    for item in items:
        message = messages[id(item)]
        assert item.checked.fixture and item.checked.fixture.expect
        expect = item.checked.fixture.expect
        view = views.get((message.tenant_id, message.correlation_id))
        wanted = f"{expect.request_status}" + (f" [{expect.reason_code}]" if expect.reason_code else "")
        if view is None:
            last_seen[id(item)] = f"request {message.correlation_id} not in the read store, expected {wanted}"
            continue
        seen = f"{view.status}" + (f" [{view.reason_code}]" if view.reason_code else "")
        if view.status == expect.request_status and expect.reason_code in (None, view.reason_code):
            results[id(item)] = None
        elif view.status in TERMINAL:
            results[id(item)] = f"request {message.correlation_id} is {seen}, expected {wanted}"
        else:
            last_seen[id(item)] = f"request {message.correlation_id} still {seen}, expected {wanted}"


async def _check_dead_letters(broker: Broker, items: list[Outgoing], results: dict, last_seen: dict) -> None:
    assert broker.connection is not None
    sweep = await dlq.read(broker.connection, dlq.dead_letter_queues(broker.topology))
    reasons: dict[str, set[str]] = {}
    for letter in sweep.letters:
        if letter.message_id:
            reasons.setdefault(letter.message_id, set()).add(letter.reason)
    for item in items:
        expected = item.checked.fixture.expected_dead_letter if item.checked.fixture else None
        assert expected is not None
        found = reasons.get(item.message_id or "")
        if not found:
            last_seen[id(item)] = (
                f"no dead letter with message id {item.message_id} (expected {expected.value})"
            )
        elif found == {expected.value}:
            results[id(item)] = None
        else:
            results[id(item)] = f"dead-lettered as {', '.join(sorted(found))}, expected {expected.value}"
