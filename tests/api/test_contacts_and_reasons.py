"""A construction project's named contacts acting through the API (the gate's ownership rule, projected
with the offer), and the business's cancel reasons offered with the appointment, on the real services."""

import uuid

import pytest
from sqlalchemy import text

from apptctl.scenario_runner import publish_all, wait_until
from contracts.common import ContactRole, Project, ProjectContact
from contracts.office_v2 import CancelSettings
from tests import factories as f
from tests.api.conftest import Api, checksum, events, is_ready
from tests.api.test_customer import capacity_in_chicago, offered
from tests.api.test_streams_and_office import changes, saw
from tests.e2e.test_policy_engine import World, everything

pytestmark = pytest.mark.integration
CUSTOMER = f.CUSTOMER_ID
REASONS = ["Tenant moved out", "Work no longer needed"]


def key() -> str:
    return f"req-{uuid.uuid4().hex[:12]}"


def project(project_id: str, *contacts: str) -> Project:
    return Project(
        project_id=project_id,
        contacts=[ProjectContact(contact_id=c, role=ContactRole.PROJECT_LEAD) for c in contacts],
    )


async def requester_of(engine, tenant: str, request_id: str) -> str | None:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                text("SELECT requester_id FROM portal.requests WHERE tenant_id = :t AND request_id = :r"),
                {"t": tenant, "r": request_id},
            )
        ).scalar_one_or_none()


async def test_a_project_contact_moves_one_install_of_several_and_another_projects_contact_cannot(
    api: Api, world: World, engine
):
    await world.settings({"settings": everything()})
    await capacity_in_chicago(world)
    tower = project("tower", "lead-fay", "sub-gus")
    await world.book("floor-1", project=tower)
    await world.book("floor-2", project=tower)
    await world.book("annex-1", project=project("annex", "lead-hal"))
    await world.book("house-1")  # the same customer's, no project
    fay, hal = api.customer("lead-fay"), api.customer("lead-hal")

    floor_2 = await offered(fay, "floor-2")
    assert floor_2["offers"]["reschedule"]["offered"]
    await offered(fay, "floor-1")
    jobs = (await fay.get("/v1/jobs")).json()["jobs"]
    assert [j["job_id"] for j in jobs] == ["job-floor-1", "job-floor-2"]
    assert [a["appointment_id"] for j in jobs for a in j["appointments"]] == ["floor-1", "floor-2"]
    for elsewhere in ("annex-1", "house-1"):
        assert (await fay.get(f"/v1/appointments/{elsewhere}")).status_code == 404
        assert (await fay.get(f"/v1/appointments/{elsewhere}/pickable-times")).status_code == 404
    assert (await hal.get("/v1/appointments/floor-2")).status_code == 404
    assert (await hal.get("/v1/jobs/job-floor-2")).status_code == 404
    assert [j["job_id"] for j in (await hal.get("/v1/jobs")).json()["jobs"]] == ["job-annex-1"]

    times = (await fay.get("/v1/appointments/floor-2/pickable-times")).json()["times"]
    assert times, "the contact sees the times it may pick"
    before = await checksum(engine, api.tenant)
    refused = await hal.post(
        "/v1/appointments/floor-2/reschedule",
        json={"new_window": times[0]["window"]},
        headers={"Idempotency-Key": key(), "If-Match": '"1"'},
    )
    assert refused.status_code == 404 and refused.json()["code"] == "not_found"
    assert await checksum(engine, api.tenant) == before

    request_id = key()
    sent = await fay.post(
        "/v1/appointments/floor-2/reschedule",
        json={"new_window": times[0]["window"]},
        headers={"Idempotency-Key": request_id, "If-Match": '"1"'},
    )
    assert sent.status_code == 202, sent.text
    done = (await fay.get(sent.headers["location"], params={"wait": 20})).json()
    assert done["status"] == "completed", done
    assert await requester_of(engine, api.tenant, request_id) == "lead-fay"
    assert (await hal.get(f"/v1/requests/{request_id}")).status_code == 404
    assert (await fay.get("/v1/appointments/floor-2")).json()["version"] == 2
    assert (await fay.get("/v1/appointments/floor-1")).json()["version"] == 1
    # The customer still sees the moved install.
    assert (await api.customer(CUSTOMER).get("/v1/appointments/floor-2")).json()["version"] == 2


