"""Alembic environment: runs migrations over asyncpg against DATABASE_URL (or the configured url)."""

import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from infra.db.tables import metadata

config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from workers.runtime.settings import Settings

        url = Settings().database_url
    return url


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, include_schemas=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
