"""The inbox: a message's id is recorded in the same transaction as its effect, so a redelivery is a no-op.

A concurrent duplicate waits on the primary key until the first transaction ends, then sees the
conflict, so two replicas never both apply the same message. The unit of work claims right after BEGIN
(`UnitOfWork(..., claim=...)`) through `claim` below, the one inbox insert.

A worker claims in its own partition (`messaging.<worker>_inbox`, migration 0008), the only one its role
may write, and with its message's tenant, the only one row-level security lets it write.
"""

from uuid import UUID

import asyncpg

from infra.db.tables import WORKERS, inbox_table

# The claim sets the transaction's tenant (SET LOCAL, as a parameter) in the same statement: the row is
# produced, and the setting made, before row-level security checks it. A claim without a tenant ('')
# leaves the setting alone (only the owner may write that).
_CLAIM = """
INSERT INTO {table} (consumer, tenant_id, message_id)
SELECT $1, CASE WHEN $2::text = '' THEN '' ELSE set_config('appt.tenant_id', $2::text, true) END, $3
ON CONFLICT DO NOTHING
"""
# One statement per partition: table names are identifiers from a fixed list, never values.
_CLAIMS = {consumer: _CLAIM.format(table=inbox_table(consumer)) for consumer in WORKERS}
_CLAIM_ANY = _CLAIM.format(table=inbox_table(""))


async def claim(driver: asyncpg.Connection, consumer: str, tenant: str, message_id: UUID) -> bool:
    """True the first time `consumer` sees `message_id`; False for a duplicate. With a `tenant`, the
    transaction is scoped to it from this statement on."""
    status = await driver.execute(_CLAIMS.get(consumer, _CLAIM_ANY), consumer, tenant, message_id)
    return status != "INSERT 0 0"
