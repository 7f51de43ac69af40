"""The policy engine on the real services: layered settings, explained decisions, office approvals,
project rules and limits, each through the real workers."""

import uuid

import pytest
from sqlalchemy import select

from apptctl import readstore
from apptctl.scenario_runner import publish_all, take_dead_letters, wait_until
from contracts.common import Confirmation, ContactRole, Project, ProjectContact
from contracts.decoding import encode
from contracts.office_v2 import CancelSettings, Permission, RescheduleSettings, SettingsLayer
from infra.db.tables import decisions, settings_history
from tests import factories as f
from tests.conftest import unique_tenant
from workers.runtime.broker import amqp_message, headers_for

ALLOW, DENY, APPROVAL = Permission.ALLOW, Permission.DENY, Permission.REQUIRE_APPROVAL


def everything(permission: Permission = ALLOW, **reschedule) -> SettingsLayer:
    return SettingsLayer(
        feature_enabled=True,
        reschedule=RescheduleSettings(confirmed=permission, unconfirmed=permission, **reschedule),
        cancel=CancelSettings(confirmed=permission, unconfirmed=permission),
    )


class World:
    """One tenant with settings layers and bookings, published through the real pipeline."""

    def __init__(self, broker, engine) -> None:
        self.broker, self.engine, self.tenant = broker, engine, unique_tenant()

    async def settings(self, *layers) -> None:
        await publish_all(
            self.broker, [f.settings_layer_updated(tenant=self.tenant, **layer) for layer in layers]
        )

        async def stored():
            return await readstore.settings_version(self.engine, self.tenant) is not None

        assert await wait_until(stored, 10)

    async def book(self, appointment_id: str, **fields) -> None:
        await publish_all(
            self.broker,
            [
                f.appointment_recorded(
                    tenant=self.tenant,
                    appointment_id=appointment_id,
                    job_id=f"job-{appointment_id}",
                    change_id=f"c-{uuid.uuid4().hex[:8]}",
                    **fields,
                )
            ],
        )

        async def visible():
            return await readstore.appointments(self.engine, self.tenant, [appointment_id])

        assert await wait_until(visible, 10)

    async def ask(
        self, appointment_id: str, change=None, requester: str = f.CUSTOMER_ID, status: str | None = None
    ):
        request = f.modify_requested(
            tenant=self.tenant,
            appointment_id=appointment_id,
            requester_id=requester,
            change=change,
            request_id=f"req-{uuid.uuid4().hex[:10]}",
        )
        await publish_all(self.broker, [request])
        return request.correlation_id, await self.outcome(request.correlation_id, status)

    async def outcome(self, request_id: str, status: str | None = None):
        async def settled():
            view = await readstore.request(self.engine, self.tenant, request_id)
            if view is None or view.status == "pending":
                return None
            return view if status is None or view.status == status else None

        return await wait_until(settled, 15)

    async def decision(self, request_id: str):
        async with self.engine.connect() as conn:
            return (
                await conn.execute(
                    select(decisions).where(
                        decisions.c.tenant_id == self.tenant, decisions.c.request_id == request_id
                    )
                )
            ).one()

    async def appointment(self, appointment_id: str):
        return (await readstore.appointments(self.engine, self.tenant, [appointment_id]))[appointment_id]


@pytest.fixture
def world(workers, broker, engine) -> World:
    return World(broker, engine)


async def test_office_approval_grants_a_parked_request(world: World):
    await world.settings({"settings": everything(APPROVAL)})
    await world.book("apt-1", confirmation=Confirmation.CONFIRMED)
    new_window = f.arrival_window(12)

    request_id, waiting = await world.ask("apt-1", f.reschedule(new_window))
    assert (waiting.status, waiting.reason_code) == ("awaiting_approval", "awaiting_office_approval")
    assert (await world.appointment("apt-1")).version == 1  # nothing applied while waiting

    approval = f.approval_decided(request_id, tenant=world.tenant, approved=True)
    await publish_all(world.broker, [approval, approval.model_copy(update={"message_id": uuid.uuid4()})])
    done = await world.outcome(request_id, "completed")
    assert done is not None
    view = await world.appointment("apt-1")
    assert (view.window_start, view.version) == (new_window.start, 2)
    row = await world.decision(request_id)
    assert (row.outcome, row.rule, row.office_decided_by) == ("approved", "office_approval", "csr-1")


async def test_office_decline_tells_the_customer_why_and_changes_nothing(world: World):
    await world.settings({"settings": everything(APPROVAL)})
    await world.book("apt-1")
    request_id, waiting = await world.ask("apt-1", f.cancel("too busy"))
    assert waiting.status == "awaiting_approval"

    await publish_all(
        world.broker,
        [
            f.approval_decided(
                request_id, tenant=world.tenant, approved=False, reason="The crew is already on site."
            )
        ],
    )
    declined = await world.outcome(request_id, "rejected")
    assert declined.reason_code == "office_declined"
    assert "The crew is already on site." in declined.reason_text
    assert (await world.appointment("apt-1")).status == "scheduled"


