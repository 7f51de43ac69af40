"""The live feed v2, pure: one event per routing key listing its views in order, and how the HTTP API's
hub matches and wakes on such events."""

from portal_api.stream import FeedEvent, FeedHub
from tests import factories as f
from workers.portal_sync import feed, projection


def test_one_event_per_customer_and_job_listing_every_view_in_order() -> None:
    rescheduled = f.appointment_rescheduled(version=4)
    snapshot = projection.appointment_snapshot(rescheduled)
    outcome = projection.request_outcome(rescheduled)
    window = projection.available_window_row(f.capacity_window_changed(version=7))
    changed = [
        feed.appointment_changed(snapshot),
        feed.availability_changed(window),
        feed.request_changed(outcome, "completed", snapshot.customer_id, snapshot.job_id),
    ]
    appointment_event, free_times = feed.events(changed)
    assert (appointment_event.customer_id, appointment_event.job_id) == (f.CUSTOMER_ID, f.JOB_ID)
    assert [(c.view, c.status, c.version) for c in appointment_event.changes] == [
        ("appointment", "scheduled", 4),
        ("request", "completed", None),
    ]
    assert (free_times.customer_id, free_times.job_id) == (None, None)
    assert [(c.view, c.business_unit, c.version) for c in free_times.changes] == [
        ("availability", window["business_unit"], 7)
    ]
    assert feed.events([]) == []


def event(**data) -> FeedEvent:
    return FeedEvent(1, "acme", data)


def test_the_hub_matches_v2_events_by_customer_contact_appointment_and_job() -> None:
    hub = FeedHub(broker=None)  # dispatch never touches the broker
    customer = hub.subscribe("acme", "cust-1")
    contact = hub.subscribe("acme", "lead-1", [("floor-1", "job-9")])
    office = hub.subscribe("acme", None)
    theirs = event(
        customer_id="cust-2", job_id="job-2", changes=[{"view": "appointment", "appointment_id": "a"}]
    )
    floor = event(
        customer_id="cust-2", job_id="job-9", changes=[{"view": "offer", "appointment_id": "floor-1"}]
    )
    job = event(customer_id="cust-2", job_id="job-9", changes=[{"view": "job", "status": "canceled"}])
    mine = event(customer_id="cust-1", job_id="job-1", changes=[{"view": "request", "request_id": "r-1"}])
    assert [customer.wants(e) for e in (theirs, floor, job, mine)] == [False, False, False, True]
    assert [contact.wants(e) for e in (theirs, floor, job, mine)] == [False, True, True, False]
    assert all(office.wants(e) for e in (theirs, floor, job, mine))
    assert not customer.wants(FeedEvent(1, "other", mine.data))


def test_a_request_waiter_wakes_on_any_event_listing_its_request() -> None:
    hub = FeedHub(broker=None)
    waiter = hub.request_waiter("acme", "r-1")
    hub.dispatch(event(customer_id="c", changes=[{"view": "appointment", "appointment_id": "a"}]))
    assert not waiter.is_set()
    hub.dispatch(
        event(customer_id="c", changes=[{"view": "appointment"}, {"view": "request", "request_id": "r-1"}])
    )
    assert waiter.is_set()
