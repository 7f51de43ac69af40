"""`apptctl teardown`: says what it destroys, refuses without a confirmation, then removes the namespace's
queues and exchanges and drops its database."""

import uuid

import aio_pika
import asyncpg
import pytest
from aiormq.exceptions import ChannelNotFoundEntity
from sqlalchemy.engine import make_url

from infra import topology as topology_module
from infra.db.admin import _maintenance_dsn, drop_database, ensure_database
from tests.conftest import TEST_RETRY_DELAYS_S
from tests.integration.test_ops_cli import apptctl
from workers.runtime.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def doomed(service_urls):
    """A namespace and an (empty) database of their own, as a deployment would have."""
    namespace = f"td{uuid.uuid4().hex[:8]}"
    url = make_url(service_urls.database).set(database=f"appt_td_{uuid.uuid4().hex[:8]}")
    database_url = url.render_as_string(hide_password=False)
    await ensure_database(database_url)
    topology = await topology_module.apply(service_urls.amqp, namespace, TEST_RETRY_DELAYS_S)
    connection = await aio_pika.connect(service_urls.amqp)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}"), routing_key=topology.queue_of("policy_gate").dead_letter_queue
        )
    settings = Settings(
        AMQP_URL=service_urls.amqp,
        DATABASE_URL=database_url,
        APPT_NAMESPACE=namespace,
        APPT_RETRY_DELAYS_S=",".join(f"{d:g}" for d in TEST_RETRY_DELAYS_S),
    )
    yield settings, topology
    connection = await aio_pika.connect(service_urls.amqp)
    async with connection:
        await topology_module.delete(await connection.channel(), topology)
    await drop_database(database_url)


async def queue_exists(amqp_url: str, name: str) -> bool:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        try:
            await (await connection.channel()).declare_queue(name, passive=True)
        except ChannelNotFoundEntity:
            return False
    return True


async def database_exists(database_url: str) -> bool:
    dsn, name = _maintenance_dsn(database_url)
    connection = await asyncpg.connect(dsn)
    try:
        return bool(await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await connection.close()


async def test_teardown_asks_first_then_removes_topology_and_database(doomed):
    settings, topology = doomed
    dead = topology.queue_of("policy_gate").dead_letter_queue

    refused = await apptctl(settings, "teardown")  # no terminal to ask on, no --yes
    assert refused.code == 2 and "pass --yes" in refused.err
    assert f"namespace {settings.namespace!r}" in refused.out
    assert "holding 1 message(s), 1 of them dead letters" in refused.out
    assert await queue_exists(settings.amqp_url, dead) and await database_exists(settings.database_url)

    done = await apptctl(settings, "teardown", "--yes")
    assert done.code == 0, done.err
    assert "deleted the queues and exchanges" in done.out and "dropped database" in done.out
    assert not await queue_exists(settings.amqp_url, dead)
    assert not [q.name for q in topology.queues if await queue_exists(settings.amqp_url, q.name)]
    assert not await database_exists(settings.database_url)

    again = await apptctl(settings, "teardown", "--yes")
    assert again.code == 0 and "nothing to remove" in again.out


async def test_keep_database_removes_only_the_topology(doomed):
    settings, topology = doomed
    done = await apptctl(settings, "teardown", "--keep-database", "--yes")
    assert done.code == 0, done.err
    assert not await queue_exists(settings.amqp_url, topology.queue_of("portal_sync").name)
    assert await database_exists(settings.database_url)