async def test_a_contact_the_office_removes_can_no_longer_act(api: Api, world: World):
    await world.settings({"settings": everything()})
    await world.book("floor-1", project=project("tower", "lead-fay", "sub-gus"))
    gus = api.customer("sub-gus")
    await offered(gus, "floor-1")
    await publish_all(world.broker, [f.project_recorded(project("tower", "lead-fay"), tenant=world.tenant)])

    async def gone():
        return (await gus.get("/v1/appointments/floor-1")).status_code == 404

    assert await wait_until(gone, 20, 0.2)
    assert (await api.customer("lead-fay").get("/v1/appointments/floor-1")).status_code == 200


async def test_the_cancel_offer_lists_the_business_reasons_and_the_gate_holds_to_them(api: Api, world: World):
    layer = everything().model_copy(
        update={"cancel": CancelSettings(confirmed="allow", unconfirmed="allow", reason_required=True,
                                         allowed_reasons=REASONS)}
    )  # fmt: skip
    await world.settings({"settings": layer})
    await world.book("apt-1")
    await world.book("apt-2")
    client = api.customer(CUSTOMER)
    appointment = await offered(client, "apt-1", lambda a: a["offers"]["cancel"]["reasons"] is not None)
    assert appointment["offers"]["cancel"]["reasons"] == REASONS
    assert appointment["offers"]["cancel"]["reason_required"] is True
    assert appointment["offers"]["reschedule"].get("reasons") is None

    off_list = await client.post(
        "/v1/appointments/apt-2/cancel",
        json={"reason": "Something else"},
        headers={"Idempotency-Key": key(), "If-Match": '"1"'},
    )
    outcome = (await client.get(off_list.headers["location"], params={"wait": 20})).json()
    assert (outcome["status"], outcome["reason_code"]) == ("rejected", "cancel_reason_not_allowed")

    sent = await client.post(
        "/v1/appointments/apt-1/cancel",
        json={"reason": REASONS[1]},
        headers={"Idempotency-Key": key(), "If-Match": '"1"'},
    )
    assert (await client.get(sent.headers["location"], params={"wait": 20})).json()["status"] == "completed"


async def test_without_a_list_any_reason_is_offered(api: Api, world: World):
    await world.settings({"settings": everything()})
    await world.book("apt-1")
    cancel = (await offered(api.customer(CUSTOMER), "apt-1"))["offers"]["cancel"]
    assert (cancel["reasons"], cancel["reason_required"]) == (None, False)


async def test_a_contacts_stream_follows_its_projects_installs_live_and_after_a_reconnect(
    api: Api, world: World
):
    await world.settings({"settings": everything()})
    tower = project("tower", "lead-fay")
    await world.book("floor-1", project=tower)
    await world.book("floor-2", project=tower)
    await world.book("house-1")  # the same customer's, not the project's
    fay, customer = api.customer("lead-fay"), api.customer(CUSTOMER)
    for appointment_id in ("floor-1", "floor-2", "house-1"):
        await offered(customer, appointment_id)

    async with events(fay, "/v1/events") as stream:
        last_id = (await stream.until(is_ready))[-1]["id"]
        sent = await fay.post(
            "/v1/appointments/floor-1/cancel", json={}, headers={"Idempotency-Key": key(), "If-Match": '"1"'}
        )
        request_id = sent.json()["request_id"]
        live = await stream.until(
            lambda events: (
                saw(events, "request", request_id=request_id, status="completed")
                and saw(events, "appointment", appointment_id="floor-1", status="canceled")
            )
        )
        assert saw(live, "request", request_id=request_id, status="completed")
        assert saw(live, "appointment", appointment_id="floor-1", status="canceled")
        # The customer's own appointment outside the project is not the contact's to see.
        await customer.post(
            "/v1/appointments/house-1/cancel", json={}, headers={"Idempotency-Key": key(), "If-Match": '"1"'}
        )
        quiet = await stream.until(lambda events: False, timeout_s=3)
        assert not [c for c in changes(live + quiet) if c.get("appointment_id") == "house-1"]

    async with events(fay, "/v1/events", headers={"Last-Event-ID": last_id}) as stream:
        missed = await stream.until(is_ready)
        assert saw(missed, "appointment", appointment_id="floor-1", status="canceled")
        assert not [c for c in changes(missed) if c.get("appointment_id") == "house-1"]
