"""A running worker holds no more database connections than docs/scaling.md says: its pool (the health
check included) and its relay's session (LISTEN and the outbox writer lock), in either publishing mode.

Counted in pg_stat_activity while the worker handles a burst of requests: every backend of the test's
database beyond those open before the worker started is the worker's, and each carries its
application_name.
"""

import asyncio
import uuid

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.factories import modify_requested
from tests.waiting import eventually
from workers.registry import worker_spec
from workers.runtime.database import DEFAULT_POOL_SIZE, asyncpg_dsn
from workers.runtime.worker import Worker

REQUESTS = 120
_BACKENDS = """
SELECT count(*), count(*) FILTER (WHERE application_name = $2) FROM pg_stat_activity WHERE datname = $1
"""


def documented_connections(pool_size: int) -> int:
    """The figure in README's configuration table and docs/scaling.md."""
    return pool_size + 1


@pytest.mark.parametrize("direct", [True, False], ids=["direct-publisher", "relay-only"])
async def test_a_running_worker_holds_at_most_its_documented_connections(
    settings, broker, database_url, direct
):
    # The production default pool, not the suite's smaller one: the documented figure is checked as shipped.
    settings = settings.model_copy(update={"outbox_direct": direct, "db_pool_size": DEFAULT_POOL_SIZE})
    database = make_url(database_url).database
    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    worker = None
    try:
        before, _ = await admin.fetchrow(_BACKENDS, database, "")
        worker = Worker(worker_spec("policy_gate"), settings)
        await worker.start()
        tenant = f"conn-{uuid.uuid4().hex[:8]}"
        for i in range(REQUESTS):  # unknown appointments: each one a decision and a rejection event
            await broker.publish_message(
                modify_requested(tenant=tenant, request_id=f"req-{i}", requester_id=f"customer-{i}")
            )
        peak = named_at_peak = 0

        async def all_decided() -> bool:
            nonlocal peak, named_at_peak
            total, named = await admin.fetchrow(_BACKENDS, database, worker.application_name)
            if total - before > peak:
                peak, named_at_peak = total - before, named
            decided = await admin.fetchval(
                "SELECT count(*) FROM policy.decisions WHERE tenant_id = $1", tenant
            )
            return decided == REQUESTS

        await eventually(all_decided, "every request decided", timeout_s=60)
        await asyncio.sleep(settings.outbox_poll_interval_s * 2)  # the relay's and health check's rounds
        await all_decided()  # one more sample, after those rounds
    finally:
        if worker is not None:
            await worker.stop()
        await admin.close()
    limit = documented_connections(settings.db_pool_size)
    print(f"worker connections: peak {peak}, documented {limit}")
    assert 0 < peak <= limit, f"{peak} connections, documented {limit}"
    assert named_at_peak == peak  # every one of them is the worker's, by its application_name


def test_the_setting_defaults_to_the_documented_pool():
    from workers.runtime.settings import Settings

    assert Settings.model_fields["db_pool_size"].default == DEFAULT_POOL_SIZE == 5
