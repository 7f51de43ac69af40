"""Live changes through the portal HTTP API: the customer's and the office's event streams, resumed with
Last-Event-ID across a reconnect without losing a change; and the office's approval queue."""

import asyncio
import uuid

import pytest
from sqlalchemy.engine import make_url

from tests import factories as f
from tests.api.conftest import Api, events, is_ready, running_api
from tests.api.test_customer import offered
from tests.e2e.test_policy_engine import APPROVAL, World, everything
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


def key() -> str:
    return f"req-{uuid.uuid4().hex[:12]}"


def changes(events) -> list[dict]:
    """Every view change the events list (feed v2: one event per change, its views in `changes`), each
    with its event's customer and job."""
    return [
        {"customer_id": e["data"].get("customer_id"), "job_id": e["data"].get("job_id"), **change}
        for e in events
        for change in e["data"].get("changes", ())
    ]


def saw(events, view: str, **fields) -> bool:
    return any(
        change.get("view") == view and all(change.get(k) == v for k, v in fields.items())
        for change in changes(events)
    )


async def test_a_customer_stream_resumes_after_a_reconnect_without_losing_a_change(api: Api, world: World):
    await world.settings({"settings": everything()})
    await world.book("apt-1")
    await world.book("apt-2")
    client = api.customer("cust-1")
    await offered(client, "apt-1")
    await offered(client, "apt-2")

    # Connect, note where we are, and drop the connection.
    async with events(client, "/v1/events") as stream:
        first = await stream.until(is_ready)
    last_id = first[-1]["id"]

    # While disconnected: the customer cancels apt-1 (through the API) and it completes.
    sent = await client.post(
        "/v1/appointments/apt-1/cancel", json={}, headers={"Idempotency-Key": key(), "If-Match": '"1"'}
    )
    request_id = sent.json()["request_id"]
    assert (await client.get(f"/v1/requests/{request_id}", params={"wait": 20})).json()[
        "status"
    ] == "completed"

    # Reconnect with Last-Event-ID: what happened meanwhile comes first, then live changes follow.
    async with events(client, "/v1/events", headers={"Last-Event-ID": last_id}) as stream:
        missed = await stream.until(
            lambda events: (
                saw(events, "appointment", appointment_id="apt-1", status="canceled")
                and saw(events, "request", request_id=request_id, status="completed")
            ),
        )
        assert saw(missed, "appointment", appointment_id="apt-1", status="canceled")
        assert saw(missed, "request", request_id=request_id, status="completed")
        assert all(int(e["id"]) > 0 for e in missed)
        # Live: another change while connected.
        live_request = key()
        await client.post(
            "/v1/appointments/apt-2/cancel",
            json={},
            headers={"Idempotency-Key": live_request, "If-Match": "1"},
        )
        live = await stream.until(
            lambda events: saw(events, "appointment", appointment_id="apt-2", status="canceled")
        )
        assert saw(live, "appointment", appointment_id="apt-2", status="canceled")
        assert all(e["data"].get("customer_id") in (None, "cust-1") for e in missed + live)
        # One event per change (feed v2): the cancel moved the appointment and completed the request at
        # once, so the event that says the appointment is canceled says the request completed too.
        (canceled,) = [
            e
            for e in live
            if ("appointment", "canceled")
            in {(c["view"], c.get("status")) for c in e["data"].get("changes", ())}
        ]
        assert {(c["view"], c.get("status")) for c in canceled["data"]["changes"]} >= {
            ("appointment", "canceled"),
            ("request", "completed"),
        }


async def test_the_office_stream_sees_every_customer_and_a_customer_only_their_own(api: Api, world: World):
    await world.settings({"settings": everything()})
    await world.book("apt-a", customer_id="cust-a")
    await world.book("apt-b", customer_id="cust-b")
    a, b = api.customer("cust-a"), api.customer("cust-b")
    await offered(a, "apt-a")
    await offered(b, "apt-b")
    async with events(api.office(), "/v1/office/events") as board, events(b, "/v1/events") as other:
        await board.until(is_ready)
        await other.until(is_ready)
        await a.post(
            "/v1/appointments/apt-a/cancel", json={}, headers={"Idempotency-Key": key(), "If-Match": "1"}
        )
        seen = await board.until(
            lambda events: saw(events, "appointment", appointment_id="apt-a", status="canceled")
        )
        assert saw(seen, "appointment", appointment_id="apt-a", status="canceled", customer_id="cust-a")
        # cust-b's stream heard nothing of cust-a.
        quiet = await other.until(lambda events: False, timeout_s=2)
        assert not any(e["data"].get("customer_id") == "cust-a" for e in quiet)


