"""Fixtures for tests on the real services: a database per test session, a RabbitMQ namespace per test.

Services come from AMQP_URL / DATABASE_URL (default: the local ones). Only when those are not
reachable and a Docker engine is available do we fall back to testcontainers.
"""

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from sqlalchemy.engine import make_url

from apptctl.portal_keys import DEV_PORTAL_KEYS_FILE
from infra import topology as topology_module
from infra.db.admin import drop_database, ensure_database
from infra.db.migrate import upgrade_async
from workers.runtime.broker import Broker
from workers.runtime.database import create_engine
from workers.runtime.settings import Settings
from workers.runtime.worker import Worker

# Portal messages are signed: unless a keyring is configured, tests (and the workers they start, which
# inherit this environment) use the development keyring.
if not os.environ.get("APPT_PORTAL_KEYS"):
    os.environ.setdefault("APPT_PORTAL_KEYS_FILE", str(DEV_PORTAL_KEYS_FILE))
# The development keyring is accepted only in development mode, set explicitly (a test of the refusal
# unsets it).
os.environ.setdefault("APPT_DEV_MODE", "1")
# The suite sends many requests per customer and tenant within seconds (isolation, faults, scenarios): the
# gate's default rate limits are lifted here; tests of the limits set a business's own in its settings layer.
for _name in ("APPT_RATE_TENANT_PER_MINUTE", "APPT_RATE_REQUESTER_PER_MINUTE"):
    os.environ.setdefault(_name, "600000")
for _name in ("APPT_RATE_TENANT_BURST", "APPT_RATE_REQUESTER_BURST"):
    os.environ.setdefault(_name, "100000")
DEFAULTS = Settings()
# Generation speed depends on how busy the machine is, which says nothing about the code under test.
hypothesis_settings.register_profile("appt", suppress_health_check=[HealthCheck.too_slow], deadline=None)
hypothesis_settings.load_profile("appt")
# One short delay-queue tier: a test that hits a transient failure retries soon, and each test's
# topology declares one delay queue per worker instead of the production tiers.
TEST_RETRY_DELAYS_S = (0.5,)


@dataclass(frozen=True)
class ServiceUrls:
    amqp: str
    database: str


def _reachable(url: str, default_port: int) -> bool:
    parsed = make_url(url.replace("amqp://", "postgresql://", 1)) if url.startswith("amqp") else make_url(url)
    try:
        with socket.create_connection((parsed.host or "127.0.0.1", parsed.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


@pytest.fixture(scope="session")
def service_urls() -> ServiceUrls:
    amqp = os.environ.get("AMQP_URL", DEFAULTS.amqp_url)
    database = os.environ.get("DATABASE_URL", DEFAULTS.database_url)
    if _reachable(amqp, 5672) and _reachable(database, 5432):
        yield ServiceUrls(amqp, database)
        return
    configured = "AMQP_URL" in os.environ or "DATABASE_URL" in os.environ
    if configured or not _docker_available():
        pytest.fail(
            f"PostgreSQL ({database}) or RabbitMQ ({amqp}) is not reachable. Run `bash infra/services.sh` "
            "to start the local services, or set DATABASE_URL / AMQP_URL."
        )
    from testcontainers.postgres import PostgresContainer
    from testcontainers.rabbitmq import RabbitMqContainer

    with PostgresContainer("postgres:15", driver="asyncpg") as pg, RabbitMqContainer("rabbitmq:3.13") as mq:
        params = mq.get_connection_params()
        yield ServiceUrls(f"amqp://guest:guest@{params.host}:{params.port}/", pg.get_connection_url())


@pytest.fixture(scope="session")
async def database_url(service_urls: ServiceUrls) -> AsyncIterator[str]:
    name = f"appt_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = make_url(service_urls.database).set(database=name).render_as_string(hide_password=False)
    await ensure_database(url)
    await upgrade_async(url)
    yield url
    await drop_database(url)


@pytest.fixture
async def topology(service_urls: ServiceUrls, database_url: str) -> AsyncIterator[topology_module.Topology]:
    """A fresh namespace of exchanges and queues for one test, deleted afterwards."""
    spec = await topology_module.apply(service_urls.amqp, f"t{uuid.uuid4().hex[:10]}", TEST_RETRY_DELAYS_S)
    yield spec
    connection = await aio_pika.connect(service_urls.amqp)
    async with connection:
        await topology_module.delete(await connection.channel(), spec)
    await _retire_unpublished_events(database_url)


async def _retire_unpublished_events(database_url: str) -> None:
    """Events a test left unpublished (workers killed or stopped mid-flush) belong to its namespace, which
    is gone now. The session shares one database and relays pick rows by producer, so without this the
    next test's relay would publish them into its own namespace."""
    import asyncpg

    from workers.runtime.database import asyncpg_dsn

    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute(
            "UPDATE messaging.outbox SET published_at = now() WHERE published_at IS NULL"
        )
    finally:
        await connection.close()


@pytest.fixture
def settings(service_urls: ServiceUrls, database_url: str, topology) -> Settings:
    return Settings(
        AMQP_URL=service_urls.amqp,
        DATABASE_URL=database_url,
        APPT_NAMESPACE=topology.namespace,
        APPT_OUTBOX_POLL_S=0.5,
        APPT_DRAIN_TIMEOUT_S=10,
        APPT_DB_POOL_SIZE=2,  # README, Tests: the suite stays within 30 PostgreSQL connections
        APPT_TRANSIENT_RETRY_DELAY_S=0.05,
        APPT_RETRY_DELAYS_S=",".join(f"{d:g}" for d in TEST_RETRY_DELAYS_S),
    )


@pytest.fixture
async def engine(database_url: str):
    engine = create_engine(database_url, pool_size=3)
    yield engine
    await engine.dispose()


@pytest.fixture
async def broker(settings: Settings, topology) -> AsyncIterator[Broker]:
    broker = Broker(settings.amqp_url, topology, name="tests", signer=settings.keyring())
    await broker.connect()
    yield broker
    await broker.close()


@pytest.fixture
async def workers(settings: Settings) -> AsyncIterator[dict[str, Worker]]:
    """The three real workers, in this process, on the test's namespace and database."""
    from workers.registry import WORKER_NAMES, worker_spec

    running: dict[str, Worker] = {}
    try:
        for name in WORKER_NAMES:
            worker = Worker(worker_spec(name), settings)
            await worker.start()
            running[name] = worker
        yield running
    finally:
        for worker in running.values():
            await worker.stop()


def unique_tenant(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def offline_consumer(name: str, handlers, engine, **options):
    """A worker's consumer used without a broker: `handle(message)` runs what a delivery does between
    decode and ack (inbox, handler, commit, the conflict and transient retries) on the real database."""
    from workers.runtime.consumer import DelayedRetry, QueueConsumer

    offline = topology_module.build("offline")
    return QueueConsumer(
        name=name,
        queue_name=f"offline.{name}",
        dead_letter_routing_key="",
        handlers=handlers,
        engine=engine,
        broker=Broker("amqp://unused", offline, name=f"offline-{name}"),
        prefetch=1,
        # Never used offline (nothing is settled with a broker): a transient failure that outlasts the
        # quick tries in place is raised to the caller of `handle`.
        delayed_retry=DelayedRetry(
            exchange="offline.retry", queues=("offline.delay",), delays_s=(1.0,), limit=1
        ),
        **options,
    )
