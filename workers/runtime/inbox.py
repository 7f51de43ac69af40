"""The inbox: a message's id is recorded in the same transaction as its effect, so a redelivery is a no-op.

A concurrent duplicate waits on the primary key until the first transaction ends, then sees the
conflict, so two replicas never both apply the same message. The unit of work claims as the first
statement of its transaction (`UnitOfWork(..., claim=...)`); `claim` below does the same on a
transaction already open.
"""

from uuid import UUID

import asyncpg
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from infra.db.tables import inbox

_CLAIM = "INSERT INTO messaging.inbox (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"


def claim_sql(consumer: str, message_id: UUID) -> str:
    """The claim as literal SQL, for the simple-query protocol (BEGIN and claim in one round trip).
    Only for a consumer name the caller has checked to be quote-free and a real UUID."""
    return (
        f"INSERT INTO messaging.inbox (consumer, message_id) VALUES ('{consumer}', '{message_id}')"
        " ON CONFLICT DO NOTHING"
    )


async def claim_on(driver: asyncpg.Connection, consumer: str, message_id: UUID) -> bool:
    """The claim on the asyncpg connection under a unit of work (prepared once per connection)."""
    return await driver.execute(_CLAIM, consumer, message_id) != "INSERT 0 0"


async def claim(connection: AsyncConnection, consumer: str, message_id: UUID) -> bool:
    """True the first time `consumer` sees `message_id`; False for a duplicate."""
    result = await connection.execute(
        insert(inbox)
        .values(consumer=consumer, message_id=message_id)
        .on_conflict_do_nothing()
        .returning(inbox.c.message_id)
    )
    return result.first() is not None
