"""The offer travels with the change (issue 14), on the real database: the gate's approval carries the
portal's offer for the state it approves, the scheduling worker carries it on, and portal_sync writes the
new time and the new offer in one transaction; what the portal offers stays what the gate would decide,
after failures, office changes, reordering and replays.

The three workers' handlers run in this process (`offline_consumer`: inbox, handler, commit, no broker);
each message a worker writes to its outbox is handed to the workers its routes subscribe
(contracts/routes.py), in the order the test chooses.
"""

from uuid import uuid4

import pytest
from sqlalchemy import select, text

from apptctl import readstore
from contracts.common import Confirmation
from contracts.decoding import decode_or_raise
from contracts.envelope import Envelope
from contracts.events_v1 import (
    AppointmentOfferChanged,
    AppointmentRescheduled,
    AppointmentUpdated,
    ModifyFailed,
)
from contracts.internal_v1 import ModifyApproved
from contracts.office_v2 import CancelSettings, Permission, RescheduleSettings, SettingsLayer
from contracts.routes import subscribed_routes
from infra.db.tables import outbox
from tests import factories as f
from tests.conftest import offline_consumer, unique_tenant
from workers.modify_handler.handlers import HANDLERS as SCHEDULE_HANDLERS
from workers.policy_gate import offering, store
from workers.policy_gate.handlers import HANDLERS as GATE_HANDLERS
from workers.policy_gate.settings import resolve
from workers.portal_sync.handlers import HANDLERS as SYNC_HANDLERS
from workers.runtime.database import UnitOfWork
from workers.runtime.outcomes import Duplicate, Handled

pytestmark = pytest.mark.integration

WORKERS = ("policy_gate", "modify_handler", "portal_sync")
APPOINTMENT = "apt-1"


def one_reschedule(*, reason_required: bool = False, version: int = 1) -> dict:
    """Everything allowed, at most one customer reschedule (so a reschedule changes what is offered)."""
    allow = Permission.ALLOW
    layer = SettingsLayer(
        feature_enabled=True,
        reschedule=RescheduleSettings(confirmed=allow, unconfirmed=allow, max_customer_reschedules=1),
        cancel=CancelSettings(confirmed=allow, unconfirmed=allow, reason_required=reason_required),
    )
    return dict(settings=layer, settings_version=version)


