"""What the portal offers per appointment, through the real workers: it follows settings, bookings,
confirmations, project locks and the clock, and always matches what the gate would decide."""

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text

from apptctl import readstore
from apptctl.scenario_runner import publish_all, wait_until
from contracts.common import ArrivalWindow, Confirmation, ContactRole, Project, ProjectContact
from contracts.office_v2 import CancelSettings, RescheduleSettings, SettingsLayer
from tests import factories as f
from tests.conftest import unique_tenant
from tests.e2e.test_policy_engine import ALLOW, DENY, World, everything


@pytest.fixture
def world(workers, broker, engine) -> World:
    return World(broker, engine)


async def offer_of(world: World, appointment_id: str, accept=lambda offer: True, within_s: float = 15):
    async def current():
        offer = (await readstore.offers(world.engine, world.tenant, [appointment_id])).get(appointment_id)
        return offer if offer is not None and accept(offer) else None

    found = await wait_until(current, within_s)
    assert found is not None, f"no offer for {appointment_id} that satisfies the condition"
    return found


async def test_a_business_without_settings_offers_nothing_and_says_why(world: World):
    await world.book("apt-1")
    offer = await offer_of(world, "apt-1")
    assert not offer.modify_offered
    assert offer.reschedule_reason_code == offer.cancel_reason_code == "self_service_disabled"
    assert "call the office" in offer.cancel_reason


async def test_settings_changes_reach_every_upcoming_appointment(world: World):
    await world.book("apt-1", confirmation=Confirmation.CONFIRMED)
    await world.book("apt-2", confirmation=Confirmation.UNCONFIRMED)
    await world.settings({"settings": everything(ALLOW)})
    for appointment_id in ("apt-1", "apt-2"):
        offer = await offer_of(world, appointment_id, lambda o: o.modify_offered)
        assert offer.reschedule_offered and offer.cancel_offered

    # The business now refuses online changes to confirmed appointments.
    confirmed_denied = SettingsLayer(
        feature_enabled=True,
        reschedule=RescheduleSettings(confirmed=DENY, unconfirmed=ALLOW),
        cancel=CancelSettings(confirmed=DENY, unconfirmed=ALLOW),
    )
    await world.settings({"settings": confirmed_denied, "settings_version": 2})
    blocked = await offer_of(world, "apt-1", lambda o: not o.modify_offered)
    assert blocked.reschedule_reason_code == "confirmed_change_blocked"
    assert "can't be rescheduled online" in blocked.reschedule_reason
    still = await offer_of(world, "apt-2")
    assert still.modify_offered


async def test_the_offer_follows_a_confirmation_and_what_the_gate_then_decides(world: World):
    layer = SettingsLayer(
        feature_enabled=True,
        reschedule=RescheduleSettings(confirmed=ALLOW, unconfirmed=ALLOW),
        cancel=CancelSettings(confirmed=DENY, unconfirmed=ALLOW),
    )
    await world.settings({"settings": layer})
    await world.book("apt-1", confirmation=Confirmation.UNCONFIRMED)
    before = await offer_of(world, "apt-1", lambda o: o.cancel_offered)
    await world.book("apt-1", confirmation=Confirmation.CONFIRMED)
    after = await offer_of(world, "apt-1", lambda o: not o.cancel_offered)
    assert after.offer_version > before.offer_version
    assert after.reschedule_offered and after.cancel_reason_code == "confirmed_change_blocked"
    # What the portal shows is what the gate answers.
    _, answer = await world.ask("apt-1", f.cancel("moving"))
    assert (answer.status, answer.reason_code) == ("rejected", after.cancel_reason_code)


async def test_a_notice_window_closes_with_time_alone(world: World):
    """No event arrives when the notice window closes: the read store already knows when it does."""
    await world.settings({"settings": everything(ALLOW, min_notice_hours=24)})
    start = f.now().replace(microsecond=0) + timedelta(hours=24, seconds=4)
    await world.book("apt-1", window=ArrivalWindow(start=start, end=start + timedelta(hours=2)))
    open_now = await offer_of(world, "apt-1")
    assert open_now.reschedule_offered
    assert open_now.offer_changes_at == start - timedelta(hours=24)
    closed = await offer_of(world, "apt-1", lambda o: not o.reschedule_offered, within_s=20)
    assert closed.offer_version == open_now.offer_version  # the same timeline, a later segment
    assert closed.reschedule_reason_code == "notice_window_passed"
    assert "24 hours" in closed.reschedule_reason
    assert closed.cancel_offered  # cancel has no notice in these settings


