"""One grep of a request id in the JSON logs shows its whole path through the three workers, and nothing
of any other request."""

import io
import json
import logging
import sys
import uuid
from collections.abc import Iterator

import pytest
import structlog

from apptctl import readstore
from apptctl.scenario_runner import publish_all, wait_until
from tests import factories
from tests.conftest import unique_tenant
from tests.waiting import eventually
from workers.runtime.logging import configure_logging


@pytest.fixture
def json_log(monkeypatch) -> Iterator[io.StringIO]:
    """The production log set-up (one JSON object per line on stdout), with stdout captured here."""
    buffer = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(sys, "stdout", buffer)
    configure_logging("INFO")
    # Loggers must not keep this buffer once the test is over.
    structlog.configure(cache_logger_on_first_use=False)
    yield buffer
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def grep(buffer: io.StringIO, request_id: str) -> list[dict]:
    """What `grep '"correlation_id": "<id>"'` finds, parsed."""
    needle = f'"correlation_id": "{request_id}"'
    return [json.loads(line) for line in buffer.getvalue().splitlines() if needle in line]


async def test_one_grep_of_a_request_id_shows_its_path_across_the_three_workers(
    json_log, workers, broker, engine
):
    tenant = unique_tenant()
    await publish_all(
        broker,
        [
            factories.portal_settings_updated(tenant=tenant),
            factories.appointment_recorded(tenant=tenant, appointment_id="apt-a", job_id="job-a"),
            factories.appointment_recorded(tenant=tenant, appointment_id="apt-b", job_id="job-b"),
        ],
    )

    async def booked() -> bool:
        views = await readstore.appointments(engine, tenant, ["apt-a", "apt-b"])
        return len(views) == 2 and await readstore.settings_version(engine, tenant) is not None

    assert await wait_until(booked, 15)
    ours = factories.modify_requested(
        tenant=tenant, appointment_id="apt-a", request_id=f"req-{uuid.uuid4().hex}"
    )
    theirs = factories.modify_requested(
        tenant=tenant, appointment_id="apt-b", change=factories.cancel(), request_id=f"req-{uuid.uuid4().hex}"
    )
    await publish_all(broker, [ours, theirs])

    def whole_path() -> list[dict] | None:
        lines = grep(json_log, ours.correlation_id)
        seen = {(line.get("worker"), line["event"], line.get("message_type")) for line in lines}
        expected = {
            ("policy_gate", "message.handled", "modify.requested"),
            ("policy_gate", "outbox.published", "modify.approved"),
            ("modify_handler", "message.handled", "modify.approved"),
            ("modify_handler", "outbox.published", "appointment.rescheduled"),
            ("portal_sync", "message.handled", "modify.requested"),
            ("portal_sync", "message.handled", "appointment.rescheduled"),
        }
        return lines if expected <= seen else None

    lines = await eventually(whole_path, "the request's path through the three workers", timeout_s=20)
    assert {line["worker"] for line in lines} == {"policy_gate", "modify_handler", "portal_sync"}
    assert all(line["correlation_id"] == ours.correlation_id for line in lines)
    assert all(line.get("tenant_id", tenant) == tenant for line in lines)
    # Nothing of the other request leaks into this one's lines, and it has a path of its own.
    assert str(theirs.message_id) not in {line.get("message_id") for line in lines}
    await eventually(lambda: len(grep(json_log, theirs.correlation_id)) >= 3, "the other request's lines")
    for line in json_log.getvalue().splitlines():
        record = json.loads(line) if line.startswith("{") else {}
        if record.get("message_id") == str(theirs.message_id):
            assert record["correlation_id"] == theirs.correlation_id, record
