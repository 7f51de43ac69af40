"""Least privilege: each worker's RabbitMQ user and PostgreSQL role may do what the worker does, and the
rest is refused. (That the pipeline runs end to end on those credentials alone is shown by
test_secrets.py, which runs it on them under faults.) Names carry the test's namespace (users and roles are
broker-wide and cluster-wide) and are removed afterwards."""

import stat
import uuid
from pathlib import Path

import aio_pika
import asyncpg
import pytest
from aiormq.exceptions import ChannelAccessRefused, ChannelNotFoundEntity, ProbableAuthenticationError

from infra import security
from infra.security.plan import Credentials, load_credentials
from infra.topology import Topology
from workers.runtime.database import asyncpg_dsn
from workers.runtime.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def credentials(settings: Settings, topology: Topology, tmp_path: Path):
    env_dir = tmp_path / "env"
    created = await security.apply(
        amqp_url=settings.amqp_url,
        management_url=settings.rabbitmq_management_url,
        database_url=settings.database_url,
        namespace=topology.namespace,
        env_dir=env_dir,
    )
    try:
        yield created, env_dir
    finally:
        removed = await security.drop(
            management_url=settings.rabbitmq_management_url,
            database_url=settings.database_url,
            namespace=topology.namespace,
        )
        assert len(removed) == 10, removed  # 6 broker users, 4 database roles


async def refused(connection: asyncpg.Connection, statement: str) -> bool:
    try:
        async with connection.transaction():
            await connection.execute(statement)
    except asyncpg.InsufficientPrivilegeError:
        return True
    return False


async def test_database_roles_may_use_only_their_own_tables(credentials, settings):
    created, _ = credentials
    roles = {name: c for name, c in created.items() if c.database_url}
    assert set(roles) == {"policy_gate", "modify_handler", "portal_sync", "auditor"}
    denied = {
        "portal_sync": [
            "UPDATE scheduling.appointments SET version = version + 1",
            "SELECT 1 FROM scheduling.appointments",
            "INSERT INTO policy.decisions (tenant_id) VALUES ('x')",
            "DELETE FROM policy.settings_layers",
            "DELETE FROM messaging.inbox",
        ],
        "policy_gate": [
            "UPDATE scheduling.appointments SET version = version + 1",
            "DELETE FROM scheduling.project_contacts",
            "SELECT 1 FROM scheduling.jobs",
            "UPDATE portal.appointments SET version = 0",
            "SELECT 1 FROM portal.requests",
        ],
        "modify_handler": [
            "SELECT 1 FROM policy.decisions",
            "UPDATE policy.settings_layers SET settings_version = 0",
            "UPDATE portal.appointments SET version = 0",
            "SELECT 1 FROM portal.requests",
            "DELETE FROM messaging.inbox",
            # another worker's inbox and outbox, or the shared parents (migration 0008)
            "SELECT 1 FROM messaging.outbox",
            "SELECT 1 FROM messaging.policy_gate_inbox",
            "SELECT 1 FROM messaging.policy_gate_outbox",
        ],
        "auditor": [
            "UPDATE portal.appointments SET version = 0",
            "INSERT INTO messaging.inbox (consumer, tenant_id, message_id)"
            " VALUES ('x', 'x', gen_random_uuid())",
            "DELETE FROM policy.decisions",
        ],
    }
    allowed = {
        "portal_sync": ["SELECT 1 FROM portal.appointments", "SELECT 1 FROM messaging.portal_sync_inbox"],
        "policy_gate": ["SELECT 1 FROM scheduling.appointments", "SELECT 1 FROM policy.decisions"],
        "modify_handler": ["SELECT 1 FROM scheduling.jobs", "SELECT 1 FROM messaging.modify_handler_inbox"],
        "auditor": [
            f"SELECT 1 FROM {s}.{t}"
            for s, t in (
                ("scheduling", "appointments"),
                ("policy", "decisions"),
                ("portal", "requests"),
                ("messaging", "inbox"),
            )
        ],
    }
    for name, creds in roles.items():
        connection = await asyncpg.connect(asyncpg_dsn(creds.database_url or ""))
        try:
            assert await connection.fetchval("SELECT current_user") == creds.db_role
            for statement in denied[name] + [
                f"CREATE TABLE {s}.intruder (x int)" for s in ("portal", "public")
            ]:
                assert await refused(connection, statement), f"{name} may: {statement}"
            for statement in allowed[name]:
                await connection.execute(statement)
            assert not await connection.fetchval(
                "SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
            )
        finally:
            await connection.close()
    # the server stored our SCRAM verifier as is (it never saw the password itself)
    admin = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        stored = await admin.fetchval(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1", roles["portal_sync"].db_role
        )
    finally:
        await admin.close()
    assert stored.startswith("SCRAM-SHA-256$4096:") and roles["portal_sync"].db_password not in stored


