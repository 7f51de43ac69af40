"""At-least-once delivery, end to end: duplicates have one effect, late events never move the portal back."""

import uuid
from datetime import UTC, datetime, timedelta

from apptctl import readstore
from apptctl.scenario_runner import publish_all, wait_until
from apptctl.scenarios import window_on
from contracts.common import AppointmentStatus, Confirmation
from contracts.events_v1 import AppointmentUpdated, AppointmentUpdatedPayload, Initiator
from contracts.internal_v1 import ModifyApproved, ModifyApprovedPayload
from contracts.office_v1 import (
    ActionRules,
    AppointmentRecorded,
    AppointmentRecordedPayload,
    ConfirmationRule,
    PortalSettingsPayload,
    PortalSettingsUpdated,
)
from contracts.portal_v1 import Cancel, ModifyRequested, ModifyRequestedPayload, Reschedule
from tests.conftest import unique_tenant

NOW = datetime.now(UTC)


def _meta(tenant: str, correlation_id: str | None = None, producer: str = "tests") -> dict:
    return dict(
        message_id=uuid.uuid4(),
        tenant_id=tenant,
        correlation_id=correlation_id or f"c-{uuid.uuid4().hex[:12]}",
        occurred_at=datetime.now(UTC),
        producer=producer,
    )


def settings_allowing_everything(tenant: str) -> PortalSettingsUpdated:
    allow = ConfirmationRule(confirmed="allow", unconfirmed="allow")
    return PortalSettingsUpdated(
        **_meta(tenant),
        payload=PortalSettingsPayload(
            feature_enabled=True,
            rules=ActionRules(reschedule=allow, cancel=allow),
            settings_version=1,
            changed_by="admin",
        ),
    )


def booking(tenant: str, appointment_id: str, job_id: str, customer: str = "cust-1") -> AppointmentRecorded:
    return AppointmentRecorded(
        **_meta(tenant, producer="office"),
        payload=AppointmentRecordedPayload(
            appointment_id=appointment_id,
            job_id=job_id,
            customer_id=customer,
            business_unit="plumbing",
            job_type="repair",
            window=window_on(NOW + timedelta(days=2), 9),
            status=AppointmentStatus.SCHEDULED,
            confirmation=Confirmation.UNCONFIRMED,
        ),
    )


def request(tenant: str, appointment_id: str, change, request_id: str | None = None) -> ModifyRequested:
    return ModifyRequested(
        **_meta(tenant, request_id or f"req-{uuid.uuid4().hex[:10]}", producer="portal-web"),
        payload=ModifyRequestedPayload(appointment_id=appointment_id, requester_id="cust-1", change=change),
    )


async def appointment_view(engine, tenant: str, appointment_id: str):
    return (await readstore.appointments(engine, tenant, [appointment_id])).get(appointment_id)


async def booked_world(broker, engine, appointments: list[tuple[str, str]]) -> str:
    tenant = unique_tenant()
    await publish_all(
        broker, [settings_allowing_everything(tenant), *(booking(tenant, a, j) for a, j in appointments)]
    )

    async def ready():
        if await readstore.settings_version(engine, tenant) is None:
            return False
        views = await readstore.appointments(engine, tenant, [a for a, _ in appointments])
        return len(views) == len(appointments)

    assert await wait_until(ready, 15)
    return tenant


async def outcome(engine, tenant: str, request_id: str, timeout_s: float = 15):
    async def terminal():
        view = await readstore.request(engine, tenant, request_id)
        return view if view and view.status != "pending" else None

    return await wait_until(terminal, timeout_s)


async def test_same_request_delivered_twice_moves_the_appointment_once(workers, broker, engine):
    tenant = await booked_world(broker, engine, [("apt-1", "job-1")])
    new_window = window_on(NOW + timedelta(days=4), 13)
    move = request(tenant, "apt-1", Reschedule(new_window=new_window))

    await publish_all(broker, [move, move])  # same message_id twice

    assert (await outcome(engine, tenant, move.correlation_id)).status == "completed"
    view = await appointment_view(engine, tenant, "apt-1")
    assert view.version == 2 and view.window_start == new_window.start


async def test_resent_request_with_new_message_id_gets_the_first_answer(workers, broker, engine):
    tenant = await booked_world(broker, engine, [("apt-1", "job-1")])
    first = request(tenant, "apt-1", Reschedule(new_window=window_on(NOW + timedelta(days=4), 13)))
    resent = first.model_copy(update={"message_id": uuid.uuid4()})

    await publish_all(broker, [first])
    assert (await outcome(engine, tenant, first.correlation_id)).status == "completed"
    await publish_all(broker, [resent])
    # the re-sent copy is decided as a duplicate request: no second approval, no second move
    inbox_seen = await wait_until(lambda: _inbox_has(engine, "policy_gate", resent.message_id), 10)
    assert inbox_seen
    assert (await appointment_view(engine, tenant, "apt-1")).version == 2
    # (the move also changed what the portal offers: that event is not an answer to the request)
    answers = [t for t in await _gate_events_for(engine, first.correlation_id) if t.startswith("modify.")]
    assert answers == ["modify.approved"]


