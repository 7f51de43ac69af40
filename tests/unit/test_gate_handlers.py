"""policy_gate's handlers on the in-memory store and unit of work: which events, with which payloads,
for which facts. No database, no broker (tests/integration and tests/e2e run them on the real ones)."""

from datetime import timedelta

import pytest

from contracts.common import AppointmentStatus, Confirmation
from contracts.events_v1 import (
    AppointmentOfferChanged,
    ModifyAwaitingApproval,
    ModifyRejected,
    OfficeOutcome,
)
from contracts.internal_v1 import ModifyApproved, RefreshOffers
from contracts.office_v2 import (
    CancelSettings,
    Permission,
    RateLimitSettings,
    RescheduleSettings,
    SettingsLayer,
)
from contracts.reasons import DeadLetterReason, OfficeOutcomeCode, PendingCode, RejectionCode
from tests import factories as f
from tests.fakes.gate_store import FakeGateStore
from tests.fakes.unit_of_work import FakeUnitOfWork
from workers.policy_gate import handlers, offering
from workers.policy_gate.admission import Admission
from workers.policy_gate.handlers import HANDLERS
from workers.policy_gate.limits import RateLimits
from workers.policy_gate.rules import AppointmentFacts, ProjectFacts
from workers.runtime.errors import DeadLetter

TENANT = f.TENANT


@pytest.fixture(autouse=True)
def admission(monkeypatch) -> Admission:
    """A fresh process's admission (limits and buckets), as the gate starts with."""
    fresh = Admission(RateLimits())
    monkeypatch.setattr(handlers, "ADMISSION", fresh)
    return fresh


@pytest.fixture
def store() -> FakeGateStore:
    return FakeGateStore()


@pytest.fixture
def uow(store: FakeGateStore) -> FakeUnitOfWork:
    return FakeUnitOfWork(store, producer="policy_gate")


def facts(appointment_id: str = f.APPOINTMENT_ID, **fields) -> AppointmentFacts:
    """The appointment as the scheduling store holds it: the factories' default booking."""
    values = dict(
        appointment_id=appointment_id,
        customer_id=f.CUSTOMER_ID,
        business_unit=f.BUSINESS_UNIT,
        job_type=f.JOB_TYPE,
        project=None,
        status=AppointmentStatus.SCHEDULED,
        confirmation=Confirmation.UNCONFIRMED,
        window=f.arrival_window(),
        version=1,
        job_id=f.JOB_ID,
    )
    return AppointmentFacts(**{**values, **fields})


async def handle(uow: FakeUnitOfWork, message) -> list:
    """The message through the gate's handler table, as the runtime dispatches it."""
    return await uow.handle(HANDLERS[type(message)], message)


async def settings(
    uow: FakeUnitOfWork, layer: SettingsLayer | None = None, rate_limits: RateLimitSettings | None = None
) -> None:
    """A business layer (by default: self-service on, everything allowed, with `rate_limits`) applied by
    the gate itself."""
    allow = {"confirmed": Permission.ALLOW, "unconfirmed": Permission.ALLOW}
    layer = layer or SettingsLayer(
        feature_enabled=True,
        reschedule=RescheduleSettings(**allow),
        cancel=CancelSettings(**allow),
        rate_limits=rate_limits,
    )
    await handle(uow, f.settings_layer_updated(settings=layer))


def decided(store: FakeGateStore, request_id: str, producer: str = "portal-web") -> dict:
    """The gate's stored decision of a portal's request."""
    return store.decisions[(TENANT, producer, request_id)]


def only(events: list, kind: type):
    (event,) = [e for e in events if isinstance(e, kind)]
    return event


# --- modify requests ---------------------------------------------------------------------------------


async def test_an_allowed_reschedule_is_approved_on_the_version_it_was_decided_on(uow, store):
    await settings(uow)
    store.add_appointment(TENANT, facts(version=4))
    request = f.modify_requested()

    events = await handle(uow, request)

    (approved,) = events
    assert isinstance(approved, ModifyApproved)
    assert approved.correlation_id == request.correlation_id
    assert approved.causation_id == request.message_id
    assert approved.occurred_at == uow.clock
    assert approved.payload.appointment_id == f.APPOINTMENT_ID
    assert approved.payload.requester_id == f.CUSTOMER_ID
    assert approved.payload.change == request.payload.change
    assert approved.payload.decided_on_version == 4
    decision = decided(store, request.correlation_id)
    assert (decision["outcome"], decision["decided_on_version"], decision["producer"]) == (
        "approved",
        4,
        "portal-web",
    )