async def test_locking_a_project_withdraws_the_offer_from_all_its_appointments(world: World):
    await world.settings({"settings": everything(ALLOW)})
    project = Project(project_id="tower-1")
    await world.book("apt-1", project=project)
    await world.book("apt-2", project=project)
    await offer_of(world, "apt-2", lambda o: o.modify_offered)
    # The office re-records one appointment with the project now locked.
    await world.book("apt-1", project=project.model_copy(update={"portal_locked": True}))
    for appointment_id in ("apt-1", "apt-2"):
        offer = await offer_of(world, appointment_id, lambda o: not o.modify_offered)
        assert offer.reschedule_reason_code == offer.cancel_reason_code == "project_locked"


async def test_a_reschedule_used_up_the_limit_and_the_offer_says_so(world: World):
    await world.settings({"settings": everything(ALLOW, max_customer_reschedules=1)})
    await world.book("apt-1")
    await offer_of(world, "apt-1", lambda o: o.reschedule_offered)
    _, done = await world.ask("apt-1", f.reschedule(f.arrival_window(9)))
    assert done.status == "completed"
    offer = await offer_of(world, "apt-1", lambda o: not o.reschedule_offered)
    assert offer.reschedule_reason_code == "reschedule_limit_reached"
    assert offer.cancel_offered


async def test_the_new_time_and_its_offer_show_together(world: World):
    """Issue 14: the offer travels with the change, so the read store never shows a customer's new time
    with the offer of the old one, not even for a moment (sampled as fast as the database answers)."""
    await world.settings({"settings": everything(ALLOW, max_customer_reschedules=1)})
    await world.book("apt-1")
    await offer_of(world, "apt-1", lambda o: o.reschedule_offered)
    request = f.modify_requested(
        tenant=world.tenant,
        appointment_id="apt-1",
        change=f.reschedule(f.arrival_window(9)),
        request_id=f"req-{uuid.uuid4().hex[:10]}",
    )
    both = text(
        "SELECT a.version, o.appointment_version FROM portal.appointments a "
        "JOIN portal.appointment_offers o "
        "ON o.tenant_id = a.tenant_id AND o.appointment_id = a.appointment_id "
        "WHERE a.tenant_id = :tenant AND a.appointment_id = 'apt-1'"
    )
    await publish_all(world.broker, [request])
    seen: set[tuple[int, int]] = set()
    async with world.engine.connect() as conn:
        for _ in range(3000):
            seen.add(tuple((await conn.execute(both, {"tenant": world.tenant})).one()))
            await conn.commit()  # a fresh snapshot each time
            if (2, 2) in seen:
                break
    assert seen <= {(1, 1), (2, 2)}, f"the time and the offer showed apart: {sorted(seen)}"
    assert (2, 2) in seen
    offer = await offer_of(world, "apt-1")
    assert not offer.reschedule_offered and offer.reschedule_reason_code == "reschedule_limit_reached"


async def test_an_older_offer_arriving_late_never_replaces_a_newer_one(engine):
    from workers.portal_sync import projection, store
    from workers.runtime.database import UnitOfWork

    tenant = unique_tenant()
    newer = projection.offer_row(f.appointment_offer_changed(offer_version=3))
    older = projection.offer_row(f.appointment_offer_changed(offer_version=2))
    async with UnitOfWork(engine, "portal_sync") as uow:
        assert "offer" in await store.write(uow.driver, tenant, store.Writes(offer=newer))
        assert "offer" not in await store.write(uow.driver, tenant, store.Writes(offer=older))
        # a redelivery changes nothing
        assert "offer" not in await store.write(uow.driver, tenant, store.Writes(offer=newer))
        await uow.commit()
    (offer,) = (await readstore.offers(engine, tenant, [f.APPOINTMENT_ID])).values()
    assert offer.offer_version == 3 and offer.modify_offered


async def test_the_office_locks_a_project_on_its_own_and_every_offer_follows(world: World):
    """office.project.recorded changes a project without touching its appointments; the gate hears of
    it (project.updated) and recomputes each appointment's offer; new contacts may act at once."""
    await world.settings({"settings": everything(ALLOW)})
    project = Project(project_id="tower-9")
    await world.book("apt-1", project=project)
    await world.book("apt-2", project=project)
    await offer_of(world, "apt-1", lambda o: o.modify_offered)
    locked = project.model_copy(update={"portal_locked": True})
    await publish_all(world.broker, [f.project_recorded(locked, tenant=world.tenant, change_id="prj-lock")])
    for appointment_id in ("apt-1", "apt-2"):
        offer = await offer_of(world, appointment_id, lambda o: not o.modify_offered)
        assert offer.cancel_reason_code == "project_locked"

    lead = ProjectContact(contact_id="lead-new", role=ContactRole.PROJECT_LEAD)
    reopened = project.model_copy(update={"contacts": [lead]})
    await publish_all(world.broker, [f.project_recorded(reopened, tenant=world.tenant, change_id="prj-open")])
    await offer_of(world, "apt-2", lambda o: o.modify_offered)
    _, answer = await world.ask("apt-2", f.cancel("site closed"), requester="lead-new")
    assert answer.status == "completed"
