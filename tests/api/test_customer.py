"""The customer's side of the portal HTTP API on the real services: reads with local times and offers,
reschedule and cancel with Idempotency-Key and If-Match, outcomes with long-poll, and refusals."""

import uuid
from datetime import timedelta

import pytest

from apptctl.scenario_runner import publish_all, wait_until
from contracts.common import Confirmation
from tests import factories as f
from tests.api.conftest import Api
from tests.e2e.test_policy_engine import DENY, World, everything

pytestmark = pytest.mark.integration
PROBLEM = "application/problem+json"
CUSTOMER = f.CUSTOMER_ID
ZONE = "America/Chicago"


def key() -> str:
    return f"req-{uuid.uuid4().hex[:12]}"


async def offered(client, appointment_id: str, accept=lambda a: a["offers"]["modify"]) -> dict:
    async def ready():
        response = await client.get(f"/v1/appointments/{appointment_id}")
        if (
            response.status_code == 200
            and response.json()["offers"]["reschedule"]["reason_code"] != "offer_not_ready"
        ):
            body = response.json()
            return body if accept(body) else None
        return None

    found = await wait_until(ready, 20, 0.2)
    assert found, f"{appointment_id}: no offer satisfying the condition"
    return found


async def capacity_in_chicago(world: World, days: tuple[int, ...] = (8, 9)) -> list:
    """A 09:00-11:00 Chicago window with two places on each of `days` days from now."""
    today = f.now().date()
    windows = [
        {"date": today + timedelta(days=d), "start": "09:00", "end": "11:00", "places": 2} for d in days
    ]
    await publish_all(world.broker, [f.capacity_updated(tenant=world.tenant, timezone=ZONE, windows=windows)])
    return windows


async def test_jobs_show_upcoming_appointments_in_utc_and_local_time_with_what_may_be_done(
    api: Api, world: World
):
    await world.settings({"settings": everything()})
    await capacity_in_chicago(world)
    await world.book("apt-1")
    client = api.customer(CUSTOMER)

    appointment = await offered(client, "apt-1", lambda a: a["local_window"]["time_zone"] == ZONE)
    assert appointment["offers"]["reschedule"]["offered"] and appointment["offers"]["cancel"]["offered"]
    assert appointment["version"] == 1 and appointment["status"] == "scheduled"
    assert appointment["local_window"]["start"].endswith(("-06:00", "-05:00"))  # Chicago, not UTC

    jobs = (await client.get("/v1/jobs")).json()["jobs"]
    assert [j["job_id"] for j in jobs] == ["job-apt-1"]
    assert [a["appointment_id"] for a in jobs[0]["appointments"]] == ["apt-1"]
    one = await client.get("/v1/jobs/job-apt-1")
    assert one.status_code == 200 and one.json()["appointments"][0]["version"] == 1
    response = await client.get("/v1/appointments/apt-1")
    assert response.headers["etag"] == '"1"'

    times = (await client.get("/v1/appointments/apt-1/pickable-times")).json()
    assert times["time_zone"] == ZONE and len(times["times"]) == 2
    assert all(t["local_window"]["start"][11:16] == "09:00" for t in times["times"])
    assert all(t["free"] == 2 for t in times["times"])


async def test_a_confirmed_visit_that_may_not_move_says_why_and_offers_no_modify(api: Api, world: World):
    await world.settings({"settings": everything(DENY)})
    await world.book("apt-1", confirmation=Confirmation.CONFIRMED)
    appointment = await offered(api.customer(CUSTOMER), "apt-1", lambda a: True)
    assert not appointment["offers"]["modify"]
    assert appointment["offers"]["reschedule"]["reason_code"]
    assert appointment["offers"]["reschedule"]["reason"]


