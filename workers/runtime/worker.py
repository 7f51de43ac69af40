"""A worker process: builds its engine, broker, consumer, outbox relay, health checks and metrics endpoint,
runs until SIGTERM, drains."""

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from contracts.envelope import Envelope
from contracts.routes import SUBSCRIPTIONS, RouteTable
from contracts.signing import KeyringError
from infra.topology import DEAD_LETTER_ROLE, RETRY_ROLE, Topology
from infra.topology import build as build_topology
from workers.runtime.broker import Broker
from workers.runtime.consumer import DelayedRetry, Handler, QueueConsumer
from workers.runtime.database import create_engine
from workers.runtime.health import HealthMonitor
from workers.runtime.metrics import WorkerMetrics
from workers.runtime.outbox import DirectPublisher, OutboxRelay, new_writer, writer_settings
from workers.runtime.settings import Settings
from workers.runtime.signatures import PORTAL_ROLE, SignaturePolicy

if TYPE_CHECKING:
    from workers.runtime.ops_server import OpsServer

log = structlog.get_logger(__name__)
WRITER_LOCK_WAIT_S = 10.0


class SignaturesNotConfigured(KeyringError):
    pass


@dataclass(frozen=True)
class WorkerSpec:
    """What makes one worker: its name (= its queue's worker key), handlers, and whether it emits events."""

    name: str
    handlers: Mapping[type[Envelope], Handler]
    emits_events: bool = True
    # Deliveries take turns by tenant (APPT_FAIR_WINDOW in hand): for the stages a tenant's flood reaches.
    tenant_lanes: bool = False


