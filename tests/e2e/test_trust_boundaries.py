"""Trust boundaries under the least-privilege identities (`apptctl security apply`): each attack of issue 19
(and a foreign-tenant message under a bound key, issue 12) is published with the broker user an attacker
would hold, is refused with its own reason by every worker it reaches, and changes no row of the victim
tenant (a checksum of every tenant table before and after)."""

import asyncio
import json
import os
import secrets
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import aio_pika
import asyncpg
import pytest
from aiormq.exceptions import ChannelAccessRefused, ChannelNotFoundEntity
from pydantic import SecretStr

from apptctl import dlq
from apptctl.portal_keys import DEV_PORTAL_KEYS_FILE
from apptctl.scenario_runner import publish_all, take_dead_letters
from apptctl.scenarios import window_on
from contracts.common import AppointmentSnapshot, AppointmentStatus, Confirmation
from contracts.decoding import encode
from contracts.events_v1 import AppointmentCanceled, AppointmentCanceledPayload, Initiator
from contracts.internal_v1 import ModifyApproved, ModifyApprovedPayload
from contracts.office_v1 import (
    ActionRules,
    ApprovalDecided,
    ApprovalDecidedPayload,
    ConfirmationRule,
    PortalSettingsPayload,
    PortalSettingsUpdated,
)
from contracts.portal_v1 import Cancel, Reschedule
from contracts.signing import SigningKey, signature_headers
from infra import security
from tests.e2e.test_delivery_guarantees import (
    NOW,
    appointment_view,
    booking,
    outcome,
    request,
    settings_allowing_everything,
)
from tests.integration.test_ops_cli import apptctl
from workers.runtime.database import asyncpg_dsn
from workers.runtime.worker import Worker

pytestmark = pytest.mark.integration

DEV_KEYS = json.loads(DEV_PORTAL_KEYS_FILE.read_text())
WEB = DEV_KEYS["portal-web"]["current"]
BOUND_SECRET = secrets.token_urlsafe(40)


@pytest.fixture
async def least_privilege(settings, topology, tmp_path):
    """The identities, and the three workers running in this process on their own broker users and
    database roles; `portal-web` holds an unbound key, `portal-bound` a key bound to one tenant."""
    from workers.registry import WORKER_NAMES, worker_spec

    created = await security.apply(
        amqp_url=settings.amqp_url,
        management_url=settings.rabbitmq_management_url,
        database_url=settings.database_url,
        namespace=topology.namespace,
        env_dir=tmp_path / "env",
    )
    bound_tenant = f"bound-{uuid.uuid4().hex[:8]}"
    keys = {
        "portal-web": DEV_KEYS["portal-web"],
        "portal-bound": {
            "current": {"id": f"bound-{uuid.uuid4().hex[:6]}", "secret": BOUND_SECRET},
            "tenants": [bound_tenant],
        },
    }
    running: list[Worker] = []
    try:
        for name in WORKER_NAMES:
            own = settings.model_copy(
                update={
                    "amqp_url": created[name].amqp_url,
                    "database_url": created[name].database_url,
                    "portal_keys": SecretStr(json.dumps(keys)),
                    "portal_keys_file": None,
                }
            )
            worker = Worker(worker_spec(name), own)
            await worker.start()
            running.append(worker)
        yield created, bound_tenant, keys
    finally:
        for worker in running:
            await worker.stop()
        await security.drop(
            management_url=settings.rabbitmq_management_url,
            database_url=settings.database_url,
            namespace=topology.namespace,
        )


