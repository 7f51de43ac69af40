"""Who may see and change what through the portal HTTP API: keys bound to tenants, each call one
customer's; anything else is 404 (no details), and the victim's rows stay exactly as they were."""

import uuid

import pytest

from tests import factories as f
from tests.api.conftest import Api, checksum
from tests.api.test_customer import offered
from tests.e2e.test_policy_engine import World, everything

pytestmark = pytest.mark.integration
PROBLEM = "application/problem+json"
NAIVE = {"start": "2030-01-01T09:00:00", "end": "2030-01-01T11:00:00"}  # no UTC offset: ambiguous
BACKWARDS = {"start": "2030-01-01T11:00:00Z", "end": "2030-01-01T09:00:00Z"}


async def test_no_key_or_an_unknown_key_is_401_and_the_wrong_kind_403(api: Api, world: World):
    for client in (
        api.client(tenant=api.tenant, customer="c1"),
        api.client("nope", tenant=api.tenant, customer="c1"),
    ):
        response = await client.get("/v1/jobs")
        assert response.status_code == 401 and response.headers["content-type"] == PROBLEM
        assert response.json()["code"] in ("unauthenticated", "unknown_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
    office_on_portal = await api.client(api.office_key, tenant=api.tenant, customer="c1").get("/v1/jobs")
    assert (office_on_portal.status_code, office_on_portal.json()["code"]) == (403, "portal_key_required")
    portal_on_office = await api.client(api.portal_key, tenant=api.tenant).get("/v1/office/approvals")
    assert (portal_on_office.status_code, portal_on_office.json()["code"]) == (403, "office_key_required")


async def test_another_tenant_and_another_customer_get_404_and_change_nothing(
    api: Api, world: World, other_world: World, engine
):
    await world.settings({"settings": everything()})
    await world.book("apt-victim", customer_id="cust-victim")
    await other_world.settings({"settings": everything()})
    await other_world.book("apt-elsewhere", customer_id="cust-victim")
    victim = api.customer("cust-victim")
    await offered(victim, "apt-victim")
    before = (await checksum(engine, api.tenant), await checksum(engine, api.other_tenant))

    # The same tenant, another customer: the victim's appointment does not exist for them.
    intruder = api.customer("cust-intruder")
    # A key bound to another tenant, asking for this tenant, or for its own tenant's ids here.
    foreign_key = api.client(api.other_portal_key, tenant=api.tenant, customer="cust-victim")
    # This tenant's key asking for the other tenant.
    cross = api.client(api.portal_key, tenant=api.other_tenant, customer="cust-victim")
    send = {"Idempotency-Key": f"req-{uuid.uuid4().hex[:10]}", "If-Match": '"1"'}
    for client in (intruder, foreign_key, cross):
        for method, path, body in (
            ("GET", "/v1/appointments/apt-victim", None),
            ("GET", "/v1/appointments/apt-victim/pickable-times", None),
            ("GET", "/v1/jobs/job-apt-victim", None),
            ("GET", "/v1/appointments/apt-elsewhere", None),
            ("POST", "/v1/appointments/apt-victim/cancel", {"reason": "not mine"}),
            ("POST", "/v1/appointments/apt-elsewhere/cancel", {"reason": "not mine"}),
        ):
            response = await client.request(method, path, json=body, headers=send if body else None)
            assert response.status_code == 404, (method, path, response.text)
            assert response.headers["content-type"] == PROBLEM and response.json()["code"] == "not_found"
            assert "cust-victim" not in response.text
        jobs = await client.get("/v1/jobs")
        assert jobs.status_code == 404 or jobs.json()["jobs"] == []

    # The victim's own request is not readable by the intruder either.
    mine = await victim.post(
        "/v1/appointments/apt-victim/cancel",
        json={},
        headers={"Idempotency-Key": "req-victim-1", "If-Match": '"1"'},
    )
    assert mine.status_code == 202
    assert (await intruder.get("/v1/requests/req-victim-1")).status_code == 404
    # Reusing the victim's key as the intruder is a clash, never a view of the victim's request.
    reuse = await intruder.post(
        "/v1/appointments/apt-victim/cancel",
        json={},
        headers={"Idempotency-Key": "req-victim-1", "If-Match": "1"},
    )
    assert reuse.status_code == 404
    done = (await victim.get("/v1/requests/req-victim-1", params={"wait": 20})).json()
    assert done["status"] == "completed"
    # Only the victim's own change happened in this tenant; the other tenant is untouched.
    assert await checksum(engine, api.other_tenant) == before[1]


@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [
        ("/v1/appointments/bad id/cancel", {}, {}),
        ("/v1/appointments/apt-1/cancel", {"Idempotency-Key": "has spaces"}, {}),
        ("/v1/appointments/apt-1/cancel", {"If-Match": "W/abc"}, {}),
        ("/v1/appointments/apt-1/cancel", {}, {"reason": "x" * 201}),
        ("/v1/appointments/apt-1/cancel", {}, {"reason": "ok", "extra": 1}),
        ("/v1/appointments/apt-1/reschedule", {}, {"new_window": NAIVE}),
        ("/v1/appointments/apt-1/reschedule", {}, {"new_window": BACKWARDS}),
        ("/v1/appointments/apt-1/reschedule", {}, {"new_window": "tomorrow"}),
        ("/v1/appointments/apt-1/reschedule", {}, None),
    ],
)  # fmt: skip
async def test_bad_input_gets_a_problem_document_naming_the_field(api: Api, path, headers, body):
    client = api.customer("cust-1")
    sent = {"Idempotency-Key": "req-valid-1", "If-Match": '"1"', **headers}
    response = await client.post(path, json=body, headers=sent)
    assert response.status_code in (404, 422), response.text
    assert response.headers["content-type"] == PROBLEM
    if response.status_code == 422:
        problem = response.json()
        assert problem["code"] == "invalid_request" and problem["invalid_params"]


