"""The portal HTTP API on the real services: the real workers, the app served by uvicorn on a free port,
reading as the portal reader role (row-level security) and writing as the API's role."""

import asyncio
import contextlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from sqlalchemy import text

from infra.security import apply_api_roles, drop_api_roles
from portal_api.app import create_app
from portal_api.keys import hash_key
from portal_api.settings import ApiSettings
from tests.conftest import unique_tenant
from tests.e2e.test_policy_engine import World

pytestmark = pytest.mark.integration


@dataclass
class Api:
    """A running API and the keys of one tenant (a portal and an office key) and of another tenant."""

    url: str
    app: object
    tenant: str
    other_tenant: str
    portal_key: str
    office_key: str
    other_portal_key: str
    second_portal_key: str = ""  # another portal (producer portal-app) of the same tenant
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, key: str | None = None, *, tenant: str | None = None, customer: str | None = None):
        headers = {}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if tenant is not None:
            headers["X-Tenant-Id"] = tenant
        if customer is not None:
            headers["X-Customer-Id"] = customer
        client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=60)
        self.clients.append(client)
        return client

    def customer(self, customer_id: str) -> httpx.AsyncClient:
        return self.client(self.portal_key, tenant=self.tenant, customer=customer_id)

    def office(self) -> httpx.AsyncClient:
        return self.client(self.office_key, tenant=self.tenant)

    @property
    def services(self):
        return self.app.state.services


def keys_json(tenant: str, other_tenant: str, portal: str, office: str, other: str, second: str = "") -> str:
    return json.dumps(
        {
            "keys": [
                {"id": "t-portal", "kind": "portal", "sha256": hash_key(portal), "tenants": [tenant],
                 "producer": "portal-web"},
                {"id": "t-second", "kind": "portal", "sha256": hash_key(second or "-" * 43),
                 "tenants": [tenant], "producer": "portal-app"},
                {"id": "t-office", "kind": "office", "sha256": hash_key(office), "tenants": [tenant]},
                {"id": "t-other", "kind": "portal", "sha256": hash_key(other), "tenants": [other_tenant],
                 "producer": "portal-app"},
            ]
        }
    )  # fmt: skip


@contextlib.asynccontextmanager
async def serve(app) -> AsyncIterator[str]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True  # open event streams are cut after the graceful timeout
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def api_roles(database_url: str, topology):
    prefix = f"api{uuid.uuid4().hex[:8]}"
    roles = await apply_api_roles(database_url=database_url, namespace=topology.namespace, prefix=prefix)
    yield roles
    await drop_api_roles(database_url=database_url, namespace=topology.namespace, prefix=prefix)


@contextlib.asynccontextmanager
async def running_api(settings, topology, api_roles, amqp_url: str | None = None) -> AsyncIterator[Api]:
    """The API on the test's namespace, reading and writing as the API roles; `amqp_url` to reach the
    broker some other way (through a proxy)."""
    tenant, other = unique_tenant("api"), unique_tenant("api")
    portal, office, other_key, second = (secrets.token_urlsafe(32) for _ in range(4))
    api_settings = ApiSettings(
        AMQP_URL=amqp_url or settings.amqp_url,
        DATABASE_URL=settings.database_url,
        APPT_NAMESPACE=topology.namespace,
        APPT_API_KEYS=keys_json(tenant, other, portal, office, other_key, second),
        APPT_PORTAL_READER_DATABASE_URL=api_roles["portal_reader"].database_url,
        APPT_PORTAL_API_DATABASE_URL=api_roles["portal_api"].database_url,
        APPT_API_DB_POOL_SIZE=3,
        APPT_API_SSE_HEARTBEAT_S=1,
        APPT_PUBLISH_TIMEOUT_S=5,
    )
    app = create_app(api_settings, topology=topology)
    async with serve(app) as url:
        running = Api(url, app, tenant, other, portal, office, other_key, second)
        await asyncio.wait_for(running.services.hub.ready.wait(), 30)
        try:
            yield running
        finally:
            for client in running.clients:
                await client.aclose()


@pytest.fixture
async def api(settings, topology, workers, api_roles) -> AsyncIterator[Api]:
    async with running_api(settings, topology, api_roles) as running:
        yield running


@pytest.fixture
def world(api: Api, broker, engine) -> World:
    world = World(broker, engine)
    world.tenant = api.tenant
    return world


@pytest.fixture
def other_world(api: Api, broker, engine) -> World:
    world = World(broker, engine)
    world.tenant = api.other_tenant
    return world


async def checksum(engine, tenant: str) -> str:
    """A digest of everything the tenant has in the source of truth and the read store."""
    parts = []
    async with engine.connect() as conn:
        for table in (
            "scheduling.appointments",
            "scheduling.jobs",
            "portal.appointments",
            "portal.jobs",
            "portal.requests",
            "portal_api.requests",
        ):
            parts.append(
                (
                    await conn.execute(
                        text(
                            f"SELECT coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') "
                            f"FROM {table} t WHERE tenant_id = :tenant"
                        ),
                        {"tenant": tenant},
                    )
                ).scalar_one()
            )
    return ",".join(parts)


class EventStream:
    """Server-sent events of an open response, parsed by a background reader into a queue."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.queue: asyncio.Queue[dict] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        current: dict = {}
        async for line in self.response.aiter_lines():
            if line == "":
                if "data" in current:
                    current["data"] = json.loads(current["data"])
                    await self.queue.put(current)
                current = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                current[name] = value.removeprefix(" ")

    async def until(self, done, timeout_s: float = 20) -> list[dict]:
        """Events until `done(events so far)` is true, or the time is up."""
        events: list[dict] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not done(events):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                events.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        return events

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


@contextlib.asynccontextmanager
async def events(client: httpx.AsyncClient, path: str, **kwargs) -> AsyncIterator[EventStream]:
    async with client.stream("GET", path, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = EventStream(response)
        try:
            yield stream
        finally:
            await stream.close()


def is_ready(events: list[dict]) -> bool:
    return any(e.get("event") == "ready" for e in events)
