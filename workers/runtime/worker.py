"""A worker process: builds its engine, broker, consumer and outbox relay, runs until SIGTERM, drains."""

import asyncio
import contextlib
import signal
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from contracts.envelope import Envelope
from infra.topology import build as build_topology
from workers.runtime.broker import Broker
from workers.runtime.consumer import Handler, QueueConsumer
from workers.runtime.database import create_engine
from workers.runtime.outbox import OutboxRelay
from workers.runtime.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """What makes one worker: its name (= its queue's worker key), handlers, and whether it emits events."""

    name: str
    handlers: Mapping[type[Envelope], Handler]
    emits_events: bool = True


class Worker:
    def __init__(self, spec: WorkerSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        self.topology = build_topology(settings.namespace)
        self.engine = create_engine(settings.database_url, settings.db_pool_size)
        self.broker = Broker(
            settings.amqp_url,
            self.topology,
            name=f"{spec.name}",
            publish_timeout_s=settings.publish_timeout_s,
        )
        queue = self.topology.queue_of(spec.name)
        self.consumer = QueueConsumer(
            name=spec.name,
            queue_name=queue.name,
            dead_letter_routing_key=queue.dead_letter_queue or "",
            handlers=spec.handlers,
            engine=self.engine,
            broker=self.broker,
            prefetch=settings.prefetch,
            transient_retry_delay_s=settings.transient_retry_delay_s,
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
            )
            if spec.emits_events
            else None
        )
        self._relay_task: asyncio.Task | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        await self.broker.connect(retry_for_s=self.settings.startup_retry_s)
        if self.relay is not None:
            self._relay_task = asyncio.create_task(self.relay.run(), name=f"{self.spec.name}-relay")
        await self.consumer.start()
        log.info("worker.started", namespace=self.settings.namespace)

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        """Graceful drain: no new deliveries, finish those in hand, flush the outbox, close."""
        await self.consumer.drain(self.settings.drain_timeout_s)
        if self.relay is not None and self._relay_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.relay.publish_pending(), timeout=5)
            self.relay.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._relay_task, timeout=5)
        await self.broker.close()
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
