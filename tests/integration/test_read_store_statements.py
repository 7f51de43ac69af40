"""portal_sync's merged statements on the real database: what one event writes is one statement, a batch
of events one statement per round; the version gates, idempotency, one audit line per fact, one reply per
request and the tenant wall hold as they did statement by statement; and each handled event announces its
change with one live-feed event (v2) listing every view it changed.

Batches are driven as workers/runtime/batch.py drives them: one unit of work for the tenant, `uow.batch`
set to its messages, the handler called for each in turn, one commit."""

import uuid
from collections.abc import Sequence

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.decoding import decode_or_raise
from contracts.envelope import Envelope
from contracts.feed_v2 import PortalViewChangedV2
from contracts.portal_v1 import ModifyOutcome, ModifyRequested
from tests import factories as f
from tests.conftest import unique_tenant
from tests.integration import test_runtime as runtime_tests
from tests.integration.test_batches import Gate, in_one_batch
from tests.integration.test_runtime import outbox_rows
from tests.waiting import eventually
from workers.portal_sync import store
from workers.portal_sync.handlers import project_event, writes_of
from workers.runtime.database import UnitOfWork, asyncpg_dsn

pytestmark = pytest.mark.integration

# The runtime tests' consumer on its own connection, to run portal_sync's handler through real batches.
start_consumer = runtime_tests.start_consumer


class CountingDriver:
    """The unit of work's asyncpg connection, counting the statements the handler sends (round trips)."""

    def __init__(self, driver: asyncpg.Connection) -> None:
        self._driver = driver
        self.statements = 0

    def __getattr__(self, name: str):
        attribute = getattr(self._driver, name)
        if name in ("fetch", "fetchrow", "fetchval", "execute"):

            async def counted(*args, **kwargs):
                self.statements += 1
                return await attribute(*args, **kwargs)

            return counted
        return attribute


async def handle(engine: AsyncEngine, messages: Sequence[Envelope], *, batch: bool = True):
    """The messages in one transaction (a batch when `batch`: each handler scoped to its message's
    tenant, as the runtime does); what it emitted and how many statements the handler sent."""
    async with UnitOfWork(engine, "portal_sync") as uow:
        if batch and len(messages) > 1:
            uow.batch = tuple(messages)
        statements = 0
        for message in messages:
            await uow.scope_to(message.tenant_id)
            counting = CountingDriver(uow.driver)
            uow.driver = counting  # type: ignore[assignment]
            try:
                await project_event(message, uow)
            finally:
                uow.driver = counting._driver
            statements += counting.statements
        await uow.commit()
    return [decoded(row) for row in uow.written], statements


def decoded(row) -> Envelope:
    """An outbox row's message (a reply goes to a portal's own queue: not among the routed types)."""
    if row.message_type == ModifyOutcome.model_fields["type"].default:
        return ModifyOutcome.model_validate_json(row.body)
    return decode_or_raise(row.body)


def again(message: Envelope) -> Envelope:
    """The same fact carried by another message id (a producer's retry, a replay)."""
    return message.model_copy(update={"message_id": uuid.uuid4()})


def feed_events(emitted) -> list[PortalViewChangedV2]:
    return [m for m in emitted if isinstance(m, PortalViewChangedV2)]


def replies(emitted) -> list[ModifyOutcome]:
    return [m for m in emitted if isinstance(m, ModifyOutcome)]


async def read(database_url: str, sql: str, *args):
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


def story(tenant: str, *, reply_to: str | None = "appt.portal.replies-1", request_id: str = "req-1"):
    requested = f.modify_requested(tenant=tenant, reply_to=reply_to, request_id=request_id)
    approved = f.modify_approved(requested)
    return requested, f.appointment_rescheduled(approved, version=3)


async def test_one_event_is_one_statement_and_one_feed_event_listing_every_view(engine):
    tenant = unique_tenant()
    requested, rescheduled = story(tenant)
    emitted, statements = await handle(engine, [requested])
    assert statements == 1
    (event,) = feed_events(emitted)
    assert [(c.view, c.status) for c in event.payload.changes] == [("request", "pending")]

    emitted, statements = await handle(engine, [rescheduled])
    # The appointment, the request's outcome, its reply claim and its audit line: one round trip.
    assert statements == 1
    (event,) = feed_events(emitted)
    assert event.route() == f"{tenant}.{f.CUSTOMER_ID}.{f.JOB_ID}"
    assert event.correlation_id == "req-1" and event.causation_id == rescheduled.message_id
    assert [(c.view, c.appointment_id, c.status, c.version) for c in event.payload.changes] == [
        ("appointment", f.APPOINTMENT_ID, "scheduled", 3),
        ("request", f.APPOINTMENT_ID, "completed", None),
    ]
    assert len(replies(emitted)) == 1


