"""One stage of the FASTSTREAM peer: `python -m bench.peer_faststream --stage N [--namespace NS]`.

The bare stage's work on FastStream's RabbitBroker, with the guarantees we hold ourselves to: a quorum
queue (prefetch 32, per consumer), one PostgreSQL transaction per message (the bare stage's insert, on an
asyncpg pool of the same size), the body published on to the next stage persistent and mandatory on a
confirm channel (`publisher_confirms`, FastStream's default; `persist=True`, not its default), acked after
all that (`AckPolicy.NACK_ON_ERROR`: ack after the handler returns, requeue when it raises). FastStream's
own decoding, logging and middleware stay on, as an application built on it would run them.
"""

import argparse
import asyncio
import logging
import signal

import asyncpg
from faststream import AckPolicy
from faststream.rabbit import Channel, ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage
from faststream.rabbit.schemas import QueueType

from bench.common import DB_POOL, HOP_SQL, PREFETCH, PREFIX, STAGES, amqp_url, asyncpg_dsn, database_url

NAMESPACE = f"{PREFIX}fs"


def exchange_name(namespace: str = NAMESPACE) -> str:
    return f"{namespace}.x"


def queue_name(stage: int, namespace: str = NAMESPACE) -> str:
    return f"{namespace}.s{stage}"


def routing_key(stage: int) -> str:
    return f"s{stage}"


def exchange(namespace: str) -> RabbitExchange:
    return RabbitExchange(exchange_name(namespace), type=ExchangeType.DIRECT, durable=True)


def queue(stage: int, namespace: str) -> RabbitQueue:
    return RabbitQueue(
        queue_name(stage, namespace),
        queue_type=QueueType.QUORUM,
        durable=True,
        routing_key=routing_key(stage),
    )


async def declare(channel, namespace: str = NAMESPACE) -> None:
    """The exchange and the three quorum queues, as FastStream declares them (the orchestrator waits for
    consumers on them before the stages have started)."""
    x = await channel.declare_exchange(exchange_name(namespace), "direct", durable=True)
    for stage in STAGES:
        q = await channel.declare_queue(
            queue_name(stage, namespace), durable=True, arguments={"x-queue-type": "quorum"}
        )
        await q.bind(x, routing_key=routing_key(stage))


async def delete(channel, namespace: str = NAMESPACE) -> None:
    for stage in STAGES:
        await channel.queue_delete(queue_name(stage, namespace))
    await channel.exchange_delete(exchange_name(namespace))


def build(stage: int, namespace: str, pool: asyncpg.Pool) -> RabbitBroker:
    broker = RabbitBroker(amqp_url())  # its defaults: a log line per message received and processed
    next_stage = stage + 1 if stage < STAGES[-1] else None

    @broker.subscriber(
        queue(stage, namespace),
        exchange(namespace),
        channel=Channel(prefetch_count=PREFETCH),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def hop(body: dict, message: RabbitMessage) -> None:
        # FastStream decodes the JSON body (as an application's handler takes it); the bytes go on as
        # they came, like the bare stage's.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(HOP_SQL, message.correlation_id, stage)
        if next_stage is not None:
            await broker.publish(
                message.body,
                exchange=exchange(namespace),
                routing_key=routing_key(next_stage),
                persist=True,
                mandatory=True,
                timeout=10,
                correlation_id=message.correlation_id,
                message_id=message.message_id,
                message_type=message.raw_message.type,
                content_type=message.content_type,
            )

    return broker


async def run(stage: int, namespace: str = NAMESPACE, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pool = await asyncpg.create_pool(asyncpg_dsn(database_url()), min_size=2, max_size=2 * DB_POOL)
    broker = build(stage, namespace, pool)
    try:
        await broker.start()
        await stop.wait()
    finally:
        await broker.stop()  # cancels the consumer, lets the handlers in hand finish
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, choices=STAGES, required=True)
    parser.add_argument("--namespace", default=NAMESPACE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args.stage, args.namespace))


if __name__ == "__main__":
    main()
