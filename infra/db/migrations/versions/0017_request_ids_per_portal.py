"""Request ids are scoped by tenant and portal (issue 19): the gate's decisions, the read store's requests
and the HTTP API's idempotency records are keyed by (tenant_id, producer, request_id).

Before, (tenant_id, request_id) was the key, so one portal could take another portal's request id first
and have that portal's genuine request dead-lettered as `request_id_reused`. Every existing row is kept:

- `policy.decisions.producer` (since 0009) becomes part of the key; decisions recorded before 0009 have
  none and get `''` (they are older than any signature still accepted, so no portal can send them again).
- `portal.requests.producer` and `portal_api.requests.producer` are new, filled in from the request's
  decision where there is one (one decision per request id until now), else `''`.

Downgrading puts the old keys back; it fails (unique violation) once two portals used one request id in
one tenant, which the old keys cannot hold.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

# table -> its primary key constraint
TABLES = {
    "policy.decisions": "decisions_pkey",
    "portal.requests": "requests_pkey",
    "portal_api.requests": "requests_pkey",
}


def upgrade() -> None:
    op.execute("UPDATE policy.decisions SET producer = '' WHERE producer IS NULL")
    op.execute(
        "ALTER TABLE policy.decisions ALTER COLUMN producer SET DEFAULT '', "
        "ALTER COLUMN producer SET NOT NULL"
    )
    for table in ("portal.requests", "portal_api.requests"):
        op.execute(f"ALTER TABLE {table} ADD COLUMN producer varchar(64) NOT NULL DEFAULT ''")
        # still one decision per (tenant, request id) here: the old key
        op.execute(
            f"UPDATE {table} r SET producer = d.producer FROM policy.decisions d "
            "WHERE d.tenant_id = r.tenant_id AND d.request_id = r.request_id"
        )
    for table, key in TABLES.items():
        op.execute(
            f"ALTER TABLE {table} DROP CONSTRAINT {key}, "
            f"ADD CONSTRAINT {key} PRIMARY KEY (tenant_id, producer, request_id)"
        )


def downgrade() -> None:
    for table, key in TABLES.items():
        op.execute(
            f"ALTER TABLE {table} DROP CONSTRAINT {key}, "
            f"ADD CONSTRAINT {key} PRIMARY KEY (tenant_id, request_id)"
        )
    for table in ("portal.requests", "portal_api.requests"):
        op.execute(f"ALTER TABLE {table} DROP COLUMN producer")
    op.execute(
        "ALTER TABLE policy.decisions ALTER COLUMN producer DROP NOT NULL, ALTER COLUMN producer DROP DEFAULT"
    )
    op.execute("UPDATE policy.decisions SET producer = NULL WHERE producer = ''")
