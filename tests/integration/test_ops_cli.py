"""The ops commands as an operator runs them (`apptctl status`, `dlq ...`, `topology export`), each in its
own process, against the real broker and database of the test's namespace."""

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from sqlalchemy import delete, func, insert, select

from apptctl import readstore
from apptctl.management import ManagementApi, ManagementUnavailable
from apptctl.scenario_runner import publish_malformed
from contracts.decoding import CONTENT_TYPE
from contracts.envelope import Envelope
from infra import topology as topology_module
from infra.db.tables import decisions, inbox, outbox
from tests import factories, waiting
from tests.conftest import unique_tenant
from workers.runtime.broker import Broker, sign, to_amqp
from workers.runtime.settings import Settings

pytestmark = pytest.mark.integration

WAIT_S = 20.0
# The broker's first queue statistics can take ~10 s on fresh queues, so waits here run longer.
eventually = partial(waiting.eventually, timeout_s=WAIT_S, interval_s=0.1)


# --- running the CLI and waiting ------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def apptctl(
    settings: Settings, *args: str, stdin: Any = None, timeout_s: float = 60.0, env: dict | None = None
) -> Run:
    """`apptctl ARGS` in a subprocess on the test's namespace and database; no terminal on stdin."""
    env = {
        **os.environ,
        "AMQP_URL": settings.amqp_url,
        "DATABASE_URL": settings.database_url,
        "APPT_NAMESPACE": settings.namespace,
        "APPT_RETRY_DELAYS_S": settings.retry_delays,
        **(env or {}),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apptctl.main",
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


async def status_json(settings: Settings, *extra: str) -> tuple[int, dict]:
    run = await apptctl(settings, "status", "--json", *extra)
    assert run.code in (0, 1, 2, 3), run.err
    assert run.json()["exit_code"] == run.code
    return run.code, run.json()


async def status_until(
    settings: Settings, accept: Callable[[int, dict], bool], what: str, *extra: str
) -> dict:
    """Status (as JSON) once `accept(exit code, status)` holds; management counts refresh every ~5 s."""
    seen: list[Any] = []

    async def check() -> dict | None:
        code, data = await status_json(settings, *extra)
        seen[:] = [code, data["problems"]]
        return data if accept(code, data) else None

    try:
        return await eventually(check, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status: {seen}") from None


def management_counts_known(data: dict) -> bool:
    return all(q["unacknowledged"] is not None for q in data["queues"])


# --- dead letters as the consumer writes them -----------------------------------------------------


def dead_letter(
    message: Envelope, *, exchange: str, routing_key: str, queue: str, reason: str
) -> aio_pika.Message:
    """`message` as our consumer dead-letters it: original bytes and properties, plus why and where from."""
    amqp = to_amqp(message)
    amqp.headers.update(
        {
            "x-dead-letter-reason": reason,
            "x-dead-letter-detail": "RuntimeError: a bug that has since been fixed",
            "x-original-exchange": exchange,
            "x-original-routing-key": routing_key,
            "x-original-queue": queue,
            "x-dead-lettered-by": "policy_gate",
            "x-dead-lettered-at": datetime.now(UTC).isoformat(),
        }
    )
    return amqp


async def put_dead_letter(broker: Broker, message: Envelope, reason: str = "handler_error") -> str:
    """Put a valid request into policy_gate's dead-letter queue, as if a transient bug had refused it."""
    topology = broker.topology
    spec = topology.queue_of("policy_gate")
    letter = dead_letter(
        message,
        exchange=topology.exchange("requests"),
        routing_key="modify.requested",
        queue=spec.name,
        reason=reason,
    )
    # It came from a portal, so it carries the portal's signature (dead-lettering keeps the headers).
    sign(letter, Settings().keyring().current_for(message.producer))
    await broker.publish(topology.dead_letter_exchange, spec.dead_letter_queue or "", letter)
    return spec.dead_letter_queue or ""


async def dead_letter_total(settings: Settings) -> int:
    run = await apptctl(settings, "dlq", "list", "--json")
    assert run.code == 0, run.err
    return run.json()["total"]


# --- status ------------------------------------------------------------------------------------------


async def test_status_is_healthy_with_the_workers_running_and_json_has_every_count(settings, workers):
    data = await status_until(
        settings,
        lambda code, d: code == 0 and management_counts_known(d),
        "a healthy status with management counts",
    )
    assert data["healthy"] is True and data["problems"] == []
    assert data["namespace"] == settings.namespace
    assert data["broker"]["reachable"] and data["management_api"]["reachable"]
    by_name = {q["name"]: q for q in data["queues"]}
    for worker in ("policy_gate", "modify_handler", "portal_sync"):
        work, dead = by_name[f"{settings.namespace}.{worker}"], by_name[f"{settings.namespace}.{worker}.dead"]
        assert work["kind"] == "work" and work["worker"] == worker and work["exists"] is True
        assert work["consumers"] >= 1
        assert isinstance(work["ready"], int) and isinstance(work["unacknowledged"], int)
        assert "oldest_message_age_s" in work
        assert dead["kind"] == "dead-letter" and dead["ready"] == 0
        assert data["dead_letters"][dead["name"]] == {"total": 0, "by_reason": {}, "truncated": False}
    assert set(data["outbox"]) == {"max_age_s", "unpublished", "oldest_unpublished_age_s", "error"}
    assert data["outbox"]["max_age_s"] == 60 and data["outbox"]["error"] is None

    text = await apptctl(settings, "status")
    assert text.code == 0, text.out
    assert "status: healthy" in text.out
    assert f"{settings.namespace}.policy_gate " in text.out


async def test_status_fails_and_says_which_worker_to_start_when_a_queue_has_no_consumer(settings, topology):
    run = await apptctl(settings, "status")
    assert run.code == 2  # critical
    assert "status: UNHEALTHY, CRITICAL" in run.out
    for worker in ("policy_gate", "modify_handler", "portal_sync"):
        assert f"queue {topology.namespace}.{worker} has no consumer" in run.out
        assert f"`apptctl worker {worker}`" in run.out

    code, data = await status_json(settings)
    assert code == 2 and data["healthy"] is False and data["state"] == "critical"
    assert sum("has no consumer" in p for p in data["problems"]) == 3


async def test_status_fails_when_the_topology_is_missing(settings, service_urls, database_url):
    missing = Settings(AMQP_URL=service_urls.amqp, DATABASE_URL=database_url, APPT_NAMESPACE="nosuch-ns")
    code, data = await status_json(missing)
    assert code == 2
    assert all(q["exists"] is False for q in data["queues"])
    assert any("apptctl topology apply" in p for p in data["problems"])


async def test_an_unreachable_management_api_is_its_own_problem_with_exit_code_3(settings, workers):
    nowhere = {"RABBITMQ_MANAGEMENT_URL": "http://guest:guest@127.0.0.1:9/"}  # the discard port: refused
    run = await apptctl(settings, "status", env=nowhere)
    assert run.code == 3, run.out + run.err  # unknown: everything that could be checked is fine
    assert "status: UNKNOWN" in run.out and "status: healthy" not in run.out
    assert "management API is unreachable" in run.out and "rabbitmq_management" in run.out

    as_json = await apptctl(settings, "status", "--json", env=nowhere)
    data = as_json.json()
    assert as_json.code == 3 and data["state"] == "unknown" and data["problem_severities"] == ["unknown"]
    assert data["management_api"]["reachable"] is False


async def test_status_watch_refreshes_until_ctrl_c(settings, workers):
    env = {
        **os.environ,
        "AMQP_URL": settings.amqp_url,
        "DATABASE_URL": settings.database_url,
        "APPT_NAMESPACE": settings.namespace,
        "APPT_RETRY_DELAYS_S": settings.retry_delays,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apptctl.main", "status", "--watch", "--interval", "0.5",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    reports: list[bytes] = []
    while len(reports) < 2:
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        assert line, "status --watch ended by itself"
        if line.startswith(b"status: "):
            reports.append(line)
    process.send_signal(signal.SIGINT)
    await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0


async def test_status_fails_when_an_outbox_row_waits_longer_than_the_limit(settings, engine, workers):
    row_id = await _old_outbox_row(engine, age_s=120)
    try:
        data = await status_until(
            settings,
            lambda code, d: code == 1 and any(p.startswith("outbox:") for p in d["problems"]),
            "the outbox problem",
        )
        assert data["outbox"]["unpublished"] >= 1
        assert data["outbox"]["oldest_unpublished_age_s"] >= 120
        problem = next(p for p in data["problems"] if p.startswith("outbox:"))
        assert "limit 1m00s" in problem and "workers" in problem

        # The same backlog under a larger limit is fine: only its age makes it a problem.
        relaxed = await status_until(
            settings,
            lambda code, d: code == 0,
            "a healthy status with a 1 h limit",
            "--outbox-max-age",
            "3600",
        )
        assert relaxed["outbox"]["max_age_s"] == 3600
    finally:
        async with engine.begin() as connection:
            await connection.execute(delete(outbox).where(outbox.c.id == row_id))


async def _old_outbox_row(engine, age_s: float) -> int:
    """An unpublished row of a producer no relay serves, `age_s` old."""
    async with engine.begin() as connection:
        return (
            await connection.execute(
                insert(outbox)
                .values(
                    message_id=uuid.uuid4(),
                    producer="ops-cli-test",
                    exchange_role="events",
                    routing_key="ops.test",
                    message_type="ops.test",
                    correlation_id="ops-test",
                    tenant_id="ops-test",
                    headers={},
                    body=b"{}",
                    created_at=func.now() - func.make_interval(0, 0, 0, 0, 0, 0, age_s),
                )
                .returning(outbox.c.id)
            )
        ).scalar_one()


# --- dead letters: status, list, show ---------------------------------------------------------------


async def _refused_requests(broker: Broker) -> dict[str, list[str]]:
    """Two malformed requests and one with the wrong content type; policy_gate and portal_sync both
    consume requests, so each of their dead-letter queues gets all three."""
    malformed = [await publish_malformed(broker) for _ in range(2)]
    wrong_type = str(uuid.uuid4())
    await broker.publish(
        broker.topology.exchange("requests"),
        "modify.requested",
        aio_pika.Message(
            b'{"type": "modify.requested"}',
            content_type="text/plain",
            message_id=wrong_type,
            app_id="portal-web",
        ),
    )
    return {"malformed_json": malformed, "wrong_content_type": [wrong_type]}


async def test_dead_letters_make_status_unhealthy_and_list_groups_them_by_reason(settings, broker, workers):
    sent = await _refused_requests(broker)
    ns = settings.namespace
    expected = {"malformed_json": 2, "wrong_content_type": 1}

    def dead_lettered(code: int, data: dict) -> bool:
        counts = data["dead_letters"]
        return all(counts[f"{ns}.{w}.dead"]["by_reason"] == expected for w in ("policy_gate", "portal_sync"))

    data = await status_until(settings, dead_lettered, "six dead letters in two queues")
    assert data["healthy"] is False
    assert data["dead_letters"][f"{ns}.policy_gate.dead"]["total"] == 3
    assert data["dead_letters"][f"{ns}.modify_handler.dead"]["total"] == 0
    problem = next(p for p in data["problems"] if f"{ns}.policy_gate.dead" in p)
    assert "malformed_json: 2" in problem and "wrong_content_type: 1" in problem and "apptctl dlq" in problem
    assert not any("no consumer" in p for p in data["problems"])
    # Reading them left them where they were.
    assert await dead_letter_total(settings) == 6

    listed = await apptctl(settings, "dlq", "list", "--json")
    groups = {(g["queue"], g["reason"]): g for g in listed.json()["groups"]}
    assert set(groups) == {(f"{ns}.{w}.dead", r) for w in ("policy_gate", "portal_sync") for r in expected}
    for (_, reason), g in groups.items():
        assert g["count"] == expected[reason]
        assert set(g["sample_ids"]) == set(sent[reason])

    text = await apptctl(settings, "dlq", "list", "--queue", "policy_gate")
    assert text.code == 0, text.err
    assert f"{ns}.policy_gate.dead: 3 dead letter(s)" in text.out
    assert f"{ns}.portal_sync.dead" not in text.out
    malformed_line = next(line for line in text.out.splitlines() if "malformed_json" in line)
    assert "2" in malformed_line.split() and sent["malformed_json"][0] in malformed_line

    shown = await apptctl(
        settings, "dlq", "show", sent["wrong_content_type"][0], "--queue", f"{ns}.policy_gate"
    )
    assert shown.code == 0, shown.err
    assert f"in {ns}.policy_gate.dead" in shown.out
    assert "reason: wrong_content_type" in shown.out
    assert '"x-original-exchange": "' + f'{ns}.requests"' in shown.out
    assert '"type": "modify.requested"' in shown.out  # the body, pretty-printed

    unknown = await apptctl(settings, "dlq", "show", str(uuid.uuid4()))
    assert unknown.code == 1 and "apptctl dlq list" in unknown.err


async def test_purge_refuses_without_yes_and_no_terminal_then_removes_only_what_is_selected(
    settings, broker, workers
):
    sent = await _refused_requests(broker)
    await eventually(lambda: _total_is(settings, 6), "six dead letters")

    refused = await apptctl(settings, "dlq", "purge")
    assert refused.code == 2
    assert "pass --yes" in refused.err
    assert await dead_letter_total(settings) == 6

    by_reason = await apptctl(settings, "dlq", "purge", "--reason", "malformed_json", "--yes")
    assert by_reason.code == 0, by_reason.err
    assert "purged 4 dead letter(s)" in by_reason.out
    listed = (await apptctl(settings, "dlq", "list", "--json")).json()
    assert listed["total"] == 2
    assert {g["reason"] for g in listed["groups"]} == {"wrong_content_type"}
    assert {i for g in listed["groups"] for i in g["sample_ids"]} == set(sent["wrong_content_type"])

    one_queue = await apptctl(settings, "dlq", "purge", "--queue", "portal_sync", "--yes")
    assert "purged 1 dead letter(s)" in one_queue.out

    everything = await apptctl(settings, "dlq", "purge", "--yes")
    assert everything.code == 0 and "purged 1 dead letter(s)" in everything.out
    assert await dead_letter_total(settings) == 0
    await status_until(settings, lambda code, d: code == 0, "a healthy status once purged")


async def _total_is(settings: Settings, n: int) -> bool:
    return await dead_letter_total(settings) == n


async def test_purge_on_a_terminal_asks_first_and_keeps_everything_when_told_no(settings, broker):
    await put_dead_letter(broker, factories.modify_requested(tenant=unique_tenant()))
    await eventually(lambda: _total_is(settings, 1), "one dead letter")
    master, slave = os.openpty()
    try:
        os.write(master, b"n\n")
        run = await apptctl(settings, "dlq", "purge", stdin=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert run.code == 1  # aborted
    assert "permanently delete 1 dead letter(s)" in run.out
    assert await dead_letter_total(settings) == 1


# --- replay ---------------------------------------------------------------------------------------------


async def _booked(broker: Broker, engine) -> tuple[str, str]:
    """A tenant with self-service on and one appointment, visible in the read store."""
    tenant, appointment_id = unique_tenant(), f"appt-{uuid.uuid4().hex[:8]}"
    await broker.publish_message(factories.portal_settings_updated(tenant=tenant))
    await broker.publish_message(factories.appointment_recorded(tenant=tenant, appointment_id=appointment_id))

    async def ready() -> bool:
        booked = await readstore.appointments(engine, tenant, [appointment_id])
        return bool(booked) and await readstore.settings_version(engine, tenant) is not None

    await eventually(ready, "the booking and settings in the read store")
    return tenant, appointment_id


async def _inbox_rows(engine, consumer: str, message_id: uuid.UUID) -> int:
    async with engine.connect() as connection:
        query = select(func.count()).where(inbox.c.consumer == consumer, inbox.c.message_id == message_id)
        return (await connection.execute(query)).scalar_one()


async def test_replay_sends_a_dead_letter_back_where_it_came_from_with_its_message_id(
    settings, broker, engine, workers
):
    tenant, appointment_id = await _booked(broker, engine)
    new_window = factories.arrival_window(12)
    request = factories.modify_requested(
        tenant=tenant,
        appointment_id=appointment_id,
        request_id=f"req-{uuid.uuid4().hex[:10]}",
        change=factories.reschedule(new_window),
    )
    dead_queue = await put_dead_letter(broker, request)
    data = await status_until(
        settings,
        lambda code, d: code == 1 and d["dead_letters"][dead_queue]["total"] == 1,
        "status to report the dead letter",
    )
    assert data["dead_letters"][dead_queue]["by_reason"] == {"handler_error": 1}

    # A spy bound where the request goes shows exactly what replay publishes.
    channel = await broker.connection.channel()
    spy = await channel.declare_queue(exclusive=True)
    await spy.bind(settings.namespace + ".requests", "modify.requested")

    run = await apptctl(settings, "dlq", "replay", "--id", str(request.message_id))
    assert run.code == 0, run.out + run.err
    assert f"replayed 1 from {dead_queue} to {settings.namespace}.requests / modify.requested" in run.out
    assert "replayed 1 of 1 dead letter(s); 0 failed" in run.out

    async def outcome():
        seen = await readstore.request(engine, tenant, request.correlation_id)
        return seen if seen and seen.status == "completed" else None

    await eventually(outcome, "the replayed request completed in the read store")
    moved = (await readstore.appointments(engine, tenant, [appointment_id]))[appointment_id]
    assert (moved.window_start, moved.window_end) == (new_window.start, new_window.end)
    async with engine.connect() as connection:
        decided = await connection.execute(
            select(decisions.c.message_id).where(
                decisions.c.tenant_id == tenant, decisions.c.request_id == request.correlation_id
            )
        )
        assert decided.scalar_one() == request.message_id
    assert await _inbox_rows(engine, "policy_gate", request.message_id) == 1
    assert await dead_letter_total(settings) == 0

    replayed = await spy.get(timeout=5)
    await replayed.ack()
    assert replayed.message_id == str(request.message_id)
    assert replayed.correlation_id == request.correlation_id
    assert replayed.type == request.type and replayed.content_type == CONTENT_TYPE
    assert replayed.body == to_amqp(request).body
    headers = replayed.headers
    assert headers["x-replayed-from"] == dead_queue and headers["x-replay-count"] == 1
    assert headers["x-tenant-id"] == tenant  # the original headers are kept ...
    assert not [
        h for h in headers if h.startswith(("x-dead-letter", "x-original", "x-death"))
    ]  # ... ours not
    await channel.close()

    # The same message dead-lettered and replayed again: the inbox drops it, nothing happens twice.
    duplicates_before = workers["policy_gate"].consumer.counts.get("duplicate", 0)
    await put_dead_letter(broker, request)
    await eventually(lambda: _total_is(settings, 1), "the second dead letter")
    again = await apptctl(settings, "dlq", "replay", "--reason", "handler_error")
    assert again.code == 0 and "replayed 1 of 1" in again.out
    await eventually(
        lambda: workers["policy_gate"].consumer.counts.get("duplicate", 0) == duplicates_before + 1,
        "policy_gate to drop the second replay as a duplicate",
    )
    after = (await readstore.appointments(engine, tenant, [appointment_id]))[appointment_id]
    assert after.version == moved.version
    assert await _inbox_rows(engine, "policy_gate", request.message_id) == 1
    assert await dead_letter_total(settings) == 0


async def test_replay_keeps_a_dead_letter_it_cannot_deliver(settings, broker):
    topology = broker.topology
    dead_queue = topology.queue_of("modify_handler").dead_letter_queue or ""
    nowhere = dead_letter(
        factories.appointment_recorded(tenant=unique_tenant()),
        exchange=f"{topology.namespace}.no-such-exchange",
        routing_key="office.appointment.recorded",
        queue=topology.queue_of("modify_handler").name,
        reason="handler_error",
    )
    unaddressed = aio_pika.Message(
        b"{}", message_id=str(uuid.uuid4()), headers={"x-dead-letter-reason": "other"}
    )
    for message in (nowhere, unaddressed):
        await broker.publish(topology.dead_letter_exchange, dead_queue, message)
    await eventually(lambda: _total_is(settings, 2), "two dead letters")

    run = await apptctl(settings, "dlq", "replay", "--all")
    assert run.code == 1
    assert "replayed 0 of 2 dead letter(s); 2 failed" in run.out
    # a dead letter goes back only to a route of its own worker (contracts/routes.py)
    assert "no-such-exchange / office.appointment.recorded is not a route of modify_handler" in run.err
    assert "says where it came from" in run.err
    assert await dead_letter_total(settings) == 2

    usage = await apptctl(settings, "dlq", "replay")
    assert usage.code == 2 and "exactly one of --id" in usage.err
    unknown_queue = await apptctl(settings, "dlq", "replay", "--all", "--queue", "nope")
    assert unknown_queue.code == 2 and "choose one of" in unknown_queue.err
    nothing = await apptctl(settings, "dlq", "replay", "--id", str(uuid.uuid4()))
    assert nothing.code == 1 and "no dead letter matched" in nothing.err


# --- topology export ------------------------------------------------------------------------------------


async def test_exported_definitions_import_into_rabbitmq_as_the_declared_topology(
    service_urls, tmp_path: Path
):
    namespace = f"x{uuid.uuid4().hex[:10]}"
    defaults = Settings()
    exported = tmp_path / "definitions.json"
    run = await apptctl(
        Settings(AMQP_URL=service_urls.amqp, DATABASE_URL=defaults.database_url, APPT_NAMESPACE=namespace),
        "topology",
        "export",
        "--output",
        str(exported),
    )
    assert run.code == 0, run.err
    document = json.loads(exported.read_text())
    api = ManagementApi(defaults.rabbitmq_management_url)
    try:
        await asyncio.to_thread(api._get, "/api/overview")
    except ManagementUnavailable as exc:
        pytest.skip(f"the RabbitMQ management API is needed to import definitions: {exc}")
    spec = topology_module.build(namespace)
    try:
        await asyncio.to_thread(_post_definitions, api, document)
        connection = await aio_pika.connect(service_urls.amqp)
        async with connection:
            # Redeclaring with the spec's arguments fails (PRECONDITION_FAILED) if the import made others.
            await topology_module.declare(await connection.channel(), spec)
        for queue in spec.queues:
            bindings = await asyncio.to_thread(api._get, f"/api/queues/%2F/{queue.name}/bindings")
            found = {(b["source"], b["routing_key"]) for b in bindings if b["source"]}
            assert found == {(spec.exchange(b.exchange_role), b.routing_key) for b in queue.bindings}
    finally:
        connection = await aio_pika.connect(service_urls.amqp)
        async with connection:
            await topology_module.delete(await connection.channel(), spec)


def _post_definitions(api: ManagementApi, document: dict) -> None:
    from urllib.request import Request, urlopen

    request = Request(
        api.base + "/api/definitions",
        data=json.dumps(document).encode(),
        headers={"Authorization": api._auth, "Content-Type": "application/json"},
        method="POST",
    )
    with urlopen(request, timeout=10) as response:
        assert response.status in (200, 201, 204)
