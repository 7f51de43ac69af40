"""Portal read-model projection: request outcomes, merge order, and the appointment version rule."""

import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.common import (
    AppointmentSnapshot,
    AppointmentStatus,
    ArrivalWindow,
    Confirmation,
    JobStatus,
    ModifyAction,
    Project,
)
from contracts.envelope import Envelope, Strict
from contracts.events_v1 import (
    AppointmentCanceled,
    AppointmentCanceledPayload,
    AppointmentOfferChanged,
    AppointmentOfferChangedPayload,
    AppointmentRescheduled,
    AppointmentRescheduledPayload,
    AppointmentUpdated,
    AppointmentUpdatedPayload,
    CancelRules,
    Initiator,
    JobStatusChanged,
    JobStatusChangedPayload,
    ModifyFailed,
    ModifyFailedPayload,
    ModifyRejected,
    ModifyRejectedPayload,
    OfferedAction,
    OfferSegment,
)
from contracts.internal_v1 import ModifyApproved, ModifyApprovedPayload
from contracts.office_v1 import (
    ActionRules,
    AppointmentRecorded,
    AppointmentRecordedPayload,
    PortalSettingsPayload,
    PortalSettingsUpdated,
)
from contracts.portal_v1 import Cancel, ModifyRequested, ModifyRequestedPayload, Reschedule
from contracts.reasons import FailureCode, RejectionCode, customer_text
from workers.portal_sync import store as portal_store
from workers.portal_sync.projection import (
    REQUEST_RANK,
    TERMINAL_REQUEST_STATUSES,
    RequestOutcome,
    appointment_row,
    appointment_snapshot,
    job_row,
    merge_request,
    offer_row,
    request_outcome,
)

M = TypeVar("M", bound=Envelope)

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
TENANT = "acme-plumbing"
REQUEST_ID = "req-1"
APPOINTMENT_ID = "appt-1"
CUSTOMER = "cust-1"
OLD_WINDOW = ArrivalWindow(start=NOW + timedelta(days=3), end=NOW + timedelta(days=3, hours=2))
NEW_WINDOW = ArrivalWindow(start=NOW + timedelta(days=5), end=NOW + timedelta(days=5, hours=2))


def message(cls: type[M], payload: Strict, *, correlation_id: str = REQUEST_ID) -> M:
    return cls(
        message_id=uuid4(),
        tenant_id=TENANT,
        correlation_id=correlation_id,
        occurred_at=NOW,
        producer="modify_handler",
        payload=payload,
    )


def snapshot(
    *,
    version: int = 5,
    status: AppointmentStatus = AppointmentStatus.SCHEDULED,
    window: ArrivalWindow = NEW_WINDOW,
    project_id: str | None = "proj-1",
) -> AppointmentSnapshot:
    return AppointmentSnapshot(
        appointment_id=APPOINTMENT_ID,
        job_id="job-1",
        customer_id=CUSTOMER,
        business_unit="plumbing",
        job_type="boiler-service",
        project_id=project_id,
        window=window,
        status=status,
        confirmation=Confirmation.CONFIRMED,
        version=version,
    )


def requested(change: Reschedule | Cancel | None = None, requester_id: str = CUSTOMER) -> ModifyRequested:
    payload = ModifyRequestedPayload(
        appointment_id=APPOINTMENT_ID,
        requester_id=requester_id,
        change=Reschedule(new_window=NEW_WINDOW) if change is None else change,
    )
    return message(ModifyRequested, payload)


def rejected(code: RejectionCode = RejectionCode.SAME_WINDOW) -> ModifyRejected:
    payload = ModifyRejectedPayload(
        request_id=REQUEST_ID,
        appointment_id=APPOINTMENT_ID,
        action=ModifyAction.RESCHEDULE,
        reason_code=code.value,
        reason=customer_text(code),
    )
    return message(ModifyRejected, payload)


def failed(code: FailureCode = FailureCode.APPOINTMENT_CHANGED) -> ModifyFailed:
    payload = ModifyFailedPayload(
        request_id=REQUEST_ID,
        appointment_id=APPOINTMENT_ID,
        action=ModifyAction.CANCEL,
        reason_code=code.value,
        reason=customer_text(code),
    )
    return message(ModifyFailed, payload)