async def test_a_batch_is_one_statement_and_one_feed_event_per_message(engine, database_url):
    tenant = unique_tenant()
    requests = [
        f.modify_requested(tenant=tenant, appointment_id=f"apt-{i}", request_id=f"req-{i}") for i in range(4)
    ]
    emitted, statements = await handle(engine, requests)
    assert statements == 1
    assert len(feed_events(emitted)) == 4
    assert [e.correlation_id for e in feed_events(emitted)] == [f"req-{i}" for i in range(4)]
    # Events that touch one row (here: four requests about one appointment) go in separate rounds.
    emitted, statements = await handle(engine, [story(tenant, request_id=f"req-{i}")[0] for i in range(4, 8)])
    assert statements == 4 and len(feed_events(emitted)) == 4
    assert {r["request_id"] for r in await read(database_url, REQUESTS, tenant)} == {
        f"req-{i}" for i in range(8)
    }


REQUESTS = "SELECT request_id, status, replied_at FROM portal.requests WHERE tenant_id = $1 ORDER BY 1"
APPOINTMENT = "SELECT version FROM portal.appointments WHERE tenant_id = $1 AND appointment_id = $2"
AUDIT = "SELECT entry, request_id, version FROM portal.audit_trail WHERE tenant_id = $1 ORDER BY entry"


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "one-by-one"])
async def test_a_late_or_repeated_snapshot_never_moves_the_portal_backwards(engine, database_url, batch):
    tenant = unique_tenant()
    requested = f.modify_requested(tenant=tenant)
    v3 = f.appointment_updated(f.appointment_recorded(tenant=tenant), version=3)
    v5 = f.appointment_updated(f.appointment_recorded(tenant=tenant), version=5)
    v4 = f.appointment_updated(f.appointment_recorded(tenant=tenant), version=4)
    emitted, _ = await handle(engine, [requested, v3, v5, v4, again(v5)], batch=batch)
    assert [r["version"] for r in await read(database_url, APPOINTMENT, tenant, f.APPOINTMENT_ID)] == [5]
    changed = [c.version for e in feed_events(emitted) for c in e.payload.changes if c.view == "appointment"]
    assert changed == [3, 5]  # the late v4 and the repeated v5 changed nothing, and say nothing


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "one-by-one"])
async def test_a_redelivered_or_recarried_event_writes_nothing_and_says_nothing(engine, database_url, batch):
    tenant = unique_tenant()
    requested, rescheduled = story(tenant)
    await handle(engine, [requested, rescheduled], batch=batch)
    emitted, _ = await handle(engine, [again(requested), again(rescheduled), again(rescheduled)], batch=batch)
    assert emitted == []
    assert [(r["request_id"], r["status"]) for r in await read(database_url, REQUESTS, tenant)] == [
        ("req-1", "completed")
    ]
    # One audit line per fact, whatever message ids carried it.
    assert [(r["entry"], r["request_id"]) for r in await read(database_url, AUDIT, tenant)] == [
        ("requested", "req-1"),
        ("rescheduled", "req-1"),
    ]


async def test_a_reused_request_id_writes_no_audit_line_of_its_own(engine, database_url):
    tenant = unique_tenant()
    requested = f.modify_requested(tenant=tenant)
    reused = f.modify_requested(
        tenant=tenant, appointment_id="apt-other"
    )  # same request id, other appointment
    await handle(engine, [requested])
    emitted, _ = await handle(engine, [reused])
    assert emitted == []
    assert [(r["entry"], r["request_id"]) for r in await read(database_url, AUDIT, tenant)] == [
        ("requested", "req-1")
    ]