async def test_broker_users_may_read_only_their_queue_and_publish_only_their_messages(
    credentials, topology: Topology
):
    created, _ = credentials

    async def channel_of(creds: Credentials):
        connection = await aio_pika.connect(creds.amqp_url)
        return connection, await connection.channel(publisher_confirms=True, on_return_raises=False)

    async def is_refused(creds: Credentials, action) -> bool:
        connection, channel = await channel_of(creds)
        try:
            await action(channel)
        except (ChannelAccessRefused, ChannelNotFoundEntity) as exc:
            return "ACCESS_REFUSED" in str(exc) or isinstance(exc, ChannelAccessRefused)
        finally:
            await connection.close()
        return False

    async def ignore(message) -> None:
        pass

    def consume(worker: str):
        async def action(channel):
            queue = await channel.declare_queue(topology.queue_of(worker).name, passive=True)
            await queue.consume(ignore)

        return action

    def publish(role: str, key: str):
        async def action(channel):
            exchange = await channel.get_exchange(topology.exchange(role), ensure=False)
            await exchange.publish(aio_pika.Message(b"{}", content_type="application/json"), key, timeout=5)

        return action

    async def declare(channel):
        await channel.declare_queue(f"{topology.namespace}.intruder", durable=True)

    gate, handler, sync = created["policy_gate"], created["modify_handler"], created["portal_sync"]
    portal, office = created["portal"], created["office"]
    # each worker consumes its own queue, and no other
    for creds, own, others in (
        (gate, "policy_gate", ("modify_handler", "portal_sync")),
        (handler, "modify_handler", ("policy_gate", "portal_sync")),
        (sync, "portal_sync", ("policy_gate", "modify_handler")),
    ):
        assert not await is_refused(creds, consume(own)), f"{creds.name} cannot consume its own queue"
        for other in others:
            assert await is_refused(creds, consume(other)), f"{creds.name} may consume {other}'s queue"
        assert await is_refused(creds, declare), f"{creds.name} may declare queues"
    # publishing: only the messages each one produces
    assert await is_refused(gate, publish("events", "appointment.rescheduled"))
    assert await is_refused(gate, publish("requests", "modify.requested"))
    assert await is_refused(handler, publish("internal", "modify.approved"))
    assert await is_refused(handler, publish("events", "modify.rejected"))
    assert await is_refused(sync, publish("events", "appointment.updated"))
    assert await is_refused(portal, publish("office", "office.approval.decided"))
    assert await is_refused(portal, publish("internal", "modify.approved"))
    assert await is_refused(portal, consume("policy_gate"))
    assert await is_refused(office, publish("requests", "modify.requested"))
    assert not await is_refused(portal, publish("requests", "modify.requested"))
    assert not await is_refused(office, publish("office", "office.appointment.recorded"))
    # dead letters and retries: each worker through its own exchanges only, never into another worker's
    # dead-letter queue or delay queue (which would hand the message to that worker's work queue)
    for creds, own, others in (
        (gate, "policy_gate", ("modify_handler", "portal_sync")),
        (handler, "modify_handler", ("policy_gate", "portal_sync")),
        (sync, "portal_sync", ("policy_gate", "modify_handler")),
    ):
        for kind in ("dead-letters", "retry"):
            own_queue = (
                topology.queue_of(own).dead_letter_queue
                if kind == "dead-letters"
                else topology.delay_queues_of(own)[0].name
            )
            assert not await is_refused(creds, publish(f"{kind}.{own}", own_queue)), (own, kind)
            assert await is_refused(creds, publish(kind, own_queue)), (own, kind, "shared")
            for other in others:
                target = (
                    topology.queue_of(other).dead_letter_queue
                    if kind == "dead-letters"
                    else topology.delay_queues_of(other)[0].name
                )
                assert await is_refused(creds, publish(f"{kind}.{other}", target)), (own, kind, other)

    # replies to portals: portal_sync through the replies exchange, nobody through the default exchange
    # (which reaches every queue by name)
    async def to_the_default_exchange(channel):
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}", content_type="application/json"), topology.queue_of("modify_handler").name
        )

    assert not await is_refused(sync, publish("reply", "some-portal-queue"))
    for creds in (gate, handler, sync, portal, office):
        assert await is_refused(creds, to_the_default_exchange), creds.name
    # the auditor reads its copies of the dead letters (and hands them back), nothing else: not the real
    # dead-letter queues, since reading them would let it ack and purge them
    auditor = created["auditor"]
    real_dead = topology.queue_of("policy_gate").dead_letter_queue or ""

    def peek(name: str):
        async def action(channel):
            queue = await channel.declare_queue(name, passive=True)
            await queue.get(no_ack=False, fail=False)

        return action

    async def purge_real(channel):
        await (await channel.declare_queue(real_dead, passive=True)).purge()

    async def delete_real(channel):
        await channel.queue_delete(real_dead)

    assert not await is_refused(auditor, peek(f"{real_dead}.audit"))
    for attempt in (peek(real_dead), purge_real, delete_real):
        assert await is_refused(auditor, attempt), attempt
    assert await is_refused(auditor, consume("policy_gate"))
    assert await is_refused(auditor, publish("requests", "modify.requested"))
    # and the passwords are the ones in the env files, nothing else gets in
    wrong = gate.amqp_url.replace(gate.amqp_password, "not-the-password")
    with pytest.raises(ProbableAuthenticationError):
        await aio_pika.connect(wrong)


