"""A worker's /metrics, /healthz and /readyz, and retries through the delay queues, on the real services.

Each test runs one Worker (the policy_gate queue of a fresh namespace) in this process with test handlers,
its HTTP endpoint on a free port, health checked every 0.2 s, and the test topology's short delay tier.
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url
from yarl import URL

from contracts.envelope import Envelope
from contracts.portal_v1 import ModifyRequested
from contracts.reasons import DeadLetterReason
from tests import factories
from tests.conftest import TEST_RETRY_DELAYS_S, unique_tenant
from tests.tcp_proxy import TcpProxy
from tests.waiting import eventually
from workers.runtime.broker import Broker
from workers.runtime.database import UnitOfWork
from workers.runtime.settings import Settings
from workers.runtime.worker import Worker, WorkerSpec

pytestmark = pytest.mark.integration

WORKER = "policy_gate"
Handle = Callable[[Envelope, UnitOfWork], Awaitable[None]]


# --- running one worker with test handlers -------------------------------------------------------


def with_changes(settings: Settings, **changes: object) -> Settings:
    return Settings(**{**settings.model_dump(by_alias=True), **changes})


@pytest.fixture
async def start_worker(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    started: list[Worker] = []

    async def start(handle: Handle, **changes: object) -> Worker:
        worker_settings = with_changes(
            settings,
            APPT_METRICS_PORT=0,
            APPT_METRICS_HOST="127.0.0.1",
            APPT_HEALTH_INTERVAL_S=0.2,
            **changes,
        )
        worker = Worker(WorkerSpec(WORKER, {ModifyRequested: handle}, emits_events=True), worker_settings)
        await worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await asyncio.wait_for(worker.stop(), 30)


def request() -> ModifyRequested:
    return factories.modify_requested(tenant=unique_tenant(), request_id=f"req-{uuid.uuid4().hex[:12]}")


async def get(worker: Worker, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"http://127.0.0.1:{worker.ops_port}{path}") as response,
    ):
        return response.status, await response.text()


async def health(worker: Worker, path: str = "/healthz") -> tuple[int, dict]:
    status, text = await get(worker, path)
    return status, json.loads(text)


async def samples(worker: Worker) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics: (name, labels without `worker`) -> value."""
    status, text = await get(worker, "/metrics")
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels.pop("worker", WORKER) == WORKER
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


# --- metrics --------------------------------------------------------------------------------------


async def test_metrics_count_messages_by_type_and_outcome_with_latency_and_gauges(start_worker, broker):
    async def handle(message: Envelope, uow: UnitOfWork) -> None:
        await uow.now()

    worker = await start_worker(handle)
    before = await samples(worker)
    assert value(before, "appt_broker_connected") == 1
    assert value(before, "appt_database_up") == 1
    assert value(before, "appt_outbox_backlog") == 0
    assert value(before, "appt_messages_in_flight") == 0

    message = request()
    await broker.publish_message(message)
    await broker.publish_message(message)  # a duplicate
    await broker.publish(
        broker.topology.exchange("requests"),
        ModifyRequested.routing_key,
        aio_pika.Message(
            b"{not json", content_type="application/json", message_id=str(uuid.uuid4()), app_id="portal-web"
        ),
    )

    async def counted() -> dict | None:
        return await samples(worker) if sum(worker.consumer.counts.values()) == 3 else None

    found = await eventually(counted, "three deliveries counted")
    kind = "modify.requested"
    assert value(found, "appt_messages_total", type=kind, outcome="handled") == 1
    assert value(found, "appt_messages_total", type=kind, outcome="duplicate") == 1
    assert value(found, "appt_messages_total", type="undecoded", outcome="dead_lettered") == 1
    assert value(found, "appt_dead_letters_total", reason=DeadLetterReason.MALFORMED_JSON.value) == 1
    assert value(found, "appt_handler_duration_seconds_count", type=kind) == 2
    assert value(found, "appt_handler_duration_seconds_sum", type=kind) > 0
    # the two decoded deliveries, each in exactly one transaction (together, or one after the other)
    assert value(found, "appt_batch_size_sum") == 2
    assert 1 <= value(found, "appt_batch_size_count") <= 2
    assert value(found, "appt_messages_in_flight") == 0
    assert ("appt_outbox_published_total", frozenset()) in found
    assert ("appt_outbox_oldest_unpublished_age_seconds", frozenset()) in found


