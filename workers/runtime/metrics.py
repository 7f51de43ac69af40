"""A worker's Prometheus metrics, in a registry of its own (several workers in one process never clash).

Every series carries a `worker` label, so dashboards can sum replicas of one worker. The consumer counts
messages and retries, the health monitor sets the connection, outbox and queue gauges, and the relay's
confirmed publishes are read when scraped. Also: process_* (the process collector) and appt_build_info.
Dashboards and alert rules built on these names: infra/grafana/, infra/prometheus/ (docs/operations.md).
"""

import os
import platform
from collections.abc import Callable, Iterable
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from workers.runtime.outcomes import DeadLettered, Outcome

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Handling a message is one database transaction: milliseconds, unless something waits.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Deliveries per transaction: 1 on a quiet queue, up to APPT_BATCH_MAX (default 32, at most 500) under load.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 500)

# A message that could not be decoded has no trustworthy type; labels stay a bounded set.
UNDECODED = "undecoded"


class _Published(Collector):
    """`appt_outbox_published_total`, read from the relay's own count when scraped."""

    def __init__(self, worker: str, read: Callable[[], int]) -> None:
        self._worker = worker
        self._read = read

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "appt_outbox_published",
            "Outbox rows published (broker-confirmed) and marked by this process's relay.",
            labels=["worker"],
        )
        family.add_metric([self._worker], self._read())
        yield family


def build_version() -> str:
    try:
        return metadata.version("appointment-self-service")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


