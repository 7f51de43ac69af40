"""Ready to shard PostgreSQL by tenant (Citus, docs/scaling.md): the migrated schema keys every tenant
table by tenant_id, and every statement the workers send about a tenant's rows names its tenant.

Citus distributes a table by one column and can only enforce a primary key, unique constraint or foreign
key that includes it; a statement with an equality filter on that column goes to one shard (a router
query) and a join is local only when it equates the column on both sides. `messaging.*` (inbox, outbox)
is the relay's, read across tenants by design: docs/scaling.md says how it is placed instead.
"""

import re
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy import event, text

from apptctl import scenario_runner
from apptctl.scenarios import build_world
from workers.runtime.database import create_engine

pytestmark = pytest.mark.integration

TENANT_SCHEMAS = ("scheduling", "policy", "portal")
# a table (or view) named in a statement; `schema.table.column` is a column, not another table
TENANT_TABLE = re.compile(r"\b(?:scheduling|policy|portal)\.(\w+)(?![.\w])", re.IGNORECASE)
# an INSERT inside a WITH statement, and its column list
CTE_INSERT = re.compile(
    r"\bINSERT\s+INTO\s+(?:scheduling|policy|portal)\.\w+(?:\s+AS\s+\w+)?\s*\(([^)]*)\)", re.IGNORECASE
)
# a predicate that pins tenant_id: `= $1`, `= ANY($1)`, `IN (...)`, or equal to another table's tenant_id
TENANT_PREDICATE = re.compile(
    r"\btenant_id\s*(?:=|IN\b)|=\s*(?:\w+\.)?tenant_id\b|\btenant_id\s+IS\s+NOT\s+DISTINCT", re.IGNORECASE
)


async def _catalog(engine, sql: str) -> list:
    async with engine.connect() as conn:
        return list(await conn.execute(text(sql), {"schemas": list(TENANT_SCHEMAS)}))


async def test_every_tenant_table_has_tenant_id_in_every_key(database_url):
    engine = create_engine(database_url, pool_size=1)
    try:
        tables = await _catalog(
            engine,
            """
            SELECT n.nspname || '.' || c.relname AS name,
                   EXISTS (SELECT 1 FROM pg_attribute a
                           WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(:schemas) AND NOT c.relispartition
            """,
        )
        # every unique index (primary keys and unique constraints included) and every foreign key
        keys = await _catalog(
            engine,
            """
            SELECT i.indrelid::regclass::text, i.indexrelid::regclass::text,
                   pg_get_indexdef(i.indexrelid),
                   'tenant_id' = ANY (SELECT a.attname FROM pg_attribute a
                                      WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey))
            FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE i.indisunique AND n.nspname = ANY(:schemas)
            """,
        )
        foreign = await _catalog(
            engine,
            """
            SELECT f.conrelid::regclass::text, f.conname, pg_get_constraintdef(f.oid),
                   EXISTS (SELECT 1 FROM unnest(f.conkey, f.confkey) AS k(mine, theirs)
                           JOIN pg_attribute m ON m.attrelid = f.conrelid AND m.attnum = k.mine
                           JOIN pg_attribute t ON t.attrelid = f.confrelid AND t.attnum = k.theirs
                           WHERE m.attname = 'tenant_id' AND t.attname = 'tenant_id')
            FROM pg_constraint f JOIN pg_namespace n ON n.oid = f.connamespace
            WHERE f.contype = 'f' AND n.nspname = ANY(:schemas)
            """,
        )
        primary = await _catalog(
            engine,
            """
            SELECT c.conrelid::regclass::text
            FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
            WHERE c.contype = 'p' AND n.nspname = ANY(:schemas)
            """,
        )
    finally:
        await engine.dispose()

    assert len(tables) >= 15, tables  # the migrations ran
    assert [name for name, has_tenant in tables if not has_tenant] == [], "tables without tenant_id"
    with_key = {name for (name,) in primary}
    assert [name for name, _ in tables if name not in with_key] == [], "tenant tables without a primary key"
    assert [(index, ddl) for _, index, ddl, ok in keys if not ok] == [], "unique keys without tenant_id"
    assert [(fk, ddl) for _, fk, ddl, ok in foreign if not ok] == [], "foreign keys not matching tenant_id"


def tenant_tables(sql: str) -> set[str]:
    return {m.group(0).lower() for m in TENANT_TABLE.finditer(sql)}


def pins_its_tenant(sql: str) -> bool:
    """A statement about tenant tables names its tenant: an INSERT lists tenant_id (and a row source it
    SELECTs from is filtered too); a SELECT, UPDATE or DELETE has one tenant_id predicate per tenant table
    it reads (a filter, or a join condition equating tenant_id)."""
    tables = TENANT_TABLE.findall(sql)
    if not tables:
        return True
    statement = sql.lstrip().upper()
    predicates = len(TENANT_PREDICATE.findall(sql))
    if statement.startswith("WITH"):
        # Writes as common table expressions (portal_sync writes one event, or a batch, in one statement):
        # each INSERT lists tenant_id; every other tenant table it reads has its own tenant predicate.
        inserts = CTE_INSERT.findall(sql)
        if not inserts or any("tenant_id" not in columns for columns in inserts):
            return False
        return predicates >= len(tables) - len(inserts)
    if statement.startswith("INSERT"):
        columns = sql[: sql.upper().find("VALUES")] if "VALUES" in sql.upper() else sql
        if "tenant_id" not in columns.split(")")[0]:
            return False
        read = len(tables) - 1  # the table written to is routed by the tenant_id value inserted
        return predicates >= read
    return predicates >= len(tables)


