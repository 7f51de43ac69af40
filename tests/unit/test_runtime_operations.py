"""Delay-queue tiers in the topology spec, retry and metrics settings, per-worker metrics, health reports,
and how `apptctl status` / `dlq` / `run` treat them: pure, no services."""

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from apptctl.dlq import reason_of
from apptctl.processes import WorkerProcesses
from apptctl.status import OutboxStatus, QueueStatus, Status, initial_queues, problems_of, render
from infra.topology import (
    AUDIT,
    AUDIT_COPY_MAX,
    DEAD_LETTER,
    DEAD_LETTER_ROLE,
    DEFAULT_RETRY_DELAYS_S,
    DELAY,
    RETRY_ROLE,
    SINK,
    WORK,
    WORKERS,
    build,
    delay_label,
    parse_retry_delays,
)
from workers.runtime.broker import Broker
from workers.runtime.consumer import DelayedRetry
from workers.runtime.database import create_engine
from workers.runtime.errors import DeadLetter, failure_kind
from workers.runtime.health import HealthMonitor
from workers.runtime.metrics import WorkerMetrics
from workers.runtime.outcomes import DeadLettered, Duplicate, Handled
from workers.runtime.settings import Settings

# --- topology -------------------------------------------------------------------------------------


def test_each_worker_has_one_delay_queue_per_tier_that_expires_back_into_its_work_queue():
    topology = build("ns", (5, 30, 300))
    retry_exchange = topology.exchange(RETRY_ROLE)
    assert retry_exchange == "ns.retry"
    for worker in WORKERS:
        work = topology.queue_of(worker)
        assert work.kind == WORK and work.name == f"ns.{worker}"
        tiers = topology.delay_queues_of(worker)
        assert [q.name for q in tiers] == [f"ns.{worker}.delay.{label}" for label in ("5s", "30s", "300s")]
        assert [q.delay_s for q in tiers] == [5, 30, 300]
        for tier in tiers:
            assert tier.kind == DELAY and tier.worker == worker and tier.dead_letter_queue is None
            assert tier.arguments == {
                "x-queue-type": "quorum",
                "x-message-ttl": int(tier.delay_s * 1000),
                # back through the return exchange, which only the broker writes to
                "x-dead-letter-exchange": "ns.retry-return",
                "x-dead-letter-routing-key": work.name,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
            assert [(b.exchange_role, b.routing_key) for b in tier.bindings] == [
                (RETRY_ROLE, tier.name),
                (f"{RETRY_ROLE}.{worker}", tier.name),
            ]
        assert topology.own_exchange(RETRY_ROLE, worker) == f"ns.retry.{worker}"
    assert {q.kind for q in topology.queues} == {WORK, DEAD_LETTER, AUDIT, DELAY, SINK}


def test_every_dead_letter_queue_has_a_bounded_audit_copy_with_the_same_bindings():
    """The auditor's copy gets every dead letter the real queue gets (the same bindings on the shared and
    the worker's own dead-letter exchange), drops its oldest beyond its cap (never refusing a publish, so a
    full copy never stops dead-lettering), and the real queue's arguments stay what they were."""
    topology = build("ns", (5, 30, 300))
    copies = {spec.name: spec for spec in topology.audit_copies()}
    assert set(copies) == {f"ns.{worker}.dead.audit" for worker in WORKERS}
    for worker in WORKERS:
        dead_name = topology.queue_of(worker).dead_letter_queue
        dead = next(spec for spec in topology.queues if spec.name == dead_name)
        copy = copies[f"{dead_name}.audit"]
        assert dead.arguments == {"x-queue-type": "quorum"}  # a contract: unchanged
        assert copy.kind == AUDIT and copy.worker is None and copy.dead_letter_queue is None
        assert copy.bindings == dead.bindings
        assert copy.arguments["x-max-length"] == AUDIT_COPY_MAX
        assert copy.arguments["x-overflow"] == "drop-head"
        assert not any(key.startswith("x-dead-letter") for key in copy.arguments)


def test_each_worker_writes_its_dead_letters_and_retries_through_exchanges_of_its_own():
    """So a worker's broker user can be kept out of every other worker's dead-letter and delay queues
    (a delay queue hands what it holds to that worker's work queue). The shared exchanges stay bound:
    the broker dead-letters a work queue's over-delivered messages through the shared one."""
    topology = build("ns", (5,))
    for worker in WORKERS:
        dead = topology.queue_of(worker).dead_letter_queue
        own = topology.own_exchange(DEAD_LETTER_ROLE, worker)
        assert own == f"ns.dead-letters.{worker}"
        (spec,) = [q for q in topology.queues if q.name == dead]
        bound = {(topology.exchange(b.exchange_role), b.routing_key) for b in spec.bindings}
        assert bound == {(own, dead), ("ns.dead-letters", dead)}
        others = {topology.own_exchange(DEAD_LETTER_ROLE, w) for w in WORKERS if w != worker}
        reached = {
            q.name
            for q in topology.queues
            for b in q.bindings
            if topology.exchange(b.exchange_role) in {own, topology.own_exchange(RETRY_ROLE, worker)}
        }
        # its dead letters (and the auditor's copy of them) and its delay queues, nothing of another worker
        assert reached == {dead, f"{dead}.audit", *(q.name for q in topology.delay_queues_of(worker))}
        assert own not in others
    # a topology without them (the bench's clones) falls back to the shared ones
    assert topology.own_exchange(DEAD_LETTER_ROLE, "rt_stage1") == "ns.dead-letters"


def test_work_queues_keep_their_arguments_and_bindings():
    """Queue arguments can't change on an existing queue: the delay tiers only add queues."""
    with_tiers, default = build("ns", (1,)), build("ns")
    for worker in WORKERS:
        assert with_tiers.queue_of(worker) == default.queue_of(worker)
        assert RETRY_ROLE not in {b.exchange_role for b in default.queue_of(worker).bindings}
    assert [q.delay_s for q in default.delay_queues_of("policy_gate")] == list(DEFAULT_RETRY_DELAYS_S)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5,30,300", (5.0, 30.0, 300.0)), (" 0.5 ", (0.5,)), ("0.25, 2", (0.25, 2.0))],
)
def test_retry_delays_parse(text, expected):
    assert parse_retry_delays(text) == expected