@pytest.mark.parametrize(
    ("order", "batch"),
    [
        ("request first", True),
        ("request first", False),
        ("outcome first", True),
        ("outcome first", False),
    ],
)
async def test_the_reply_goes_out_once_whichever_came_last(engine, database_url, order, batch):
    tenant = unique_tenant()
    requested, rescheduled = story(tenant)
    rejected = f.modify_rejected(requested)  # a second, later terminal outcome: the first one stands
    messages = [requested, rescheduled] if order == "request first" else [rescheduled, requested]
    emitted, _ = await handle(engine, [*messages, again(rescheduled), rejected], batch=batch)
    (reply,) = replies(emitted)
    assert (reply.payload.status, reply.payload.reply_to) == ("completed", "appt.portal.replies-1")
    emitted, _ = await handle(engine, [again(requested), again(rescheduled), again(rejected)], batch=batch)
    assert replies(emitted) == []
    ((request_id, status, replied_at),) = await read(database_url, REQUESTS, tenant)
    assert (request_id, status) == ("req-1", "completed") and replied_at is not None


async def test_requests_of_one_batch_are_answered_each_once(engine):
    tenant = unique_tenant()
    requests = [
        f.modify_requested(tenant=tenant, appointment_id=f"apt-{i}", request_id=f"req-{i}", reply_to="q")
        for i in range(3)
    ]
    outcomes = [f.modify_rejected(r) for r in requests]
    emitted, statements = await handle(engine, [*requests, *outcomes])
    assert sorted(r.payload.request_id for r in replies(emitted)) == ["req-0", "req-1", "req-2"]
    assert statements == 2  # the requests, then their outcomes (each touches its request's row again)


def test_rounds_keep_each_rows_events_in_order() -> None:
    tenant = "acme"
    a = f.appointment_updated(f.appointment_recorded(tenant=tenant), version=1)
    b = f.appointment_updated(f.appointment_recorded(tenant=tenant), version=2)
    other = f.modify_requested(tenant=tenant, appointment_id="apt-x", request_id="req-x")
    assert store.rounds([writes_of(m) for m in (a, other, b)]) == [[0, 1], [2]]


