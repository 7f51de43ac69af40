"""One stage of the DRAMATIQ peer: `python -m bench.peer_dramatiq --stage N [--namespace NS]`.

The bare stage's work as Dramatiq actors, with the guarantees we hold ourselves to: Dramatiq's
RabbitmqBroker with `confirm_delivery=True` (each send waits for the broker's confirm, mandatory), its
messages persistent (delivery_mode 2, always), acked by the worker after the actor returns; its queues
made quorum queues (Dramatiq declares classic ones: `_build_queue_arguments` adds the type). Each actor
runs the bare stage's insert in one PostgreSQL transaction (asyncpg, an async actor on Dramatiq's AsyncIO
middleware, a pool of the same size) and sends the next stage's actor the same arguments: the request id
and the request's bytes, so the messages are as large as everyone else's. One worker process per stage
(consuming only its stage's queue), 32 worker threads and a prefetch of 32, like the others' 32 deliveries
in hand. Dramatiq's default middleware (retries, time limits, ...) stays on.
"""

import argparse
import asyncio
import signal
import threading
import time
import uuid

import asyncpg
import dramatiq
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import Middleware
from dramatiq.middleware.asyncio import AsyncIO

from bench.common import DB_POOL, HOP_SQL, PREFETCH, PREFIX, STAGES, amqp_url, asyncpg_dsn, database_url

NAMESPACE = f"{PREFIX}dq"


def queue_name(stage: int, namespace: str = NAMESPACE) -> str:
    return f"{namespace}.stage{stage}"


def actor_name(stage: int) -> str:
    return f"stage{stage}"


# The load generator publishes the first stage's messages to this exchange (Dramatiq itself sends to the
# default exchange, by queue name): the orchestrator binds the first queue to it.
def exchange_name(namespace: str = NAMESPACE) -> str:
    return f"{namespace}.x"


class QuorumRabbitmqBroker(RabbitmqBroker):
    """Dramatiq's broker, declaring its work and delay queues as quorum queues."""

    def _build_queue_arguments(self, queue_name: str) -> dict:
        return {**super()._build_queue_arguments(queue_name), "x-queue-type": "quorum"}


def queue_arguments(stage: int, namespace: str = NAMESPACE) -> dict:
    """What QuorumRabbitmqBroker declares a stage's queue with (the orchestrator declares it first)."""
    return {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": f"{queue_name(stage, namespace)}.XQ",
        "x-queue-type": "quorum",
    }


async def declare(channel, namespace: str = NAMESPACE) -> None:
    """The three work queues as Dramatiq declares them, and the load generator's way into the first."""
    x = await channel.declare_exchange(exchange_name(namespace), "direct", durable=True)
    for stage in STAGES:
        await channel.declare_queue(
            queue_name(stage, namespace), durable=True, arguments=queue_arguments(stage, namespace)
        )
    first = await channel.declare_queue(queue_name(1, namespace), passive=True)
    await first.bind(x, routing_key=actor_name(1))


async def delete(channel, namespace: str = NAMESPACE) -> None:
    for stage in STAGES:
        for suffix in ("", ".DQ", ".XQ"):
            await channel.queue_delete(f"{queue_name(stage, namespace)}{suffix}")
    await channel.exchange_delete(exchange_name(namespace))


def first_message(request_id: str, body: str, namespace: str = NAMESPACE) -> bytes:
    """The first stage's message, as `stage1.send(request_id, body)` would encode it."""
    return dramatiq.Message(
        queue_name=queue_name(1, namespace),
        actor_name=actor_name(1),
        args=(request_id, body),
        kwargs={},
        options={},
        message_id=str(uuid.uuid4()),
        message_timestamp=int(time.time() * 1000),
    ).encode()


class ClosePool(Middleware):
    """Closes the stages' pool on Dramatiq's event loop after the worker's threads are done, before the
    AsyncIO middleware (added after this one) stops that loop."""

    def __init__(self, stages: "Stages") -> None:
        self.stages = stages

    def after_worker_shutdown(self, broker, worker) -> None:
        pool, self.stages._pool = self.stages._pool, None
        if pool is not None:
            get_event_loop_thread().run_coroutine(pool.close())


class Stages:
    """The three actors on one broker (every stage process knows them all, to send the next one)."""

    def __init__(self, namespace: str = NAMESPACE) -> None:
        self.broker = QuorumRabbitmqBroker(url=amqp_url(), confirm_delivery=True)
        self.broker.add_middleware(ClosePool(self))
        self.broker.add_middleware(AsyncIO())
        self._pool: asyncpg.Pool | None = None
        self._pool_lock: asyncio.Lock | None = None
        self.actors: dict[int, dramatiq.Actor] = {}
        for stage in STAGES:
            self.actors[stage] = dramatiq.actor(
                self._hop_for(stage),
                actor_name=actor_name(stage),
                queue_name=queue_name(stage, namespace),
                broker=self.broker,
            )

    async def pool(self) -> asyncpg.Pool:
        """The asyncpg pool, made on Dramatiq's event loop thread when the first message needs it."""
        if self._pool is None:
            self._pool_lock = self._pool_lock or asyncio.Lock()
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        asyncpg_dsn(database_url()), min_size=2, max_size=2 * DB_POOL
                    )
        return self._pool

    def _hop_for(self, stage: int):
        async def hop(request_id: str, body: str) -> None:
            pool = await self.pool()
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(HOP_SQL, request_id, stage)
            if stage < STAGES[-1]:
                # A blocking, confirmed publish (pika): off the event loop, as Dramatiq's own sends are.
                await asyncio.to_thread(self.actors[stage + 1].send, request_id, body)

        hop.__name__ = actor_name(stage)
        return hop

    def worker(self, stage: int, namespace: str = NAMESPACE) -> dramatiq.Worker:
        worker = dramatiq.Worker(self.broker, queues={queue_name(stage, namespace)}, worker_threads=PREFETCH)
        worker.queue_prefetch = PREFETCH
        return worker

    def close(self) -> None:
        self.broker.close()


def serve(stage: int, namespace: str = NAMESPACE, stop: threading.Event | None = None) -> None:
    """Run the stage's worker until `stop` (SIGTERM/SIGINT when run as a process)."""
    stop = stop or threading.Event()
    stages = Stages(namespace)
    worker = stages.worker(stage, namespace)
    worker.start()
    try:
        stop.wait()
    finally:
        worker.stop(timeout=10_000)  # finishes the messages in hand; the rest go back to the queue
        stages.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, choices=STAGES, required=True)
    parser.add_argument("--namespace", default=NAMESPACE)
    args = parser.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve(args.stage, args.namespace, stop)


if __name__ == "__main__":
    main()