@pytest.mark.parametrize("text", ["", "5,x", "0", "-1", "5,5", "100000", ",".join(["1"] * 11)])
def test_retry_delays_refuse_what_cannot_be_a_tier(text):
    with pytest.raises(ValueError):
        parse_retry_delays(text)


def test_delay_labels_name_the_delay():
    assert [delay_label(d) for d in (5, 300, 0.25, 1.5)] == ["5s", "300s", "250ms", "1500ms"]


# --- settings ---------------------------------------------------------------------------------------


def test_metrics_are_off_unless_a_port_is_given_and_zero_means_any_free_port():
    assert Settings().metrics_port is None
    assert Settings(APPT_METRICS_PORT="").metrics_port is None
    assert Settings(APPT_METRICS_PORT="0").metrics_port == 0
    assert Settings(APPT_METRICS_PORT="9464").metrics_port == 9464
    with pytest.raises(ValidationError):
        Settings(APPT_METRICS_PORT="70000")


def test_retry_settings_have_safe_defaults_and_validate():
    settings = Settings()
    assert settings.retry_delays_s == DEFAULT_RETRY_DELAYS_S
    assert settings.retry_in_place == 2 and settings.retry_limit == 8
    assert Settings(APPT_RETRY_DELAYS_S="1,10").retry_delays_s == (1.0, 10.0)
    with pytest.raises(ValidationError):
        Settings(APPT_RETRY_DELAYS_S="soon")


