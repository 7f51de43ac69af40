"""One stage of the BARE baseline: `python -m bench.bare --stage N`.

The least a correct at-least-once relay does: consume from a quorum queue (prefetch 32), run one
PostgreSQL transaction (insert one row: a real write, so the commit waits for the WAL flush like ours),
publish the unchanged bytes persistent + mandatory with a publisher confirm to the next stage, then ack.
No decoding, no validation, no inbox, no outbox, no logging per message, asyncpg without SQLAlchemy.
"""

import argparse
import asyncio
import signal

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage

from bench.common import (
    BARE_EXCHANGE,
    DB_POOL,
    HOP_SQL,
    PREFETCH,
    amqp_url,
    asyncpg_dsn,
    bare_queue,
    database_url,
)


async def run(stage: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Same connection budget as a runtime worker: pool + overflow.
    pool = await asyncpg.create_pool(asyncpg_dsn(database_url()), min_size=2, max_size=2 * DB_POOL)
    connection = await aio_pika.connect(amqp_url(), client_properties={"connection_name": f"bare{stage}"})
    publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await publish_channel.get_exchange(BARE_EXCHANGE, ensure=False)
    consume_channel = await connection.channel()
    await consume_channel.set_qos(prefetch_count=PREFETCH)
    queue = await consume_channel.declare_queue(bare_queue(stage), passive=True)
    next_key = f"s{stage + 1}" if stage < 3 else None
    in_flight: set[asyncio.Task] = set()

    async def on_message(incoming: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            in_flight.add(task)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(HOP_SQL, incoming.correlation_id, stage)
            if next_key is not None:
                await exchange.publish(
                    aio_pika.Message(
                        incoming.body,
                        content_type=incoming.content_type,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=incoming.message_id,
                        correlation_id=incoming.correlation_id,
                        type=incoming.type,
                    ),
                    next_key,
                    mandatory=True,
                    timeout=10,
                )
            await incoming.ack()
        except Exception:
            await incoming.nack(requeue=True)
        finally:
            if task is not None:
                in_flight.discard(task)

    tag = await queue.consume(on_message)
    await stop.wait()
    await queue.cancel(tag)
    if in_flight:
        await asyncio.wait(list(in_flight), timeout=10)
    await connection.close()
    await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    asyncio.run(run(parser.parse_args().stage))


if __name__ == "__main__":
    main()