async def tenant_checksum(database_url: str, tenant: str) -> dict[str, str]:
    """table -> md5 of the tenant's rows, for every table with a tenant_id column."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        tables = await connection.fetch(
            "SELECT c.table_schema, c.table_name FROM information_schema.columns c "
            "JOIN information_schema.tables t USING (table_schema, table_name) "
            "WHERE c.column_name = 'tenant_id' AND t.table_type = 'BASE TABLE' "
            "AND c.table_schema IN ('scheduling', 'policy', 'portal', 'messaging') ORDER BY 1, 2"
        )
        sums = {}
        for row in tables:
            name = f'"{row["table_schema"]}"."{row["table_name"]}"'
            sums[name] = await connection.fetchval(
                # when the relay marks an event published is not a change of the tenant's data
                f"SELECT md5(coalesce(string_agg((to_jsonb(t) - 'published_at')::text, '|' ORDER BY "
                f"(to_jsonb(t) - 'published_at')::text), '')) FROM {name} t "
                "WHERE tenant_id = $1",
                tenant,
            )
        assert sums, "no tenant tables found"
        return sums
    finally:
        await connection.close()


async def settled_checksum(database_url: str, tenant: str) -> dict[str, str]:
    """The checksum once the set-up's consequences (offers, office outcomes, their read-store rows and
    inbox entries) stopped arriving: the same twice, a second apart (as tests/e2e/test_isolation.py)."""
    previous = await tenant_checksum(database_url, tenant)
    for _ in range(60):
        await asyncio.sleep(1)
        current = await tenant_checksum(database_url, tenant)
        if current == previous:
            return current
        previous = current
    raise AssertionError("the victim's rows never settled")


async def victim(broker, engine, tenant: str | None = None) -> str:
    tenant = tenant or f"victim-{uuid.uuid4().hex[:8]}"
    await publish_all(broker, [settings_allowing_everything(tenant), booking(tenant, "apt-1", "job-1")])
    for _ in range(150):
        if await appointment_view(engine, tenant, "apt-1") is not None:
            return tenant
        await asyncio.sleep(0.1)
    raise AssertionError("the victim's appointment never showed")


async def publish_as(creds, exchange: str, routing_key: str, body: bytes, headers: dict, type_: str) -> str:
    """Publish exactly these bytes and headers with an identity's own broker user."""
    message_id = str(uuid.uuid4())
    connection = await aio_pika.connect(creds.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange, ensure=False)
        await target.publish(
            aio_pika.Message(
                body,
                headers=headers,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
                type=type_,
            ),
            routing_key,
            timeout=10,
        )
    finally:
        await connection.close()
    return message_id


def signed(body: bytes, key: dict, producer: str = "portal-web") -> dict:
    signing = SigningKey(key["id"], producer, key["secret"].encode())
    return dict(signature_headers(body, signing, signed_at=int(time.time())))


def envelope(tenant: str, producer: str) -> dict:
    return dict(
        message_id=uuid.uuid4(),
        tenant_id=tenant,
        correlation_id=f"c-{uuid.uuid4().hex[:10]}",
        occurred_at=datetime.now(UTC),
        producer=producer,
    )


async def refused_everywhere(broker, message_id: str, reason: str, workers: list[str]) -> None:
    letters = await take_dead_letters(broker, message_id, expected=len(workers))
    assert sorted(letter.queue.split(".")[-2] for letter in letters) == sorted(workers), letters
    assert {letter.reason for letter in letters} == {reason}, letters


async def test_a_portal_signed_office_approval_on_the_requests_route_is_refused(
    least_privilege, broker, engine, settings, topology
):
    created, _, _ = least_privilege
    tenant = await victim(broker, engine)
    before = await settled_checksum(settings.database_url, tenant)
    forged = ApprovalDecided(
        **envelope(tenant, "portal-web"),
        payload=ApprovalDecidedPayload(request_id="req-x", approved=True, decided_by="portal-chose-this"),
    )
    body = encode(forged)

    sent = await publish_as(
        created["portal"],
        topology.exchange("requests"),
        "modify.requested",
        body,
        signed(body, WEB),
        forged.type,
    )

    await refused_everywhere(broker, sent, "route_type_mismatch", ["policy_gate", "portal_sync"])
    assert await tenant_checksum(settings.database_url, tenant) == before


async def test_a_portal_signed_settings_change_on_the_requests_route_is_refused(
    least_privilege, broker, engine, settings, topology
):
    created, _, _ = least_privilege
    tenant = await victim(broker, engine)
    before = await settled_checksum(settings.database_url, tenant)
    allow = ConfirmationRule(confirmed="allow", unconfirmed="allow")
    forged = PortalSettingsUpdated(
        **envelope(tenant, "portal-web"),
        payload=PortalSettingsPayload(
            feature_enabled=True,
            rules=ActionRules(reschedule=allow, cancel=allow),
            settings_version=99,
            changed_by="portal",
        ),
    )
    body = encode(forged)

    sent = await publish_as(
        created["portal"],
        topology.exchange("requests"),
        "modify.requested",
        body,
        signed(body, WEB),
        forged.type,
    )

    await refused_everywhere(broker, sent, "route_type_mismatch", ["policy_gate", "portal_sync"])
    assert await tenant_checksum(settings.database_url, tenant) == before


