"""portal_sync's handler on the in-memory read store and unit of work: which views change, which live-feed
events (portal.view_changed v2) and which replies (modify.outcome) go out, for which facts, including
redelivery, late and reordered events and batches. No database, no broker (tests/integration and
tests/e2e run the same handler on the real ones)."""

import pytest

from contracts.common import JobStatus
from contracts.events_v1 import (
    AppointmentCanceled,
    AppointmentOfferChanged,
    AppointmentRescheduled,
    AppointmentUpdated,
    CapacityWindowChanged,
    JobStatusChanged,
    ModifyAwaitingApproval,
    ModifyFailed,
    ModifyRejected,
    OfficeOutcome,
    ProjectUpdated,
)
from contracts.feed_v2 import PortalViewChangedV2, ViewKind
from contracts.office_v1 import CapacityUpdated
from contracts.portal_v1 import ModifyOutcome, ModifyRequested
from contracts.reasons import FailureCode, RejectionCode
from tests import factories as f
from tests.fakes.portal_store import FakePortalStore
from tests.fakes.unit_of_work import FakeUnitOfWork
from workers.portal_sync.handlers import HANDLERS

TENANT = f.TENANT
REPLIES = "portal-web.replies"


@pytest.fixture
def store() -> FakePortalStore:
    return FakePortalStore()


@pytest.fixture
def uow(store: FakePortalStore) -> FakeUnitOfWork:
    return FakeUnitOfWork(store, producer="portal_sync")


async def handle(uow: FakeUnitOfWork, *messages) -> list:
    """Each message through portal_sync's handler table, one transaction each, as the runtime dispatches
    it alone; the events they emitted."""
    events = []
    for message in messages:
        events += await uow.handle(HANDLERS[type(message)], message)
    return events


def feed(events: list) -> list[tuple]:
    """The live-feed events: (customer, job, [(view, appointment or unit, status, version), ...])."""
    return [
        (
            e.payload.customer_id,
            e.payload.job_id,
            [
                (c.view, c.appointment_id or c.business_unit, c.status, c.version or c.request_id)
                for c in e.payload.changes
            ],
        )
        for e in events
        if isinstance(e, PortalViewChangedV2)
    ]


def replies(events: list) -> list[tuple]:
    """The replies: (request, status, reason code, queue, the request's portal)."""
    return [
        (
            e.payload.request_id,
            e.payload.status,
            e.payload.reason_code,
            e.payload.reply_to,
            e.request_producer,
        )
        for e in events
        if isinstance(e, ModifyOutcome)
    ]


def request(**fields) -> ModifyRequested:
    return f.modify_requested(reply_to=REPLIES, **fields)


def rescheduled(cause: ModifyRequested, *, version: int = 2, **fields) -> AppointmentRescheduled:
    return f.appointment_rescheduled(f.modify_approved(cause), version=version, **fields)


def status(store: FakePortalStore, request_id: str = f.REQUEST_ID, producer: str = "portal-web") -> str:
    return store.request(TENANT, request_id, producer)["status"]


APPOINTMENT = (ViewKind.APPOINTMENT, f.APPOINTMENT_ID)
REQUEST = (ViewKind.REQUEST, f.APPOINTMENT_ID)


# --- the request and its outcomes -------------------------------------------------------------------


async def test_a_request_is_recorded_pending_with_its_audit_line_and_a_feed_event(uow, store):
    sent = request()

    events = await handle(uow, sent)

    row = store.request(TENANT, f.REQUEST_ID)
    assert (row["status"], row["requester_id"], row["reply_to"], row["requested_at"]) == (
        "pending",
        f.CUSTOMER_ID,
        REPLIES,
        sent.occurred_at,
    )
    assert store.audit_entries(TENANT, f.APPOINTMENT_ID) == ["requested"]
    # The read store knows no appointment yet: routed to the requester, no job.
    assert feed(events) == [(f.CUSTOMER_ID, None, [(*REQUEST, "pending", f.REQUEST_ID)])]
    assert replies(events) == []
    assert all(e.correlation_id == f.REQUEST_ID and e.causation_id == sent.message_id for e in events)


async def test_a_request_for_a_known_appointment_is_routed_to_its_customer_and_job(uow):
    await handle(uow, f.appointment_updated(version=1))

    events = await handle(uow, request())

    assert feed(events) == [(f.CUSTOMER_ID, f.JOB_ID, [(*REQUEST, "pending", f.REQUEST_ID)])]


async def test_a_redelivered_or_resent_request_changes_nothing_and_emits_nothing(uow, store):
    sent = request()
    await handle(uow, sent)
    before = store.request(TENANT, f.REQUEST_ID).copy()

    again = await handle(uow, sent)  # the very message again
    resent = await handle(uow, request(requester_id="someone-else"))  # its id under a new message

    assert (again, resent) == ([], [])
    assert store.request(TENANT, f.REQUEST_ID) == before
    assert store.audit_entries(TENANT, f.APPOINTMENT_ID) == ["requested"]


