"""The in-memory stores the handler unit tests use behave as the PostgreSQL ones do, where they overlap.

As the eventsourcing library does: one abstract test class per store protocol, run against the fake
(tests/fakes/) and against PostgreSQL (one transaction per test on the real database, rolled back), so
the fake cannot drift from the real store unnoticed."""

from dataclasses import replace
from datetime import datetime, timedelta
from uuid import uuid4

import asyncpg
import pytest

from contracts.common import AppointmentStatus, ArrivalWindow, Confirmation, JobStatus
from contracts.office_v2 import RateLimitSettings, ScopeLevel, SettingsLayer, SettingsScope
from infra.db.tables import (
    portal_appointment_offers,
    portal_appointments,
    portal_available_windows,
    portal_business_units,
    portal_jobs,
    portal_office_outcomes,
    portal_requests,
)
from tests import factories as f
from tests.conftest import unique_tenant
from tests.fakes.gate_store import FakeGateStore
from tests.fakes.portal_store import FakePortalStore
from tests.fakes.schedule_store import CheckViolation, FakeScheduleStore
from tests.fakes.unit_of_work import FakeUnitOfWork
from workers.modify_handler.domain import Place
from workers.modify_handler.repository import PostgresSchedule
from workers.policy_gate.rules import AppointmentFacts, Decision, Outcome, ProjectFacts
from workers.policy_gate.store import ApprovedChange, PendingApproval, PostgresGateStore
from workers.portal_sync.handlers import writes_of
from workers.portal_sync.store import PostgresPortalStore, Written
from workers.portal_sync.store import Writes as PortalWrites
from workers.runtime.database import UnitOfWork

REFUSED = (asyncpg.IntegrityConstraintViolationError, CheckViolation)


def upcoming(days: float) -> ArrivalWindow:
    return f.arrival_window(days)


def appointment_facts(appointment_id: str, *, days: float = 7, **fields) -> AppointmentFacts:
    values = dict(
        appointment_id=appointment_id,
        customer_id="cust-1",
        business_unit="hvac",
        job_type="repair",
        project=None,
        status=AppointmentStatus.SCHEDULED,
        confirmation=Confirmation.UNCONFIRMED,
        window=upcoming(days),
        version=1,
        job_id="job-1",
    )
    return AppointmentFacts(**{**values, **fields})


# --- the gate's store ------------------------------------------------------------------------------


_SEED_JOB = """
INSERT INTO scheduling.jobs (tenant_id, job_id, customer_id, status) VALUES ($1, $2, $3, 'scheduled')
ON CONFLICT DO NOTHING
"""
_SEED_PROJECT = """
INSERT INTO scheduling.projects (tenant_id, project_id, portal_locked, starts_at, ends_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT DO NOTHING
"""
_SEED_CONTACT = """
INSERT INTO scheduling.project_contacts (tenant_id, project_id, contact_id, role)
VALUES ($1, $2, $3, 'project_lead')
"""
_SEED_APPOINTMENT = """
INSERT INTO scheduling.appointments (tenant_id, appointment_id, job_id, customer_id, business_unit, job_type,
                                     project_id, window_start, window_end, status, confirmation, version,
                                     customer_reschedules, zone)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
"""


