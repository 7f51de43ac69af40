"""The alembic migrations and the table definitions the code uses never drift apart."""

import asyncio
import uuid

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import make_url

from infra.db.admin import drop_database, ensure_database
from infra.db.migrate import alembic_config, upgrade_async
from infra.db.tables import SCHEMAS, metadata
from workers.runtime.database import asyncpg_dsn

EVENT = (
    "INSERT INTO {table} (message_id, producer, exchange_role, routing_key, message_type, correlation_id,"
    " tenant_id, headers, body) VALUES ({message_id}, {producer}, 'events', 'modify.rejected',"
    " 'modify.rejected', 'r-1', 'acme', '{{}}', '\\x7b7d')"
)


async def test_migrated_database_matches_table_definitions(engine):
    def diff(connection):
        context = MigrationContext.configure(connection, opts={"include_schemas": True})
        return [
            d
            for d in compare_metadata(context, metadata)
            # alembic's own bookkeeping lives in public; we only own our schemas
            if not (d[0] == "remove_table" and d[1].schema not in SCHEMAS)
        ]

    async with engine.connect() as connection:
        differences = await connection.run_sync(diff)
    assert differences == []


async def test_schemas_are_separate(engine):
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema = ANY(:s)"
            ),
            {"s": list(SCHEMAS)},
        )
        tables = {(r.table_schema, r.table_name) for r in rows}
    assert ("scheduling", "appointments") in tables
    assert ("portal", "appointments") in tables
    assert ("portal", "requests") in tables
    assert ("messaging", "outbox") in tables


async def test_0008_moves_the_inbox_and_outbox_rows_into_each_workers_partition_and_back(service_urls):
    """Rows written before migration 0008 land in their worker's partition (the inbox's tenant unknown:
    ''), keep their ids, still dedupe, and the id sequence goes on; the downgrade puts them back."""
    url = (
        make_url(service_urls.database)
        .set(database=f"appt_test_mig_{uuid.uuid4().hex[:8]}")
        .render_as_string(hide_password=False)
    )
    await ensure_database(url)
    try:
        await upgrade_async(url, "0007")
        claimed, event, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await connection.execute(
                "INSERT INTO messaging.inbox (consumer, message_id)"
                " VALUES ('modify_handler', $1), ('tool', $1)",
                claimed,
            )
            for message_id, producer in ((event, "policy_gate"), (other, "tool")):
                await connection.execute(
                    EVENT.format(table="messaging.outbox", message_id="$1", producer="$2"),
                    message_id,
                    producer,
                )
            ids = await connection.fetch("SELECT message_id, id FROM messaging.outbox ORDER BY id")
        finally:
            await connection.close()

        await upgrade_async(url, "0008")
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            inbox = await connection.fetch(
                "SELECT tableoid::regclass::text AS part, consumer, tenant_id FROM messaging.inbox ORDER BY 2"
            )
            assert [tuple(r) for r in inbox] == [
                ("messaging.modify_handler_inbox", "modify_handler", ""),
                ("messaging.unassigned_inbox", "tool", ""),
            ]
            outbox = await connection.fetch(
                "SELECT tableoid::regclass::text AS part, message_id, id FROM messaging.outbox ORDER BY id"
            )
            assert [r["part"] for r in outbox] == [
                "messaging.policy_gate_outbox",
                "messaging.unassigned_outbox",
            ]
            assert [(r["message_id"], r["id"]) for r in outbox] == [(r["message_id"], r["id"]) for r in ids]
            # a message claimed before the migration is still a duplicate
            again = await connection.execute(
                "INSERT INTO messaging.modify_handler_inbox (consumer, tenant_id, message_id)"
                " VALUES ('modify_handler', 'acme', $1) ON CONFLICT DO NOTHING",
                claimed,
            )
            assert again == "INSERT 0 0"
            next_id = await connection.fetchval(
                EVENT.format(
                    table="messaging.policy_gate_outbox",
                    message_id="gen_random_uuid()",
                    producer="'policy_gate'",
                )
                + " RETURNING id"
            )
            assert next_id > ids[-1]["id"]
        finally:
            await connection.close()

        await asyncio.to_thread(command.downgrade, alembic_config(url), "0007")
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            assert await connection.fetchval("SELECT count(*) FROM messaging.inbox") == 2
            assert await connection.fetchval("SELECT count(*) FROM messaging.outbox") == 3
        finally:
            await connection.close()
    finally:
        await drop_database(url)


BEFORE_0017 = "0016"  # the revision 0017 follows


async def test_0017_keys_requests_by_portal_and_keeps_every_row(service_urls):
    """Decisions, read-store requests and the API's records written before 0017 stay, each with its portal
    (from the decision; '' where none is known); after it two portals may use one request id."""
    url = (
        make_url(service_urls.database)
        .set(database=f"appt_test_mig_{uuid.uuid4().hex[:8]}")
        .render_as_string(hide_password=False)
    )
    decision = (
        "INSERT INTO policy.decisions (tenant_id, request_id, message_id, appointment_id, action, outcome,"
        " decided_at, producer)"
        " VALUES ('acme', $1, gen_random_uuid(), 'apt-1', 'cancel', 'approved', now(), $2)"
    )
    request = (
        "INSERT INTO portal.requests (tenant_id, request_id, appointment_id, action, status)"
        " VALUES ('acme', $1, 'apt-1', 'cancel', 'completed')"
    )
    api = (
        "INSERT INTO portal_api.requests (tenant_id, request_id, customer_id, appointment_id, action,"
        " body_sha256, message_id) VALUES ('acme', $1, 'cust-1', 'apt-1', 'cancel', 'h', gen_random_uuid())"
    )
    await ensure_database(url)
    try:
        await upgrade_async(url, BEFORE_0017)
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await connection.execute(decision, "req-web", "portal-web")
            await connection.execute(decision, "req-old", None)  # decided before 0009 recorded producers
            for request_id in ("req-web", "req-old", "req-undecided"):
                await connection.execute(request, request_id)
                await connection.execute(api, request_id)
        finally:
            await connection.close()

        await upgrade_async(url, "0017")
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            expected = [("req-old", ""), ("req-undecided", ""), ("req-web", "portal-web")]
            for table in ("portal.requests", "portal_api.requests"):
                rows = await connection.fetch(f"SELECT request_id, producer FROM {table} ORDER BY 1")
                assert [tuple(r) for r in rows] == expected, table
            rows = await connection.fetch("SELECT request_id, producer FROM policy.decisions ORDER BY 1")
            assert [tuple(r) for r in rows] == [("req-old", ""), ("req-web", "portal-web")]
            # another portal's request under a known id is a row of its own; the same portal's is not
            await connection.execute(decision, "req-web", "portal-app")
            await connection.execute(
                request.replace("status)", "status, producer)").replace(
                    "'completed')", "'completed', 'portal-app')"
                ),
                "req-web",
            )
            with pytest.raises(asyncpg.UniqueViolationError):
                await connection.execute(decision, "req-web", "portal-web")
        finally:
            await connection.close()

        # the old key cannot hold two portals' rows: downgrading refuses rather than losing one
        with pytest.raises(Exception, match=r"could not create unique index|duplicate key"):
            await asyncio.to_thread(command.downgrade, alembic_config(url), BEFORE_0017)
    finally:
        await drop_database(url)