@pytest.mark.parametrize(
    ("layer", "appointment", "request_fields", "code"),
    [
        (SettingsLayer(feature_enabled=False), {}, {}, RejectionCode.SELF_SERVICE_DISABLED),
        (None, {}, {"requester_id": "a-stranger"}, RejectionCode.APPOINTMENT_NOT_FOUND),
        (None, {}, {"appointment_id": "no-such-appointment"}, RejectionCode.APPOINTMENT_NOT_FOUND),
        (None, {"status": AppointmentStatus.DISPATCHED}, {}, RejectionCode.APPOINTMENT_NOT_MODIFIABLE),
        (None, {"version": 2}, {"expected_version": 1}, RejectionCode.APPOINTMENT_VERSION_STALE),
        (
            SettingsLayer(feature_enabled=True, reschedule=RescheduleSettings(unconfirmed=Permission.DENY)),
            {},
            {},
            RejectionCode.UNCONFIRMED_CHANGE_BLOCKED,
        ),
        (
            None,
            {"project": ProjectFacts("proj-1", frozenset(), portal_locked=True)},
            {},
            RejectionCode.PROJECT_LOCKED,
        ),
    ],
)
async def test_a_refused_request_is_rejected_with_its_reason_code(
    uow, store, layer, appointment, request_fields, code
):
    await settings(uow, layer)
    store.add_appointment(TENANT, facts(**appointment))
    request = f.modify_requested(**request_fields)

    (rejected,) = await handle(uow, request)

    assert isinstance(rejected, ModifyRejected)
    assert rejected.correlation_id == request.correlation_id
    assert rejected.payload.request_id == request.correlation_id
    assert rejected.payload.appointment_id == request.payload.appointment_id
    assert rejected.payload.action == "reschedule"
    assert rejected.payload.reason_code == code.value
    assert rejected.payload.reason  # the customer's sentence
    assert decided(store, request.correlation_id)["reason_code"] == code.value


async def test_a_new_window_in_the_past_is_rejected(uow, store):
    await settings(uow)
    store.add_appointment(TENANT, facts())
    past = f.arrival_window(start=uow.clock - timedelta(hours=3))
    (rejected,) = await handle(uow, f.modify_requested(change=f.reschedule(past)))
    assert rejected.payload.reason_code == RejectionCode.NEW_WINDOW_IN_PAST.value


async def test_a_cancel_needing_the_offices_approval_waits_for_it(uow, store):
    await settings(
        uow,
        SettingsLayer(feature_enabled=True, cancel=CancelSettings(unconfirmed=Permission.REQUIRE_APPROVAL)),
    )
    store.add_appointment(TENANT, facts())
    request = f.modify_requested(change=f.cancel("moving"))

    (waiting,) = await handle(uow, request)

    assert isinstance(waiting, ModifyAwaitingApproval)
    assert waiting.correlation_id == request.correlation_id
    assert (waiting.payload.request_id, waiting.payload.action) == (request.correlation_id, "cancel")
    assert waiting.payload.reason_code == PendingCode.AWAITING_OFFICE_APPROVAL
    assert decided(store, request.correlation_id)["outcome"] == "needs_approval"


async def test_a_cancel_without_a_required_reason_is_rejected(uow, store):
    allow = {"confirmed": Permission.ALLOW, "unconfirmed": Permission.ALLOW}
    await settings(
        uow, SettingsLayer(feature_enabled=True, cancel=CancelSettings(**allow, reason_required=True))
    )
    store.add_appointment(TENANT, facts())
    (rejected,) = await handle(uow, f.modify_requested(change=f.cancel()))
    assert (rejected.payload.action, rejected.payload.reason_code) == (
        "cancel",
        RejectionCode.CANCEL_REASON_REQUIRED.value,
    )


async def test_a_resent_request_is_answered_once(uow, store):
    await settings(uow)
    store.add_appointment(TENANT, facts())
    request = f.modify_requested()
    assert len(await handle(uow, request)) == 1

    again = request.model_copy(update={"message_id": f.modify_requested().message_id})
    assert await handle(uow, again) == []


@pytest.mark.parametrize(
    "other",
    [
        {"change": f.cancel()},
        {"requester_id": "someone-else"},
        {"appointment_id": "appt-2"},
    ],
)
async def test_a_request_id_reused_for_another_request_is_dead_lettered_and_changes_nothing(
    uow, store, other
):
    await settings(uow)
    store.add_appointment(TENANT, facts())
    store.add_appointment(TENANT, facts("appt-2"))
    await handle(uow, f.modify_requested())
    decisions_before = dict(store.decisions)
    committed_before = list(uow.events)

    with pytest.raises(DeadLetter) as refused:
        await handle(uow, f.modify_requested(**other))

    assert refused.value.reason == DeadLetterReason.REQUEST_ID_REUSED
    assert store.decisions == decisions_before
    assert uow.events == committed_before