async def test_awaiting_approval_advances_the_request_without_a_reply(uow, store):
    sent = request()
    await handle(uow, f.appointment_updated(version=1), sent)

    events = await handle(uow, f.modify_awaiting_approval(sent))

    assert status(store) == "awaiting_approval"
    assert feed(events) == [(f.CUSTOMER_ID, f.JOB_ID, [(*REQUEST, "awaiting_approval", f.REQUEST_ID)])]
    assert replies(events) == []
    assert store.audit_entries(TENANT, f.APPOINTMENT_ID) == [
        "requested",
        "office_recorded",
        "awaiting_approval",
    ]


async def test_a_rejection_answers_the_request_once(uow, store):
    sent = request()
    await handle(uow, f.appointment_updated(version=1), sent)
    rejected = f.modify_rejected(sent, code=RejectionCode.SAME_WINDOW)

    events = await handle(uow, rejected)
    again = await handle(uow, rejected)

    assert replies(events) == [(f.REQUEST_ID, "rejected", "same_window", REPLIES, "portal-web")]
    (reply,) = [e for e in events if isinstance(e, ModifyOutcome)]
    assert reply.payload.reason == rejected.payload.reason
    assert feed(events) == [(f.CUSTOMER_ID, f.JOB_ID, [(*REQUEST, "rejected", f.REQUEST_ID)])]
    assert again == []
    row = store.request(TENANT, f.REQUEST_ID)
    assert (row["status"], row["reason_code"], row["replied_at"]) == ("rejected", "same_window", store.now)
    assert store.audit_entries(TENANT, f.APPOINTMENT_ID) == ["requested", "office_recorded", "rejected"]


async def test_an_outcome_before_its_request_is_answered_when_the_request_arrives(uow, store):
    """Reordered: the rejection first (no reply queue known yet), then the request: it fills in its
    details, stays rejected and owes the reply now."""
    sent = request()

    first = await handle(uow, f.modify_rejected(sent))
    then = await handle(uow, sent)

    assert replies(first) == []
    # Neither the appointment nor the requester known yet: the feed event goes to the tenant only.
    assert feed(first) == [(None, None, [(*REQUEST, "rejected", f.REQUEST_ID)])]
    assert replies(then) == [(f.REQUEST_ID, "rejected", "same_window", REPLIES, "portal-web")]
    assert feed(then) == [(f.CUSTOMER_ID, None, [(*REQUEST, "rejected", f.REQUEST_ID)])]
    row = store.request(TENANT, f.REQUEST_ID)
    assert (row["status"], row["requester_id"], row["reply_to"]) == ("rejected", f.CUSTOMER_ID, REPLIES)
    assert sorted(store.audit_entries(TENANT, f.APPOINTMENT_ID)) == ["rejected", "requested"]


async def test_the_first_final_outcome_wins(uow, store):
    sent = request()
    approved = f.modify_approved(sent)
    await handle(uow, sent, f.modify_failed(approved, code=FailureCode.APPOINTMENT_CHANGED))

    late_awaiting = await handle(uow, f.modify_awaiting_approval(sent))
    late_completion = await handle(uow, f.appointment_rescheduled(approved, version=2))

    assert status(store) == "failed"
    assert replies(late_awaiting + late_completion) == []
    assert feed(late_awaiting) == []
    # The appointment's own view still moves on; the request's does not.
    assert feed(late_completion) == [(f.CUSTOMER_ID, f.JOB_ID, [(*APPOINTMENT, "scheduled", 2)])]


async def test_a_failure_after_approval_pending_answers_once(uow, store):
    sent = request()
    await handle(uow, sent, f.modify_awaiting_approval(sent))

    events = await handle(uow, f.modify_failed(f.modify_approved(sent)))

    assert status(store) == "failed"
    assert replies(events) == [(f.REQUEST_ID, "failed", "appointment_changed", REPLIES, "portal-web")]


async def test_a_request_without_a_reply_queue_gets_no_reply(uow, store):
    sent = f.modify_requested()
    events = await handle(uow, sent, f.modify_rejected(sent))

    assert status(store) == "rejected"
    assert replies(events) == []


async def test_request_ids_are_per_portal(uow, store):
    """Two portals' requests under one id are two requests: each its row and its own reply."""
    web, app = request(), request(producer="portal-app")

    events = await handle(uow, web, app, f.modify_rejected(app), f.modify_failed(f.modify_approved(web)))

    assert (status(store, producer="portal-web"), status(store, producer="portal-app")) == (
        "failed",
        "rejected",
    )
    assert replies(events) == [
        (f.REQUEST_ID, "rejected", "same_window", REPLIES, "portal-app"),
        (f.REQUEST_ID, "failed", "appointment_changed", REPLIES, "portal-web"),
    ]