async def _gate_events_for(engine, correlation_id: str) -> list[str]:
    from sqlalchemy import select

    from infra.db.tables import outbox

    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox.c.message_type).where(
                outbox.c.producer == "policy_gate", outbox.c.correlation_id == correlation_id
            )
        )
        return list(rows.scalars())


async def _inbox_has(engine, consumer: str, message_id) -> bool:
    from sqlalchemy import select

    from infra.db.tables import inbox

    async with engine.connect() as conn:
        row = await conn.execute(
            select(inbox).where(inbox.c.consumer == consumer, inbox.c.message_id == message_id)
        )
        return row.first() is not None


async def test_late_older_event_never_moves_the_portal_backwards(workers, broker, engine):
    tenant = await booked_world(broker, engine, [("apt-1", "job-1")])
    move = request(tenant, "apt-1", Reschedule(new_window=window_on(NOW + timedelta(days=4), 13)))
    await publish_all(broker, [move])
    assert (await outcome(engine, tenant, move.correlation_id)).status == "completed"
    current = await appointment_view(engine, tenant, "apt-1")

    stale_snapshot = booking(tenant, "apt-1", "job-1").payload
    stale = AppointmentUpdated(
        **_meta(tenant, producer="modify_handler"),
        payload=AppointmentUpdatedPayload(
            appointment=dict(
                **stale_snapshot.model_dump(exclude={"project", "zone"}),
                project_id=None,
                version=current.version - 1,
            ),
            initiated_by=Initiator.OFFICE,
        ),
    )
    await publish_all(broker, [stale])
    assert await wait_until(lambda: _inbox_has(engine, "portal_sync", stale.message_id), 10)
    assert await appointment_view(engine, tenant, "apt-1") == current


async def test_decision_on_an_outdated_version_fails_instead_of_applying_blindly(workers, broker, engine):
    tenant = await booked_world(broker, engine, [("apt-1", "job-1")])
    # The office changes the appointment (version 2) after the gate decided on version 1.
    await publish_all(broker, [booking(tenant, "apt-1", "job-1")])
    assert await wait_until(lambda: _version_is(engine, tenant, "apt-1", 2), 10)
    approved = ModifyApproved(
        **_meta(tenant, producer="policy_gate"),
        payload=ModifyApprovedPayload(
            appointment_id="apt-1", requester_id="cust-1", change=Cancel(reason="x"), decided_on_version=1
        ),
    )
    await publish_all(broker, [approved])
    result = await outcome(engine, tenant, approved.correlation_id)
    assert (result.status, result.reason_code) == ("failed", "appointment_changed")
    view = await appointment_view(engine, tenant, "apt-1")
    assert (view.status, view.version) == ("scheduled", 2)


async def _version_is(engine, tenant: str, appointment_id: str, version: int) -> bool:
    view = await appointment_view(engine, tenant, appointment_id)
    return view is not None and view.version == version


async def test_job_is_canceled_only_when_its_last_active_appointment_is(workers, broker, engine):
    tenant = await booked_world(broker, engine, [("apt-1", "job-1"), ("apt-2", "job-1")])
    first = request(tenant, "apt-1", Cancel(reason="one visit is enough"))
    await publish_all(broker, [first])
    assert (await outcome(engine, tenant, first.correlation_id)).status == "completed"
    assert await readstore.job_status(engine, tenant, "job-1") == "scheduled"

    second = request(tenant, "apt-2", Cancel(reason="no longer needed"))
    await publish_all(broker, [second])
    assert (await outcome(engine, tenant, second.correlation_id)).status == "completed"
    assert await wait_until(lambda: _job_status_is(engine, tenant, "job-1", "canceled"), 10)


async def _job_status_is(engine, tenant: str, job_id: str, status: str) -> bool:
    return await readstore.job_status(engine, tenant, job_id) == status


async def test_a_request_from_another_tenant_finds_nothing_and_changes_nothing(workers, broker, engine):
    tenant = await booked_world(broker, engine, [("apt-1", "job-1")])
    other_tenant = await booked_world(broker, engine, [("apt-9", "job-9")])
    before = await appointment_view(engine, tenant, "apt-1")

    intrusion = request(other_tenant, "apt-1", Cancel(reason="not mine"))  # same requester id, other tenant
    await publish_all(broker, [intrusion])

    result = await outcome(engine, other_tenant, intrusion.correlation_id)
    assert (result.status, result.reason_code) == ("rejected", "appointment_not_found")
    assert await appointment_view(engine, tenant, "apt-1") == before
