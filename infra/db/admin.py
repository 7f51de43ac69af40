"""Create and drop databases (the demo and tests each get their own; workers never do this)."""

import asyncpg
from sqlalchemy.engine import make_url

from workers.runtime.database import asyncpg_dsn


def _maintenance_dsn(database_url: str) -> tuple[str, str]:
    url = make_url(database_url)
    return asyncpg_dsn(str(url.set(database="postgres").render_as_string(hide_password=False))), url.database


async def ensure_database(database_url: str) -> bool:
    """Create the database named in the URL if it does not exist; True when it was created."""
    dsn, name = _maintenance_dsn(database_url)
    connection = await asyncpg.connect(dsn)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            return False  # created meanwhile by another process
        return True
    finally:
        await connection.close()


async def drop_database(database_url: str) -> None:
    dsn, name = _maintenance_dsn(database_url)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
