"""`apptctl trace REQUEST_ID` on the real pipeline: a served request's decision with its rule and setting,
its events, the read-store rows, the audit trail and timings; a refused one's dead letters; an unknown id."""

from datetime import timedelta

from apptctl.scenario_runner import publish_all
from apptctl.scenarios import window_on
from contracts.portal_v1 import Reschedule
from tests.e2e.test_delivery_guarantees import NOW, booked_world, outcome, request
from tests.e2e.test_signatures import REQUEST_READERS, send_raw
from tests.integration.test_ops_cli import apptctl
from tests.waiting import eventually


async def test_a_served_request_shows_decision_events_read_store_audit_and_timings(
    workers, broker, engine, settings
):
    tenant = await booked_world(broker, engine, [("apt-1", "job-1")])
    move = request(tenant, "apt-1", Reschedule(new_window=window_on(NOW + timedelta(days=4), 13)))
    await publish_all(broker, [move])
    assert (await outcome(engine, tenant, move.correlation_id)).status == "completed"

    run = await apptctl(settings, "trace", move.correlation_id, "--json")
    assert run.code == 0, run.err
    data = run.json()
    (found,) = data["tenants"]
    assert found["tenant_id"] == tenant
    assert found["decision"]["outcome"] == "approved" and found["decision"]["rule"]
    assert found["request"]["status"] == "completed"
    assert found["appointment"]["version"] == 2
    types = [e["message_type"] for e in found["events"]]
    assert {"modify.approved", "appointment.rescheduled"} <= set(types)
    assert "rescheduled" in [a["entry"] for a in found["audit"]]
    assert found["steps"][0]["what"].startswith("requested") and len(found["steps"]) >= 3
    assert data["dead_letters"] == []

    text = await apptctl(settings, "trace", move.correlation_id, "--tenant", tenant)
    assert text.code == 0
    assert "decision: approved reschedule of apt-1" in text.out and "rule: " in text.out
    assert (
        "appointment.rescheduled" in text.out and "timings:" in text.out and "dead letters: none" in text.out
    )


async def test_a_refused_request_shows_its_dead_letters_and_no_decision(workers, broker, engine, settings):
    tenant = await booked_world(broker, engine, [("apt-1", "job-1")])
    unsigned = request(tenant, "apt-1", Reschedule(new_window=window_on(NOW + timedelta(days=4), 13)))
    await send_raw(broker, unsigned, headers={})  # no signature

    async def both_dead_letters() -> dict | None:
        run = await apptctl(settings, "trace", unsigned.correlation_id, "--json")
        return run.json() if run.code == 0 and len(run.json()["dead_letters"]) == REQUEST_READERS else None

    data = await eventually(both_dead_letters, "the request's dead letters in the trace")
    assert data["tenants"] == []
    assert {d["reason"] for d in data["dead_letters"]} == {"signature_missing"}
    assert all(d["dead_lettered_at"] for d in data["dead_letters"])


async def test_an_unknown_request_id_says_where_to_look_and_exits_1(settings, topology):
    run = await apptctl(settings, "trace", "req-never-sent")
    assert run.code == 1
    assert "no trace of this request id" in run.out and "APPT_NAMESPACE" in run.out