async def test_a_workers_forged_event_on_another_events_route_is_refused(
    least_privilege, broker, engine, settings, topology
):
    """policy_gate's broker user may publish `modify.rejected` to the events exchange; an
    `appointment.canceled` body under that key (version 2^62) is not what the route carries."""
    created, _, _ = least_privilege
    tenant = await victim(broker, engine)
    before = await settled_checksum(settings.database_url, tenant)
    forged = AppointmentCanceled(
        **envelope(tenant, "modify_handler"),
        payload=AppointmentCanceledPayload(
            appointment=AppointmentSnapshot(
                appointment_id="apt-1",
                job_id="job-1",
                customer_id="cust-1",
                business_unit="plumbing",
                job_type="repair",
                window=window_on(NOW + timedelta(days=2), 9),
                status=AppointmentStatus.CANCELED,
                confirmation=Confirmation.UNCONFIRMED,
                version=2**62,
            ),
            initiated_by=Initiator.OFFICE,
        ),
    )

    sent = await publish_as(
        created["policy_gate"],
        topology.exchange("events"),
        "modify.rejected",
        encode(forged),
        {},
        forged.type,
    )

    await refused_everywhere(broker, sent, "route_type_mismatch", ["portal_sync"])
    assert await tenant_checksum(settings.database_url, tenant) == before


async def test_forged_retry_headers_do_not_skip_the_signature_check(
    least_privilege, broker, engine, settings, topology
):
    """An unsigned settings change with a publisher-set x-death ("expired" from our delay queue) and an
    original route naming the office exchange: the route it really came by is the portals', so it must
    be signed (and would then still be the wrong type for that route)."""
    created, _, _ = least_privilege
    tenant = await victim(broker, engine)
    before = await settled_checksum(settings.database_url, tenant)
    forged = PortalSettingsUpdated(
        **envelope(tenant, "office"),
        payload=PortalSettingsPayload(feature_enabled=False, settings_version=50, changed_by="intruder"),
    )
    delay_queue = topology.delay_queues_of("policy_gate")[0].name
    headers = {
        "x-death": [
            {"reason": "expired", "queue": delay_queue, "count": 1, "exchange": "", "routing-keys": []}
        ],
        "x-original-exchange": topology.exchange("office"),
        "x-original-routing-key": "office.portal_settings.updated",
        "x-attempt": 1,
    }

    sent = await publish_as(
        created["portal"],
        topology.exchange("requests"),
        "modify.requested",
        encode(forged),
        headers,
        forged.type,
    )

    await refused_everywhere(broker, sent, "signature_missing", ["policy_gate", "portal_sync"])
    assert await tenant_checksum(settings.database_url, tenant) == before


async def _dlq(settings, *args: str) -> tuple[int, str]:
    env = {**os.environ, "AMQP_URL": settings.amqp_url, "APPT_NAMESPACE": settings.namespace}
    env["DATABASE_URL"] = settings.database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apptctl.main",
        "dlq",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode() + err.decode()