class Pipeline:
    """The three workers on one tenant, and what each has written to its outbox and not handed on."""

    def __init__(self, engine) -> None:
        self.engine, self.tenant = engine, unique_tenant("carry")
        self.workers = {
            "policy_gate": offline_consumer("policy_gate", GATE_HANDLERS, engine),
            "modify_handler": offline_consumer("modify_handler", SCHEDULE_HANDLERS, engine),
            "portal_sync": offline_consumer("portal_sync", SYNC_HANDLERS, engine),
        }
        self.seen: set = set()

    async def handle(self, worker: str, message: Envelope) -> None:
        assert await self.workers[worker].handle(message) == Handled(), (worker, message.type)

    async def emitted(self, producer: str) -> list[Envelope]:
        """The producer's outbox messages not handed out before, in the order they were written."""
        async with self.engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(outbox.c.message_id, outbox.c.body)
                    .where(outbox.c.tenant_id == self.tenant, outbox.c.producer == producer)
                    .order_by(outbox.c.id)
                )
            ).all()
        fresh = [row for row in rows if row.message_id not in self.seen]
        self.seen.update(row.message_id for row in fresh)
        return [decode_or_raise(row.body) for row in fresh]

    async def deliver(self, message: Envelope) -> None:
        """To every worker whose routes bring it this message."""
        for worker in subscribers(message):
            await self.handle(worker, message)

    async def settle(self) -> None:
        """Hand on everything written, until nothing new is."""
        for _ in range(20):
            batch = [m for producer in WORKERS for m in await self.emitted(producer)]
            if not batch:
                return
            for message in batch:
                await self.deliver(message)
        pytest.fail("the pipeline did not settle")

    async def start(self, **settings) -> None:
        await self.handle("policy_gate", f.settings_layer_updated(tenant=self.tenant, **settings))
        await self.handle(
            "modify_handler", f.appointment_recorded(tenant=self.tenant, appointment_id=APPOINTMENT)
        )
        await self.settle()

    def request(self, change, request_id: str = "req-1"):
        return f.modify_requested(
            tenant=self.tenant, appointment_id=APPOINTMENT, change=change, request_id=request_id
        )

    async def approve(self, change, request_id: str = "req-1") -> ModifyApproved:
        """The gate decides the request; its only message is the approval."""
        await self.handle("policy_gate", self.request(change, request_id))
        (approval,) = await self.emitted("policy_gate")
        assert isinstance(approval, ModifyApproved)
        return approval

    async def portal(self) -> dict:
        """The read store's appointment and offer rows, side by side."""
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT a.version, a.window_start, a.confirmation, a.updated_at AS appointment_at, "
                        "o.offer_version, o.appointment_version, o.segments, o.cancel_reason_required, "
                        "o.updated_at AS offer_at "
                        "FROM portal.appointments a JOIN portal.appointment_offers o "
                        "ON o.tenant_id = a.tenant_id AND o.appointment_id = a.appointment_id "
                        "WHERE a.tenant_id = :tenant AND a.appointment_id = :id"
                    ),
                    {"tenant": self.tenant, "id": APPOINTMENT},
                )
            ).one()
        return row._asdict()

    async def gate_would_offer(self) -> tuple[list[dict], int, bool]:
        """What the gate computes now from the schedule and the settings: segments, appointment version,
        cancel reason required."""
        async with UnitOfWork(self.engine, "policy_gate") as uow:
            facts, layers = await store.load_facts_and_layers(uow, self.tenant, APPOINTMENT)
            assert facts is not None
            offer = offering.compute_offer(facts, resolve(layers), await uow.now())
        segments, _, _ = offer.documents()
        return segments, facts.version, offer.cancel_rules.reason_required

    async def assert_portal_offers_what_the_gate_would(self) -> dict:
        portal = await self.portal()
        segments, version, reason_required = await self.gate_would_offer()
        assert portal["version"] == portal["appointment_version"] == version
        assert (portal["segments"], portal["cancel_reason_required"]) == (segments, reason_required)
        return portal


def subscribers(message: Envelope) -> list[str]:
    return [
        worker
        for worker in WORKERS
        if any(
            (r.message_type, r.schema_version) == (message.type, message.schema_version)
            for r in subscribed_routes(worker)
        )
    ]


async def offer_now(pipeline: Pipeline) -> readstore.OfferView:
    return (await readstore.offers(pipeline.engine, pipeline.tenant, [APPOINTMENT]))[APPOINTMENT]


async def test_the_change_and_its_offer_reach_the_portal_in_one_transaction(engine):
    pipeline = Pipeline(engine)
    await pipeline.start(**one_reschedule())
    before = await pipeline.assert_portal_offers_what_the_gate_would()
    assert (await offer_now(pipeline)).reschedule_offered

    approval = await pipeline.approve(f.reschedule(f.arrival_window(9)))
    offer = approval.payload.offer
    assert offer is not None and offer.appointment_version == before["version"] + 1
    assert offer.offer_version > before["offer_version"]
    assert not offer.segments[0].reschedule.offered  # the approved reschedule uses up the one allowed
    assert offer.segments[0].reschedule.reason_code == "reschedule_limit_reached"

    await pipeline.handle("modify_handler", approval)
    applied = [m for m in await pipeline.emitted("modify_handler") if isinstance(m, AppointmentRescheduled)]
    (rescheduled,) = applied
    assert rescheduled.payload.offer == offer
    # The gate does not get the change back: the offer came with it.
    assert subscribers(rescheduled) == ["portal_sync"]

    await pipeline.handle("portal_sync", rescheduled)
    after = await pipeline.assert_portal_offers_what_the_gate_would()
    assert (after["offer_version"], after["window_start"]) == (
        offer.offer_version,
        approval.payload.change.new_window.start,
    )
    assert after["appointment_at"] == after["offer_at"]  # one transaction's clock: written together
    # What the portal now shows is what the gate answers.
    shown = await offer_now(pipeline)
    assert not shown.reschedule_offered and shown.cancel_offered
    await pipeline.handle("policy_gate", pipeline.request(f.reschedule(f.arrival_window(11)), "req-2"))
    (answer,) = await pipeline.emitted("policy_gate")
    assert answer.payload.reason_code == shown.reschedule_reason_code
    await pipeline.settle()
    assert (await pipeline.portal())["offer_version"] == offer.offer_version  # nothing recomputed it


