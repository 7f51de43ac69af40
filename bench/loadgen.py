"""The load generator, a process of its own: `python -m bench.loadgen --plan P --out O ...`.

Reads pre-encoded messages (JSON lines: id, mid, type, body) and publishes them to one exchange
and routing key the way a portal must (persistent, mandatory, publisher confirms; message_id,
correlation_id and type set), then writes each message's publish time (wall clock, taken just before the
publish call) to the output file.

- `--rate R`: open loop at R messages/s for `--duration` seconds (or until the plan runs out); message
  i is due at t0 + i/R whatever the system does, so a slow pipeline shows as latency, not as a slower
  offered rate. Confirms are awaited concurrently (at most `--max-outstanding`).
- no rate (max): as fast as the pipeline takes them for `--duration` seconds, keeping the first queue's
  backlog (`--watch-queue`, read by a passive declare every 20 ms) under `--backlog` messages, so the
  run is bounded in time and queue length while every stage stays busy.
"""

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import aio_pika

from apptctl.portal_keys import tool_keyring
from bench.common import amqp_url
from contracts.decoding import CONTENT_TYPE
from contracts.signing import signature_headers
from workers.runtime.settings import Settings


async def run(args: argparse.Namespace, plan: list[dict]) -> dict:
    connection = await aio_pika.connect(amqp_url(), client_properties={"connection_name": "bench-loadgen"})
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.get_exchange(args.exchange, ensure=False)
    watch_channel = await connection.channel()
    limit = asyncio.Semaphore(args.max_outstanding)
    sent: list[tuple[str, float]] = []
    failed = 0
    tasks: set[asyncio.Task] = set()

    key = tool_keyring(Settings())[0].current_for(args.sign_as) if args.sign_as else None

    async def publish(item: dict) -> None:
        nonlocal failed
        async with limit:
            started = time.time()
            body = item["body"].encode()
            # A portal signs each message as it sends it; the HMAC is the load generator's cost.
            headers = signature_headers(body, key, signed_at=int(started)) if key is not None else None
            try:
                await exchange.publish(
                    aio_pika.Message(
                        body,
                        headers=headers,
                        content_type=CONTENT_TYPE,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=item["mid"],
                        correlation_id=item["id"],
                        type=item["type"],
                        app_id="bench-loadgen",
                    ),
                    args.routing_key,
                    mandatory=True,
                    timeout=30,
                )
                sent.append((item["id"], started))
            except Exception:
                failed += 1

    def launch(item: dict) -> None:
        task = asyncio.create_task(publish(item))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    end = t0 + args.duration
    i = 0
    if args.rate:
        total = min(len(plan), int(args.rate * args.duration))
        while i < total:
            now = loop.time()
            due = min(total, int((now - t0) * args.rate) + 1)
            while i < due:
                launch(plan[i])
                i += 1
            await asyncio.sleep(max(0.0, t0 + i / args.rate - loop.time()))
    else:
        queue = await watch_channel.declare_queue(args.watch_queue, passive=True)
        while i < len(plan) and loop.time() < end:
            depth = (await queue.declare()).message_count or 0
            room = args.backlog - depth - len(tasks)
            for _ in range(max(0, min(room, len(plan) - i))):
                launch(plan[i])
                i += 1
            await asyncio.sleep(0.02)
    if tasks:
        await asyncio.wait(list(tasks), timeout=60)
    await connection.close()
    cpu = os.times()
    return {"sent": sent, "failed": failed, "cpu_s": cpu.user + cpu.system}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--sign-as", default=None, help="sign each message with this producer's portal key")
    parser.add_argument("--routing-key", required=True)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--watch-queue")
    parser.add_argument("--backlog", type=int, default=500)
    parser.add_argument("--max-outstanding", type=int, default=1000)
    args = parser.parse_args()
    if not args.rate and not args.watch_queue:
        parser.error("max mode (no --rate) needs --watch-queue")
    plan = [json.loads(line) for line in Path(args.plan).read_text().splitlines() if line]
    result = asyncio.run(run(args, plan))
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