def rescheduled(request_id: str | None = REQUEST_ID, version: int = 5) -> AppointmentRescheduled:
    payload = AppointmentRescheduledPayload(
        appointment=snapshot(version=version),
        previous_window=OLD_WINDOW,
        initiated_by=Initiator.CUSTOMER if request_id else Initiator.OFFICE,
        request_id=request_id,
    )
    return message(AppointmentRescheduled, payload, correlation_id=request_id or "office-change-1")


def canceled(request_id: str | None = REQUEST_ID, version: int = 5) -> AppointmentCanceled:
    payload = AppointmentCanceledPayload(
        appointment=snapshot(version=version, status=AppointmentStatus.CANCELED),
        initiated_by=Initiator.CUSTOMER if request_id else Initiator.OFFICE,
        request_id=request_id,
    )
    return message(AppointmentCanceled, payload, correlation_id=request_id or "office-change-1")


def updated(version: int = 5) -> AppointmentUpdated:
    payload = AppointmentUpdatedPayload(appointment=snapshot(version=version), initiated_by=Initiator.OFFICE)
    return message(AppointmentUpdated, payload, correlation_id="office-change-1")


def job_changed(version: int = 2) -> JobStatusChanged:
    payload = JobStatusChangedPayload(
        job_id="job-1",
        customer_id=CUSTOMER,
        status=JobStatus.CANCELED,
        previous_status=JobStatus.SCHEDULED,
        active_appointments=0,
        version=version,
    )
    return message(JobStatusChanged, payload)


def approved() -> ModifyApproved:
    payload = ModifyApprovedPayload(
        appointment_id=APPOINTMENT_ID, requester_id=CUSTOMER, change=Cancel(), decided_on_version=4
    )
    return message(ModifyApproved, payload)


def recorded() -> AppointmentRecorded:
    payload = AppointmentRecordedPayload(
        appointment_id=APPOINTMENT_ID,
        job_id="job-1",
        customer_id=CUSTOMER,
        business_unit="plumbing",
        job_type="boiler-service",
        project=Project(project_id="proj-1"),
        window=OLD_WINDOW,
        status=AppointmentStatus.SCHEDULED,
        confirmation=Confirmation.CONFIRMED,
    )
    return message(AppointmentRecorded, payload, correlation_id="office-change-1")


def settings_updated() -> PortalSettingsUpdated:
    payload = PortalSettingsPayload(
        feature_enabled=True, rules=ActionRules(), settings_version=3, changed_by="office-user-1"
    )
    return message(PortalSettingsUpdated, payload, correlation_id="office-change-2")


# --- request_outcome -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param(
            requested(),
            RequestOutcome(REQUEST_ID, APPOINTMENT_ID, "reschedule", "pending", requester_id=CUSTOMER),
            id="reschedule-requested",
        ),
        pytest.param(
            requested(Cancel(reason="Changed my mind."), requester_id="lead-1"),
            RequestOutcome(REQUEST_ID, APPOINTMENT_ID, "cancel", "pending", requester_id="lead-1"),
            id="cancel-requested-by-project-lead",
        ),
        pytest.param(
            rejected(),
            RequestOutcome(
                REQUEST_ID,
                APPOINTMENT_ID,
                "reschedule",
                "rejected",
                "same_window",
                customer_text(RejectionCode.SAME_WINDOW),
            ),
            id="rejected",
        ),
        pytest.param(
            failed(),
            RequestOutcome(
                REQUEST_ID,
                APPOINTMENT_ID,
                "cancel",
                "failed",
                "appointment_changed",
                customer_text(FailureCode.APPOINTMENT_CHANGED),
            ),
            id="failed",
        ),
        pytest.param(
            rescheduled(),
            RequestOutcome(REQUEST_ID, APPOINTMENT_ID, "reschedule", "completed"),
            id="rescheduled-for-a-request",
        ),
        pytest.param(
            canceled(),
            RequestOutcome(REQUEST_ID, APPOINTMENT_ID, "cancel", "completed"),
            id="canceled-for-a-request",
        ),
        pytest.param(rescheduled(request_id=None), None, id="rescheduled-by-the-office"),
        pytest.param(canceled(request_id=None), None, id="canceled-by-the-office"),
        pytest.param(updated(), None, id="updated-by-the-office"),
        pytest.param(job_changed(), None, id="job-status-changed"),
        pytest.param(approved(), None, id="internal-approval"),
        pytest.param(recorded(), None, id="office-recorded"),
        pytest.param(settings_updated(), None, id="settings-updated"),
    ],
)
def test_request_outcome(event: Envelope, expected: RequestOutcome | None) -> None:
    # a request's outcome names its portal: the request's producer (these events carry none)
    portal = event.producer if isinstance(event, ModifyRequested) else None
    assert request_outcome(event) == (expected and replace(expected, producer=portal))