def test_delayed_retries_climb_the_tiers_and_then_stay_on_the_last():
    delayed = DelayedRetry("ns.retry", ("a", "b", "c"), (5, 30, 300), limit=8)
    assert [delayed.tier(n) for n in range(5)] == [("a", 5), ("b", 30), ("c", 300), ("c", 300), ("c", 300)]


# --- metrics ----------------------------------------------------------------------------------------


def _samples(metrics: WorkerMetrics) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def test_each_worker_counts_in_a_registry_of_its_own():
    first, second = WorkerMetrics("policy_gate"), WorkerMetrics("policy_gate")  # no clash
    first.message("modify.requested", Handled(), 0.01)
    first.message("undecoded", DeadLettered("malformed_json"))
    first.retry("delayed")
    found = _samples(first)
    labels = (("outcome", "handled"), ("type", "modify.requested"), ("worker", "policy_gate"))
    assert found[("appt_messages_total", labels)] == 1
    dead = (("outcome", "dead_lettered"), ("type", "undecoded"), ("worker", "policy_gate"))
    assert found[("appt_messages_total", dead)] == 1
    assert found[("appt_dead_letters_total", (("reason", "malformed_json"), ("worker", "policy_gate")))] == 1
    assert found[("appt_retries_total", (("kind", "delayed"), ("worker", "policy_gate")))] == 1
    hist = (("type", "modify.requested"), ("worker", "policy_gate"))
    assert found[("appt_handler_duration_seconds_count", hist)] == 1
    assert not any(name == "appt_messages_total" for name, _ in _samples(second))


def test_batch_sizes_and_fallbacks_are_counted_per_worker():
    metrics = WorkerMetrics("portal_sync")
    for deliveries in (1, 1, 5, 32):
        metrics.transaction(deliveries)
    metrics.batch_fallback("conflict")
    metrics.batch_fallback("handler_error")
    metrics.batch_fallback("conflict")
    found = _samples(metrics)
    me = (("worker", "portal_sync"),)
    assert found[("appt_batch_size_count", me)] == 4  # transactions
    assert found[("appt_batch_size_sum", me)] == 39  # deliveries
    assert found[("appt_batch_size_bucket", (("le", "1.0"), *me))] == 2
    assert found[("appt_batch_size_bucket", (("le", "8.0"), *me))] == 3
    assert found[("appt_batch_size_bucket", (("le", "32.0"), *me))] == 4
    assert found[("appt_batch_fallbacks_total", (("kind", "conflict"), *me))] == 2
    assert found[("appt_batch_fallbacks_total", (("kind", "handler_error"), *me))] == 1


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ValueError("bad data"), "handler_error"),
        (asyncpg.exceptions.DeadlockDetectedError("deadlock"), "conflict"),
        (asyncpg.exceptions.SerializationError("serialize"), "conflict"),
        (asyncpg.exceptions.ConnectionDoesNotExistError("gone"), "transient"),
        (DeadLetter("request_id_reused", "another request"), "dead_letter"),
        (RuntimeError("bug"), "handler_error"),
    ],
)
def test_a_failed_batch_is_labelled_by_what_failed(error, kind):
    assert failure_kind(error) == kind


def test_the_outcome_counts_are_read_from_the_counters():
    metrics = WorkerMetrics("policy_gate")
    metrics.message("modify.requested", Handled())
    metrics.message("office.portal_settings.updated", Handled())
    metrics.message("modify.requested", Duplicate())
    metrics.message("undecoded", DeadLettered("malformed_json"))
    metrics.message("modify.requested", DeadLettered("request_id_reused"))
    metrics.message("modify.requested", DeadLettered("request_id_reused"))
    assert metrics.outcomes() == {
        "handled": 2,
        "duplicate": 1,
        "dead_lettered:malformed_json": 1,
        "dead_lettered:request_id_reused": 2,
    }
    assert WorkerMetrics("policy_gate").outcomes() == {}