async def test_reschedule_answers_202_then_completes_and_repeats_are_idempotent(api: Api, world: World):
    await world.settings({"settings": everything()})
    await capacity_in_chicago(world)
    await world.book("apt-1")
    client = api.customer(CUSTOMER)
    await offered(client, "apt-1")
    times = (await client.get("/v1/appointments/apt-1/pickable-times")).json()["times"]
    target, elsewhere = times[0]["window"], times[1]["window"]
    request_id = key()
    headers = {"Idempotency-Key": request_id, "If-Match": '"1"'}

    sent = await client.post(
        "/v1/appointments/apt-1/reschedule", json={"new_window": target}, headers=headers
    )
    assert sent.status_code == 202, sent.text
    assert sent.headers["location"] == f"/v1/requests/{request_id}"
    done = (await client.get(sent.headers["location"], params={"wait": 20})).json()
    assert done["status"] == "completed", done

    moved = (await client.get("/v1/appointments/apt-1")).json()
    assert moved["version"] == 2
    assert moved["local_window"]["start"][11:16] == "09:00"

    # The same key and body: the same answer (even though the version moved on), nothing sent again.
    again = await client.post(
        "/v1/appointments/apt-1/reschedule", json={"new_window": target}, headers=headers
    )
    assert (again.status_code, again.json()) == (202, sent.json())
    # The same key with another body: refused.
    clash = await client.post(
        "/v1/appointments/apt-1/reschedule", json={"new_window": elsewhere}, headers=headers
    )
    assert clash.status_code == 409 and clash.json()["code"] == "idempotency_key_reused"
    assert clash.headers["content-type"] == PROBLEM
    assert (await client.get("/v1/appointments/apt-1")).json()["version"] == 2


async def test_a_stale_if_match_is_refused_and_nothing_is_sent(api: Api, world: World):
    await world.settings({"settings": everything()})
    await world.book("apt-1")
    client = api.customer(CUSTOMER)
    await offered(client, "apt-1")
    request_id = key()
    stale = await client.post(
        "/v1/appointments/apt-1/cancel", json={}, headers={"Idempotency-Key": request_id, "If-Match": '"7"'}
    )
    assert stale.status_code == 412 and stale.json()["code"] == "version_mismatch"
    assert stale.headers["etag"] == '"1"'
    assert (await client.get(f"/v1/requests/{request_id}")).status_code == 404
    missing = await client.post("/v1/appointments/apt-1/cancel", json={}, headers={"Idempotency-Key": key()})
    assert missing.status_code == 422 and missing.json()["code"] == "invalid_request"


async def test_cancel_completes_and_the_job_is_canceled(api: Api, world: World):
    await world.settings({"settings": everything()})
    await world.book("apt-1")
    client = api.customer(CUSTOMER)
    await offered(client, "apt-1")
    sent = await client.post(
        "/v1/appointments/apt-1/cancel",
        json={"reason": "Fixed it myself"},
        headers={"Idempotency-Key": key(), "If-Match": "1"},
    )
    assert sent.status_code == 202
    done = (await client.get(sent.headers["location"], params={"wait": 20})).json()
    assert done["status"] == "completed"

    async def job_canceled():
        job = (await client.get("/v1/jobs/job-apt-1")).json()
        return job if job["status"] == "canceled" else None

    job = await wait_until(job_canceled, 10, 0.2)
    assert job and job["appointments"][0]["status"] == "canceled"
    assert job["appointments"][0]["offers"]["modify"] is False


async def test_a_refused_request_comes_back_with_its_reason(api: Api, world: World):
    await world.settings({"settings": everything(DENY)})
    await world.book("apt-1")
    client = api.customer(CUSTOMER)
    await offered(client, "apt-1", lambda a: True)
    sent = await client.post(
        "/v1/appointments/apt-1/cancel", json={}, headers={"Idempotency-Key": key(), "If-Match": '"1"'}
    )
    outcome = (await client.get(sent.headers["location"], params={"wait": 20})).json()
    assert outcome["status"] == "rejected"
    assert outcome["reason_code"] and outcome["reason"]


async def test_long_poll_returns_at_once_when_settled_and_after_the_wait_when_pending(api: Api, world: World):
    client = api.customer(CUSTOMER)
    assert (await client.get(f"/v1/requests/{key()}", params={"wait": 1})).status_code == 404
    bad = await client.get(f"/v1/requests/{key()}", params={"wait": 31})
    assert bad.status_code == 422 and bad.headers["content-type"] == PROBLEM