async def test_env_files_are_private_and_reapplying_keeps_the_passwords(credentials, settings, topology):
    created, env_dir = credentials
    for name, creds in created.items():
        path = env_dir / f"{name}.env"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert load_credentials(env_dir, name)["AMQP_URL"] == creds.amqp_url
    again = await security.apply(
        amqp_url=settings.amqp_url,
        management_url=settings.rabbitmq_management_url,
        database_url=settings.database_url,
        namespace=topology.namespace,
        env_dir=env_dir,
    )
    assert {n: c.amqp_password for n, c in again.items()} == {n: c.amqp_password for n, c in created.items()}
    assert {n: c.db_password for n, c in again.items()} == {n: c.db_password for n, c in created.items()}


async def test_row_security_walls_each_worker_role_into_one_tenant_per_transaction(credentials, settings):
    """The second wall (migration 0007): a worker's role sees and writes only the rows of the tenant its
    transaction names (the unit of work sets it from the message), and nothing when it names none; the
    auditor reads every tenant."""
    created, _ = credentials
    mine, theirs = f"rls-{uuid.uuid4().hex[:8]}", f"rls-{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        for tenant in (mine, theirs):
            await admin.execute(
                "INSERT INTO scheduling.jobs (tenant_id, job_id, customer_id, status) "
                "VALUES ($1, 'job-1', 'c', 'scheduled')",
                tenant,
            )
        untagged = await admin.fetch(
            "SELECT c.oid::regclass::text AS name FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' "
            "WHERE c.relkind = 'r' AND n.nspname IN ('scheduling', 'policy', 'portal') "
            "AND NOT c.relrowsecurity"
        )
        assert [r["name"] for r in untagged] == [], "tables with tenant data but no row-level security"
    finally:
        await admin.close()

    handler = await asyncpg.connect(asyncpg_dsn(created["modify_handler"].database_url or ""))
    try:
        jobs = "SELECT tenant_id FROM scheduling.jobs WHERE tenant_id = ANY($1::text[]) ORDER BY 1"
        async with handler.transaction():
            assert await handler.fetch(jobs, [mine, theirs]) == []  # no tenant named: nothing
        async with handler.transaction():
            await handler.execute(f"SET LOCAL appt.tenant_id = '{mine}'")
            assert [r["tenant_id"] for r in await handler.fetch(jobs, [mine, theirs])] == [mine]
            moved = await handler.execute(
                "UPDATE scheduling.jobs SET version = version + 1 WHERE tenant_id = ANY($1::text[])",
                [mine, theirs],
            )
            assert moved == "UPDATE 1"
            deleted = await handler.execute("DELETE FROM scheduling.jobs WHERE tenant_id = $1", theirs)
            assert deleted == "DELETE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            async with handler.transaction():
                await handler.execute(f"SET LOCAL appt.tenant_id = '{mine}'")
                await handler.execute(
                    "INSERT INTO scheduling.jobs (tenant_id, job_id, customer_id, status) "
                    "VALUES ($1, 'job-2', 'c', 'scheduled')",
                    theirs,
                )
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            async with handler.transaction():
                await handler.execute(f"SET LOCAL appt.tenant_id = '{mine}'")
                await handler.execute(
                    "UPDATE scheduling.jobs SET tenant_id = $1 WHERE tenant_id = $2", theirs, mine
                )
    finally:
        await handler.close()

    auditor = await asyncpg.connect(asyncpg_dsn(created["auditor"].database_url or ""))
    try:
        seen = await auditor.fetch(
            "SELECT tenant_id FROM scheduling.jobs WHERE tenant_id = ANY($1::text[]) ORDER BY 1",
            [mine, theirs],
        )
        assert [r["tenant_id"] for r in seen] == sorted([mine, theirs])
    finally:
        await auditor.close()