def test_an_outcome_names_the_portal_of_the_request_it_answers() -> None:
    """Request ids are per portal: the row an outcome updates is the portal's the event names."""
    event = rejected().model_copy(update={"request_producer": "portal-app"})
    outcome = request_outcome(event)
    assert outcome is not None and (outcome.request_id, outcome.producer) == (REQUEST_ID, "portal-app")


def test_outcome_actions_are_plain_strings() -> None:
    for event in (requested(), rejected(), failed(), rescheduled(), canceled()):
        outcome = request_outcome(event)
        assert outcome is not None
        assert type(outcome.action) is str and outcome.action in {"reschedule", "cancel"}
        assert type(outcome.status) is str


# --- appointment and job rows --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param(rescheduled(version=6), snapshot(version=6), id="rescheduled"),
        pytest.param(
            canceled(version=7), snapshot(version=7, status=AppointmentStatus.CANCELED), id="canceled"
        ),
        pytest.param(
            rescheduled(request_id=None, version=8), snapshot(version=8), id="rescheduled-by-office"
        ),
        pytest.param(updated(version=9), snapshot(version=9), id="updated"),
        pytest.param(requested(), None, id="requested"),
        pytest.param(rejected(), None, id="rejected"),
        pytest.param(failed(), None, id="failed"),
        pytest.param(job_changed(), None, id="job-status-changed"),
        pytest.param(recorded(), None, id="office-recorded-is-not-projected"),
    ],
)
def test_appointment_snapshot(event: Envelope, expected: AppointmentSnapshot | None) -> None:
    assert appointment_snapshot(event) == expected


@pytest.mark.parametrize("project_id", ["proj-1", None], ids=["with-project", "without-project"])
def test_appointment_row(project_id: str | None) -> None:
    snap = snapshot(version=6, status=AppointmentStatus.CANCELED, window=OLD_WINDOW, project_id=project_id)
    assert appointment_row(snap) == {
        "appointment_id": APPOINTMENT_ID,
        "job_id": "job-1",
        "customer_id": CUSTOMER,
        "project_id": project_id,
        "business_unit": "plumbing",
        "job_type": "boiler-service",
        "window_start": OLD_WINDOW.start,
        "window_end": OLD_WINDOW.end,
        "status": "canceled",
        "confirmation": "confirmed",
        "version": 6,
    }


def test_job_row() -> None:
    assert job_row(job_changed(version=3)) == {
        "job_id": "job-1",
        "customer_id": CUSTOMER,
        "status": "canceled",
        "active_appointments": 0,
        "version": 3,
    }


@pytest.mark.parametrize(
    "event",
    [requested(), rejected(), failed(), rescheduled(), canceled(), updated()],
    ids=["requested", "rejected", "failed", "rescheduled", "canceled", "updated"],
)
def test_only_job_status_changes_set_a_job_row(event: Envelope) -> None:
    assert job_row(event) is None


# --- merge_request -------------------------------------------------------------------------------

TERMINALS = sorted(TERMINAL_REQUEST_STATUSES)


def outcome(status: str) -> RequestOutcome:
    return RequestOutcome(REQUEST_ID, APPOINTMENT_ID, "reschedule", status)


