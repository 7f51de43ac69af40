"""The inbox: a message's id is recorded in the same transaction as its effect, so a redelivery is a no-op.

A concurrent duplicate waits on the primary key until the first transaction ends, then sees the
conflict, so two replicas never both apply the same message. The unit of work claims right after BEGIN
(`UnitOfWork(..., claim=...)`) through `claim` below, the one inbox insert: one message (the single
path) or a batch's (workers/runtime/batch.py), in one statement either way.

A worker claims in its own partition (`messaging.<worker>_inbox`, migration 0008), the only one its role
may write, and with each message's tenant, the only one row-level security lets it write.
"""

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

import asyncpg

from infra.db.names import WORKERS, inbox_table

# Each row sets the transaction's tenant to its own (SET LOCAL, as a parameter) as it is produced, so the
# setting is made before row-level security checks that row; after the statement the transaction is
# scoped to the last row's tenant. A claim without a tenant ('') leaves the setting alone (only the owner
# may write that). The rows returned are the new claims (a duplicate returns nothing), each with the
# transaction's clock, so a handler's `uow.now()` costs no round trip of its own.
_CLAIM = """
INSERT INTO {table} (consumer, tenant_id, message_id)
SELECT $1, CASE WHEN t = '' THEN '' ELSE set_config('appt.tenant_id', t, true) END, m
  FROM unnest($2::text[], $3::uuid[]) AS u(t, m)
ON CONFLICT DO NOTHING
RETURNING message_id, now() AS now
"""
# One statement per partition: table names are identifiers from a fixed list, never values.
_CLAIMS = {consumer: _CLAIM.format(table=inbox_table(consumer)) for consumer in WORKERS}
_CLAIM_ANY = _CLAIM.format(table=inbox_table(""))


class Claimed(NamedTuple):
    fresh: frozenset[UUID]  # the ids claimed now; the others were claimed before (duplicates)
    now: datetime | None  # the transaction's clock (None when nothing was new)


async def claim(
    driver: asyncpg.Connection, consumer: str, tenants: Sequence[str], message_ids: Sequence[UUID]
) -> Claimed:
    """Claim `message_ids` for `consumer`, each with its tenant (parallel sequences). An id that appears
    twice is claimed once. The transaction is scoped to the last row's tenant from this statement on."""
    rows = await driver.fetch(_CLAIMS.get(consumer, _CLAIM_ANY), consumer, list(tenants), list(message_ids))
    return Claimed(frozenset(UUID(str(r["message_id"])) for r in rows), rows[0]["now"] if rows else None)
