"""The pipeline on a three-node RabbitMQ cluster: two replicas of each worker under a sustained burst,
while the node leading the work queues is killed with kill -9 and brought back, then another node is
stopped gracefully and restarted. Ends with the reconciler (0 lost, 0 duplicated, read store ==
schedule) and reports the throughput dip and longest completion gap around each node loss."""

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aio_pika
import pytest
from sqlalchemy import func, select

from infra.db.tables import portal_requests
from tests.cluster.conftest import Cluster
from tests.cluster.timeline import around, throughput
from tests.faults.harness import REPORT_DIR, SETTLE_S, FaultRun, scaled, timeout_s
from tests.faults.load import build_plan, publish_confirmed, wait_for_setup
from tests.faults.supervisor import Supervisor
from tests.waiting import eventually
from workers.registry import WORKER_NAMES
from workers.runtime.broker import Broker

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.timeout(timeout_s(1500))]

REPLICAS = 2
TERMINAL = ("rejected", "completed", "failed")


class Replicas(Supervisor):
    """The fault suite's supervisor with `REPLICAS` processes per worker (`policy_gate.1`, ...), each
    given the cluster's nodes starting at a different one, so their connections spread over the nodes."""

    def __init__(self, env: dict[str, str], log_dir: Path, cluster: Cluster) -> None:
        super().__init__(env, log_dir)
        self.names = [f"{worker}.{i}" for worker in WORKER_NAMES for i in range(1, REPLICAS + 1)]
        self._urls = {name: cluster.amqp_url(first=i) for i, name in enumerate(self.names)}

    def start_one(self, name: str) -> None:
        assert self._log_dir is not None
        self._log_dir.mkdir(parents=True, exist_ok=True)
        with (self._log_dir / f"{name}.log").open("ab") as output:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", f"workers.{name.split('.')[0]}"],
                env={**self._env, "AMQP_URL": self._urls[name]},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.starts[name] += 1
        self._started_at[name] = time.monotonic()

    def start(self) -> None:
        for name in self.names:
            self.start_one(name)


class ClusterRun(FaultRun):
    """A fault run whose set-up (a booking per appointment the load touches) may take minutes."""

    async def start(self) -> None:
        await self.broker.connect(retry_for_s=30)
        self.workers.start()
        await self.workers.wait_consuming(self.settings.amqp_url, self.topology, timeout_s=120)
        self.workers.supervise()
        await asyncio.gather(*(publish_confirmed(self.broker, m) for m in self.plan.setup))
        await wait_for_setup(self.engine, self.plan, timeout_s=600)
        self._tasks = [asyncio.create_task(self.monitor.run()), asyncio.create_task(self.office.run())]
        self._started = time.monotonic()


async def wait_for_consumers(run: FaultRun, count: int, timeout_s: float = 120.0) -> None:
    """Until every work queue has `count` consumers (every replica consumes)."""
    assert run.broker.connection is not None
    channel = await run.broker.connection.channel()

    async def every_queue_has_them() -> bool:
        counts = []
        for name in WORKER_NAMES:
            queue = await channel.declare_queue(run.topology.queue_of(name).name, passive=True)
            counts.append(queue.declaration_result.consumer_count)
        return min(counts) >= count

    try:
        await eventually(every_queue_has_them, f"{count} consumers on every work queue", timeout_s, 0.5)
    finally:
        await channel.close()


def work_queue_leaders(cluster: Cluster, run: FaultRun) -> dict[str, int]:
    names = {run.topology.queue_of(worker).name for worker in WORKER_NAMES}
    return {q: node for q, node in cluster.leaders(run.topology.namespace + ".").items() if q in names}