MERGE_TABLE = [
    pytest.param(None, "pending", "pending", id="first-sight-of-request"),
    pytest.param("pending", "pending", None, id="redelivered-request-changes-nothing"),
    *[pytest.param("pending", t, t, id=f"pending-then-{t}") for t in TERMINALS],
    *[pytest.param(None, t, t, id=f"{t}-before-request-seen") for t in TERMINALS],
    *[pytest.param(t, "pending", None, id=f"late-request-never-overwrites-{t}") for t in TERMINALS],
    *[
        pytest.param(first, second, None, id=f"{first}-then-{second}-first-wins")
        for first in TERMINALS
        for second in TERMINALS
    ],
]


@pytest.mark.parametrize(("current", "incoming", "expected"), MERGE_TABLE)
def test_merge_request(current: str | None, incoming: str, expected: str | None) -> None:
    assert merge_request(current, outcome(incoming)) == expected


@pytest.mark.parametrize("incoming", sorted(set(REQUEST_RANK) - {"pending"}))
def test_the_read_stores_sql_applies_the_projections_precedence(incoming: str) -> None:
    """portal_sync/store.py's statement for an outcome overwrites exactly the statuses merge_request would
    replace (pending only fills in details: it never changes a status)."""
    sql = portal_store.statement_sql((("request", portal_store._REQUEST_COLUMNS),))
    listed = re.search(rf"EXCLUDED\.status = '{incoming}' AND t\.status IN \(([^)]*)\)", sql).group(1)
    replaced = set(listed.replace("'", "").split(", "))
    assert replaced == {current for current in REQUEST_RANK if merge_request(current, outcome(incoming))}
    # Pending never changes a status: it only fills in the request's details, where none were seen yet.
    assert "EXCLUDED.status = 'pending' AND t.status IN" not in sql
    assert "(EXCLUDED.status = 'pending' AND t.requested_at IS NULL)" in sql


def test_the_read_stores_sql_knows_the_final_statuses() -> None:
    """The reply is claimed where a request becomes final: the SQL lists exactly the terminal statuses."""
    listed = set(portal_store._TERMINAL_SQL.strip("()").replace("'", "").split(", "))
    assert listed == TERMINAL_REQUEST_STATUSES
    assert portal_store._CLAIM_REPLY.count(portal_store._TERMINAL_SQL) == 2


def test_terminal_statuses() -> None:
    assert TERMINAL_REQUEST_STATUSES == {"rejected", "completed", "failed"}


def fold_requests(events: list[Envelope]) -> RequestOutcome | None:
    """The stored request row after the events arrive in this order (the rule the SQL store implements)."""
    stored: RequestOutcome | None = None
    for event in events:
        incoming = request_outcome(event)
        if incoming is None:
            continue
        status = merge_request(None if stored is None else stored.status, incoming)
        if status is not None:
            assert status == incoming.status
            stored = incoming
    return stored


TERMINAL_EVENTS = [rejected, failed, rescheduled, canceled]
# Events about the same appointment that say nothing about the request.
NOISE_EVENTS = [lambda: rescheduled(request_id=None), lambda: canceled(request_id=None), updated, job_changed]


@st.composite
def request_histories(draw: st.DrawFn, terminals: int) -> list[Envelope]:
    """A request's events: the request itself (maybe redelivered), `terminals` outcomes, and noise."""
    events: list[Envelope] = [requested() for _ in range(draw(st.integers(0, 3)))]
    events += [draw(st.sampled_from(TERMINAL_EVENTS))() for _ in range(terminals)]
    events += [draw(st.sampled_from(NOISE_EVENTS))() for _ in range(draw(st.integers(0, 3)))]
    return draw(st.permutations(events))


@given(request_histories(terminals=1))
def test_any_arrival_order_ends_in_the_one_terminal_outcome(events: list[Envelope]) -> None:
    (terminal,) = [o for e in events if (o := request_outcome(e)) and o.status in TERMINAL_REQUEST_STATUSES]
    assert fold_requests(events) == terminal


@given(
    request_histories(terminals=0).filter(lambda events: any(isinstance(e, ModifyRequested) for e in events))
)
def test_without_an_outcome_the_request_stays_pending(events: list[Envelope]) -> None:
    stored = fold_requests(events)
    assert stored is not None and stored.status == "pending"


