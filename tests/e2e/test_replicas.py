"""Competing consumers: two replicas of every worker share the queues; each request has exactly one effect."""

import uuid
from datetime import timedelta

from sqlalchemy import func, select

from apptctl import readstore
from apptctl.scenario_runner import publish_all, wait_until
from apptctl.scenarios import window_on
from contracts.portal_v1 import Cancel, Reschedule
from infra.db.tables import outbox
from tests.e2e.test_delivery_guarantees import NOW, booked_world, request
from workers.registry import WORKER_NAMES, worker_spec
from workers.runtime.worker import Worker

APPOINTMENTS = 30


async def test_two_replicas_of_each_worker_apply_every_request_once(settings, broker, engine):
    replicas = []
    try:
        for _ in range(2):
            for name in WORKER_NAMES:
                worker = Worker(worker_spec(name), settings)
                await worker.start()
                replicas.append(worker)

        ids = [(f"apt-{n}", f"job-{n}") for n in range(APPOINTMENTS)]
        tenant = await booked_world(broker, engine, ids)
        requests = [
            request(tenant, a, Reschedule(new_window=window_on(NOW + timedelta(days=6), 8 + n % 8)))
            if n % 2
            else request(tenant, a, Cancel(reason="moving away"))
            for n, (a, _) in enumerate(ids)
        ]
        # every request twice (same message id) and once more re-sent by the portal (new message id)
        resent = [r.model_copy(update={"message_id": uuid.uuid4()}) for r in requests]
        await publish_all(broker, requests + requests + resent)

        async def all_done():
            done = 0
            for r in requests:
                view = await readstore.request(engine, tenant, r.correlation_id)
                done += view is not None and view.status == "completed"
            return done == len(requests)

        assert await wait_until(all_done, 60, interval_s=0.3)
        views = await readstore.appointments(engine, tenant, [a for a, _ in ids])
        assert {v.version for v in views.values()} == {2}
        async with engine.connect() as conn:
            approvals = (
                await conn.execute(
                    select(func.count()).where(
                        outbox.c.tenant_id == tenant, outbox.c.message_type == "modify.approved"
                    )
                )
            ).scalar_one()
        assert approvals == APPOINTMENTS
        # both replicas of each worker took part
        for name in WORKER_NAMES:
            handled = [w.consumer.counts.get("handled", 0) for w in replicas if w.spec.name == name]
            assert all(handled), (name, handled)
    finally:
        for worker in replicas:
            await worker.stop()