async def test_bad_headers_are_422_not_500(api: Api):
    bad_tenant = api.client(api.portal_key, tenant="Not_A_Tenant", customer="c1")
    assert (await bad_tenant.get("/v1/jobs")).status_code == 422
    bad_customer = api.client(api.portal_key, tenant=api.tenant, customer="x" * 65)
    assert (await bad_customer.get("/v1/jobs")).status_code == 422
    bad_cursor = await api.customer("c1").get("/v1/events", headers={"Last-Event-ID": "yesterday"})
    assert bad_cursor.status_code == 422 and bad_cursor.headers["content-type"] == PROBLEM
    unknown = await api.customer("c1").get("/v1/nothing-here")
    assert unknown.status_code == 404 and unknown.headers["content-type"] == PROBLEM


async def test_the_broker_away_is_503_with_retry_after_and_nothing_recorded(api: Api, world: World, engine):
    await world.settings({"settings": everything()})
    await world.book("apt-1")
    client = api.customer("cust-1")
    await offered(client, "apt-1")
    before = await checksum(engine, api.tenant)
    svc = api.services
    await svc.broker.close()  # the API's broker connection is gone
    try:
        away = await client.post(
            "/v1/appointments/apt-1/cancel",
            json={},
            headers={"Idempotency-Key": "req-away-1", "If-Match": '"1"'},
        )
        assert away.status_code == 503 and away.json()["code"] == "broker_unavailable"
        assert int(away.headers["retry-after"]) > 0
        assert await checksum(engine, api.tenant) == before  # no idempotency record, nothing sent
        assert (await client.get("/v1/requests/req-away-1")).status_code == 404
    finally:
        await svc.broker.connect()
    # Once it is back, the same key goes through.
    back = await client.post(
        "/v1/appointments/apt-1/cancel", json={}, headers={"Idempotency-Key": "req-away-1", "If-Match": '"1"'}
    )
    assert back.status_code == 202
    assert (await client.get("/v1/requests/req-away-1", params={"wait": 20})).json()["status"] == "completed"


async def test_another_portal_of_the_tenant_can_neither_squat_nor_read_a_request_id(api: Api, world: World):
    """Request ids are per portal (issue 19): a second portal of the same tenant takes the first
    portal's id first; the first portal's request under it is still accepted and decided, each portal
    reads only its own request, and the office must say which portal's it means."""
    await world.settings({"settings": everything()})
    await world.book("apt-1")
    await world.book("apt-2")
    web = api.customer(f.CUSTOMER_ID)
    app = api.client(api.second_portal_key, tenant=api.tenant, customer=f.CUSTOMER_ID)
    await offered(web, "apt-1")
    await offered(web, "apt-2")
    request_id = f"req-{uuid.uuid4().hex[:12]}"
    headers = {"Idempotency-Key": request_id, "If-Match": '"1"'}

    squat = await app.post("/v1/appointments/apt-2/cancel", json={"reason": "mine now"}, headers=headers)
    assert squat.status_code == 202, squat.text
    squatted = (await app.get(squat.headers["location"], params={"wait": 20})).json()
    assert (squatted["appointment_id"], squatted["status"]) == ("apt-2", "completed")
    mine = await web.post("/v1/appointments/apt-1/cancel", json={"reason": "moving"}, headers=headers)
    assert mine.status_code == 202, mine.text  # not 409: the other portal's key is not this one's
    done = (await web.get(mine.headers["location"], params={"wait": 20})).json()
    assert (done["appointment_id"], done["status"]) == ("apt-1", "completed")
    again = (await app.get(f"/v1/requests/{request_id}")).json()
    assert again["appointment_id"] == "apt-2"

    office = api.office()
    ambiguous = await office.get(f"/v1/office/requests/{request_id}")
    assert ambiguous.status_code == 409 and ambiguous.json()["code"] == "request_id_ambiguous"
    for portal, appointment in (("portal-web", "apt-1"), ("portal-app", "apt-2")):
        named = await office.get(f"/v1/office/requests/{request_id}", params={"portal": portal})
        assert named.status_code == 200 and named.json()["appointment_id"] == appointment