class GateStoreContract:
    """What the gate's handlers rely on from `GateStore`. Subclasses give `store`, `seed` (put an
    appointment where the gate reads it) and `clock` (the transaction's)."""

    tenant = "contract-gate"

    async def test_an_unknown_appointment_has_no_facts(self, store):
        assert await store.load_facts_and_layers(self.tenant, "nope") == (None, [])

    async def test_facts_come_with_the_layers_that_apply_to_them(self, store, seed):
        project = ProjectFacts("prj-1", frozenset({"lead-1", "lead-2"}), portal_locked=True)
        facts = appointment_facts("apt-1", project=project, customer_reschedules=2, zone="north")
        await seed(facts)
        layer = SettingsLayer(feature_enabled=True)
        for level, key, version in [
            ("business", None, 3),
            ("business_unit", "hvac", 4),
            ("business_unit", "plumbing", 5),
            ("job_type", "repair", 6),
            ("project", "prj-1", 7),
            ("project", "prj-2", 8),
        ]:
            scope = SettingsScope(level=level, key=key)
            assert await store.save_layer(
                self.tenant, scope, layer, settings_version=version, changed_by="admin", message_id=uuid4()
            )
        assert await store.save_layer(
            "another-tenant",
            SettingsScope(level="business"),
            layer,
            settings_version=1,
            changed_by="a",
            message_id=uuid4(),
        )

        found, layers = await store.load_facts_and_layers(self.tenant, "apt-1")

        assert found == facts
        assert sorted((s.level.value, s.key, s.settings_version, s.settings) for s in layers) == [
            ("business", None, 3, layer),
            ("business_unit", "hvac", 4, layer),
            ("job_type", "repair", 6, layer),
            ("project", "prj-1", 7, layer),
        ]

    async def test_a_layer_is_saved_only_over_an_older_version(self, store, seed):
        await seed(appointment_facts("apt-1"))
        scope = SettingsScope(level="business")
        on, off = SettingsLayer(feature_enabled=True), SettingsLayer(feature_enabled=False)
        save = store.save_layer
        assert await save(self.tenant, scope, on, settings_version=2, changed_by="a", message_id=uuid4())
        assert not await save(self.tenant, scope, off, settings_version=2, changed_by="a", message_id=uuid4())
        assert not await save(self.tenant, scope, off, settings_version=1, changed_by="a", message_id=uuid4())
        (layer,) = (await store.load_facts_and_layers(self.tenant, "apt-1"))[1]
        assert (layer.settings_version, layer.settings.feature_enabled) == (2, True)
        assert await save(self.tenant, scope, off, settings_version=3, changed_by="a", message_id=uuid4())
        (layer,) = (await store.load_facts_and_layers(self.tenant, "apt-1"))[1]
        assert (layer.settings_version, layer.settings.feature_enabled) == (3, False)

    async def test_the_business_rate_limits_are_those_its_layer_sets(self, store):
        assert await store.load_business_rate_limits(self.tenant) == ({}, 0)
        scope = SettingsScope(level="business")
        await store.save_layer(
            self.tenant,
            scope,
            SettingsLayer(feature_enabled=True),
            settings_version=1,
            changed_by="a",
            message_id=uuid4(),
        )
        assert await store.load_business_rate_limits(self.tenant) == ({}, 1)
        limited = SettingsLayer(rate_limits=RateLimitSettings(requester_per_minute=3, tenant_burst=9))
        await store.save_layer(
            self.tenant, scope, limited, settings_version=2, changed_by="a", message_id=uuid4()
        )
        assert await store.load_business_rate_limits(self.tenant) == (
            {"requester_per_minute": 3, "tenant_burst": 9},
            2,
        )

    def request(self, request_id: str = "req-1", **fields) -> dict:
        values = dict(
            tenant_id=self.tenant,
            request_id=request_id,
            message_id=uuid4(),
            appointment_id="apt-1",
            requester_id="cust-1",
            change={"action": "cancel", "reason": "moving"},
            producer="portal-web",
        )
        return {**values, **fields}

    async def test_a_request_id_is_decided_once_and_names_one_request(self, store, clock):
        decision = Decision(Outcome.APPROVED, "allowed")
        request = self.request()
        assert await store.record_decision(
            **request, decision=decision, decided_on_version=1, decided_at=clock
        )
        again = self.request(decision=decision, decided_on_version=1, decided_at=clock)
        assert not await store.record_decision(**again)

        same = {k: v for k, v in request.items() if k != "message_id"}
        assert await store.same_request(**same)
        for other in (
            {"producer": "another-portal"},
            {"appointment_id": "apt-2"},
            {"requester_id": "cust-2"},
            {"change": {"action": "cancel", "reason": None}},
            {"request_id": "req-unknown"},
        ):
            assert not await store.same_request(**{**same, **other})

    async def test_a_refusal_is_recorded_with_the_transactions_clock_once(self, store, clock):
        refusal = Decision(
            Outcome.REJECTED, "requester_rate_limit", reason_code="rate_limited", reason_text="Slow"
        )
        assert await store.record_refusal(**self.request(), decision=refusal) == clock
        assert await store.record_refusal(**self.request(), decision=refusal) is None
        assert await store.lock_pending_approvals(self.tenant, "req-1", None) == []
        same = {k: v for k, v in self.request().items() if k != "message_id"}
        assert await store.same_request(**same)

    async def test_only_a_request_waiting_for_the_office_is_pending_until_settled(self, store, clock):
        waiting = Decision(Outcome.NEEDS_APPROVAL, "approval", reason_code="awaiting_office_approval")
        request = self.request("req-wait", change={"action": "cancel", "reason": None})
        await store.record_decision(**request, decision=waiting, decided_on_version=4, decided_at=clock)
        await store.record_decision(
            **self.request("req-done"),
            decision=Decision(Outcome.APPROVED, "allowed"),
            decided_on_version=4,
            decided_at=clock,
        )
        assert await store.lock_pending_approvals(self.tenant, "req-done", None) == []
        assert await store.lock_pending_approvals(self.tenant, "req-unknown", None) == []
        other = self.request("req-wait", producer="another-portal")
        await store.record_decision(**other, decision=waiting, decided_on_version=4, decided_at=clock)

        mine = PendingApproval(
            "portal-web", "req-wait", "apt-1", "cust-1", "cancel", {"action": "cancel", "reason": None}, 4
        )
        assert await store.lock_pending_approvals(self.tenant, "req-wait", "portal-web") == [mine]
        both = await store.lock_pending_approvals(self.tenant, "req-wait", None)
        assert [p.producer for p in both] == ["another-portal", "portal-web"]  # the office must say whose
        await store.settle_approval(
            self.tenant,
            "req-wait",
            producer="portal-web",
            approved=False,
            reason_code="office_declined",
            reason_text="No.",
            decided_by="csr-1",
            decided_at=clock,
        )
        assert await store.lock_pending_approvals(self.tenant, "req-wait", "portal-web") == []
        assert [p.producer for p in await store.lock_pending_approvals(self.tenant, "req-wait", None)] == [
            "another-portal"
        ]

    async def test_an_approved_change_is_found_by_its_request_id(self, store, clock):
        change = {"action": "cancel", "reason": "moving"}
        await store.record_decision(
            **self.request("req-ok"),
            decision=Decision(Outcome.APPROVED, "allowed"),
            decided_on_version=2,
            decided_at=clock,
        )
        waiting = Decision(Outcome.NEEDS_APPROVAL, "approval")
        await store.record_decision(
            **self.request("req-wait"), decision=waiting, decided_on_version=5, decided_at=clock
        )
        assert await store.approved_change(self.tenant, "req-ok", "apt-1") == ApprovedChange(change, 2)
        assert await store.approved_change(self.tenant, "req-ok", "apt-2") is None
        assert await store.approved_change(self.tenant, "req-wait", "apt-1") is None
        assert await store.approved_change(self.tenant, "req-unknown", "apt-1") is None
        settle = dict(reason_code=None, reason_text=None, decided_by="csr-1", decided_at=clock)
        await store.settle_approval(self.tenant, "req-wait", producer="portal-web", approved=True, **settle)
        assert await store.approved_change(self.tenant, "req-wait", "apt-1") == ApprovedChange(change, 5)

    async def test_upcoming_appointments_by_scope_in_id_order_a_chunk_at_a_time(self, store, seed, clock):
        project = ProjectFacts("prj-1", frozenset())
        for facts in (
            appointment_facts("apt-d"),
            appointment_facts("apt-a", business_unit="plumbing", job_id="job-2"),
            appointment_facts("apt-c", project=project),
            appointment_facts("apt-b", job_type="install"),
            appointment_facts("apt-past", days=-2),
        ):
            await seed(facts)
        upcoming_ids = store.upcoming_appointments
        assert await upcoming_ids(self.tenant, clock) == ["apt-a", "apt-b", "apt-c", "apt-d"]
        assert await upcoming_ids(self.tenant, clock, ScopeLevel.BUSINESS_UNIT, "hvac") == [
            "apt-b",
            "apt-c",
            "apt-d",
        ]
        assert await upcoming_ids(self.tenant, clock, ScopeLevel.JOB_TYPE, "install") == ["apt-b"]
        assert await upcoming_ids(self.tenant, clock, ScopeLevel.PROJECT, "prj-1") == ["apt-c"]
        assert await upcoming_ids(self.tenant, clock, limit=2) == ["apt-a", "apt-b"]
        assert await upcoming_ids(self.tenant, clock, after_id="apt-b", limit=2) == ["apt-c", "apt-d"]
        assert await upcoming_ids(self.tenant, clock + timedelta(days=30)) == []
        assert await upcoming_ids("another-tenant", clock) == []

    async def test_an_offer_is_created_empty_and_keeps_what_was_saved(self, store, clock):
        locked = await store.lock_offers(self.tenant, ["apt-2", "apt-1"])
        assert sorted(locked) == ["apt-1", "apt-2"]
        empty = {
            k: locked["apt-1"][k]
            for k in ("offer_version", "appointment_version", "segments", "pick", "terms")
        }
        assert empty == {
            "offer_version": 0,
            "appointment_version": 0,
            "segments": [],
            "pick": None,
            "terms": None,
        }

        segments = [{"valid_from": None, "reschedule": {"offered": True}}]
        pick, terms = {"business_unit": "hvac"}, {"contacts": ["lead-1"]}
        await store.save_offer(
            self.tenant,
            "apt-1",
            offer_version=1,
            appointment_version=3,
            segments=segments,
            pick=pick,
            computed_at=clock,
            terms=terms,
        )
        saved = (await store.lock_offers(self.tenant, ["apt-1"]))["apt-1"]
        assert (saved["offer_version"], saved["appointment_version"]) == (1, 3)
        assert (saved["segments"], saved["pick"], saved["terms"]) == (segments, pick, terms)
        assert (await store.lock_offers(self.tenant, ["apt-2"]))["apt-2"]["offer_version"] == 0
        assert saved["carried_request_id"] is None

        await store.save_offer(
            self.tenant,
            "apt-1",
            offer_version=2,
            appointment_version=4,
            segments=segments,
            pick=pick,
            computed_at=clock,
            terms=terms,
            carried_request_id="req-9",
        )
        assert (await store.lock_offers(self.tenant, ["apt-1"]))["apt-1"]["carried_request_id"] == "req-9"