async def test_the_statement_keeps_the_tenant_wall(engine, database_url):
    """Under a role bound by row-level security (as every worker's is), the merged statement writes the
    rows of the tenant its transaction names, and none of another tenant's."""
    role = f"rls_ps_{uuid.uuid4().hex[:10]}"
    mine, theirs = unique_tenant(), unique_tenant()
    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await admin.execute(f'CREATE ROLE "{role}" NOLOGIN')
        await admin.execute(f'GRANT USAGE ON SCHEMA portal TO "{role}"')
        await admin.execute(f'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA portal TO "{role}"')
        async with admin.transaction():
            await admin.execute(f'SET LOCAL ROLE "{role}"')
            await admin.execute("SELECT set_config('appt.tenant_id', $1, true)", mine)
            written = await store.write(admin, mine, writes_of(f.modify_requested(tenant=mine)))
            assert written.request is not None and written.request.status == "pending"
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                async with admin.transaction():
                    await store.write(admin, theirs, writes_of(f.modify_requested(tenant=theirs)))
    finally:
        await admin.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA portal FROM "{role}"')
        await admin.execute(f'REVOKE USAGE ON SCHEMA portal FROM "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "one-by-one"])
@pytest.mark.parametrize("request_first", [True, False], ids=["request-first", "wait-first"])
async def test_no_reply_while_the_office_decides_whichever_came_first(
    engine, database_url, batch, request_first
):
    """A request that waits for the office's approval is not answered until its outcome is final (the
    request brings the reply queue, before or after the wait), and then once."""
    tenant = unique_tenant()
    requested, rescheduled = story(tenant)
    waiting = f.modify_awaiting_approval(requested)
    emitted, _ = await handle(
        engine, [requested, waiting] if request_first else [waiting, requested], batch=batch
    )
    assert replies(emitted) == []
    statuses = [c.status for e in feed_events(emitted) for c in e.payload.changes]
    # The request's own sighting after the wait fills in its details; its status stays.
    assert statuses == (["pending", "awaiting_approval"] if request_first else ["awaiting_approval"] * 2)
    emitted, _ = await handle(engine, [rescheduled, again(rescheduled)], batch=batch)
    (reply,) = replies(emitted)
    assert reply.payload.status == "completed"


async def test_the_runtimes_batch_hands_portal_sync_every_message_of_its_transaction(
    broker, start_consumer, engine, database_url
):
    """Through the real consumer and its batches: the deliveries waiting together are one transaction,
    the handler learns all of them at once (uow.batch) and writes them together; each gets its own
    live-feed event."""
    gate, seen_batches = Gate(), []

    async def handle(message: Envelope, uow: UnitOfWork) -> None:
        await gate.hold(message)
        seen_batches.append(len(uow.batch))
        await project_event(message, uow)

    consumer = await start_consumer({ModifyRequested: handle}, batch_max=8, batch_runners=1)
    tenant = unique_tenant()
    first, *rest = [
        f.modify_requested(tenant=tenant, appointment_id=f"apt-{i}", request_id=f"req-{i}") for i in range(6)
    ]
    await in_one_batch(broker, consumer, gate, first, rest)
    await eventually(lambda: consumer.counts.get("handled") == 6, "all handled")
    assert consumer.batches.sizes == {1: 1, 5: 1}
    assert seen_batches == [0, 5, 5, 5, 5, 5]  # the first alone, then one batch of five
    rows = await read(database_url, REQUESTS, tenant)
    assert [(r["request_id"], r["status"]) for r in rows] == [(f"req-{i}", "pending") for i in range(6)]
    events = [r for r in await outbox_rows(engine, consumer.name) if r.message_type == "portal.view_changed"]
    assert len(events) == 6


async def test_a_change_that_carries_its_offer_is_one_statement_and_one_event_listing_all_three(engine):
    """The offer travels with the change (issue 14, item 1): the new time, the new offer and the
    request's outcome are one statement and one live-feed event."""
    tenant = unique_tenant()
    requested = f.modify_requested(tenant=tenant)
    rescheduled = f.appointment_rescheduled(
        f.modify_approved(requested), version=3, offer=f.carried_offer(3, offer_version=4)
    )
    await handle(engine, [requested])
    emitted, statements = await handle(engine, [rescheduled])
    assert statements == 1
    (event,) = feed_events(emitted)
    assert [(c.view, c.status, c.version) for c in event.payload.changes] == [
        ("appointment", "scheduled", 3),
        ("offer", None, 4),
        ("request", "completed", None),
    ]
    # A late announcement of the same offer changes nothing and says nothing.
    emitted, _ = await handle(engine, [f.appointment_offer_changed(rescheduled, offer_version=4)])
    assert feed_events(emitted) == []


async def test_a_batch_of_several_tenants_writes_each_tenants_part_under_its_own_scope(engine, database_url):
    """The runtime's batches mix tenants, grouped by tenant, each handler scoped to its message's tenant:
    each tenant's messages are written together, and each row carries its own tenant."""
    mine, theirs = unique_tenant(), unique_tenant()
    messages = [
        *(
            f.modify_requested(tenant=mine, appointment_id=f"apt-{i}", request_id=f"req-{i}")
            for i in range(3)
        ),
        *(
            f.modify_requested(tenant=theirs, appointment_id=f"apt-{i}", request_id=f"req-{i}")
            for i in range(2)
        ),
    ]
    emitted, statements = await handle(engine, messages)
    assert statements == 2  # one per tenant
    assert [e.tenant_id for e in feed_events(emitted)] == [mine] * 3 + [theirs] * 2
    assert [r["request_id"] for r in await read(database_url, REQUESTS, mine)] == ["req-0", "req-1", "req-2"]
    assert [r["request_id"] for r in await read(database_url, REQUESTS, theirs)] == ["req-0", "req-1"]


async def test_an_outcome_without_its_portal_in_the_same_batch_finds_the_request_after_it(
    engine, database_url
):
    """Request ids are per tenant and portal; an outcome from before the portal travelled with it names
    none and means the one request with that id: in a batch it goes in the round after the request."""
    tenant = unique_tenant()
    requested = f.modify_requested(tenant=tenant, reply_to="q", producer="portal-app")
    legacy = f.modify_rejected(requested).model_copy(update={"request_producer": None})
    emitted, statements = await handle(engine, [requested, legacy])
    assert statements == 2
    (reply,) = replies(emitted)
    assert reply.payload.status == "rejected"
    rows = await read(
        database_url, "SELECT producer, status FROM portal.requests WHERE tenant_id = $1", tenant
    )
    assert [tuple(r) for r in rows] == [("portal-app", "rejected")]
