"""The inbox: a message's id is recorded in the same transaction as its effect, so a redelivery is a no-op."""

from uuid import UUID

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from infra.db.tables import inbox


async def claim(connection: AsyncConnection, consumer: str, message_id: UUID) -> bool:
    """True the first time `consumer` sees `message_id`; False for a duplicate.

    A concurrent duplicate waits on the primary key until the first transaction ends, then sees the
    conflict, so two replicas never both apply the same message.
    """
    result = await connection.execute(
        insert(inbox)
        .values(consumer=consumer, message_id=message_id)
        .on_conflict_do_nothing()
        .returning(inbox.c.message_id)
    )
    return result.first() is not None