async def test_another_portals_request_under_the_same_id_is_another_request(uow, store):
    await settings(uow)
    store.add_appointment(TENANT, facts())
    await handle(uow, f.modify_requested())
    (approved,) = await handle(uow, f.modify_requested(change=f.cancel(), producer="another-portal"))
    assert isinstance(approved, ModifyApproved)
    assert decided(store, f.REQUEST_ID, "another-portal")["action"] == "cancel"
    assert decided(store, f.REQUEST_ID)["action"] == "reschedule"


async def test_over_the_requesters_limit_a_request_is_rejected_unread_and_recorded(uow, store):
    await settings(uow, rate_limits=RateLimitSettings(requester_per_minute=1, requester_burst=1))
    store.add_appointment(TENANT, facts())
    first = await handle(uow, f.modify_requested(request_id="req-a"))
    assert isinstance(first[0], ModifyApproved)

    (refused,) = await handle(uow, f.modify_requested(request_id="req-b"))

    assert isinstance(refused, ModifyRejected)
    assert refused.payload.reason_code == RejectionCode.RATE_LIMITED.value
    assert refused.occurred_at == uow.clock  # the refusal's statement read the clock
    decision = decided(store, "req-b")
    assert (decision["outcome"], decision["rule"], decision["setting"], decision["decided_on_version"]) == (
        "rejected",
        "requester_rate_limit",
        "rate_limits.requester_per_minute",
        None,
    )
    # Another customer of the business is not held back.
    store.add_appointment(TENANT, facts("appt-2", customer_id="cust-2"))
    (other,) = await handle(
        uow, f.modify_requested(appointment_id="appt-2", requester_id="cust-2", request_id="req-c")
    )
    assert isinstance(other, ModifyApproved)


async def test_a_resent_rate_limited_request_is_answered_once(uow, store):
    await settings(uow, SettingsLayer(feature_enabled=True, rate_limits=RateLimitSettings(requester_burst=1)))
    store.add_appointment(TENANT, facts())
    await handle(uow, f.modify_requested(request_id="req-a"))
    refused = f.modify_requested(request_id="req-b")
    assert [e.payload.reason_code for e in await handle(uow, refused)] == [RejectionCode.RATE_LIMITED.value]
    again = refused.model_copy(update={"message_id": f.modify_requested().message_id})
    assert await handle(uow, again) == []


# --- office approvals -----------------------------------------------------------------------------


async def waiting_request(uow: FakeUnitOfWork, store: FakeGateStore):
    await settings(
        uow,
        SettingsLayer(
            feature_enabled=True, reschedule=RescheduleSettings(unconfirmed=Permission.REQUIRE_APPROVAL)
        ),
    )
    store.add_appointment(TENANT, facts(version=3))
    request = f.modify_requested()
    (waiting,) = await handle(uow, request)
    assert isinstance(waiting, ModifyAwaitingApproval)
    return request


async def test_the_offices_approval_approves_the_waiting_request_on_its_decided_version(uow, store):
    request = await waiting_request(uow, store)
    approved, outcome = await handle(uow, f.approval_decided(request.correlation_id))

    assert isinstance(approved, ModifyApproved)
    assert approved.correlation_id == request.correlation_id
    assert approved.payload.change == request.payload.change
    assert approved.payload.decided_on_version == 3
    assert isinstance(outcome, OfficeOutcome)
    assert (outcome.payload.status, outcome.payload.subject) == ("applied", request.correlation_id)
    row = decided(store, request.correlation_id)
    assert (row["outcome"], row["rule"], row["office_decided_by"]) == ("approved", "office_approval", "csr-1")


async def test_the_offices_refusal_rejects_the_waiting_request_with_its_reason(uow, store):
    request = await waiting_request(uow, store)

    rejected, outcome = await handle(
        uow, f.approval_decided(request.correlation_id, approved=False, reason="Fully booked.")
    )

    assert isinstance(rejected, ModifyRejected)
    assert rejected.payload.reason_code == RejectionCode.OFFICE_DECLINED.value
    assert "Fully booked." in rejected.payload.reason
    assert outcome.payload.status == "applied"
    assert decided(store, request.correlation_id)["outcome"] == "rejected"


