"""The alembic migrations and the table definitions the code uses never drift apart."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from infra.db.tables import SCHEMAS, metadata


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
