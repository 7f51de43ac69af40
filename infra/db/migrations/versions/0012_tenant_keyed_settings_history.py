"""Key `policy.settings_history` by (tenant_id, id), so every tenant table has tenant_id in its primary key.

Citus distributes a table by one column and enforces only the keys that contain it (docs/scaling.md);
this was the one tenant table keyed without its tenant. `id` stays unique on its own (its sequence).

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-06
"""

from alembic import op

revision = "0012"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE policy.settings_history DROP CONSTRAINT settings_history_pkey, "
        "ADD CONSTRAINT settings_history_pkey PRIMARY KEY (tenant_id, id)"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE policy.settings_history DROP CONSTRAINT settings_history_pkey, "
        "ADD CONSTRAINT settings_history_pkey PRIMARY KEY (id)"
    )
