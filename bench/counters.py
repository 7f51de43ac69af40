"""How much message flow one request costs OURS: deliveries handled and events published, per worker.

Read from the workers' own Prometheus metrics (`/metrics`, the same series the dashboards use):
`appt_messages_total` (every delivery a worker settled, whatever its outcome: handled, duplicate, dead
lettered, retried, requeued) and `appt_outbox_published_total` (events the broker confirmed, by the
direct publisher and the relay). The bench gives each OURS process its own port (`APPT_METRICS_PORT`,
consecutive from a free block: `apptctl.processes.WorkerProcesses` adds the process's index), reads every
process before each phase and once more at the end, both after the pipeline went idle, so a phase is
billed for everything its requests caused (the offers and live-feed events that follow an outcome too).
"""

import asyncio
import socket
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

DELIVERIES = "appt_messages"
PUBLISHES = "appt_outbox_published"


@dataclass(frozen=True)
class Flow:
    """One process's counts (cumulative when scraped; a phase's when subtracted)."""

    deliveries: float = 0.0
    publishes: float = 0.0

    def __sub__(self, other: "Flow") -> "Flow":
        return Flow(self.deliveries - other.deliveries, self.publishes - other.publishes)

    def __add__(self, other: "Flow") -> "Flow":
        return Flow(self.deliveries + other.deliveries, self.publishes + other.publishes)


def free_port_block(count: int, first: int = 20000, last: int = 60000, step: int = 97) -> int:
    """The first port of `count` consecutive ports nobody listens on now (checked by binding each)."""
    for base in range(first, last - count, step):
        try:
            for port in range(base, base + count):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports for the workers' metrics")


def parse(text: str) -> Flow:
    """A process's deliveries (all outcomes) and confirmed publishes from its /metrics text."""
    deliveries = publishes = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{DELIVERIES}_total":
                deliveries += sample.value
            elif sample.name == f"{PUBLISHES}_total":
                publishes += sample.value
    return Flow(deliveries, publishes)


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


async def scrape(ports: Mapping[str, int]) -> dict[str, Flow]:
    """Every process's counts now (a process that does not answer: NaN, which shows in the figures)."""

    async def one(port: int) -> Flow:
        try:
            return parse(await asyncio.to_thread(_get, port))
        except OSError:
            return Flow(float("nan"), float("nan"))

    flows = await asyncio.gather(*(one(port) for port in ports.values()))
    return dict(zip(ports, flows, strict=True))


def delta(after: Mapping[str, Flow], before: Mapping[str, Flow]) -> dict[str, Flow]:
    return {name: after[name] - before.get(name, Flow()) for name in after}


def per_request(flows: Mapping[str, Flow], requests: int) -> dict[str, Flow]:
    """Per process and `total`, divided by the requests finished."""
    n = max(requests, 1)
    total = sum(flows.values(), Flow())
    return {
        name: Flow(flow.deliveries / n, flow.publishes / n)
        for name, flow in {**flows, "total": total}.items()
    }


def text(flows: Mapping[str, Flow], names: Iterable[str]) -> str:
    """`deliveries/request: gate 2.00 ... total 5.90 | publishes/request: ...` for one phase."""
    names = [*names, "total"]
    deliveries = " ".join(f"{n} {flows[n].deliveries:.2f}" for n in names if n in flows)
    publishes = " ".join(f"{n} {flows[n].publishes:.2f}" for n in names if n in flows)
    return f"deliveries/request: {deliveries} | publishes/request: {publishes}"
