"""Outbox rows know which worker process wrote them, so a dead process's rows are relayed at once.

A worker's direct publisher publishes what its transactions commit; the relay leaves rows younger than
`APPT_OUTBOX_GRACE_S` to it. When the process dies between a commit and the publish (kill -9, OOM), its
rows used to wait out that grace period (30 s in production). Now:

- Each outbox row carries `writer`: the id of the worker process whose transaction wrote it, taken by the
  column's default from the session setting `appt.outbox_writer`, which the worker sets on every pooled
  connection when it opens it (no change to the INSERTs). Rows written by anything else carry NULL and
  keep the grace rule.
- While it runs, the worker holds the session-level advisory lock (WRITER_LOCK_CLASS, writer) on its
  relay's LISTEN connection (no extra connection). The server releases it when that connection ends: the
  process exited, was killed, or lost the database.
- `messaging.outbox_claim` (which every worker's `<worker>_outbox_claim` calls) also takes young rows whose
  writer holds no such lock in this database: nobody is about to publish them, so they go out now.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

WRITER_LOCK_CLASS = 1095782484  # workers.runtime.outbox.WRITER_LOCK_CLASS ('APPT' as an int4), frozen here
CLAIMED = (
    "id bigint, message_id uuid, exchange_role varchar, routing_key varchar, message_type varchar, "
    "correlation_id varchar, tenant_id varchar, headers jsonb, body bytea"
)
CLAIM_HEAD = f"""
    CREATE OR REPLACE FUNCTION messaging.outbox_claim(p_producer text, p_limit integer, p_grace interval)
    RETURNS TABLE ({CLAIMED}) LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
        RETURN QUERY
"""
CLAIM_0008 = f"""{CLAIM_HEAD}
        SELECT o.id, o.message_id, o.exchange_role, o.routing_key, o.message_type, o.correlation_id,
               o.tenant_id, o.headers, o.body
        FROM messaging.outbox o
        WHERE o.producer = p_producer AND o.published_at IS NULL AND o.created_at < now() - p_grace
        ORDER BY o.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED;
    END $$
"""
# The live writers are read once per claim (pg_locks takes the lock manager's locks: not once per row).
CLAIM_0013 = f"""{CLAIM_HEAD}
        WITH live AS (
            SELECT l.objid::bigint AS writer FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
              AND l.classid = {WRITER_LOCK_CLASS}::oid
              AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
        )
        SELECT o.id, o.message_id, o.exchange_role, o.routing_key, o.message_type, o.correlation_id,
               o.tenant_id, o.headers, o.body
        FROM messaging.outbox o
        WHERE o.producer = p_producer AND o.published_at IS NULL
          AND (o.created_at < now() - p_grace
               OR (o.writer IS NOT NULL AND o.writer::bigint NOT IN (SELECT writer FROM live)))
        ORDER BY o.id
        LIMIT p_limit
        FOR UPDATE OF o SKIP LOCKED;
    END $$
"""


def upgrade() -> None:
    # Added without a default, then given one: existing rows stay NULL and the table is not rewritten.
    op.execute("ALTER TABLE messaging.outbox ADD COLUMN writer integer")
    op.execute(
        "ALTER TABLE messaging.outbox ALTER COLUMN writer "
        "SET DEFAULT NULLIF(current_setting('appt.outbox_writer', true), '')::integer"
    )
    op.execute(CLAIM_0013)


def downgrade() -> None:
    op.execute(CLAIM_0008)
    op.execute("ALTER TABLE messaging.outbox DROP COLUMN writer")
