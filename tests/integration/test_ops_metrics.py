"""What operations builds on the metrics: the alert rules pass promtool (syntax and their own unit tests),
and every metric the rules and the Grafana dashboard name is exported by a real worker, including the
process collector, appt_build_info and the queue gauges read from the broker."""

import json
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import aio_pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from contracts.envelope import Envelope
from tests.faults.test_least_privilege import credentials  # noqa: F401 (fixture)
from tests.integration.test_observability import get, request, start_worker  # noqa: F401 (fixture)
from tests.waiting import eventually
from workers.runtime.database import UnitOfWork

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "infra" / "prometheus"
DASHBOARDS = sorted((ROOT / "infra" / "grafana" / "dashboards").glob("*.json"))
PROMTOOL = shutil.which("promtool") or (
    str(ROOT / "build" / "tools" / "promtool") if (ROOT / "build" / "tools" / "promtool").exists() else None
)
# Series Prometheus makes itself, not the workers.
PROMETHEUS_OWN = {"up"}
SELECTOR = re.compile(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\s*[{\[]")
OURS = re.compile(r"\b((?:appt|process|python)_[a-z0-9_]+)\b")


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every alert rule and dashboard panel target."""
    import yaml

    found = []
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            found.append((f"alerts.yml {rule['alert']}", rule["expr"]))
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.name} {panel['title']!r}", target["expr"]))
    return found


def names_in(expr: str) -> set[str]:
    return set(OURS.findall(expr)) | {n for n in SELECTOR.findall(expr) if n in PROMETHEUS_OWN}


def exported_sample_names(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
            "summary": ("_count", "_sum"),
        }.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def promtool(*args: str) -> str:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed: bash infra/prometheus/install-promtool.sh (.ci/run does)")
    result = subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_accepts_the_alert_rules_and_the_prometheus_config() -> None:
    assert "SUCCESS: 10 rules found" in promtool("check", "rules", "alerts.yml")
    promtool("check", "config", "prometheus.yml")


def test_the_alerts_fire_at_their_thresholds_and_not_below() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


def test_every_selector_names_a_metric_of_ours_or_prometheus() -> None:
    for where, expr in expressions():
        unknown = {n for n in SELECTOR.findall(expr) if n not in PROMETHEUS_OWN and not OURS.match(n)}
        assert not unknown, f"{where}: {unknown} is neither a worker metric nor Prometheus's own"


async def test_every_metric_in_the_rules_and_dashboards_is_exported_by_a_real_worker(start_worker, broker):  # noqa: F811
    async def handle(message: Envelope, uow: UnitOfWork) -> None:
        await uow.now()

    worker = await start_worker(handle)
    await broker.publish_message(request())

    async def scraped() -> str | None:
        status, text = await get(worker, "/metrics")
        return text if status == 200 and "appt_queue_consumers{" in text and worker.consumer.counts else None

    text = await eventually(scraped, "the queue gauges and one handled message")
    exported = exported_sample_names(text)
    used = {name for _, expr in expressions() for name in names_in(expr)} - PROMETHEUS_OWN
    assert used, "no metric found in the rules and dashboards"
    assert sorted(used - exported) == []


async def test_build_info_process_metrics_and_the_queues_a_worker_watches(start_worker, broker):  # noqa: F811
    async def handle(message: Envelope, uow: UnitOfWork) -> None:
        await uow.now()

    worker = await start_worker(handle)
    queue = broker.topology.queue_of("policy_gate")
    await broker.publish(
        broker.topology.exchange("requests"),
        "modify.requested",
        aio_pika.Message(b"{not json", content_type="application/json", app_id="portal-web"),
    )

    async def dead_letter_counted() -> dict | None:
        _, text = await get(worker, "/metrics")
        found = {
            (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "worker"))): s
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        dead = found.get(
            ("appt_queue_messages", (("queue", queue.dead_letter_queue), ("role", "dead_letter")))
        )
        return found if dead is not None and dead.value == 1 else None

    found = await eventually(dead_letter_counted, "the dead letter counted in appt_queue_messages")
    work = (("queue", queue.name), ("role", "work"))
    assert found[("appt_queue_consumers", work)].value == 1
    assert found[("appt_queue_messages", work)].value == 0
    build = [s for (name, _), s in found.items() if name == "appt_build_info"]
    assert len(build) == 1 and build[0].value == 1
    assert build[0].labels["version"] == metadata.version("appointment-self-service")
    assert found[("process_resident_memory_bytes", ())].value > 0
    assert ("process_start_time_seconds", ()) in found


async def test_a_workers_own_broker_user_may_read_the_depths_it_reports(credentials, topology):  # noqa: F811
    """The queue gauges are read with a passive declare, which needs no configure permission: a worker
    running on its least-privilege user (apptctl security apply) still reports them."""
    created, _ = credentials
    for worker in ("policy_gate", "modify_handler", "portal_sync"):
        queue = topology.queue_of(worker)
        connection = await aio_pika.connect(created[worker].amqp_url)
        async with connection:
            channel = await connection.channel()
            for name in (queue.name, queue.dead_letter_queue):
                declared = await channel.declare_queue(name, passive=True)
                assert declared.declaration_result.message_count == 0
