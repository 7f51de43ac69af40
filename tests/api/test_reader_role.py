"""The portal reader role and the API's role under row-level security: every table and view each can
read shows only the tenant its transaction names (nothing without one), and neither may write the read
store; the API's role writes only its idempotency record."""

import asyncpg
import pytest

from infra.db.tables import SCHEMAS, WORKERS
from tests.faults.test_database_walls import READABLE, SEED, in_tenant, tenants
from workers.runtime.database import asyncpg_dsn

pytestmark = pytest.mark.integration


async def refused(connection: asyncpg.Connection, tenant: str, statement: str) -> bool:
    try:
        await in_tenant(connection, tenant, statement)
    except asyncpg.InsufficientPrivilegeError:
        return True
    return False


async def test_the_api_roles_read_only_the_named_tenant_and_write_only_the_request_record(
    api_roles, database_url
):
    first, second = tenants()
    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with admin.transaction():
            for tenant in (first, second):
                for statement in SEED:
                    await admin.execute(
                        statement, *((tenant, [*WORKERS]) if "$2" in statement else (tenant,))
                    )
    finally:
        await admin.close()

    reader = await asyncpg.connect(asyncpg_dsn(api_roles["portal_reader"].database_url))
    writer = await asyncpg.connect(asyncpg_dsn(api_roles["portal_api"].database_url))
    try:
        readable = [r["name"] for r in await reader.fetch(READABLE, list(SCHEMAS))]
        assert {"portal.appointments", "portal.offers_now", "portal.pickable_windows",
                "portal.business_units", "portal_api.requests"} <= set(readable)  # fmt: skip
        assert not any(name.split(".")[0] in ("scheduling", "policy", "messaging") for name in readable)
        for name in readable:
            assert await in_tenant(reader, None, f"SELECT 1 FROM {name} LIMIT 1") == [], name
            for tenant in (first, second):
                seen = await in_tenant(reader, tenant, f"SELECT DISTINCT tenant_id FROM {name}")
                assert [r["tenant_id"] for r in seen] == [tenant], (name, tenant)
        assert await refused(reader, first, "UPDATE portal.appointments SET version = version + 1")
        assert await refused(reader, first, "DELETE FROM portal_api.requests")
        assert await refused(writer, first, "SELECT 1 FROM portal.appointments")
        assert await refused(writer, first, "UPDATE portal_api.requests SET action = 'cancel'")
        # The writer's one write: a record of its own tenant only.
        await in_tenant(
            writer,
            first,
            "INSERT INTO portal_api.requests (tenant_id, request_id, customer_id, appointment_id, action,"
            f" body_sha256, message_id) VALUES ('{first}', 'r-2', 'c-1', 'a-1', 'cancel', repeat('0', 64),"
            " gen_random_uuid())",
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # row-level security's WITH CHECK
            await in_tenant(
                writer,
                first,
                "INSERT INTO portal_api.requests (tenant_id, request_id, customer_id, appointment_id, action,"
                f" body_sha256, message_id) VALUES ('{second}', 'r-3', 'c-1', 'a-1', 'cancel',"
                " repeat('0', 64), gen_random_uuid())",
            )
    finally:
        await reader.close()
        await writer.close()