class WorkerMetrics:
    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.registry = CollectorRegistry()
        registry = self.registry
        ProcessCollector(registry=registry)  # process_*: CPU, memory, open fds, start time (Linux)
        self.build_info = Gauge(
            "appt_build_info",
            "Always 1: the running build (package version, revision from APPT_BUILD_REVISION, Python).",
            ["worker", "version", "revision", "python"],
            registry=registry,
        )
        self.build_info.labels(
            worker,
            build_version(),
            os.environ.get("APPT_BUILD_REVISION", "unknown"),
            platform.python_version(),
        ).set(1)
        self.queue_messages = Gauge(
            "appt_queue_messages",
            "Messages ready in a queue this worker watches (role: work, dead_letter), as of the last "
            "health check; absent while the broker is unreachable.",
            ["worker", "queue", "role"],
            registry=registry,
        )
        self.queue_consumers = Gauge(
            "appt_queue_consumers",
            "Consumers of a queue this worker watches (all replicas), as of the last health check.",
            ["worker", "queue", "role"],
            registry=registry,
        )
        self.messages = Counter(
            "appt_messages",
            "Deliveries by message type and outcome: handled, duplicate, dead_lettered, retried "
            "(parked in a delay queue), requeued (handed back to the broker).",
            ["worker", "type", "outcome"],
            registry=registry,
        )
        self.handler_seconds = Histogram(
            "appt_handler_duration_seconds",
            "From decoded to acknowledged, for handled and duplicate messages (in-place retries included).",
            ["worker", "type"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "appt_retries",
            "Retries by kind: conflict (serialization failure or deadlock, whole transaction again), "
            "transient (in place, after a short wait), delayed (through a delay queue).",
            ["worker", "kind"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "appt_dead_letters",
            "Messages this worker dead-lettered, by reason (x-dead-letter-reason).",
            ["worker", "reason"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "appt_batch_size",
            "Deliveries per transaction the consumer began (1: a delivery alone, on the single path; more: "
            "a batch, workers/runtime/batch.py). Attempts count: a batch that rolls back, and each of its "
            "deliveries going on alone, are all observed.",
            ["worker"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_fallbacks = Counter(
            "appt_batch_fallbacks",
            "Batches rolled back whose deliveries then went one at a time through the single path, by "
            "what failed: conflict (serialization failure or deadlock), transient (database or broker "
            "away), dead_letter (a handler refused a message), handler_error (any other exception).",
            ["worker", "kind"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "appt_messages_in_flight", "Deliveries being processed now.", ["worker"], registry=registry
        )
        self.broker_up = Gauge(
            "appt_broker_connected", "1 while the broker connection is open.", ["worker"], registry=registry
        )
        self.database_up = Gauge(
            "appt_database_up", "1 when the last database check succeeded.", ["worker"], registry=registry
        )
        self.outbox_backlog = Gauge(
            "appt_outbox_backlog",
            "Unpublished outbox rows of this worker (all replicas), as of the last health check.",
            ["worker"],
            registry=registry,
        )
        self.outbox_oldest_age = Gauge(
            "appt_outbox_oldest_unpublished_age_seconds",
            "Age of this worker's oldest unpublished outbox row (0 when none), as of the last health check.",
            ["worker"],
            registry=registry,
        )
        self._messages: dict[tuple[str, str], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self._batch_size: Histogram | None = None

    def message(self, message_type: str, outcome: Outcome, duration_s: float | None = None) -> None:
        """Count one delivery's outcome (a `DeadLettered` also counts the dead letter, by its reason)."""
        key = (message_type, outcome.label)
        counter = self._messages.get(key)
        if counter is None:
            counter = self._messages[key] = self.messages.labels(self.worker, message_type, outcome.label)
        counter.inc()
        if isinstance(outcome, DeadLettered):
            self.dead_letters.labels(self.worker, outcome.reason).inc()
        if duration_s is not None:
            histogram = self._latency.get(message_type)
            if histogram is None:
                histogram = self._latency[message_type] = self.handler_seconds.labels(
                    self.worker, message_type
                )
            histogram.observe(duration_s)

    def outcomes(self) -> dict[str, int]:
        """Deliveries so far by outcome key ("handled", "duplicate", "dead_lettered:<reason>", ...), all
        message types together, read from the counters above (what tests and the drain's log line show)."""
        counts: dict[str, int] = {}
        for metric, label in ((self.messages, "outcome"), (self.dead_letters, "reason")):
            for sample in next(iter(metric.collect())).samples:
                if not sample.name.endswith("_total") or not sample.value:
                    continue
                value = sample.labels[label]
                if label == "outcome" and value == DeadLettered.label:
                    continue  # by reason, from dead_letters
                key = DeadLettered(value).key if label == "reason" else value
                counts[key] = counts.get(key, 0) + int(sample.value)
        return counts

    def transaction(self, deliveries: int) -> None:
        """A transaction begun for `deliveries` deliveries (1: the single path)."""
        histogram = self._batch_size
        if histogram is None:
            histogram = self._batch_size = self.batch_size.labels(self.worker)
        histogram.observe(deliveries)

    def batch_fallback(self, kind: str) -> None:
        self.batch_fallbacks.labels(self.worker, kind).inc()

    def retry(self, kind: str) -> None:
        self.retries.labels(self.worker, kind).inc()

    def track_in_flight(self, count: Callable[[], int]) -> None:
        self.in_flight.labels(self.worker).set_function(lambda: float(count()))

    def track_broker(self, connected: Callable[[], bool]) -> None:
        self.broker_up.labels(self.worker).set_function(lambda: 1.0 if connected() else 0.0)

    def track_published(self, read: Callable[[], int]) -> None:
        self.registry.register(_Published(self.worker, read))

    def database(self, up: bool) -> None:
        self.database_up.labels(self.worker).set(1 if up else 0)

    def outbox(self, backlog: int, oldest_age_s: float) -> None:
        self.outbox_backlog.labels(self.worker).set(backlog)
        self.outbox_oldest_age.labels(self.worker).set(oldest_age_s)

    def queue(self, name: str, role: str, messages: int, consumers: int) -> None:
        self.queue_messages.labels(self.worker, name, role).set(messages)
        self.queue_consumers.labels(self.worker, name, role).set(consumers)

    def forget_queues(self) -> None:
        """A stale depth is worse than none: alerts on absence say the probe stopped."""
        self.queue_messages.clear()
        self.queue_consumers.clear()

    def render(self) -> bytes:
        return generate_latest(self.registry)