class Worker:
    def __init__(self, spec: WorkerSpec, settings: Settings, topology: Topology | None = None) -> None:
        """`topology`: where the worker's queue (`queue_of(spec.name)`) and exchanges are; by default the
        production topology of `settings.namespace` (the bench passes its own for its trivial stages)."""
        self.spec = spec
        self.settings = settings
        self.topology = topology or build_topology(settings.namespace, settings.retry_delays_s)
        # The id every outbox row this process writes carries (migration 0013): while the relay holds
        # its lock, other relays leave those rows to our direct publisher; once we are gone, they don't.
        self.writer = new_writer() if spec.emits_events else None
        # What pg_stat_activity shows for this worker's connections (README: at most APPT_DB_POOL_SIZE,
        # plus the relay's session: LISTEN and the writer lock).
        self.application_name = f"{settings.namespace}.{spec.name}"[:63]
        self.engine = create_engine(
            settings.database_url,
            settings.db_pool_size,
            server_settings=writer_settings(self.writer) if self.writer is not None else None,
            application_name=self.application_name,
        )
        self.broker = Broker(
            settings.amqp_url,
            self.topology,
            # What the management UI lists: which deployment's which worker, in which process.
            name=f"{settings.namespace}.{spec.name}@{socket.gethostname()}:{os.getpid()}",
            publish_timeout_s=settings.publish_timeout_s,
        )
        self.metrics = WorkerMetrics(spec.name)
        self.publisher = (
            DirectPublisher(self.engine, self.broker, producer=spec.name)
            if spec.emits_events and settings.outbox_direct
            else None
        )
        queue = self.topology.queue_of(spec.name)
        delay_queues = self.topology.delay_queues_of(spec.name)
        self.consumer = QueueConsumer(
            name=spec.name,
            queue_name=queue.name,
            dead_letter_routing_key=queue.dead_letter_queue or "",
            handlers=spec.handlers,
            engine=self.engine,
            broker=self.broker,
            prefetch=settings.prefetch,
            transient_retry_delay_s=settings.transient_retry_delay_s,
            delayed_retry=DelayedRetry(
                exchange=self.topology.own_exchange(RETRY_ROLE, spec.name),
                queues=tuple(q.name for q in delay_queues),
                delays_s=tuple(q.delay_s or 0.0 for q in delay_queues),
                limit=settings.retry_limit,
            ),
            retry_in_place=settings.retry_in_place,
            metrics=self.metrics,
            signatures=self._signature_policy(spec, settings),
            dead_letter_exchange=self.topology.own_exchange(DEAD_LETTER_ROLE, spec.name),
            publisher=self.publisher,
            fair_window=settings.fair_window if spec.tenant_lanes else 0,
            # A worker of the production pipeline accepts only its own routes; the bench's stages any.
            routes=RouteTable.of(spec.name, self.topology.exchange_names())
            if spec.name in SUBSCRIPTIONS
            else None,
            return_exchange=self.topology.return_exchange,
            batch_max=settings.batch_max,
        )
        self.relay = (
            OutboxRelay(
                self.engine,
                self.broker,
                producer=spec.name,
                database_url=settings.database_url,
                batch_size=settings.outbox_batch_size,
                poll_interval_s=settings.outbox_poll_interval_s,
                retention_s=settings.outbox_retention_s,
                grace_s=settings.outbox_grace_s if self.publisher is not None else 0.0,
                writer=self.writer,
                application_name=self.application_name,
            )
            if spec.emits_events
            else None
        )
        if self.relay is not None:
            relay, publisher = self.relay, self.publisher
            self.metrics.track_published(
                lambda: relay.published_total + (publisher.published_total if publisher else 0)
            )
        self.health = HealthMonitor(
            spec.name,
            broker=self.broker,
            engine=self.engine,
            metrics=self.metrics,
            producer=spec.name if spec.emits_events else None,
            interval_s=settings.health_interval_s,
            queues=((queue.name, "work"),)
            + (((queue.dead_letter_queue, "dead_letter"),) if queue.dead_letter_queue else ()),
        )
        self.ops_server: OpsServer | None = None
        if settings.metrics_port is not None:
            # Imported only when served: its HTTP server (aiohttp) is ~9 MB resident (docs/benchmarks.md).
            from workers.runtime import ops_server

            self.ops_server = ops_server.OpsServer(
                metrics=self.metrics,
                health=self.health,
                consuming=lambda: self.consumer.consuming,
                host=settings.metrics_host,
                port=settings.metrics_port,
            )
        self._relay_task: asyncio.Task | None = None
        self._publisher_task: asyncio.Task | None = None
        self._stop = asyncio.Event()

    def _signature_policy(self, spec: WorkerSpec, settings: Settings) -> SignaturePolicy | None:
        """Portal messages are verified by every worker that handles one; a worker that must verify and
        has no keyring does not start (SignaturesNotConfigured says which variable to set)."""
        if not any(c.exchange_role == PORTAL_ROLE for c in spec.handlers):
            return None
        if not settings.require_signatures:
            log.warning(
                "worker.signatures_not_required", hint="portal messages unchecked: never in production"
            )
            return None
        keyring = settings.production_keyring()
        if keyring is None:
            raise SignaturesNotConfigured(
                f"{spec.name} handles portal messages, which must be signed: set APPT_PORTAL_KEYS or "
                "APPT_PORTAL_KEYS_FILE to the portals' keyring (docs/security.md), or, for development "
                "only, APPT_REQUIRE_SIGNATURES=false"
            )
        return SignaturePolicy.for_handlers(
            spec.handlers,
            keyring,
            self.topology.exchange(PORTAL_ROLE),
            settings.signature_limits,
            reply_prefix=self.topology.portal_queue_prefix,
        )

    @property
    def ops_port(self) -> int | None:
        """The port /metrics, /healthz and /readyz are served on (None when turned off)."""
        return None if self.ops_server is None else self.ops_server.port

    async def start(self) -> None:
        # Everything started here (the connection's reader, each delivery, the relay, the health checks)
        # runs in tasks that copy this context: their log lines all say which worker wrote them.
        with structlog.contextvars.bound_contextvars(worker=self.spec.name):
            # Health first: while the broker is still awaited, /healthz already says so.
            await self.health.start()
            try:
                if self.ops_server is not None:
                    await self.ops_server.start()
                await self.broker.connect(retry_for_s=self.settings.startup_retry_s)
                if self.relay is not None:
                    self._relay_task = asyncio.create_task(self.relay.run(), name=f"{self.spec.name}-relay")
                    # Consume once our writer lock is held, so no other relay mistakes the rows we are
                    # about to write for a dead process's (without it, a duplicate publish at worst).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.relay.writer_held.wait(), timeout=WRITER_LOCK_WAIT_S)
                if self.publisher is not None:
                    self._publisher_task = asyncio.create_task(
                        self.publisher.run(), name=f"{self.spec.name}-outbox-direct"
                    )
                await self.consumer.start()
            except BaseException:
                await self._abandon_start()
                raise
            log.info("worker.started", namespace=self.settings.namespace)

    async def _abandon_start(self) -> None:
        """A start that failed half-way leaves nothing running behind it."""
        await self._stop_publisher()
        if self.relay is not None and self._relay_task is not None:
            self.relay.stop()
            self._relay_task.cancel()
            with contextlib.suppress(BaseException):
                await self._relay_task
        with contextlib.suppress(Exception):
            await self.broker.close()
        if self.ops_server is not None:
            await self.ops_server.stop()
        await self.health.stop()
        await self.engine.dispose()

    async def _stop_publisher(self) -> None:
        """Publish what the drained deliveries queued and mark it (what is left, the relay publishes)."""
        if self.publisher is None or self._publisher_task is None:
            return
        self.publisher.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._publisher_task, timeout=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.publisher.flush(), timeout=5)

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        """Graceful drain: no new deliveries, finish those in hand, flush the outbox, close."""
        await self.consumer.drain(self.settings.drain_timeout_s)
        await self._stop_publisher()
        if self.relay is not None and self._relay_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.relay.publish_pending(), timeout=5)
            self.relay.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._relay_task, timeout=5)
        await self.broker.close()
        if self.ops_server is not None:
            await self.ops_server.stop()
        await self.health.stop()
        await self.engine.dispose()
        log.info("worker.stopped", counts=self.consumer.counts)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        try:
            await self._stop.wait()
        finally:
            log.info("worker.draining")
            await self.stop()