class TestFakeGateStore(GateStoreContract):
    @pytest.fixture
    def store(self) -> FakeGateStore:
        return FakeGateStore()

    @pytest.fixture
    def seed(self, store):
        async def seed(facts: AppointmentFacts) -> None:
            store.add_appointment(self.tenant, facts)

        return seed

    @pytest.fixture
    def clock(self, store) -> datetime:
        return store.now


@pytest.mark.integration
class TestPostgresGateStore(GateStoreContract):
    @pytest.fixture
    async def uow(self, engine):
        """A transaction on the real database that is never committed: the test leaves nothing behind."""
        self.tenant = unique_tenant("contract")
        async with UnitOfWork(engine, "policy_gate", tenant=self.tenant) as uow:
            yield uow

    @pytest.fixture
    def store(self, uow) -> PostgresGateStore:
        return PostgresGateStore(uow)

    @pytest.fixture
    def seed(self, uow):
        async def seed(facts: AppointmentFacts) -> None:
            """Where modify_handler writes them (the gate only reads)."""
            driver, tenant = uow.driver, self.tenant
            await driver.execute(_SEED_JOB, tenant, facts.job_id, facts.customer_id)
            if facts.project is not None:
                p = facts.project
                await driver.execute(
                    _SEED_PROJECT, tenant, p.project_id, p.portal_locked, p.starts_at, p.ends_at
                )
                for contact in sorted(p.contacts):
                    await driver.execute(_SEED_CONTACT, tenant, p.project_id, contact)
            await driver.execute(
                _SEED_APPOINTMENT,
                tenant,
                facts.appointment_id,
                facts.job_id,
                facts.customer_id,
                facts.business_unit,
                facts.job_type,
                facts.project_id,
                facts.window.start,
                facts.window.end,
                facts.status.value,
                facts.confirmation.value,
                facts.version,
                facts.customer_reschedules,
                facts.zone,
            )

        return seed

    @pytest.fixture
    async def clock(self, uow) -> datetime:
        return await uow.now()