async def test_replaying_an_unsigned_approval_cannot_reach_the_internal_exchange(
    least_privilege, broker, engine, settings, topology
):
    """The issue's escalation: a portal's unsigned `modify.approved` with forged headers naming the
    internal exchange. Its dead letters name the route it really came by, and `dlq replay` refuses to
    send a `modify.approved` there, or a dead letter anywhere but to a route of its own worker."""
    created, _, _ = least_privilege
    tenant = await victim(broker, engine)
    before = await settled_checksum(settings.database_url, tenant)
    forged = ModifyApproved(
        **envelope(tenant, "policy_gate"),
        payload=ModifyApprovedPayload(
            appointment_id="apt-1",
            requester_id="cust-1",
            change=Cancel(reason="moving"),
            decided_on_version=1,
        ),
    )
    headers = {
        "x-original-exchange": topology.exchange("internal"),
        "x-original-routing-key": "modify.approved",
        "x-death": [
            {"reason": "expired", "queue": topology.delay_queues_of("portal_sync")[0].name, "count": 1}
        ],
    }
    sent = await publish_as(
        created["portal"],
        topology.exchange("requests"),
        "modify.requested",
        encode(forged),
        headers,
        forged.type,
    )
    # both readers of the portals' exchange refuse it (unsigned); wait until both dead letters are there
    dead = [topology.queue_of(w).dead_letter_queue for w in ("policy_gate", "portal_sync")]
    for _ in range(150):
        counts = []
        for name in dead:
            channel = await broker.connection.channel()
            counts.append((await channel.declare_queue(name, passive=True)).declaration_result.message_count)
            await channel.close()
        if all(counts):
            break
        await asyncio.sleep(0.1)

    code, output = await _dlq(settings, "replay", "--id", sent)

    assert code == 1, output
    assert "not replayed" in output and "refused" in output, output
    assert "replayed 0 of 2" in output, output
    # and a dead letter whose headers claim the internal exchange goes nowhere near it
    claim = aio_pika.Message(
        encode(forged),
        headers={  # as if policy_gate had dead-lettered it from the internal exchange
            "x-original-exchange": topology.exchange("internal"),
            "x-original-routing-key": "modify.approved",
            "x-dead-lettered-by": "policy_gate",
        },
        content_type="application/json",
        message_id=str(uuid.uuid4()),
        type=forged.type,
    )
    gate_dead = topology.queue_of("policy_gate").dead_letter_queue
    await broker.publish(topology.dead_letter_exchange, gate_dead, claim)
    code, output = await _dlq(settings, "replay", "--id", claim.message_id)
    assert code == 1 and "is not a route of policy_gate" in output, output

    await refused_everywhere(broker, sent, "signature_missing", ["policy_gate", "portal_sync"])
    assert await tenant_checksum(settings.database_url, tenant) == before
    assert (await appointment_view(engine, tenant, "apt-1")).status == "scheduled"


async def _ready(broker, name: str) -> int:
    channel = await broker.connection.channel()
    try:
        return (await channel.declare_queue(name, passive=True)).declaration_result.message_count
    finally:
        await channel.close()


def _as_dead_letter(letter) -> tuple:
    """What a dead letter says, wherever it is kept: id, why, where it came from, by whom, and the body."""
    headers = dlq.plain(letter.headers)
    keys = ("x-dead-letter-detail", "x-original-exchange", "x-original-routing-key", "x-dead-lettered-by")
    return (letter.message_id, letter.reason, *(headers.get(k) for k in keys), letter.body)