async def test_the_office_approves_and_declines_waiting_requests(api: Api, world: World):
    await world.settings({"settings": everything(APPROVAL)})
    await world.book("apt-1")
    await world.book("apt-2")
    client, office = api.customer("cust-1"), api.office()
    first = await offered(client, "apt-1")
    assert first["offers"]["cancel"]["needs_approval"]
    await offered(client, "apt-2")
    approve_id, decline_id = key(), key()
    for appointment_id, request_id in (("apt-1", approve_id), ("apt-2", decline_id)):
        sent = await client.post(
            f"/v1/appointments/{appointment_id}/cancel",
            json={"reason": "Moving"},
            headers={"Idempotency-Key": request_id, "If-Match": '"1"'},
        )
        assert sent.status_code == 202
        waiting = (await client.get(sent.headers["location"], params={"wait": 20})).json()
        assert waiting["status"] == "awaiting_approval"

    queue = (await office.get("/v1/office/approvals")).json()["approvals"]
    assert {a["request_id"] for a in queue} == {approve_id, decline_id}
    assert all(a["customer_id"] == "cust-1" and a["appointment"]["appointment_id"] for a in queue)

    yes = await office.post(
        f"/v1/office/approvals/{approve_id}/decision", json={"approved": True, "decided_by": "csr-1"}
    )
    no = await office.post(
        f"/v1/office/approvals/{decline_id}/decision",
        json={"approved": False, "reason": "The crew is already on its way", "decided_by": "csr-1"},
    )
    assert yes.status_code == no.status_code == 202
    final = {"wait": 20, "until": "final"}
    done = (await client.get(f"/v1/requests/{approve_id}", params=final)).json()
    assert done["status"] == "completed"
    declined = (await client.get(f"/v1/requests/{decline_id}", params=final)).json()
    assert declined["status"] == "rejected" and declined["reason"]
    assert (await office.get("/v1/office/approvals")).json()["approvals"] == []
    # A decided (or unknown) request is no longer waiting.
    again = await office.post(
        f"/v1/office/approvals/{approve_id}/decision", json={"approved": True, "decided_by": "csr-1"}
    )
    assert again.status_code == 404
    board = (await office.get("/v1/office/appointments")).json()
    assert {a["appointment_id"] for a in board["appointments"]} >= {"apt-1", "apt-2"}
    assert (await office.get(f"/v1/office/requests/{approve_id}")).json()["status"] == "completed"


async def test_after_a_broker_outage_the_stream_ends_and_a_resume_replays_what_the_outage_hid(
    settings, topology, workers, api_roles, broker, engine
):
    """The API's feed queue misses the events of a broker outage: open streams are ended once it is
    back, and the client's reconnect with Last-Event-ID gets the change from the read store."""
    url = make_url(settings.amqp_url.replace("amqp://", "postgresql://", 1))
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5672)
    await proxy.start()
    proxied = settings.amqp_url.replace(f"{url.host}:{url.port or 5672}", f"127.0.0.1:{proxy.port}", 1)
    try:
        async with running_api(settings, topology, api_roles, amqp_url=proxied) as api:
            world = World(broker, engine)
            world.tenant = api.tenant
            await world.settings({"settings": everything()})
            await world.book("apt-1")
            client = api.customer("cust-1")
            await offered(client, "apt-1")
            async with events(client, "/v1/events") as stream:
                last_id = (await stream.until(is_ready))[-1]["id"]
                proxy.pause()  # the API loses the broker; the workers keep theirs
                request_id, done = await world.ask("apt-1", f.cancel("moving"), requester="cust-1")
                assert done.status == "completed"
                proxy.resume()
                # The server ends the stream once the feed is back (the outage's events are gone).
                await asyncio.wait_for(stream.task, 60)
            async with events(client, "/v1/events", headers={"Last-Event-ID": last_id}) as resumed:
                replayed = await resumed.until(
                    lambda events: saw(events, "request", request_id=request_id, status="completed")
                )
                assert saw(replayed, "appointment", appointment_id="apt-1", status="canceled")
    finally:
        await proxy.close()
