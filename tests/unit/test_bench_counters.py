"""The bench's flow counters read a worker's own /metrics text: deliveries (every outcome) and publishes."""

import math

from bench import counters
from workers.runtime.metrics import WorkerMetrics
from workers.runtime.outcomes import Duplicate, Handled


def test_deliveries_and_publishes_are_read_from_a_workers_metrics() -> None:
    metrics = WorkerMetrics("portal_sync")
    published = [7]
    metrics.track_published(lambda: published[0])
    for _ in range(3):
        metrics.message("modify.requested", Handled())
    metrics.message("appointment.rescheduled", Handled())
    metrics.message("appointment.rescheduled", Duplicate())
    before = counters.parse(metrics.render().decode())
    assert before == counters.Flow(deliveries=5, publishes=7)

    metrics.message("job.status_changed", Handled())
    published[0] = 10
    phase = counters.delta(
        {"portal_sync": counters.parse(metrics.render().decode())}, {"portal_sync": before}
    )
    assert phase == {"portal_sync": counters.Flow(1, 3)}


def test_per_request_adds_a_total_and_prints_every_worker() -> None:
    flows = {"policy_gate": counters.Flow(20, 10), "portal_sync": counters.Flow(30, 40)}
    per = counters.per_request(flows, 10)
    assert per["total"] == counters.Flow(5, 5)
    text = counters.text(per, ["policy_gate", "portal_sync"])
    assert text == (
        "deliveries/request: policy_gate 2.00 portal_sync 3.00 total 5.00"
        " | publishes/request: policy_gate 1.00 portal_sync 4.00 total 5.00"
    )


def test_a_free_port_block_is_free() -> None:
    base = counters.free_port_block(3)
    assert 20000 <= base < 60000


async def test_a_process_that_does_not_answer_counts_as_unknown() -> None:
    base = counters.free_port_block(1)
    (flow,) = (await counters.scrape({"gone": base})).values()
    assert math.isnan(flow.deliveries) and math.isnan(flow.publishes)