@pytest.mark.parametrize(
    ("sql", "ok"),
    [
        ("SELECT * FROM portal.requests WHERE tenant_id = $1 AND request_id = $2", True),
        ("SELECT * FROM portal.requests WHERE request_id = $1", False),
        ("UPDATE scheduling.jobs SET status = $3 WHERE tenant_id = $1 AND job_id = $2", True),
        ("DELETE FROM policy.offers WHERE appointment_id = $1", False),
        ("INSERT INTO portal.jobs (tenant_id, job_id) VALUES ($1, $2) ON CONFLICT DO NOTHING", True),
        ("INSERT INTO portal.jobs (job_id) VALUES ($1)", False),
        (
            "SELECT * FROM scheduling.appointments a JOIN scheduling.jobs j ON j.job_id = a.job_id "
            "WHERE a.tenant_id = $1",
            False,
        ),
        (
            "SELECT * FROM scheduling.appointments a JOIN scheduling.jobs j "
            "ON j.tenant_id = a.tenant_id AND j.job_id = a.job_id WHERE a.tenant_id = $1",
            True,
        ),
        ("SELECT * FROM portal.offers_now WHERE tenant_id = ANY($1::text[])", True),
        ("SELECT 1 FROM messaging.outbox WHERE published_at IS NULL", True),
        (
            "SELECT portal.jobs.status FROM portal.jobs WHERE portal.jobs.tenant_id = $1::VARCHAR "
            "AND portal.jobs.job_id = $2::VARCHAR",
            True,
        ),
        ("DELETE FROM portal.jobs WHERE portal.jobs.job_id = $1::VARCHAR", False),
        (
            "WITH j AS (INSERT INTO portal.jobs AS t (tenant_id, job_id) SELECT $1, u.j "
            "FROM unnest($2) AS u(j) RETURNING t.job_id), "
            "r AS (INSERT INTO portal.requests AS t (tenant_id, request_id) SELECT $1, "
            "(SELECT a.job_id FROM portal.appointments a WHERE a.tenant_id = $1) RETURNING t.request_id) "
            "SELECT now()",
            True,
        ),
        (
            "WITH j AS (INSERT INTO portal.jobs AS t (job_id) SELECT u.j FROM unnest($1) AS u(j) "
            "RETURNING t.job_id) SELECT now()",
            False,
        ),
        (
            "WITH j AS (INSERT INTO portal.jobs AS t (tenant_id, job_id) SELECT $1, "
            "(SELECT a.job_id FROM portal.appointments a WHERE a.appointment_id = $2) RETURNING t.job_id) "
            "SELECT now()",
            False,
        ),
        (
            "SELECT a.appointment_id FROM scheduling.appointments a WHERE a.tenant_id = $1 AND EXISTS "
            "(SELECT 1 FROM policy.offers o WHERE o.appointment_id = a.appointment_id)",
            False,
        ),
    ],
)
def test_the_tenant_filter_check_tells_routed_statements_from_cross_tenant_ones(sql, ok):
    assert pins_its_tenant(sql) is ok


@pytest.fixture
def statements(monkeypatch) -> Iterator[dict[str, set[int]]]:
    """Every statement text any asyncpg connection of this process sends (plain, with arguments, or
    prepared), with the ids of the connections that sent it."""
    seen: dict[str, set[int]] = {}
    get_statement = asyncpg.connection.Connection._get_statement
    execute = asyncpg.connection.Connection.execute

    async def _get_statement(self, query, *args, **kwargs):
        seen.setdefault(query, set()).add(id(self))
        return await get_statement(self, query, *args, **kwargs)

    async def _execute(self, query, *args, **kwargs):
        seen.setdefault(query, set()).add(id(self))
        return await execute(self, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.connection.Connection, "_get_statement", _get_statement)
    monkeypatch.setattr(asyncpg.connection.Connection, "execute", _execute)
    yield seen


async def test_no_statement_of_the_workers_crosses_tenants(statements, database_url, workers, broker):
    """The industry stories (every message type, approvals, reschedules, cancels, refusals, capacity,
    projects) through the three real workers; every statement they sent about tenant tables pins its
    tenant. The test's own reads go through a connection of its own and are left out."""
    reader = create_engine(database_url, pool_size=1)
    ours: set[int] = set()

    @event.listens_for(reader.sync_engine, "connect")
    def _mine(dbapi_connection, _record) -> None:
        ours.add(id(dbapi_connection._connection))

    try:
        world = build_world(uuid.uuid4().hex[:6], tenant_suffix=f"-{uuid.uuid4().hex[:6]}")
        await scenario_runner.publish_all(broker, world.setup_messages)
        assert await scenario_runner.wait_for_setup(reader, world)
        results = await scenario_runner.run_scenarios(reader, broker, world)
        assert all(r.passed for r in results), [r.problems for r in results if not r.passed]
    finally:
        await reader.dispose()

    by_workers = {sql for sql, senders in statements.items() if senders - ours}
    about_tenants = {sql for sql in by_workers if tenant_tables(sql)}
    written = {
        t
        for sql in about_tenants
        for t in tenant_tables(sql)
        if not sql.lstrip().upper().startswith("SELECT")
    }
    # the flow reached every part of the schema the workers own
    assert len(about_tenants) >= 20, sorted(about_tenants)
    assert {"scheduling.appointments", "policy.decisions", "portal.requests"} <= written, written
    crossing = sorted(" ".join(sql.split()) for sql in about_tenants if not pins_its_tenant(sql))
    assert crossing == [], "statements that do not pin their tenant:\n" + "\n".join(crossing)