async def test_a_connection_moves_to_a_live_node_when_its_node_dies(cluster: Cluster, topology, settings):
    """AMQP_URL as a node list: an unreachable first node is skipped, and when the node a connection is
    on dies, the connection comes back on another node and publishes again."""
    broker = Broker("amqp://guest:guest@127.0.0.1:1/," + settings.amqp_url, topology, name="cluster-failover")
    await broker.connect()
    try:
        assert broker.connection is not None
        assert broker.connection.url.port == int(cluster.urls[0].rsplit(":", 1)[1].strip("/"))
        route = ("internal", "modify.approved")  # bound to modify_handler's work queue
        message = aio_pika.Message(b"{}", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await broker.publish(topology.exchange(route[0]), route[1], message)

        await asyncio.to_thread(cluster.kill, 1)
        deadline = time.monotonic() + 60
        while True:
            try:
                await broker.publish(topology.exchange(route[0]), route[1], message)
                break
            except Exception:  # reconnecting: not yet
                assert time.monotonic() < deadline, "no publish confirmed within 60 s of the node's death"
                await asyncio.sleep(0.5)
        assert broker.connection.url.port != int(cluster.urls[0].rsplit(":", 1)[1].strip("/"))
    finally:
        await broker.close()
        await asyncio.to_thread(cluster.start_node, 1)


async def test_leader_killed_then_node_stopped_under_load(cluster: Cluster, settings, topology):
    # ~10 requests/s for 4 minutes: below what two replicas per stage on this machine finish (~14/s), so
    # a backlog a node loss leaves behind drains, and long enough for both faults to land inside it
    plan = build_plan(scaled(2400), seed=71, label="cluster", tenants=4)
    duration_s = max(240.0, len(plan.requests) / 10)
    log_dir = REPORT_DIR.parent / "cluster-logs"  # kept after the run, for a look at the reconnections
    shutil.rmtree(log_dir, ignore_errors=True)
    run = ClusterRun("cluster", settings, topology, log_dir, plan)
    run.workers = Replicas(run.workers._env, log_dir, cluster)
    events: list[dict] = []
    try:
        await run.start()
        await wait_for_consumers(run, REPLICAS)
        # The CLI is slow on a busy machine: learn the leaders before the load, not at the moment of the kill.
        leaders = await asyncio.to_thread(work_queue_leaders, cluster, run)
        victim = Counter(leaders.values()).most_common(1)[0][0]

        async def faults() -> None:
            await asyncio.sleep(30)
            events.append({"fault": "kill -9", "node": victim, "at": time.time(), "leaders": leaders})
            await asyncio.to_thread(cluster.kill, victim)
            await asyncio.sleep(15)
            await asyncio.to_thread(cluster.start_node, victim)
            events.append({"fault": "back", "node": victim, "at": time.time()})
            now_leading = await asyncio.to_thread(work_queue_leaders, cluster, run)
            await asyncio.sleep(15)
            others = [n for n, _ in Counter(now_leading.values()).most_common() if n != victim]
            second = others[0] if others else victim % 3 + 1
            events.append(
                {"fault": "graceful stop", "node": second, "at": time.time(), "leaders": now_leading}
            )
            await asyncio.to_thread(cluster.stop_node, second)
            await asyncio.sleep(15)
            await asyncio.to_thread(cluster.start_node, second)
            events.append({"fault": "back", "node": second, "at": time.time()})

        started = time.time()
        await asyncio.gather(faults(), run.publish_requests(duration_s))
        run.numbers.faults = {
            f"{e['fault']} node {e['node']}" + (" (work-queue leader)" if e["fault"] == "kill -9" else ""): 1
            for e in events
            if e["fault"] != "back"
        }
        report = await run.settle(timeout_s=max(SETTLE_S, 180))

        async with run.engine.connect() as conn:
            rows = await conn.execute(
                select(func.extract("epoch", portal_requests.c.updated_at)).where(
                    portal_requests.c.tenant_id.in_(plan.tenants), portal_requests.c.status.in_(TERMINAL)
                )
            )
            completions = sorted(float(t) for (t,) in rows)
        losses = [e for e in events if e["fault"] != "back"]
        figures = [around(f"{e['fault']} node {e['node']}", e["at"], completions) for e in losses]
        # the portal's side: when its publishes were confirmed (its connection fails over too)
        confirmed = sorted(run.sent_at.values())
        publishing = [around(f"{e['fault']} node {e['node']}", e["at"], confirmed) for e in losses]
        summary = {
            "requests": len(plan.requests),
            "replicas_per_worker": REPLICAS,
            "load_s": duration_s,
            "load_started_at": started,
            "events": events,
            "around": [
                {**f.__dict__, "at": round(f.at - started, 1), "dip": round(f.dip, 2)} for f in figures
            ],
            "publishes_around": [
                {**f.__dict__, "at": round(f.at - started, 1), "dip": round(f.dip, 2)} for f in publishing
            ],
            "throughput_per_5s": throughput(completions, origin=started),
            "completions": [round(t - started, 3) for t in completions],
            "completions_per_s": round(len(completions) / (completions[-1] - completions[0]), 2),
            "settle_s": run.numbers.settle_s,
        }
        REPORT_DIR.mkdir(parents=True, exist_ok=True)
        (REPORT_DIR.parent / "cluster-timeline.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({k: v for k, v in summary.items() if k != "completions"}))

        run.assert_clean(report)
        run.numbers.restarts = sum(run.workers.starts.values()) - len(run.workers.names)
        run.numbers.write()
        assert len(losses) == 2 and len(events) == 4, events
        assert events[-1]["at"] < started + duration_s, "the faults outlasted the load: give it longer"
        assert len(completions) == len(plan.requests)
    finally:
        await run.close()