# --- modify_handler's store -----------------------------------------------------------------------


class ScheduleStoreContract:
    """What modify_handler's handlers rely on from `ScheduleStore` (and `places.Places`)."""

    tenant = "contract-schedule"

    def booking(self, appointment_id: str = "apt-1", **fields):
        return f.appointment_recorded(tenant=self.tenant, appointment_id=appointment_id, **fields).payload

    async def test_a_job_is_created_once_and_follows_its_status(self, store):
        assert await store.ensure_job(self.tenant, "job-1", "cust-1")
        assert not await store.ensure_job(self.tenant, "job-1", "cust-other")
        job, statuses = await store.lock_job(self.tenant, "job-1")
        assert (job["status"], job["customer_id"], statuses) == ("scheduled", "cust-1", [])
        assert await store.set_job_status(self.tenant, "job-1", JobStatus.CANCELED) == 1
        assert await store.set_job_status(self.tenant, "job-1", JobStatus.SCHEDULED) == 2
        assert (await store.lock_job(self.tenant, "job-1"))[0]["status"] == "scheduled"

    async def test_an_office_record_inserts_then_overwrites_and_counts_versions(self, store):
        assert await store.lock_appointment(self.tenant, "apt-1") is None
        await store.ensure_job(self.tenant, "job-1", "cust-1")
        await store.guard_appointment_id(self.tenant, "apt-1")

        first = await store.record_office_appointment(
            self.tenant, self.booking(), holds_place=True, office_revision=5
        )

        assert (first.version, first.office_version, first.office_revision, first.holds_place) == (
            1,
            1,
            5,
            True,
        )
        assert (first.customer_version, first.zone, first.project_id) == (None, "", None)
        assert await store.lock_appointment(self.tenant, "apt-1") == first

        moved = self.booking(window=upcoming(9), status=AppointmentStatus.DISPATCHED, zone="north")
        second = await store.record_office_appointment(
            self.tenant, moved, holds_place=False, office_revision=None
        )

        assert (second.version, second.office_version, second.office_revision) == (2, 2, 5)
        assert (second.window, second.status, second.zone, second.holds_place) == (
            moved.window,
            AppointmentStatus.DISPATCHED,
            "north",
            False,
        )
        assert await store.lock_appointment(self.tenant, "apt-1") == second
        assert (await store.lock_job(self.tenant, "job-1"))[1] == [AppointmentStatus.DISPATCHED]

    async def test_a_customers_change_is_saved_and_remembered(self, store):
        await store.ensure_job(self.tenant, "job-1", "cust-1")
        booked = await store.record_office_appointment(
            self.tenant, self.booking(), holds_place=False, office_revision=2
        )
        new_window = upcoming(10)
        moved = replace(booked, window=new_window, version=2, holds_place=True, office_revision=None)
        await store.save_appointment(moved, customer_reschedule=True, by_customer=True)
        saved = await store.lock_appointment(self.tenant, "apt-1")
        assert (saved.window, saved.version, saved.holds_place, saved.customer_version) == (
            new_window,
            2,
            True,
            2,
        )
        assert (saved.office_revision, saved.office_version) == (2, 1)  # the office's, untouched

        canceled = replace(saved, status=AppointmentStatus.CANCELED, version=3)
        await store.save_appointment(canceled)
        saved = await store.lock_appointment(self.tenant, "apt-1")
        assert (saved.status, saved.version, saved.customer_version) == (AppointmentStatus.CANCELED, 3, 2)

    async def test_an_appointment_needs_its_job(self, store):
        with pytest.raises(REFUSED):
            await store.record_office_appointment(
                self.tenant, self.booking(), holds_place=False, office_revision=None
            )

    async def test_places_are_set_by_the_newest_capacity_message_only(self, store):
        a, b = upcoming(7), upcoming(8)
        assert not await store.unit_uses_capacity(self.tenant, "hvac", "")
        assert await store.set_places(self.tenant, "hvac", "", [], 1) == []

        created = await store.set_places(self.tenant, "hvac", "", [(b, 2), (a, 1)], 2)

        assert [(c.business_unit, c.zone, c.place, c.version) for c in created] == [
            ("hvac", "", Place(a, 1, 1, 0), 1),
            ("hvac", "", Place(b, 2, 2, 0), 1),
        ]
        assert await store.unit_uses_capacity(self.tenant, "hvac", "")
        assert not await store.unit_uses_capacity(self.tenant, "hvac", "north")
        assert await store.set_places(self.tenant, "hvac", "", [(a, 5)], 2) == []  # not newer
        (updated,) = await store.set_places(self.tenant, "hvac", "", [(a, 3)], 3)
        assert (updated.place, updated.version) == (Place(a, 3, 3, 0), 2)

    async def test_a_place_is_locked_and_saved_within_its_capacity(self, store):
        a, b = upcoming(7), upcoming(8)
        await store.set_places(self.tenant, "hvac", "", [(a, 1), (b, 1)], 1)
        assert await store.lock_places(self.tenant, "hvac", "", [b.start, upcoming(20).start, a.start]) == {
            a.start: Place(a, 1, 1, 0),
            b.start: Place(b, 1, 1, 0),
        }
        changed = await store.save_place(self.tenant, "hvac", "", Place(a, 1, 1, 1))
        assert (changed.place, changed.version) == (Place(a, 1, 1, 1), 2)
        assert (await store.lock_places(self.tenant, "hvac", "", [a.start]))[a.start].free == 0
        with pytest.raises(LookupError):
            await store.save_place(self.tenant, "hvac", "", Place(upcoming(20), 1, 1, 1))
        with pytest.raises(REFUSED):  # never overbooked
            await store.save_place(self.tenant, "hvac", "", Place(b, 1, 1, 2))

    async def test_capacity_counts_the_appointments_booked_before_it(self, store):
        a, b = upcoming(7), upcoming(8)
        await store.ensure_job(self.tenant, "job-1", "cust-1")
        for appointment_id, window, status in [
            ("apt-1", a, AppointmentStatus.SCHEDULED),
            ("apt-2", a, AppointmentStatus.SCHEDULED),
            ("apt-3", a, AppointmentStatus.CANCELED),
            (
                "apt-4",
                ArrivalWindow(start=a.start, end=a.end + timedelta(hours=1)),
                AppointmentStatus.SCHEDULED,
            ),
        ]:
            booking = self.booking(appointment_id, window=window, status=status)
            await store.record_office_appointment(
                self.tenant, booking, holds_place=False, office_revision=None
            )

        changed = await store.set_places(self.tenant, "hvac", "", [(a, 1), (b, 1)], 1)

        assert [(c.place, c.version) for c in changed] == [(Place(a, 1, 2, 2), 2), (Place(b, 1, 1, 0), 1)]
        holds = {
            i: (await store.lock_appointment(self.tenant, i)).holds_place
            for i in ("apt-1", "apt-2", "apt-3", "apt-4")
        }
        assert holds == {"apt-1": True, "apt-2": True, "apt-3": False, "apt-4": False}


