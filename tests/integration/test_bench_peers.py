"""The bench's peers (bench/peer_dramatiq.py, bench/peer_faststream.py) move messages end to end: three
stage processes each, the real broker and database, 20 requests in, 20 rows at the last stage out."""

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aio_pika
import asyncpg
import pytest

from bench import peer_dramatiq, peer_faststream
from bench.common import HOPS_DDL, STAGES
from tests.waiting import eventually
from workers.runtime.database import asyncpg_dsn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[2]
N = 20


def start_stages(module: str, namespace: str, env: dict[str, str], log_dir: Path) -> list[subprocess.Popen]:
    processes = []
    for stage in STAGES:
        log = (log_dir / f"{namespace}-{stage}.log").open("w")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", module, "--stage", str(stage), "--namespace", namespace],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return processes


async def consumers_on(channel, queues: list[str]) -> bool:
    counts = [
        (await channel.declare_queue(q, passive=True)).declaration_result.consumer_count for q in queues
    ]
    return all(counts)


@pytest.mark.parametrize("peer", [peer_dramatiq, peer_faststream], ids=["dramatiq", "faststream"])
async def test_a_peer_pipeline_moves_every_message_through_three_stages(
    peer, service_urls, database_url, tmp_path
):
    namespace = f"tpeer{uuid.uuid4().hex[:8]}"
    db = await asyncpg.connect(asyncpg_dsn(database_url))
    connection = await aio_pika.connect(service_urls.amqp)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    for statement in HOPS_DDL:
        await db.execute(statement)
    await peer.declare(channel, namespace)
    env = {
        **os.environ,
        "AMQP_URL": service_urls.amqp,
        "BENCH_DATABASE_URL": database_url,
        "PYTHONPATH": str(ROOT),
    }
    processes = start_stages(peer.__name__, namespace, env, tmp_path)
    try:
        queues = [peer.queue_name(s, namespace) for s in STAGES]
        await eventually(lambda: consumers_on(channel, queues), "a consumer on every stage", timeout_s=60)
        exchange = await channel.get_exchange(peer.exchange_name(namespace))
        ids = [f"{namespace}-{i}" for i in range(N)]
        first_key = peer_dramatiq.actor_name(1) if peer is peer_dramatiq else peer_faststream.routing_key(1)
        for request_id in ids:
            body = b'{"request": "%s"}' % request_id.encode()
            if peer is peer_dramatiq:
                body = peer_dramatiq.first_message(request_id, body.decode(), namespace)
            await exchange.publish(
                aio_pika.Message(
                    body, correlation_id=request_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                ),
                first_key,
                mandatory=True,
            )

        async def all_done() -> bool:
            rows = await db.fetch("SELECT id, stage FROM bench.hops WHERE id LIKE $1", f"{namespace}-%")
            return len(rows) == N * len(STAGES)

        await eventually(all_done, f"{N} requests through {len(STAGES)} stages", timeout_s=60)
        rows = await db.fetch("SELECT id FROM bench.hops WHERE id LIKE $1 AND stage = 3", f"{namespace}-%")
        assert sorted(r["id"] for r in rows) == sorted(ids)
        for q in queues:  # every delivery acked after its work: nothing left behind or in flight
            queue = await channel.declare_queue(q, passive=True)
            assert queue.declaration_result.message_count == 0
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(p.wait, 30) for p in processes]
        await peer.delete(channel, namespace)
        await connection.close()
        await db.execute("DELETE FROM bench.hops WHERE id LIKE $1", f"{namespace}-%")
        await db.close()
    logs = {p.name: p.read_text()[-2000:] for p in sorted(tmp_path.glob("*.log"))}
    assert codes == [0, 0, 0], logs