async def test_the_most_specific_layer_decides_and_the_decision_says_which(world: World):
    await world.settings(
        {"settings": everything(ALLOW)},
        {
            "level": "job_type",
            "key": "hvac-install",
            "settings": SettingsLayer(reschedule=RescheduleSettings(confirmed=DENY)),
        },
    )
    await world.book("apt-1", job_type="hvac-install", confirmation=Confirmation.CONFIRMED)
    await world.book("apt-2", job_type="tune-up", confirmation=Confirmation.CONFIRMED)

    blocked_id, blocked = await world.ask("apt-1")
    _, allowed = await world.ask("apt-2")

    assert (blocked.status, blocked.reason_code) == ("rejected", "confirmed_change_blocked")
    row = await world.decision(blocked_id)
    assert (row.rule, row.setting, row.setting_level) == (
        "reschedule.confirmed",
        "reschedule.confirmed",
        "job_type",
    )
    assert allowed.status == "completed"


async def test_settings_are_versioned_kept_as_history_and_validated(world: World, engine):
    await world.settings({"settings": everything(ALLOW), "settings_version": 2})
    # an older version arriving late is ignored; a newer one applies and is recorded with what it replaced
    await publish_all(
        world.broker,
        [
            f.settings_layer_updated(
                tenant=world.tenant, settings=SettingsLayer(feature_enabled=False), settings_version=1
            ),
            f.settings_layer_updated(
                tenant=world.tenant, settings=everything(DENY), settings_version=3, changed_by="csr-9"
            ),
        ],
    )

    async def history():
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(
                    settings_history.c.settings_version,
                    settings_history.c.changed_by,
                    settings_history.c.previous,
                )
                .where(settings_history.c.tenant_id == world.tenant)
                .order_by(settings_history.c.id)
            )
            rows = rows.all()
        return rows if len(rows) == 2 else None

    rows = await wait_until(history, 10)
    assert [(r.settings_version, r.changed_by) for r in rows] == [(2, "admin-1"), (3, "csr-9")]
    assert rows[1].previous["reschedule"]["confirmed"] == "allow"
    assert await readstore.settings_version(engine, world.tenant) == 3

    # a bad setting is refused with its reason and the stored one stays
    bad = f.settings_layer_updated(tenant=world.tenant, settings_version=4)
    body = encode(bad)
    assert b'"blocking_statuses":null' in body
    body = body.replace(b'"blocking_statuses":null', b'"blocking_statuses":["done"]')
    await world.broker.publish(
        world.broker.topology.exchange("office"),
        bad.routing_key,
        amqp_message(
            body,
            message_id=str(bad.message_id),
            correlation_id=bad.correlation_id,
            message_type=bad.type,
            producer="office",
            headers=headers_for(bad),
        ),
    )
    dead = await take_dead_letters(world.broker, str(bad.message_id), expected=1)
    assert [(d.reason, "canceled" in d.detail) for d in dead] == [("schema_violation", True)]
    assert await readstore.settings_version(engine, world.tenant) == 3


async def test_project_contacts_lock_and_dates(world: World):
    window = f.arrival_window(5)
    project = Project(
        project_id="tower",
        contacts=[ProjectContact(contact_id="sub-1", role=ContactRole.SUBCONTRACTOR)],
        starts_at=window.start - f.timedelta(days=1),
        ends_at=window.start + f.timedelta(days=10),
    )
    await world.settings({"settings": everything(ALLOW)})
    await world.book("apt-1", project=project, window=window)
    await world.book(
        "apt-2", project=project.model_copy(update={"project_id": "locked", "portal_locked": True})
    )

    _, by_contact = await world.ask("apt-1", f.reschedule(f.arrival_window(8)), requester="sub-1")
    _, by_stranger = await world.ask("apt-1", f.reschedule(f.arrival_window(9)), requester="sub-2")
    _, too_late = await world.ask("apt-1", f.reschedule(f.arrival_window(30)), requester="sub-1")
    _, locked = await world.ask("apt-2", f.cancel("x"), requester="sub-1")

    assert by_contact.status == "completed"
    assert (by_stranger.status, by_stranger.reason_code) == ("rejected", "appointment_not_found")
    assert (too_late.status, too_late.reason_code) == ("rejected", "outside_project_dates")
    assert (locked.status, locked.reason_code) == ("rejected", "project_locked")


async def test_customer_reschedules_are_limited(world: World):
    await world.settings({"settings": everything(ALLOW, max_customer_reschedules=1)})
    await world.book("apt-1")
    _, first = await world.ask("apt-1", f.reschedule(f.arrival_window(8)))
    _, second = await world.ask("apt-1", f.reschedule(f.arrival_window(9)))
    _, cancel = await world.ask("apt-1", f.cancel("moving"))
    assert first.status == "completed"
    assert (second.status, second.reason_code) == ("rejected", "reschedule_limit_reached")
    assert "rescheduled online once." in second.reason_text
    assert cancel.status == "completed"


async def test_a_business_without_settings_offers_nothing(world: World):
    await world.book("apt-1")
    _, answer = await world.ask("apt-1", f.cancel("x"))
    assert (answer.status, answer.reason_code) == ("rejected", "self_service_disabled")