async def test_a_failed_change_puts_back_the_offer_of_the_unchanged_appointment(engine):
    """The unit manages capacity and the picked window has no place: the approved reschedule fails. A
    settings change meanwhile made the gate send the offer for the state the change would have left."""
    pipeline = Pipeline(engine)
    await pipeline.handle("modify_handler", f.capacity_updated(tenant=pipeline.tenant))
    await pipeline.start(**one_reschedule())
    unchanged = await pipeline.assert_portal_offers_what_the_gate_would()

    approval = await pipeline.approve(f.reschedule(f.arrival_window(9)))
    await pipeline.handle(
        "policy_gate",
        f.settings_layer_updated(tenant=pipeline.tenant, **one_reschedule(reason_required=True, version=2)),
    )
    (_outcome, in_flight) = await pipeline.emitted("policy_gate")
    assert isinstance(in_flight, AppointmentOfferChanged)
    assert in_flight.payload.appointment_version == unchanged["version"] + 1  # for the state to come
    assert in_flight.payload.offer_version > approval.payload.offer.offer_version
    await pipeline.deliver(in_flight)
    assert not (await offer_now(pipeline)).reschedule_offered

    await pipeline.handle("modify_handler", approval)
    failures = [m for m in await pipeline.emitted("modify_handler") if isinstance(m, ModifyFailed)]
    assert [m.payload.reason_code for m in failures] == ["time_no_longer_available"]
    await pipeline.deliver(failures[0])
    await pipeline.settle()

    restored = await pipeline.assert_portal_offers_what_the_gate_would()
    assert restored["version"] == unchanged["version"] and restored["cancel_reason_required"]
    assert restored["offer_version"] > in_flight.payload.offer_version
    assert (await offer_now(pipeline)).reschedule_offered


async def test_an_office_change_after_a_customer_change_wins_whatever_the_order(engine):
    pipeline = Pipeline(engine)
    await pipeline.start(**one_reschedule())
    approval = await pipeline.approve(f.reschedule(f.arrival_window(9)))
    await pipeline.handle("modify_handler", approval)
    (rescheduled,) = [
        m for m in await pipeline.emitted("modify_handler") if isinstance(m, AppointmentRescheduled)
    ]

    # The office confirms the appointment where the customer moved it.
    confirmed = f.appointment_recorded(
        tenant=pipeline.tenant,
        appointment_id=APPOINTMENT,
        window=approval.payload.change.new_window,
        confirmation=Confirmation.CONFIRMED,
        change_id="office-confirms",
    )
    await pipeline.handle("modify_handler", confirmed)
    (updated,) = [m for m in await pipeline.emitted("modify_handler") if isinstance(m, AppointmentUpdated)]
    await pipeline.handle("policy_gate", updated)
    (recomputed,) = await pipeline.emitted("policy_gate")
    assert isinstance(recomputed, AppointmentOfferChanged)
    assert recomputed.payload.offer_version > rescheduled.payload.offer.offer_version

    # portal_sync gets the newer facts first and the customer's change (with its offer) last.
    await pipeline.handle("portal_sync", recomputed)
    await pipeline.handle("portal_sync", updated)
    await pipeline.handle("portal_sync", rescheduled)
    await pipeline.settle()
    final = await pipeline.assert_portal_offers_what_the_gate_would()
    assert final["confirmation"] == "confirmed"
    assert final["offer_version"] == recomputed.payload.offer_version