class TestFakeScheduleStore(ScheduleStoreContract):
    @pytest.fixture
    def store(self) -> FakeScheduleStore:
        return FakeScheduleStore()


@pytest.mark.integration
class TestPostgresSchedule(ScheduleStoreContract):
    @pytest.fixture
    async def store(self, engine):
        self.tenant = unique_tenant("contract")
        async with UnitOfWork(engine, "modify_handler", tenant=self.tenant) as uow:  # never committed
            yield PostgresSchedule(uow)


async def test_the_fake_unit_of_work_rolls_its_store_back_unless_committed():
    """What the handler tests rely on: a handler that raises leaves the store as it found it."""
    store = FakeGateStore()
    uow = FakeUnitOfWork(store, producer="policy_gate")

    async def fails(message, uow) -> None:
        await store.lock_offers("t", ["apt-1"])
        await uow.emit(message)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await uow.handle(fails, f.modify_requested())
    assert (store.offers, uow.events, uow.committed) == ({}, [], False)


# --- portal_sync's read store ---------------------------------------------------------------------


def _portal_writes(*messages) -> list[PortalWrites]:
    return [writes_of(m) for m in messages]


def _summary(written: Written) -> tuple:
    """What the handler reads of a result: the views written, the request's status, where its feed event
    goes, its reply and its portal."""
    r = written.request
    recorded = None if r is None else (r.status, r.customer_id, r.job_id, r.reply, r.producer)
    return (written.now is not None, set(written.rows), recorded)