async def test_an_outcome_without_its_portal_answers_the_one_request_with_its_id(uow, store):
    sent = request(producer="portal-app")
    await handle(uow, sent)
    legacy = f.modify_rejected(sent).model_copy(update={"request_producer": None})

    events = await handle(uow, legacy)

    assert status(store, producer="portal-app") == "rejected"
    assert replies(events) == [(f.REQUEST_ID, "rejected", "same_window", REPLIES, "portal-app")]


# --- appointments: rescheduled, canceled, updated ----------------------------------------------------


async def test_a_reschedule_completes_the_request_moves_the_appointment_and_its_offer(uow, store):
    sent = request()
    await handle(uow, sent)
    done = rescheduled(sent, offer=f.carried_offer(2))

    events = await handle(uow, done)

    appointment = store.view(TENANT, "appointment", f.APPOINTMENT_ID)
    assert (appointment["version"], appointment["window_start"]) == (2, sent.payload.change.new_window.start)
    assert store.view(TENANT, "offer", f.APPOINTMENT_ID)["offer_version"] == 2
    assert status(store) == "completed"
    assert replies(events) == [(f.REQUEST_ID, "completed", None, REPLIES, "portal-web")]
    # One feed event listing every view the message changed.
    assert feed(events) == [
        (
            f.CUSTOMER_ID,
            f.JOB_ID,
            [
                (*APPOINTMENT, "scheduled", 2),
                (ViewKind.OFFER, f.APPOINTMENT_ID, None, 2),
                (*REQUEST, "completed", f.REQUEST_ID),
            ],
        )
    ]
    assert store.audit_entries(TENANT, f.APPOINTMENT_ID) == ["requested", "rescheduled"]


async def test_a_cancellation_completes_the_request(uow, store):
    sent = request(change=f.cancel("moving"))
    await handle(uow, sent)

    events = await handle(uow, f.appointment_canceled(f.modify_approved(sent), reason="moving"))

    assert store.view(TENANT, "appointment", f.APPOINTMENT_ID)["status"] == "canceled"
    assert replies(events) == [(f.REQUEST_ID, "completed", None, REPLIES, "portal-web")]
    assert feed(events) == [
        (f.CUSTOMER_ID, f.JOB_ID, [(*APPOINTMENT, "canceled", 2), (*REQUEST, "completed", f.REQUEST_ID)])
    ]
    assert store.audit_entries(TENANT, f.APPOINTMENT_ID) == ["requested", "canceled"]


async def test_an_office_update_sets_the_appointment_view(uow, store):
    events = await handle(uow, f.appointment_updated(version=1))

    assert store.view(TENANT, "appointment", f.APPOINTMENT_ID)["version"] == 1
    assert feed(events) == [(f.CUSTOMER_ID, f.JOB_ID, [(*APPOINTMENT, "scheduled", 1)])]
    assert replies(events) == []
    assert store.audit_entries(TENANT, f.APPOINTMENT_ID) == ["office_recorded"]


async def test_a_late_appointment_event_never_moves_the_view_backwards(uow, store):
    sent = request()
    newer, older = rescheduled(sent, version=3), f.appointment_updated(version=2)

    await handle(uow, newer)
    late = await handle(uow, older)
    again = await handle(uow, newer)

    assert store.view(TENANT, "appointment", f.APPOINTMENT_ID)["version"] == 3
    assert (
        store.view(TENANT, "appointment", f.APPOINTMENT_ID)["window_start"]
        == sent.payload.change.new_window.start
    )
    assert (feed(late), feed(again)) == ([], [])
    # The late event is still a fact of its own: its audit line is kept.
    assert store.audit_entries(TENANT, f.APPOINTMENT_ID) == ["rescheduled", "office_recorded"]


# --- the other views --------------------------------------------------------------------------------


async def test_a_job_status_change_sets_the_job_view_unless_it_is_older(uow, store):
    events = await handle(uow, f.job_status_changed(version=3, status=JobStatus.CANCELED))
    late = await handle(uow, f.job_status_changed(version=2, status=JobStatus.SCHEDULED))

    job = store.view(TENANT, "job", f.JOB_ID)
    assert (job["status"], job["version"], job["customer_id"]) == ("canceled", 3, f.CUSTOMER_ID)
    assert feed(events) == [(f.CUSTOMER_ID, f.JOB_ID, [(ViewKind.JOB, None, "canceled", 3)])]
    assert late == []