async def test_a_settings_change_while_the_change_is_on_its_way_reaches_the_new_state(engine):
    """The carried offer was computed under the old settings; the gate sends the one for the state the
    change will leave under the new ones, newer than the carried one, which the read store then ignores."""
    pipeline = Pipeline(engine)
    await pipeline.start(**one_reschedule())
    approval = await pipeline.approve(f.reschedule(f.arrival_window(9)))
    await pipeline.handle(
        "policy_gate",
        f.settings_layer_updated(tenant=pipeline.tenant, **one_reschedule(reason_required=True, version=2)),
    )
    await pipeline.handle("modify_handler", approval)
    await pipeline.settle()
    final = await pipeline.assert_portal_offers_what_the_gate_would()
    assert final["cancel_reason_required"] and final["version"] == approval.payload.decided_on_version + 1
    assert final["offer_version"] > approval.payload.offer.offer_version


async def test_an_office_record_of_the_very_window_the_customer_asked_for_still_gets_its_offer(engine):
    """The office moves the appointment to the window an approved request asked for, before the change
    applies: the office's state equals the one the carried offer was computed for, but the carried offer
    never reaches the portal (the change fails), so the gate announces it although it is unchanged."""
    pipeline = Pipeline(engine)
    unlimited = SettingsLayer(
        feature_enabled=True,
        reschedule=RescheduleSettings(
            confirmed=Permission.ALLOW, unconfirmed=Permission.ALLOW, min_notice_hours=24
        ),
        cancel=CancelSettings(confirmed=Permission.ALLOW, unconfirmed=Permission.ALLOW, min_notice_hours=24),
    )
    await pipeline.start(settings=unlimited)
    approval = await pipeline.approve(f.reschedule(f.arrival_window(9)))
    office_moves = f.appointment_recorded(
        tenant=pipeline.tenant,
        appointment_id=APPOINTMENT,
        window=approval.payload.change.new_window,
        change_id="office-moves",
    )
    await pipeline.handle("modify_handler", office_moves)
    await pipeline.handle("modify_handler", approval)
    await pipeline.settle()
    final = await pipeline.assert_portal_offers_what_the_gate_would()
    assert final["window_start"] == approval.payload.change.new_window.start
    assert [s["valid_until"] for s in final["segments"]] == [
        s.model_dump(mode="json")["valid_until"] for s in approval.payload.offer.segments
    ]


@pytest.mark.parametrize("gate_hears_first", ["modify.failed", "appointment.updated"])
async def test_an_office_change_overtaking_an_approved_change_leaves_the_offices_offer(
    engine, gate_hears_first
):
    """The office changes the appointment between the gate's approval and the schedule: the customer's
    change fails (the version moved), its carried offer never reaches the portal."""
    pipeline = Pipeline(engine)
    await pipeline.start(**one_reschedule())
    approval = await pipeline.approve(f.reschedule(f.arrival_window(9)))
    confirmed = f.appointment_recorded(
        tenant=pipeline.tenant,
        appointment_id=APPOINTMENT,
        confirmation=Confirmation.CONFIRMED,
        change_id="office-confirms",
    )
    await pipeline.handle("modify_handler", confirmed)
    await pipeline.handle("modify_handler", approval)
    emitted = await pipeline.emitted("modify_handler")
    (failed,) = [m for m in emitted if isinstance(m, ModifyFailed)]
    (updated,) = [m for m in emitted if isinstance(m, AppointmentUpdated)]
    first, second = (failed, updated) if gate_hears_first == "modify.failed" else (updated, failed)
    await pipeline.handle("policy_gate", first)
    await pipeline.handle("policy_gate", second)
    for message in emitted:
        await pipeline.handle("portal_sync", message)
    await pipeline.settle()
    final = await pipeline.assert_portal_offers_what_the_gate_would()
    assert final["confirmation"] == "confirmed"
    assert (await offer_now(pipeline)).reschedule_offered  # the failed reschedule used up nothing