async def test_two_workers_in_one_process_keep_their_own_metrics(start_worker, broker):
    async def handle(message: Envelope, uow: UnitOfWork) -> None:
        await uow.now()

    first, second = await start_worker(handle), await start_worker(handle)
    assert first.ops_port != second.ops_port
    await broker.publish_message(request())
    await eventually(lambda: "handled" in {**first.consumer.counts, **second.consumer.counts}, "handled")
    totals = [
        value(await samples(w), "appt_messages_total", type="modify.requested", outcome="handled")
        for w in (first, second)
    ]
    assert sorted(totals) == [0, 1]


# --- health ---------------------------------------------------------------------------------------


@pytest.fixture
async def database_proxy(database_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    await proxy.close()


async def test_health_is_503_naming_the_database_while_it_is_unreachable_and_200_once_back(
    start_worker, database_proxy
):
    proxy, proxied_url = database_proxy

    async def handle(message: Envelope, uow: UnitOfWork) -> None:
        await uow.now()

    worker = await start_worker(handle, DATABASE_URL=proxied_url)
    status, body = await health(worker)
    assert (status, body["status"], body["failed"]) == (200, "ok", [])
    assert body["worker"] == WORKER and body["checks"]["database"]["ok"] is True
    assert (await health(worker, "/readyz"))[0] == 200

    proxy.pause()
    status, body = await eventually(
        lambda: _status_is(worker, 503), "/healthz to say 503 with the database away", timeout_s=10
    )
    assert body["failed"] == ["database"]
    assert body["checks"]["broker"]["ok"] is True
    assert body["checks"]["database"]["error"]
    assert (await health(worker, "/readyz"))[0] == 503
    assert value(await samples(worker), "appt_database_up") == 0

    proxy.resume()
    await eventually(lambda: _status_is(worker, 200), "/healthz back to 200", timeout_s=10)
    assert value(await samples(worker), "appt_database_up") == 1


async def test_health_is_503_naming_the_database_when_the_worker_points_at_no_database(
    start_worker, database_url
):
    async def handle(message: Envelope, uow: UnitOfWork) -> None:
        await uow.now()

    nowhere = make_url(database_url).set(host="127.0.0.1", port=_free_port()).render_as_string(False)
    worker = await start_worker(handle, DATABASE_URL=nowhere)
    status, body = await health(worker)
    assert status == 503 and body["failed"] == ["database"] and body["status"] == "unavailable"


async def _status_is(worker: Worker, expected: int, path: str = "/healthz") -> tuple[int, dict] | None:
    status, body = await health(worker, path)
    return (status, body) if status == expected else None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
async def broker_proxy(settings: Settings) -> AsyncIterator[tuple[TcpProxy, str]]:
    """RabbitMQ behind a proxy: pausing it takes the broker away from the worker that uses it, only."""
    url = URL(settings.amqp_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5672)
    await proxy.start()
    # After a failed attempt aio-pika waits `reconnect_interval` (5 s by default) before the next one.
    proxied = url.with_host("127.0.0.1").with_port(proxy.port).update_query(reconnect_interval=0.5)
    yield proxy, str(proxied)
    await proxy.close()


async def test_health_is_503_naming_the_broker_while_its_connection_is_lost_and_200_once_back(
    start_worker, broker_proxy, broker
):
    proxy, proxied_url = broker_proxy
    handled: list = []

    async def handle(message: Envelope, uow: UnitOfWork) -> None:
        handled.append(message.message_id)

    worker = await start_worker(handle, AMQP_URL=proxied_url)
    assert (await health(worker))[0] == 200

    proxy.pause()
    _, body = await eventually(lambda: _status_is(worker, 503), "/healthz to say 503 without the broker")
    assert body["failed"] == ["broker"]
    assert body["checks"]["database"]["ok"] is True
    assert (await health(worker, "/readyz"))[0] == 503
    assert value(await samples(worker), "appt_broker_connected") == 0

    proxy.resume()
    # aio-pika's robust connection reconnects by itself, then restores the consuming channel.
    await eventually(lambda: _status_is(worker, 200), "/healthz back to 200")
    await eventually(lambda: _status_is(worker, 200, "/readyz"), "/readyz back to 200")
    message = request()
    await broker.publish_message(message)
    await eventually(lambda: message.message_id in handled, "a message handled after the reconnect")


async def test_readiness_is_503_while_draining(start_worker):
    async def handle(message: Envelope, uow: UnitOfWork) -> None:
        await uow.now()

    worker = await start_worker(handle)
    assert (await health(worker, "/readyz"))[0] == 200
    await worker.consumer.drain(1)
    status, body = await health(worker, "/readyz")
    assert status == 503 and body["failed"] == ["consuming"]
    assert (await health(worker))[0] == 200  # the worker itself is fine: it just takes no more work


# --- retries through the delay queues -------------------------------------------------------------


def database_starting_up() -> Exception:
    return asyncpg.exceptions.CannotConnectNowError("the database system is starting up")


async def test_a_transient_failure_waits_in_the_delay_queue_then_succeeds_once(start_worker, broker):
    calls: list[float] = []
    in_place = 2

    async def flaky(message: Envelope, uow: UnitOfWork) -> None:
        calls.append(time.monotonic())
        if len(calls) <= in_place + 1:  # the first delivery and its quick retries all fail
            raise database_starting_up()
        await uow.now()

    worker = await start_worker(flaky, APPT_RETRY_IN_PLACE=in_place)
    message = request()
    await broker.publish_message(message)

    await eventually(lambda: worker.consumer.counts.get("handled"), "the message handled after a delay")
    assert worker.consumer.counts == {"retried": 1, "handled": 1}
    assert len(calls) == in_place + 2
    assert calls[-1] - calls[-2] >= TEST_RETRY_DELAYS_S[0] * 0.9  # it waited out the tier's delay
    found = await samples(worker)
    assert value(found, "appt_retries_total", kind="transient") == in_place
    assert value(found, "appt_retries_total", kind="delayed") == 1
    assert value(found, "appt_messages_total", type="modify.requested", outcome="retried") == 1
    assert value(found, "appt_messages_total", type="modify.requested", outcome="handled") == 1


async def test_still_failing_after_the_last_retry_is_dead_lettered_with_the_attempts(
    start_worker, broker, topology
):
    calls: list = []

    async def down(message: Envelope, uow: UnitOfWork) -> None:
        calls.append(message.message_id)
        raise database_starting_up()

    worker = await start_worker(down, APPT_RETRY_IN_PLACE=0, APPT_RETRY_LIMIT=2)
    message = request()
    await broker.publish_message(message)

    letter = await _take_dead_letter(broker, topology.queue_of(WORKER).dead_letter_queue or "")
    headers = letter.headers
    assert headers["x-dead-letter-reason"] == DeadLetterReason.RETRIES_EXHAUSTED.value
    assert headers["x-attempt"] == 3  # the first delivery and two delayed retries
    assert "CannotConnectNowError" in headers["x-last-error"]
    assert "starting up" in headers["x-dead-letter-detail"]
    # Where it was first published, not the delay queue it last came back from.
    assert headers["x-original-exchange"] == topology.exchange("requests")
    assert headers["x-original-routing-key"] == ModifyRequested.routing_key
    assert headers["x-original-queue"] == topology.queue_of(WORKER).name
    assert letter.message_id == str(message.message_id)
    assert letter.correlation_id == message.correlation_id
    assert letter.type == message.type
    assert calls == [message.message_id] * 3
    assert worker.consumer.counts == {"retried": 2, f"dead_lettered:{DeadLetterReason.RETRIES_EXHAUSTED}": 1}
    found = await samples(worker)
    assert value(found, "appt_dead_letters_total", reason=DeadLetterReason.RETRIES_EXHAUSTED.value) == 1


async def _take_dead_letter(broker: Broker, queue_name: str) -> aio_pika.abc.AbstractIncomingMessage:
    assert broker.connection is not None
    channel = await broker.connection.channel()
    queue = await channel.declare_queue(queue_name, passive=True)

    async def taken():
        return await queue.get(no_ack=True, fail=False)

    try:
        return await eventually(taken, f"a dead letter in {queue_name}")
    finally:
        await channel.close()
