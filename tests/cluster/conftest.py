"""The `cluster` marker and a three-node RabbitMQ cluster for the tests under it: started by
infra/cluster.sh, always stopped and removed afterwards. Opt-in (`make test-cluster`, `make soak`):
APPT_CLUSTER_TESTS=1, since three more broker nodes do not fit beside the suite on a small machine."""

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from infra import topology as topology_module
from infra.nodes import connect_first
from tests.conftest import TEST_RETRY_DELAYS_S, _retire_unpublished_events
from workers.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "cluster.sh"
NODES = 3


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: runs on a three-node RabbitMQ cluster of its own (APPT_CLUSTER_TESTS=1)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("APPT_CLUSTER_TESTS") == "1":
        return
    skip = pytest.mark.skip(
        reason="starts a three-node RabbitMQ cluster: run with APPT_CLUSTER_TESTS=1 (`make test-cluster`)"
    )
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)


class Cluster:
    """The running cluster, driven through infra/cluster.sh."""

    def __init__(self, directory: Path) -> None:
        self.env = {**os.environ, "APPT_CLUSTER_DIR": str(directory)}

    def run(self, *args: str, timeout_s: float = 300) -> str:
        done = subprocess.run(
            ["bash", str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=timeout_s
        )
        if done.returncode != 0:
            raise RuntimeError(f"infra/cluster.sh {' '.join(args)} failed: {done.stderr or done.stdout}")
        return done.stdout

    @property
    def urls(self) -> list[str]:
        return self.run("urls").strip().split(",")

    def amqp_url(self, first: int = 0) -> str:
        """AMQP_URL with every node, starting at node `first` + 1 (spreads clients over the nodes)."""
        urls = self.urls
        return ",".join(urls[first % len(urls) :] + urls[: first % len(urls)])

    def leaders(self, prefix: str) -> dict[str, int]:
        """Quorum queue name -> the number (1-3) of the node leading it."""
        rows = (line.split("\t") for line in self.run("leaders", prefix).splitlines() if "\t" in line)
        return {name: int(node) for name, node in rows if node.isdigit()}

    def kill(self, node: int) -> None:
        self.run("kill", str(node))

    def stop_node(self, node: int) -> None:
        self.run("stop-node", str(node))

    def start_node(self, node: int) -> None:
        self.run("start-node", str(node))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster(Path(os.environ.get("APPT_CLUSTER_DIR", ROOT / "build" / "cluster")))
    try:
        cluster.run("start")
        yield cluster
    finally:
        # whatever happened: no node of ours is left running, and its data is gone
        cluster.run("stop", timeout_s=180)


@pytest.fixture
async def topology(cluster: Cluster, database_url: str) -> AsyncIterator[topology_module.Topology]:
    """A fresh namespace on the cluster, its quorum queues replicated on all three nodes."""
    spec = await topology_module.apply(
        cluster.amqp_url(), f"c{uuid.uuid4().hex[:10]}", TEST_RETRY_DELAYS_S, quorum_group_size=NODES
    )
    yield spec
    connection = await connect_first(cluster.amqp_url())
    async with connection:
        await topology_module.delete(await connection.channel(), spec)
    await _retire_unpublished_events(database_url)


@pytest.fixture
def settings(cluster: Cluster, database_url: str, topology) -> Settings:
    """The machine's PostgreSQL, and the cluster instead of the machine's RabbitMQ."""
    return Settings(
        AMQP_URL=cluster.amqp_url(),
        DATABASE_URL=database_url,
        APPT_NAMESPACE=topology.namespace,
        APPT_QUORUM_GROUP_SIZE=NODES,
        APPT_OUTBOX_POLL_S=0.5,
        APPT_DRAIN_TIMEOUT_S=10,
        APPT_DB_POOL_SIZE=5,
        APPT_TRANSIENT_RETRY_DELAY_S=0.05,
        APPT_RETRY_DELAYS_S=",".join(f"{d:g}" for d in TEST_RETRY_DELAYS_S),
    )