def test_gauges_read_their_source_when_scraped():
    metrics = WorkerMetrics("modify_handler")
    in_flight = {"n": 3}
    metrics.track_in_flight(lambda: in_flight["n"])
    metrics.track_published(lambda: 42)
    metrics.outbox(backlog=7, oldest_age_s=12.5)
    found = _samples(metrics)
    me = (("worker", "modify_handler"),)
    assert found[("appt_messages_in_flight", me)] == 3
    assert found[("appt_outbox_published_total", me)] == 42
    assert found[("appt_outbox_backlog", me)] == 7
    assert found[("appt_outbox_oldest_unpublished_age_seconds", me)] == 12.5
    in_flight["n"] = 0
    assert _samples(metrics)[("appt_messages_in_flight", me)] == 0


# --- health -----------------------------------------------------------------------------------------


def test_health_report_names_every_failing_check():
    broker = Broker("amqp://guest:guest@127.0.0.1:1/", build("ns"), name="t")  # never connected
    monitor = HealthMonitor(
        "portal_sync",
        broker=broker,
        engine=create_engine(Settings().database_url),  # never connected
        metrics=WorkerMetrics("portal_sync"),
    )
    ok, body = monitor.report(consuming=False)
    assert not ok
    assert body["status"] == "unavailable" and body["worker"] == "portal_sync"
    assert body["failed"] == ["broker", "database", "consuming"]
    assert all(body["checks"][name]["error"] for name in body["failed"])


# --- operations: status, dlq, run ------------------------------------------------------------------


def _status_with_every_queue_empty_and_consumed() -> Status:
    queues = initial_queues(build("ns", (1, 10)))
    for queue in queues:
        queue.exists, queue.ready, queue.unacknowledged = True, 0, 0
        queue.consumers = 1 if queue.kind == WORK else 0
    return Status("ns", "/", queues, OutboxStatus(60, 0, None))


def test_status_lists_delay_queues_and_does_not_want_consumers_on_them():
    status = _status_with_every_queue_empty_and_consumed()
    delay = [q for q in status.queues if q.kind == DELAY]
    assert [q.name for q in delay if q.worker == "policy_gate"] == [
        "ns.policy_gate.delay.1s",
        "ns.policy_gate.delay.10s",
    ]
    assert problems_of(status) == []
    text = render(status)
    assert "ns.portal_sync.delay.10s" in text
    line = next(row for row in text.splitlines() if row.startswith("ns.policy_gate.delay.1s "))
    assert line.split()[3] == "-"  # consumers: not expected
    missing: QueueStatus = delay[0]
    missing.exists = False
    assert any("apptctl topology apply" in problem.text for problem in problems_of(status))


def test_a_crash_loop_after_a_delayed_retry_reads_as_delivery_limit_not_expired():
    headers = {
        "x-first-death-reason": "expired",  # the delay queue's
        "x-death": [
            {"reason": "delivery_limit", "queue": "ns.policy_gate"},
            {"reason": "expired", "queue": "ns.policy_gate.delay.5s"},
        ],
    }
    assert reason_of(headers) == "delivery_limit"
    assert reason_of({"x-dead-letter-reason": "retries_exhausted", **headers}) == "retries_exhausted"
    assert reason_of({"x-first-death-reason": "delivery_limit"}) == "delivery_limit"


@pytest.mark.parametrize(
    ("port", "expected"),
    [("9300", ["9300", "9301", "9302"]), ("0", ["0", "0", "0"]), (None, [None, None, None])],
)
def test_apptctl_run_gives_each_worker_its_own_metrics_port(monkeypatch, port, expected):
    monkeypatch.delenv("APPT_METRICS_PORT", raising=False)
    processes = WorkerProcesses({} if port is None else {"APPT_METRICS_PORT": port})
    assert [processes.env_of(i).get("APPT_METRICS_PORT") for i in range(3)] == expected