async def test_a_decision_for_a_request_not_waiting_is_refused_and_changes_nothing(uow, store):
    request = await waiting_request(uow, store)
    await handle(uow, f.approval_decided(request.correlation_id))
    for request_id in (request.correlation_id, "req-unknown"):
        (outcome,) = await handle(uow, f.approval_decided(request_id, approved=False))
        assert (outcome.payload.status, outcome.payload.reason_code) == (
            "refused",
            OfficeOutcomeCode.APPROVAL_NOT_PENDING.value,
        )
    assert decided(store, request.correlation_id)["outcome"] == "approved"


# --- settings layers and offers -------------------------------------------------------------------


async def test_a_settings_layer_applies_once_and_an_older_version_is_ignored(uow, store):
    store.add_appointment(TENANT, facts())
    events = await handle(uow, f.settings_layer_updated(settings_version=2))
    outcome = only(events, OfficeOutcome)
    assert (outcome.payload.status, outcome.payload.subject) == ("applied", None)
    offer = only(events, AppointmentOfferChanged)
    assert (offer.payload.appointment_id, offer.payload.offer_version, offer.payload.appointment_version) == (
        f.APPOINTMENT_ID,
        1,
        1,
    )

    for version in (2, 1):
        (ignored,) = await handle(uow, f.settings_layer_updated(settings_version=version))
        assert (ignored.payload.status, ignored.payload.reason_code) == (
            "ignored",
            OfficeOutcomeCode.OLDER_REVISION.value,
        )
    assert store.layers[(TENANT, "business", "")]["settings_version"] == 2
    assert len(store.history) == 1


async def test_a_unit_layer_refreshes_only_that_units_offers(uow, store):
    store.add_appointment(TENANT, facts("apt-hvac"))
    store.add_appointment(TENANT, facts("apt-plumbing", business_unit="plumbing"))
    events = await handle(uow, f.settings_layer_updated(level="business_unit", key="plumbing"))
    assert only(events, OfficeOutcome).payload.subject == "plumbing"
    assert [e.payload.appointment_id for e in events if isinstance(e, AppointmentOfferChanged)] == [
        "apt-plumbing"
    ]


async def test_a_business_layers_rate_limits_apply_to_the_next_request(uow, store, admission):
    layer = SettingsLayer(
        feature_enabled=True, rate_limits=RateLimitSettings(tenant_per_minute=60, tenant_burst=2)
    )
    await handle(uow, f.settings_layer_updated(settings=layer, settings_version=5))
    assert admission.known(TENANT) == RateLimits(tenant_per_minute=60, tenant_burst=2)


async def test_version_1_settings_are_the_business_layer(uow, store, admission):
    store.add_appointment(TENANT, facts())
    events = await handle(uow, f.portal_settings_updated(settings_version=3))
    assert only(events, OfficeOutcome).payload.status == "applied"
    assert only(events, AppointmentOfferChanged).payload.segments[0].reschedule.offered
    assert store.layers[(TENANT, "business", "")]["settings_version"] == 3
    assert admission.known(TENANT) == RateLimits()
    (ignored,) = await handle(uow, f.portal_settings_updated(settings_version=3))
    assert ignored.payload.status == "ignored"

    (approved,) = await handle(uow, f.modify_requested())
    assert isinstance(approved, ModifyApproved)


async def test_a_large_scope_continues_in_chunks_the_gate_sends_itself(uow, store, monkeypatch):
    monkeypatch.setattr(offering, "REFRESH_CHUNK", 2)
    for i in range(5):
        store.add_appointment(TENANT, facts(f"apt-{i}"))
    events = await handle(uow, f.settings_layer_updated())
    assert [e.payload.appointment_id for e in events if isinstance(e, AppointmentOfferChanged)] == [
        "apt-0",
        "apt-1",
    ]
    follow = only(events, RefreshOffers)
    assert (follow.payload.after_appointment_id, follow.payload.scope.level) == ("apt-1", "business")

    events = await handle(uow, follow)
    assert [e.payload.appointment_id for e in events if isinstance(e, AppointmentOfferChanged)] == [
        "apt-2",
        "apt-3",
    ]
    events = await handle(uow, only(events, RefreshOffers))
    assert [type(e) for e in events] == [AppointmentOfferChanged]  # the last chunk hands on nothing


