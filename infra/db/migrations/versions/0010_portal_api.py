"""The portal HTTP API's own records and the business unit's time zone in the read store.

`portal.business_units`: each business unit's IANA time zone, projected by portal_sync from the office's
capacity settings (`office.capacity.updated` names the zone its windows are given in), so a portal can
show local times. `portal_api.requests`: the API's idempotency record, one row per request id (the
`Idempotency-Key`): who asked, for which appointment, and a hash of the body, so the same key with the
same body gets the same answer and with another body a 409. Both tenant-walled like every other table
(migration 0007).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SAME_TENANT = "tenant_id = current_setting('appt.tenant_id', true)"

STATEMENTS = [
    """
    CREATE TABLE portal.business_units (
        tenant_id varchar(64) NOT NULL,
        business_unit varchar(64) NOT NULL,
        time_zone varchar(64) NOT NULL,
        capacity_version bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, business_unit)
    )
    """,
    "CREATE SCHEMA IF NOT EXISTS portal_api",
    """
    CREATE TABLE portal_api.requests (
        tenant_id varchar(64) NOT NULL,
        request_id varchar(64) NOT NULL,
        customer_id varchar(64) NOT NULL,
        appointment_id varchar(64) NOT NULL,
        action varchar(16) NOT NULL,
        body_sha256 varchar(64) NOT NULL,
        message_id uuid NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, request_id)
    )
    """,
]
TENANT_TABLES = ("portal.business_units", "portal_api.requests")


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY tenant_wall ON {table} USING ({SAME_TENANT}) WITH CHECK ({SAME_TENANT})")


def downgrade() -> None:
    op.execute("DROP TABLE portal_api.requests")
    op.execute("DROP SCHEMA portal_api")
    op.execute("DROP TABLE portal.business_units")