async def test_the_auditor_reads_a_copy_of_every_dead_letter_and_cannot_remove_the_real_ones(
    least_privilege, broker, engine, settings, topology
):
    """RabbitMQ's read permission on a queue includes ack and purge, so the auditor reads its own copies
    (`<dead queue>.audit`) and may not touch the real dead-letter queues; ops still list, purge them."""
    created, _, _ = least_privilege
    auditor = created["auditor"]
    as_auditor = {"AMQP_URL": auditor.amqp_url, "DATABASE_URL": auditor.database_url or ""}
    tenant = await victim(broker, engine)
    forged = ApprovalDecided(
        **envelope(tenant, "portal-web"),
        payload=ApprovalDecidedPayload(request_id="req-x", approved=True, decided_by="portal-chose-this"),
    )
    body = encode(forged)
    requests = topology.exchange("requests")
    mismatch = await publish_as(
        created["portal"], requests, "modify.requested", body, signed(body, WEB), forged.type
    )
    unsigned = await publish_as(created["portal"], requests, "modify.requested", body, {}, forged.type)
    # and one by the route the broker's own dead-lettering takes (a work queue's delivery limit)
    gate_dead = topology.queue_of("policy_gate").dead_letter_queue or ""
    sync_dead = topology.queue_of("portal_sync").dead_letter_queue or ""
    crashed = aio_pika.Message(b"{}", message_id=str(uuid.uuid4()))
    await broker.publish(topology.dead_letter_exchange, gate_dead, crashed)
    for _ in range(150):
        if (await _ready(broker, gate_dead), await _ready(broker, sync_dead)) == (3, 2):
            break
        await asyncio.sleep(0.1)
    real_queues = dlq.dead_letter_queues(topology)
    real = (await dlq.read(broker.connection, real_queues)).letters
    assert len(real) == 5 and {letter.reason for letter in real} >= {"route_type_mismatch"}, real

    # the auditor's copies hold every dead letter, reason headers and all
    listed = await apptctl(settings, "dlq", "list", "--audit", "--json", env=as_auditor)
    assert listed.code == 0, listed.err
    assert listed.json()["total"] == 5
    assert {(g["queue"], g["reason"], g["count"]) for g in listed.json()["groups"]} == {
        (f"{g.queue}.audit", g.reason, g.count) for g in dlq.group(real)
    }
    copies = (await dlq.read(broker.connection, [f"{q}.audit" for q in real_queues])).letters
    assert sorted(map(_as_dead_letter, copies)) == sorted(map(_as_dead_letter, real))
    shown = await apptctl(
        settings, "dlq", "show", mismatch, "--audit", "--queue", "policy_gate", env=as_auditor
    )
    assert shown.code == 0, shown.err
    assert f"in {gate_dead}.audit" in shown.out and "reason: route_type_mismatch" in shown.out, shown.out
    assert "reaches policy_gate only by" in shown.out and '"x-original-exchange": "' + requests in shown.out
    # reading the copy removed nothing from it
    again = await apptctl(settings, "dlq", "list", "--audit", "--json", env=as_auditor)
    assert again.json()["total"] == 5

    # the real dead-letter queues: the auditor may neither take, purge nor delete, and apptctl says why
    connection = await aio_pika.connect(auditor.amqp_url)
    try:
        for attempt in ("get", "purge", "delete"):
            channel = await connection.channel()
            with pytest.raises(ChannelAccessRefused):
                if attempt == "delete":
                    await channel.queue_delete(gate_dead)
                queue = await channel.declare_queue(gate_dead, passive=True)
                await (queue.get(no_ack=False, fail=False) if attempt == "get" else queue.purge())
    finally:
        await connection.close()
    for command in (("list",), ("show", unsigned), ("purge", "--yes"), ("replay", "--all")):
        refused = await apptctl(settings, "dlq", *command, env=as_auditor)
        assert refused.code == 1 and "ACCESS_REFUSED" in refused.err and "--audit" in refused.err, refused
    # its status counts them by the passive declare (which needs no permission) without reading them
    status = await apptctl(settings, "status", "--json", env=as_auditor)
    data = status.json()
    assert data["broker"]["reachable"], data
    assert data["dead_letters"][gate_dead]["total"] == 3 and data["dead_letters"][sync_dead]["total"] == 2
    assert (await _ready(broker, gate_dead), await _ready(broker, sync_dead)) == (3, 2)

    # ops purge the real ones; the auditor's copies still say what was dead-lettered
    purged = await apptctl(settings, "dlq", "purge", "--yes")
    assert purged.code == 0 and "purged 5 dead letter(s)" in purged.out, purged
    after = await apptctl(settings, "dlq", "list", "--audit", "--json", env=as_auditor)
    assert after.json()["total"] == 5
    assert unsigned in {i for g in after.json()["groups"] for i in g["sample_ids"]}


async def test_a_key_bound_to_businesses_acts_only_for_them(
    least_privilege, broker, engine, settings, topology
):
    created, bound_tenant, keys = least_privilege
    other = await victim(broker, engine)
    await victim(broker, engine, bound_tenant)
    before = await settled_checksum(settings.database_url, other)
    key = keys["portal-bound"]["current"]

    foreign = request(other, "apt-1", Reschedule(new_window=window_on(NOW + timedelta(days=4), 13)))
    foreign = foreign.model_copy(update={"producer": "portal-bound"})
    body = encode(foreign)
    sent = await publish_as(
        created["portal"],
        topology.exchange("requests"),
        "modify.requested",
        body,
        signed(body, key, "portal-bound"),
        foreign.type,
    )
    await refused_everywhere(broker, sent, "signature_tenant_not_allowed", ["policy_gate", "portal_sync"])
    assert await tenant_checksum(settings.database_url, other) == before

    own = request(bound_tenant, "apt-1", Cancel(reason="moving")).model_copy(
        update={"producer": "portal-bound"}
    )
    body = encode(own)
    await publish_as(
        created["portal"],
        topology.exchange("requests"),
        "modify.requested",
        body,
        signed(body, key, "portal-bound"),
        own.type,
    )
    assert (await outcome(engine, bound_tenant, own.correlation_id)).status == "completed"


async def test_deeply_nested_json_is_one_malformed_json_dead_letter(
    least_privilege, broker, settings, topology
):
    created, _, _ = least_privilege
    body = (
        b'{"type": "modify.requested", "schema_version": 1, "payload": '
        + b"[" * 20_000
        + b"]" * 20_000
        + b"}"
    )
    assert len(body) < 64 * 1024
    sent = await publish_as(
        created["portal"],
        topology.exchange("requests"),
        "modify.requested",
        body,
        signed(body, WEB),
        "modify.requested",
    )
    await refused_everywhere(broker, sent, "malformed_json", ["policy_gate", "portal_sync"])