async def test_a_replayed_request_or_change_gives_the_same_offer(engine):
    pipeline = Pipeline(engine)
    await pipeline.start(**one_reschedule())
    request = pipeline.request(f.reschedule(f.arrival_window(9)))
    approval = await pipeline.approve(request.payload.change)
    await pipeline.handle("modify_handler", approval)
    applied = await pipeline.emitted("modify_handler")
    (rescheduled,) = [m for m in applied if isinstance(m, AppointmentRescheduled)]
    for message in applied:
        await pipeline.deliver(message)
    done = await pipeline.assert_portal_offers_what_the_gate_would()
    assert done["offer_version"] == approval.payload.offer.offer_version

    # The portal sends the request again (a new message id): the stored decision stands, nothing is sent.
    await pipeline.handle("policy_gate", request.model_copy(update={"message_id": uuid4()}))
    assert await pipeline.emitted("policy_gate") == []
    # The broker redelivers the approval and the change: the inboxes drop them.
    assert await pipeline.workers["modify_handler"].handle(approval) == Duplicate()
    assert await pipeline.workers["portal_sync"].handle(rescheduled) == Duplicate()
    assert await pipeline.portal() == done

    # A settings change makes a newer offer; the change replayed late under a new message id (a dead
    # letter replayed, say) moves neither the time nor the offer back.
    await pipeline.handle(
        "policy_gate",
        f.settings_layer_updated(tenant=pipeline.tenant, **one_reschedule(reason_required=True, version=2)),
    )
    await pipeline.settle()
    newer = await pipeline.assert_portal_offers_what_the_gate_would()
    assert newer["offer_version"] > done["offer_version"] and newer["cancel_reason_required"]
    await pipeline.handle("portal_sync", rescheduled.model_copy(update={"message_id": uuid4()}))
    assert await pipeline.portal() == newer


@pytest.mark.parametrize("office_changed_it_meanwhile", [False, True])
async def test_an_office_approval_carries_the_offer_when_the_appointment_is_still_as_decided(
    engine, office_changed_it_meanwhile
):
    """A request that waited for the office: its approval carries the offer for the state it leaves, or
    none when the appointment changed since the request was decided (the change then fails)."""
    pipeline = Pipeline(engine)
    needs_office = SettingsLayer(
        feature_enabled=True,
        reschedule=RescheduleSettings(
            confirmed=Permission.REQUIRE_APPROVAL, unconfirmed=Permission.REQUIRE_APPROVAL
        ),
        cancel=CancelSettings(confirmed=Permission.ALLOW, unconfirmed=Permission.ALLOW),
    )
    await pipeline.start(settings=needs_office)
    await pipeline.handle("policy_gate", pipeline.request(f.reschedule(f.arrival_window(9))))
    await pipeline.settle()  # awaiting approval
    if office_changed_it_meanwhile:
        confirmed = f.appointment_recorded(
            tenant=pipeline.tenant,
            appointment_id=APPOINTMENT,
            confirmation=Confirmation.CONFIRMED,
            change_id="office-confirms",
        )
        await pipeline.handle("modify_handler", confirmed)
        await pipeline.settle()
    await pipeline.handle("policy_gate", f.approval_decided("req-1", tenant=pipeline.tenant))
    approval = next(m for m in await pipeline.emitted("policy_gate") if isinstance(m, ModifyApproved))
    assert (approval.payload.offer is None) is office_changed_it_meanwhile
    await pipeline.deliver(approval)
    await pipeline.settle()
    final = await pipeline.assert_portal_offers_what_the_gate_would()
    assert final["version"] == 2
    if not office_changed_it_meanwhile:
        assert final["offer_version"] == approval.payload.offer.offer_version
