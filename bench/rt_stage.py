"""One trivial stage on OUR runtime: `python -m bench.rt_stage --stage N`.

What runs is the production runtime, unmodified: QueueConsumer (decode + strict validation, inbox claim,
handler, commit, ack, dead-letter policy, structlog per message) and, for stages 1 and 2, the
OutboxRelay (LISTEN/NOTIFY wake-up, FOR UPDATE SKIP LOCKED batch, confirmed publish, mark published).
Only the handler is trivial: the same one-row insert the bare relay does, then `uow.emit` of the
next-stage message into the outbox of that same transaction.

Routing without touching contracts/: the message is a ModifyRequested on the wire (so decode() knows
it), emitted as a bench-local subclass whose class-level exchange_role/routing_key point at the next
stage queue. The outbox stores role + routing key per row, and the relay resolves the role through the
Broker's Topology, which the bench builds itself for its own namespace.

`Worker` itself is not used because it derives topology and queue from the settings' namespace and the
three production worker names (`build_topology(namespace).queue_of(spec.name)`); StageWorker below
wires the same parts the same way from a WorkerSpec plus the bench topology.
"""

import argparse
import asyncio
import contextlib
import os
import signal
from datetime import UTC, datetime
from typing import ClassVar

import structlog
from aio_pika.abc import ExchangeType
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.common import (
    RUNTIME_NAMESPACE,
    RUNTIME_ROLE,
    database_url,
    runtime_queue,
)
from contracts.portal_v1 import ModifyRequested
from infra.topology import DEAD_LETTER_ROLE, Binding, ExchangeSpec, QueueSpec, Topology
from infra.topology import build as build_production_topology
from workers.runtime.broker import Broker
from workers.runtime.consumer import QueueConsumer
from workers.runtime.database import UnitOfWork, create_engine
from workers.runtime.logging import configure_logging
from workers.runtime.outbox import OutboxRelay
from workers.runtime.settings import Settings
from workers.runtime.worker import WorkerSpec

log = structlog.get_logger(__name__)


def topology() -> Topology:
    """Exchange `benchrt.stages` (topic) + dead letters; queues benchrt.stage1..3 with exactly the
    arguments of a production work queue (quorum, delivery limit, dead-lettering, reject-publish)."""
    template = build_production_topology(RUNTIME_NAMESPACE).queue_of("policy_gate").arguments
    dlx = f"{RUNTIME_NAMESPACE}.{DEAD_LETTER_ROLE}"
    queues: list[QueueSpec] = []
    for stage in (1, 2, 3):
        name = runtime_queue(stage)
        dead = f"{name}.dead"
        arguments = {**template, "x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": dead}
        queues.append(QueueSpec(name, arguments, (Binding(RUNTIME_ROLE, f"stage{stage}"),), None, dead))
        queues.append(QueueSpec(dead, {"x-queue-type": "quorum"}, (Binding(DEAD_LETTER_ROLE, dead),)))
    return Topology(
        RUNTIME_NAMESPACE,
        (
            ExchangeSpec(RUNTIME_ROLE, f"{RUNTIME_NAMESPACE}.stages", ExchangeType.TOPIC),
            ExchangeSpec(DEAD_LETTER_ROLE, dlx, ExchangeType.DIRECT),
        ),
        tuple(queues),
    )


class ToStage2(ModifyRequested):
    exchange_role: ClassVar[str] = RUNTIME_ROLE
    routing_key: ClassVar[str] = "stage2"


class ToStage3(ModifyRequested):
    exchange_role: ClassVar[str] = RUNTIME_ROLE
    routing_key: ClassVar[str] = "stage3"


NEXT = {1: ToStage2, 2: ToStage3, 3: None}
_HOP = text("INSERT INTO bench.hops (id, stage) VALUES (:id, :stage) ON CONFLICT DO NOTHING")


def stage_spec(stage: int) -> WorkerSpec:
    name = f"rt_stage{stage}"
    following = NEXT[stage]

    async def handle(message: ModifyRequested, uow: UnitOfWork) -> None:
        await uow.connection.execute(_HOP, {"id": message.correlation_id, "stage": stage})
        if following is not None:
            await uow.emit(
                following.follow(
                    message, producer=name, occurred_at=datetime.now(UTC), payload=message.payload
                )
            )

    return WorkerSpec(name, {ModifyRequested: handle}, emits_events=following is not None)


class StageWorker:
    """`workers.runtime.worker.Worker`, wired from a WorkerSpec and the bench topology."""

    def __init__(self, stage: int, settings: Settings, db_url: str) -> None:
        self.spec = stage_spec(stage)
        self.settings = settings
        self.topology = topology()
        if os.environ.get("BENCH_RT_PRE_PING") == "0":  # experiment: the runtime's engine minus pre-ping
            self.engine = create_async_engine(
                db_url, pool_size=settings.db_pool_size, max_overflow=settings.db_pool_size, pool_recycle=1800
            )
        else:
            self.engine = create_engine(db_url, settings.db_pool_size)
        self.broker = Broker(
            settings.amqp_url,
            self.topology,
            name=self.spec.name,
            publish_timeout_s=settings.publish_timeout_s,
        )
        queue = next(q for q in self.topology.queues if q.name == runtime_queue(stage))
        self.consumer = QueueConsumer(
            name=self.spec.name,
            queue_name=queue.name,
            dead_letter_routing_key=queue.dead_letter_queue or "",
            handlers=self.spec.handlers,
            engine=self.engine,
            broker=self.broker,
            prefetch=settings.prefetch,
            transient_retry_delay_s=settings.transient_retry_delay_s,
        )
        self.relay = (
            OutboxRelay(
                self.engine,
                self.broker,
                producer=self.spec.name,
                database_url=db_url,
                batch_size=settings.outbox_batch_size,
                poll_interval_s=settings.outbox_poll_interval_s,
                retention_s=settings.outbox_retention_s,
            )
            if self.spec.emits_events
            else None
        )

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.broker.connect(retry_for_s=10)
        relay_task = asyncio.create_task(self.relay.run()) if self.relay is not None else None
        await self.consumer.start()
        await stop.wait()
        await self.consumer.drain(self.settings.drain_timeout_s)
        if self.relay is not None and relay_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.relay.publish_pending(), timeout=5)
            self.relay.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(relay_task, timeout=5)
        await self.broker.close()
        await self.engine.dispose()
        log.info("worker.stopped", counts=self.consumer.counts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    args = parser.parse_args()
    settings = Settings()
    configure_logging(settings.log_level, worker=f"rt_stage{args.stage}")
    asyncio.run(StageWorker(args.stage, settings, database_url()).run())


if __name__ == "__main__":
    main()