@given(request_histories(terminals=2))
def test_the_first_terminal_outcome_to_arrive_wins(events: list[Envelope]) -> None:
    first = next(o for e in events if (o := request_outcome(e)) and o.status in TERMINAL_REQUEST_STATUSES)
    assert fold_requests(events) == first


# --- appointment rows: the version rule ----------------------------------------------------------


def fold_appointment_rows(events: list[Envelope]) -> dict | None:
    """Keep the row with the highest version: a write lands only over an older stored version."""
    stored: dict | None = None
    for event in events:
        snap = appointment_snapshot(event)
        if snap is None:
            continue
        row = appointment_row(snap)
        if stored is None or stored["version"] < row["version"]:
            stored = row
    return stored


SNAPSHOT_EVENTS = [rescheduled, canceled, lambda version: rescheduled(None, version), updated]


@given(
    versions=st.lists(st.integers(0, 2**62), min_size=1, max_size=8, unique=True),
    kinds=st.lists(st.sampled_from(SNAPSHOT_EVENTS), min_size=8, max_size=8),
    noise=st.integers(0, 3),
    data=st.data(),
)
def test_highest_version_snapshot_wins_whatever_the_order(
    versions: list[int], kinds: list[Callable[..., Envelope]], noise: int, data: st.DataObject
) -> None:
    events: list[Envelope] = [kind(version=v) for kind, v in zip(kinds, versions, strict=False)]
    newest = max(events, key=lambda e: e.payload.appointment.version)
    events += [job_changed(), requested(), rejected()][:noise]
    shuffled = data.draw(st.permutations(events))
    assert fold_appointment_rows(shuffled) == appointment_row(newest.payload.appointment)


def test_a_stale_snapshot_after_a_newer_one_is_ignored() -> None:
    newer, older = canceled(version=7), rescheduled(version=6)
    row = fold_appointment_rows([newer, older])
    assert row is not None and row["status"] == "canceled" and row["version"] == 7


def test_a_replayed_snapshot_of_the_same_version_is_not_rewritten() -> None:
    first = rescheduled(version=6)
    replay_with_other_state = canceled(version=6)
    row = fold_appointment_rows([first, replay_with_other_state])
    assert row == appointment_row(first.payload.appointment)


def _offer(**extra) -> AppointmentOfferChanged:
    action = OfferedAction(offered=True)
    return message(
        AppointmentOfferChanged,
        AppointmentOfferChangedPayload(
            appointment_id=APPOINTMENT_ID,
            job_id="job-1",
            customer_id=CUSTOMER,
            offer_version=3,
            appointment_version=2,
            segments=[OfferSegment(reschedule=action, cancel=action)],
            **extra,
        ),
    )


def test_an_offer_projects_its_cancel_terms_and_project_contacts() -> None:
    row = offer_row(
        _offer(
            cancel_rules=CancelRules(reason_required=True, allowed_reasons=["Weather", "Budget"]),
            contacts=["lead-1", "sub-1"],
        )
    )
    assert row is not None
    assert row["cancel_reason_required"] is True
    assert row["cancel_reasons"] == ["Weather", "Budget"]
    assert row["contact_ids"] == ["lead-1", "sub-1"]


def test_an_offer_without_terms_means_any_reason_and_only_the_customer() -> None:
    """An offer from a gate that predates the terms (schema version 1 without them) still projects."""
    row = offer_row(_offer())
    assert row is not None
    assert (row["cancel_reason_required"], row["cancel_reasons"], row["contact_ids"]) == (False, None, [])


def test_a_customers_change_brings_its_offer_into_the_same_projection() -> None:
    """The offer the gate approved the change with is written from the change itself (issue 14); one
    without it (an office-era or older event) writes the appointment only."""
    carried = _offer().payload.model_copy(update={"appointment_version": 5, "offer_version": 7})
    change = rescheduled(version=5)
    with_offer = change.model_copy(update={"payload": change.payload.model_copy(update={"offer": carried})})
    row = offer_row(with_offer)
    assert row is not None and (row["offer_version"], row["appointment_version"]) == (7, 5)
    assert row == offer_row(message(AppointmentOfferChanged, carried))
    assert offer_row(rescheduled(version=5)) is None and offer_row(canceled(version=5)) is None
    assert offer_row(updated(version=5)) is None
