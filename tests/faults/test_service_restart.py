"""A full RabbitMQ restart and a PostgreSQL restart in the middle of a run: the workers wait, reconnect and
finish every request; nothing lost, nothing doubled. These restart the shared services, so they are
opt-in (APPT_SERVICE_RESTART_TESTS=1, `make test-restarts`): run them alone on the services. Each brings
its service back and waits until it is healthy, even when the test fails."""

import asyncio

import pytest

from tests.faults import injectors
from tests.faults.harness import fault_run, load_seconds, scaled, timeout_s

pytestmark = [
    pytest.mark.integration,
    pytest.mark.faults,
    pytest.mark.service_restart,
    pytest.mark.timeout(timeout_s(900)),
]


@pytest.fixture(autouse=True)
def local_services():
    why = injectors.can_restart_services()
    if why:
        pytest.skip(why)


async def test_broker_restart_mid_run(settings, topology, tmp_path):
    async with fault_run(
        "broker_restart", settings, topology, tmp_path, requests=scaled(200), seed=91
    ) as run:
        load = asyncio.create_task(run.publish_requests(load_seconds(len(run.plan.requests), 12.0)))
        await asyncio.sleep(4)
        away = await injectors.restart_rabbitmq()
        await load
        run.numbers.faults = {"RabbitMQ restarts": 1, "seconds away": round(away, 1)}
        report = await run.settle(timeout_s=240)
        run.assert_clean(report)


async def test_postgres_restart_mid_run(settings, topology, tmp_path):
    async with fault_run(
        "postgres_restart", settings, topology, tmp_path, requests=scaled(200), seed=92
    ) as run:
        load = asyncio.create_task(run.publish_requests(load_seconds(len(run.plan.requests), 12.0)))
        await asyncio.sleep(4)
        away = await injectors.restart_postgres()
        await load
        run.numbers.faults = {"PostgreSQL restarts": 1, "seconds away": round(away, 1)}
        report = await run.settle(timeout_s=240)
        run.assert_clean(report)