REPLIES = "portal-web.replies"


class PortalStoreContract:
    """What portal_sync's handler relies on from `PortalStore`. Subclasses give `store`, `row` (a stored
    row by part and key, None when absent) and `audit` (an appointment's audit entries in time order)."""

    tenant = "contract-portal"

    async def test_nothing_to_write_writes_nothing(self, store):
        assert await store.write(self.tenant, writes_of(f.project_updated())) == Written(None)

    @pytest.mark.parametrize(
        ("part", "newer", "older", "key"),
        [
            (
                "appointment",
                lambda: f.appointment_updated(version=3),
                lambda: f.appointment_updated(version=2),
                (f.APPOINTMENT_ID,),
            ),
            (
                "offer",
                lambda: f.appointment_offer_changed(offer_version=3),
                lambda: f.appointment_offer_changed(offer_version=2),
                (f.APPOINTMENT_ID,),
            ),
            (
                "job",
                lambda: f.job_status_changed(version=3),
                lambda: f.job_status_changed(version=2),
                (f.JOB_ID,),
            ),
            (
                "business_unit",
                lambda: f.capacity_updated(timezone="Europe/Berlin", capacity_version=3),
                lambda: f.capacity_updated(capacity_version=2),
                (f.BUSINESS_UNIT,),
            ),
            (
                "available_window",
                lambda: f.capacity_window_changed(free=0, version=3),
                lambda: f.capacity_window_changed(free=1, version=2),
                None,
            ),
        ],
    )
    async def test_a_view_is_overwritten_only_by_a_newer_version(self, store, row, part, newer, older, key):
        newer, older = newer(), older()
        if key is None:
            window = newer.payload.window
            key = (newer.payload.business_unit, "", window.start)
        first = await store.write(self.tenant, writes_of(newer))
        stored = await row(part, key)
        late = await store.write(self.tenant, writes_of(older))
        again = await store.write(self.tenant, writes_of(newer))

        assert part in first
        assert (part in late, part in again) == (False, False)
        assert await row(part, key) == stored
        version = {"offer": "offer_version", "business_unit": "capacity_version"}.get(part, "version")
        assert stored[version] == 3

    async def test_an_office_outcome_is_kept_once(self, store, row):
        """Kept once (its first report stands); not among `Written.rows`, which names the version-gated
        views a feed event is about."""
        outcome = f.office_outcome_event()
        first = await store.write(self.tenant, writes_of(outcome))
        stored = await row("office_outcome", (outcome.payload.office_message_id,))
        again = await store.write(self.tenant, writes_of(outcome))

        assert (first.rows, again.rows) == (frozenset(), frozenset())
        assert (stored["status"], stored["correlation_id"]) == (
            outcome.payload.status.value,
            outcome.correlation_id,
        )
        assert await row("office_outcome", (outcome.payload.office_message_id,)) == stored

    async def test_a_request_then_its_outcome_claims_the_reply_once(self, store, row, audit):
        sent = f.modify_requested(reply_to=REPLIES)
        rejected = f.modify_rejected(sent)

        results = [await store.write(self.tenant, w) for w in _portal_writes(sent, sent, rejected, rejected)]
        failed = await store.write(self.tenant, writes_of(f.modify_failed(f.modify_approved(sent))))

        reply = dict(
            request_id=f.REQUEST_ID,
            appointment_id=f.APPOINTMENT_ID,
            action="reschedule",
            status="rejected",
            reason_code="same_window",
            reason_text=rejected.payload.reason,
            reply_to=REPLIES,
        )
        assert [_summary(w) for w in results] == [
            (True, set(), ("pending", None, None, None, "portal-web")),
            (True, set(), None),
            (True, set(), ("rejected", None, None, reply, "portal-web")),
            (True, set(), None),
        ]
        assert _summary(failed) == (True, set(), None)
        stored = await row("request", ("portal-web", f.REQUEST_ID))
        assert (stored["status"], stored["requester_id"], stored["requested_at"], stored["reply_to"]) == (
            "rejected",
            f.CUSTOMER_ID,
            sent.occurred_at,
            REPLIES,
        )
        assert stored["replied_at"] is not None
        assert await audit(f.APPOINTMENT_ID) == ["requested", "rejected", "failed"]

    async def test_an_outcome_before_its_request_is_answered_by_the_request(self, store, row, audit):
        sent = f.modify_requested(reply_to=REPLIES)
        rejected = f.modify_rejected(sent)

        first = await store.write(self.tenant, writes_of(rejected))
        then = await store.write(self.tenant, writes_of(sent))

        assert _summary(first) == (True, set(), ("rejected", None, None, None, "portal-web"))
        assert then.request.status == "rejected"
        assert then.request.reply["status"] == "rejected"
        assert then.request.reply["reply_to"] == REPLIES
        stored = await row("request", ("portal-web", f.REQUEST_ID))
        assert (stored["requester_id"], stored["reply_to"]) == (f.CUSTOMER_ID, REPLIES)
        assert sorted(await audit(f.APPOINTMENT_ID)) == ["rejected", "requested"]

    async def test_statuses_only_move_up_and_the_first_final_one_wins(self, store, row):
        sent = f.modify_requested()
        approved = f.modify_approved(sent)
        order = [
            sent,
            f.modify_awaiting_approval(sent),
            f.modify_failed(approved),
            f.modify_awaiting_approval(sent),
            f.modify_rejected(sent),
        ]
        statuses = [
            None if (w := await store.write(self.tenant, writes)).request is None else w.request.status
            for writes in _portal_writes(*order)
        ]
        assert statuses == ["pending", "awaiting_approval", "failed", None, None]
        assert (await row("request", ("portal-web", f.REQUEST_ID)))["status"] == "failed"

    async def test_the_feed_route_is_the_appointment_as_known_before_the_event(self, store):
        sent = f.modify_requested()
        done = f.appointment_rescheduled(f.modify_approved(sent), version=2)
        await store.write(self.tenant, writes_of(sent))

        unknown = await store.write(self.tenant, writes_of(done))
        known = await store.write(self.tenant, writes_of(f.modify_requested(request_id="req-2")))

        assert _summary(unknown) == (True, {"appointment"}, ("completed", None, None, None, "portal-web"))
        assert (known.request.customer_id, known.request.job_id) == (f.CUSTOMER_ID, f.JOB_ID)

    async def test_request_ids_are_per_portal(self, store, row):
        web, app = (
            f.modify_requested(reply_to=REPLIES),
            f.modify_requested(producer="portal-app", reply_to=REPLIES),
        )
        for writes in _portal_writes(web, app):
            await store.write(self.tenant, writes)
        rejected = await store.write(self.tenant, writes_of(f.modify_rejected(app)))

        assert (rejected.request.producer, rejected.request.reply["status"]) == ("portal-app", "rejected")
        assert (await row("request", ("portal-web", f.REQUEST_ID)))["status"] == "pending"
        assert (await row("request", ("portal-app", f.REQUEST_ID)))["status"] == "rejected"

    async def test_an_outcome_without_its_portal_finds_the_one_request_with_its_id(self, store, row):
        app = f.modify_requested(producer="portal-app", reply_to=REPLIES)
        await store.write(self.tenant, writes_of(app))
        legacy = f.modify_rejected(app).model_copy(update={"request_producer": None})

        written = await store.write(self.tenant, writes_of(legacy))

        assert (written.request.producer, written.request.status) == ("portal-app", "rejected")
        assert written.request.reply is not None
        orphan = f.modify_rejected(f.modify_requested(request_id="req-9")).model_copy(
            update={"request_producer": None}
        )
        assert (await store.write(self.tenant, writes_of(orphan))).request.producer == ""
        assert (await row("request", ("", "req-9")))["status"] == "rejected"

    async def test_one_audit_line_per_fact(self, store, audit):
        sent = f.modify_requested()
        for writes in _portal_writes(
            sent,
            f.modify_requested(),  # the same request id again: no second "requested"
            f.modify_rejected(sent),
            f.modify_rejected(sent),  # the same fact in another message
            f.appointment_updated(version=2),
            f.appointment_updated(version=2),
            f.appointment_updated(version=1),  # late: its view is not written, its line is
        ):
            await store.write(self.tenant, writes)

        assert await audit(f.APPOINTMENT_ID) == [
            "requested",
            "rejected",
            "office_recorded",
            "office_recorded",
        ]

    async def test_a_request_line_comes_only_with_the_requests_first_sighting(self, store, audit):
        """A request id reused for another appointment is not that appointment's request (the gate
        dead-letters it): no line in its trail."""
        await store.write(self.tenant, writes_of(f.modify_requested()))
        reused = await store.write(self.tenant, writes_of(f.modify_requested(appointment_id="appt-2")))

        assert reused.request is None
        assert (await audit(f.APPOINTMENT_ID), await audit("appt-2")) == (["requested"], [])

    async def test_a_batch_writes_what_its_events_write_one_by_one(self, store, row, audit):
        sent = f.modify_requested(reply_to=REPLIES)
        batch = _portal_writes(
            f.appointment_updated(version=3),
            f.modify_rejected(sent),
            sent,
            f.modify_rejected(sent),
            f.appointment_updated(version=2),
            f.job_status_changed(version=2),
            f.capacity_window_changed(version=1),
            f.project_updated(),
        )

        results = await store.write_many(self.tenant, batch)

        summaries = [_summary(w) for w in results]
        reply = summaries[2][2][3]
        assert summaries == [
            (True, {"appointment"}, None),
            # The appointment's first version came in an earlier statement: the request is routed by it.
            (True, set(), ("rejected", f.CUSTOMER_ID, f.JOB_ID, None, "portal-web")),
            (True, set(), ("rejected", f.CUSTOMER_ID, f.JOB_ID, reply, "portal-web")),
            (True, set(), None),
            (True, set(), None),
            (True, {"job"}, None),
            (True, {"available_window"}, None),
            (True, set(), None),  # writes nothing; shares the first statement (its clock)
        ]
        assert (reply["status"], reply["reply_to"]) == ("rejected", REPLIES)
        assert (await row("appointment", (f.APPOINTMENT_ID,)))["version"] == 3
        assert sorted(await audit(f.APPOINTMENT_ID)) == [
            "office_recorded",
            "office_recorded",
            "rejected",
            "requested",
        ]


