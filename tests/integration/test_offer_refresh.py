"""A settings change over many appointments recomputes their offers a chunk per transaction, the rest
carried by `offers.refresh` messages from the gate to itself, on the real database.

The gate's handlers run in this process (`offline_consumer`: inbox, handler, commit, no broker); the
messages a chunk emits are read back from the outbox and handed to the gate as the broker would.
"""

import math

import pytest
from sqlalchemy import select

from contracts.decoding import decode_or_raise
from contracts.events_v1 import AppointmentOfferChanged, OfficeOutcome
from contracts.internal_v1 import RefreshOffers
from infra.db.tables import outbox
from tests import factories as f
from tests.conftest import offline_consumer, unique_tenant
from workers.modify_handler.handlers import HANDLERS as SCHEDULE_HANDLERS
from workers.policy_gate import offering
from workers.policy_gate.handlers import HANDLERS as GATE_HANDLERS
from workers.runtime.outcomes import Duplicate, Handled

pytestmark = pytest.mark.integration

APPOINTMENTS = 8
CHUNK = 3


async def emitted(engine, tenant: str, seen: set) -> list:
    """The gate's outbox messages for `tenant` not handed out before, in the order they were written."""
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(outbox.c.message_id, outbox.c.body)
                .where(outbox.c.tenant_id == tenant, outbox.c.producer == "policy_gate")
                .order_by(outbox.c.id)
            )
        ).all()
    fresh = [row for row in rows if row.message_id not in seen]
    seen.update(row.message_id for row in fresh)
    return [decode_or_raise(row.body) for row in fresh]


async def test_a_settings_change_reaches_every_appointment_a_chunk_per_transaction(engine, monkeypatch):
    monkeypatch.setattr(offering, "REFRESH_CHUNK", CHUNK)
    tenant = unique_tenant("chunks")
    schedule = offline_consumer("modify_handler", SCHEDULE_HANDLERS, engine)
    gate = offline_consumer("policy_gate", GATE_HANDLERS, engine)
    appointment_ids = [f"apt-{i:02d}" for i in range(APPOINTMENTS)]
    for i, appointment_id in enumerate(appointment_ids):
        booking = f.appointment_recorded(
            tenant=tenant, appointment_id=appointment_id, job_id=f"job-{i}", change_id=f"book-{i}"
        )
        assert await schedule.handle(booking) == Handled()

    seen: set = set()
    assert await gate.handle(f.settings_layer_updated(tenant=tenant)) == Handled()
    offered: list[str] = []
    continuations: list[RefreshOffers] = []
    for _ in range(APPOINTMENTS + 1):  # a chain that never ends fails below instead of looping
        batch = await emitted(engine, tenant, seen)
        offered += [m.payload.appointment_id for m in batch if isinstance(m, AppointmentOfferChanged)]
        follow = [m for m in batch if isinstance(m, RefreshOffers)]
        assert len(follow) <= 1, "a chunk hands on to exactly one successor"
        if not follow:
            break
        continuations += follow
        assert await gate.handle(follow[0]) == Handled()
    else:
        pytest.fail(f"the refresh did not end after {APPOINTMENTS + 1} chunks")

    # Every upcoming appointment once, in id order, in ceil(8 / 3) transactions.
    assert offered == appointment_ids
    assert len(continuations) == math.ceil(APPOINTMENTS / CHUNK) - 1
    assert [c.payload.after_appointment_id for c in continuations] == [
        appointment_ids[CHUNK * (n + 1) - 1] for n in range(len(continuations))
    ]
    assert all(c.correlation_id == continuations[0].correlation_id for c in continuations)
    assert {c.payload.scope.level.value for c in continuations} == {"business"}

    # A redelivered chunk is dropped by the inbox: no second successor, no offer recomputed twice.
    assert await gate.handle(continuations[0]) == Duplicate()
    assert await emitted(engine, tenant, seen) == []


async def test_a_scope_no_larger_than_a_chunk_is_refreshed_in_the_settings_change_itself(engine, monkeypatch):
    monkeypatch.setattr(offering, "REFRESH_CHUNK", CHUNK)
    tenant = unique_tenant("chunks")
    schedule = offline_consumer("modify_handler", SCHEDULE_HANDLERS, engine)
    gate = offline_consumer("policy_gate", GATE_HANDLERS, engine)
    for i in range(CHUNK - 1):
        booking = f.appointment_recorded(
            tenant=tenant, appointment_id=f"apt-{i}", job_id=f"job-{i}", change_id=f"book-{i}"
        )
        assert await schedule.handle(booking) == Handled()

    assert await gate.handle(f.settings_layer_updated(tenant=tenant)) == Handled()
    emitted_now = await emitted(engine, tenant, set())
    # The office hears that its settings change applied; the rest is the offers it changed.
    assert [m.payload.status for m in emitted_now if isinstance(m, OfficeOutcome)] == ["applied"]
    batch = [m for m in emitted_now if not isinstance(m, OfficeOutcome)]
    assert sorted(m.payload.appointment_id for m in batch) == ["apt-0", "apt-1"]
    assert all(isinstance(m, AppointmentOfferChanged) for m in batch)