async def test_an_offer_sets_the_offer_view_unless_it_is_older(uow, store):
    events = await handle(uow, f.appointment_offer_changed(offer_version=4))
    late = await handle(uow, f.appointment_offer_changed(offer_version=3))
    same = await handle(uow, f.appointment_offer_changed(offer_version=4))

    assert store.view(TENANT, "offer", f.APPOINTMENT_ID)["offer_version"] == 4
    assert feed(events) == [(f.CUSTOMER_ID, f.JOB_ID, [(ViewKind.OFFER, f.APPOINTMENT_ID, None, 4)])]
    assert (late, same) == ([], [])


async def test_free_places_go_to_everyone_and_never_backwards(uow, store):
    events = await handle(uow, f.capacity_window_changed(free=0, version=2))
    late = await handle(uow, f.capacity_window_changed(free=1, version=1))

    ((key, window),) = store.views["available_window"].items()
    assert (key[:3], window["free"], window["version"]) == ((TENANT, f.BUSINESS_UNIT, ""), 0, 2)
    assert feed(events) == [(None, None, [(ViewKind.AVAILABILITY, f.BUSINESS_UNIT, None, 2)])]
    assert late == []


async def test_capacity_settings_set_the_units_time_zone_without_feed_events(uow, store):
    events = await handle(uow, f.capacity_updated(timezone="Europe/Berlin", capacity_version=2))
    late = await handle(uow, f.capacity_updated(timezone="UTC", capacity_version=1))

    assert store.view(TENANT, "business_unit", f.BUSINESS_UNIT)["time_zone"] == "Europe/Berlin"
    assert (events, late) == ([], [])


async def test_an_office_outcome_is_kept_once_without_feed_events(uow, store):
    outcome = f.office_outcome_event()

    events = await handle(uow, outcome, outcome)

    assert events == []
    assert list(store.office_outcomes) == [(TENANT, outcome.payload.office_message_id)]
    assert (
        store.office_outcomes[(TENANT, outcome.payload.office_message_id)]["status"]
        == outcome.payload.status.value
    )


async def test_a_project_update_writes_nothing(uow, store):
    assert await handle(uow, f.project_updated()) == []

    before = FakePortalStore()
    before.now = store.now
    assert vars(store) == vars(before)


# --- batches: one transaction for several deliveries ------------------------------------------------


async def test_a_batch_gives_what_its_messages_give_one_by_one(store):
    """A rejection before its request, the rejection re-sent, two reordered versions of the appointment
    and its job, in one batch: the same rows, replies and feed events as handled alone, in order."""
    sent = request()
    messages = [
        f.appointment_updated(version=3),
        f.modify_rejected(sent),
        sent,
        f.modify_rejected(sent),
        f.appointment_updated(version=2),
        f.job_status_changed(version=2),
    ]
    alone_store = FakePortalStore()
    alone = FakeUnitOfWork(alone_store, producer="portal_sync")
    batched = FakeUnitOfWork(store, producer="portal_sync", now=alone.clock)
    alone_store.now = store.now

    one_by_one = await handle(alone, *messages)
    together = await batched.handle_batch(HANDLERS, messages)

    assert (feed(together), replies(together)) == (feed(one_by_one), replies(one_by_one))
    assert replies(together) == [(f.REQUEST_ID, "rejected", "same_window", REPLIES, "portal-web")]
    assert vars(store) == vars(alone_store)
    assert store.view(TENANT, "appointment", f.APPOINTMENT_ID)["version"] == 3
    assert batched.memo == {"portal_sync.written": {}}


async def test_a_batch_writes_each_tenants_messages_for_that_tenant(uow, store):
    mine, theirs = request(), request(tenant="globex")

    events = await uow.handle_batch(HANDLERS, [mine, f.modify_rejected(mine), theirs])

    assert (status(store), store.request("globex", f.REQUEST_ID)["status"]) == ("rejected", "pending")
    assert [e.tenant_id for e in events if isinstance(e, ModifyOutcome)] == [TENANT]
    assert sorted({e.tenant_id for e in events}) == ["acme", "globex"]


async def test_a_failing_batch_leaves_the_read_store_as_it_was(uow, store):
    async def fails(message, uow) -> None:
        raise RuntimeError("a handler bug")

    sent = request()
    with pytest.raises(RuntimeError):
        await uow.handle_batch({**HANDLERS, ProjectUpdated: fails}, [sent, f.project_updated()])

    assert (store.requests, store.audit, uow.events) == ({}, {}, [])


HANDLED = {
    ModifyRequested,
    ModifyRejected,
    ModifyAwaitingApproval,
    ModifyFailed,
    AppointmentRescheduled,
    AppointmentCanceled,
    AppointmentUpdated,
    JobStatusChanged,
    AppointmentOfferChanged,
    CapacityWindowChanged,
    OfficeOutcome,
    CapacityUpdated,
    ProjectUpdated,
}


def test_every_message_portal_sync_handles_has_its_tests_here():
    assert set(HANDLERS) == HANDLED