class TestFakePortalStore(PortalStoreContract):
    @pytest.fixture
    def store(self) -> FakePortalStore:
        return FakePortalStore()

    @pytest.fixture
    def row(self, store):
        async def row(part: str, key: tuple) -> dict | None:
            if part == "request":
                return store.requests.get((self.tenant, *key))
            if part == "office_outcome":
                return store.office_outcomes.get((self.tenant, *key))
            return store.view(self.tenant, part, *key)

        return row

    @pytest.fixture
    def audit(self, store):
        async def audit(appointment_id: str) -> list[str]:
            return store.audit_entries(self.tenant, appointment_id)

        return audit


_PORTAL_TABLES = {
    "appointment": portal_appointments,
    "offer": portal_appointment_offers,
    "available_window": portal_available_windows,
    "business_unit": portal_business_units,
    "job": portal_jobs,
    "office_outcome": portal_office_outcomes,
    "request": portal_requests,
}


@pytest.mark.integration
class TestPostgresPortalStore(PortalStoreContract):
    @pytest.fixture
    async def uow(self, engine):
        self.tenant = unique_tenant("contract")
        async with UnitOfWork(engine, "portal_sync", tenant=self.tenant) as uow:  # never committed
            yield uow

    @pytest.fixture
    def store(self, uow) -> PostgresPortalStore:
        return PostgresPortalStore(uow)

    @pytest.fixture
    def row(self, uow):
        async def row(part: str, key: tuple) -> dict | None:
            table = _PORTAL_TABLES[part]
            columns = [c.name for c in table.primary_key.columns if c.name != "tenant_id"]
            where = " AND ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=2))
            found = await uow.driver.fetchrow(
                f"SELECT * FROM {table.fullname} WHERE tenant_id = $1 AND {where}", self.tenant, *key
            )
            return None if found is None else dict(found)

        return row

    @pytest.fixture
    def audit(self, uow):
        async def audit(appointment_id: str) -> list[str]:
            rows = await uow.driver.fetch(
                "SELECT entry FROM portal.audit_trail WHERE tenant_id = $1 AND appointment_id = $2 "
                "ORDER BY occurred_at",
                self.tenant,
                appointment_id,
            )
            return [r["entry"] for r in rows]

        return audit