async def test_an_appointment_change_refreshes_its_offer_only_when_it_differs(uow, store):
    await settings(uow)
    store.add_appointment(TENANT, facts(version=1))
    (offer,) = await handle(uow, f.appointment_updated())
    assert (offer.payload.offer_version, offer.payload.appointment_version) == (1, 1)

    assert await handle(uow, f.appointment_updated()) == []  # nothing it rests on changed

    store.add_appointment(TENANT, facts(version=2, confirmation=Confirmation.CONFIRMED))
    (offer,) = await handle(uow, f.appointment_updated(version=2))
    assert (offer.payload.offer_version, offer.payload.appointment_version) == (2, 2)
    assert store.offers[(TENANT, f.APPOINTMENT_ID)]["offer_version"] == 2


async def test_a_project_change_refreshes_the_offers_of_its_appointments(uow, store):
    await settings(uow)
    project = ProjectFacts("prj-1", frozenset({"lead-1"}))
    store.add_appointment(TENANT, facts("apt-in", project=project))
    store.add_appointment(TENANT, facts("apt-out"))
    events = await handle(uow, f.project_updated())
    (offer,) = events
    assert offer.payload.appointment_id == "apt-in"
    assert offer.payload.contacts == ["lead-1"]


async def test_a_project_layer_decides_for_the_projects_appointments_only(uow, store):
    await settings(uow)
    store.add_appointment(TENANT, facts("apt-in", project=ProjectFacts("prj-1", frozenset({"lead-1"}))))
    store.add_appointment(TENANT, facts("apt-out"))
    events = await handle(
        uow,
        f.settings_layer_updated(level="project", key="prj-1", settings=SettingsLayer(feature_enabled=False)),
    )
    assert [e.payload.appointment_id for e in events if isinstance(e, AppointmentOfferChanged)] == ["apt-in"]

    (refused,) = await handle(uow, f.modify_requested(appointment_id="apt-in", request_id="req-in"))
    assert refused.payload.reason_code == RejectionCode.SELF_SERVICE_DISABLED.value
    assert decided(store, "req-in")["setting_level"] == "project"
    # The project layer does not reach the business's other appointments.
    (approved,) = await handle(uow, f.modify_requested(appointment_id="apt-out", request_id="req-out"))
    assert isinstance(approved, ModifyApproved)


async def test_a_project_contact_may_act_for_the_appointment(uow, store):
    await settings(uow)
    store.add_appointment(TENANT, facts(project=ProjectFacts("prj-1", frozenset({"lead-1"}))))
    (approved,) = await handle(uow, f.modify_requested(requester_id="lead-1"))
    assert (type(approved), approved.payload.requester_id) == (ModifyApproved, "lead-1")


async def test_over_the_businesss_limit_every_customer_is_refused(uow, store):
    await settings(uow, rate_limits=RateLimitSettings(tenant_per_minute=1, tenant_burst=1))
    store.add_appointment(TENANT, facts())
    store.add_appointment(TENANT, facts("appt-2", customer_id="cust-2"))
    await handle(uow, f.modify_requested(request_id="req-a"))
    (refused,) = await handle(
        uow, f.modify_requested(appointment_id="appt-2", requester_id="cust-2", request_id="req-b")
    )
    assert refused.payload.reason_code == RejectionCode.RATE_LIMITED.value
    assert decided(store, "req-b")["rule"] == "tenant_rate_limit"


# --- the offer that travels with an approval ------------------------------------------------------


async def test_an_approval_carries_the_offer_for_the_state_it_leaves(uow, store):
    await settings(uow)
    store.add_appointment(TENANT, facts(version=1))
    request = f.modify_requested()

    (approved,) = await handle(uow, request)

    offer = approved.payload.offer
    assert (offer.appointment_id, offer.appointment_version, offer.offer_version) == (f.APPOINTMENT_ID, 2, 1)
    assert store.offers[(TENANT, f.APPOINTMENT_ID)]["carried_request_id"] == request.correlation_id


async def test_a_failed_change_brings_back_the_offer_for_the_unchanged_appointment(uow, store):
    await settings(uow)
    store.add_appointment(TENANT, facts(version=1))
    request = f.modify_requested()
    (approved,) = await handle(uow, request)

    (offer,) = await handle(uow, f.modify_failed(approved))

    assert isinstance(offer, AppointmentOfferChanged)
    assert (offer.payload.appointment_version, offer.payload.offer_version) == (1, 2)
    assert store.offers[(TENANT, f.APPOINTMENT_ID)]["carried_request_id"] is None


async def test_an_office_approval_carries_no_offer_when_the_appointment_changed_since(uow, store):
    request = await waiting_request(uow, store)
    store.add_appointment(TENANT, facts(version=4))  # the office changed it: the change will fail

    approved, _ = await handle(uow, f.approval_decided(request.correlation_id))

    assert (approved.payload.decided_on_version, approved.payload.offer) == (3, None)
