"""A job's status and active count under concurrent changes of its appointments, on the real database.

Found by the crash-points fault scenario: two cancels of a job's two visits, one waiting for the other's
lock on the job, must each count what the other committed. The interleaving is forced here: a
transaction cancels visit 1 and holds the job's lock while modify_handler cancels visit 2.
"""

import asyncio

import asyncpg

from contracts.decoding import decode_or_raise
from tests import factories as f
from tests.conftest import offline_consumer, unique_tenant
from workers.modify_handler.handlers import HANDLERS
from workers.runtime.database import asyncpg_dsn
from workers.runtime.outcomes import Handled


async def test_a_cancel_waiting_for_the_jobs_lock_counts_what_the_other_committed(engine, database_url):
    tenant = unique_tenant("jobs")
    schedule = offline_consumer("modify_handler", HANDLERS, engine)
    for i in (1, 2):
        booking = f.appointment_recorded(
            tenant=tenant,
            appointment_id=f"apt-{i}",
            job_id="job-1",
            window=f.arrival_window(3 + i),
            change_id=f"b{i}",
        )
        assert await schedule.handle(booking) == Handled()
    cancel_second = f.modify_approved(
        f.modify_requested(
            tenant=tenant, appointment_id="apt-2", change=f.cancel("moving"), request_id="req-2"
        ),
        decided_on_version=1,
    )

    other = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        transaction = other.transaction()
        await transaction.start()
        await other.execute(
            "UPDATE scheduling.appointments SET status = 'canceled' "
            "WHERE tenant_id = $1 AND appointment_id = 'apt-1'",
            tenant,
        )
        await other.execute(
            "SELECT 1 FROM scheduling.jobs WHERE tenant_id = $1 AND job_id = 'job-1' FOR UPDATE", tenant
        )
        waiting = asyncio.create_task(schedule.handle(cancel_second))
        await asyncio.sleep(0.5)
        assert not waiting.done(), "the second cancel should wait for the job's lock"
        await transaction.commit()
        assert await asyncio.wait_for(waiting, 10) == Handled()
    finally:
        await other.close()

    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        rows = await raw.driver_connection.fetch(
            "SELECT body FROM messaging.outbox WHERE tenant_id = $1 AND message_type = 'job.status_changed' "
            "ORDER BY id",
            tenant,
        )
        status = await raw.driver_connection.fetchval(
            "SELECT status FROM scheduling.jobs WHERE tenant_id = $1 AND job_id = 'job-1'", tenant
        )
    last = decode_or_raise(bytes(rows[-1]["body"]))
    assert (last.payload.active_appointments, last.payload.status.value) == (0, "canceled")
    assert status == "canceled"