async def test_a_reply_to_naming_another_portals_queue_is_refused(
    least_privilege, broker, engine, settings, topology
):
    created, _, _ = least_privilege
    tenant = await victim(broker, engine)
    before = await settled_checksum(settings.database_url, tenant)
    theirs = f"{topology.portal_queue_prefix}portal-app.replies"
    message = request(tenant, "apt-1", Cancel(reason="moving"))
    message = message.model_copy(update={"payload": message.payload.model_copy(update={"reply_to": theirs})})
    body = encode(message)

    sent = await publish_as(
        created["portal"],
        topology.exchange("requests"),
        "modify.requested",
        body,
        signed(body, WEB),
        message.type,
    )

    await refused_everywhere(broker, sent, "reply_to_not_allowed", ["policy_gate", "portal_sync"])
    assert await tenant_checksum(settings.database_url, tenant) == before


async def test_a_portal_may_declare_bind_and_consume_only_its_own_queues(least_privilege, topology):
    created, _, _ = least_privilege
    own = f"{topology.portal_queue_prefix}portal-web.replies-{uuid.uuid4().hex[:6]}"

    async def attempt(action) -> bool:
        """True when the broker allowed it."""
        connection = await aio_pika.connect(created["portal"].amqp_url)
        try:
            channel = await connection.channel()
            await action(channel)
            return True
        except (ChannelAccessRefused, ChannelNotFoundEntity):
            return False
        finally:
            await connection.close()

    async def declare_bind_consume(channel):
        queue = await channel.declare_queue(own, auto_delete=True)
        await queue.bind(topology.exchange("reply"), routing_key=own)
        await queue.bind(topology.exchange("feed"), routing_key="acme.#")
        await queue.consume(lambda message: None)

    def declare(name: str, **arguments):
        async def action(channel):
            await channel.declare_queue(name, auto_delete=True, arguments=arguments or None)

        return action

    def bind_own_to(role: str):
        async def action(channel):
            queue = await channel.declare_queue(own, auto_delete=True)
            await queue.bind(topology.exchange(role), routing_key="#")

        return action

    async def publish_to_own(channel):
        await channel.default_exchange.publish(aio_pika.Message(b"{}"), own)

    assert await attempt(declare_bind_consume)
    assert not await attempt(declare(f"{topology.namespace}.intruder"))
    assert not await attempt(declare(f"{topology.namespace}.portal_sync.x"))
    for role in ("requests", "events", "internal", "office"):
        assert not await attempt(bind_own_to(role)), role
    # a queue of its own that dead-letters into the internal exchange: refused (write on that exchange)
    internal = topology.exchange("internal")
    assert not await attempt(declare(f"{own}-dlx", **{"x-dead-letter-exchange": internal}))
    # and nobody writes to the exchange delay queues hand messages back by
    for creds in created.values():
        assert not await attempt_publish(
            creds, topology.return_exchange or "", topology.queue_of("policy_gate").name
        )
    assert not await attempt(publish_to_own)


async def attempt_publish(creds, exchange: str, routing_key: str) -> bool:
    connection = await aio_pika.connect(creds.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange, ensure=False)
        await target.publish(aio_pika.Message(b"{}", content_type="application/json"), routing_key, timeout=5)
        return True
    except (ChannelAccessRefused, ChannelNotFoundEntity):
        return False
    finally:
        await connection.close()


async def test_a_worker_refuses_the_development_keyring_unless_development_mode_is_set(settings):
    env = {k: v for k, v in os.environ.items() if k not in ("APPT_PORTAL_KEYS", "APPT_DEV_MODE")}
    env.update(
        APPT_PORTAL_KEYS_FILE=str(DEV_PORTAL_KEYS_FILE),
        DATABASE_URL=settings.database_url,
        AMQP_URL=settings.amqp_url,
        APPT_NAMESPACE=settings.namespace,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.policy_gate", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert "development keys" in err.decode() and "APPT_DEV_MODE=1" in err.decode()
    assert not any(k["secret"] in err.decode() for keys in DEV_KEYS.values() for k in keys.values())
