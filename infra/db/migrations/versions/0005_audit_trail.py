"""The audit trail per appointment (who asked for what, the decision and why, what changed, in order),
and replies to a portal's own queue.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

STATEMENTS = [
    """
    CREATE TABLE portal.audit_trail (
        tenant_id varchar(64) NOT NULL,
        message_id uuid NOT NULL,
        appointment_id varchar(64) NOT NULL,
        occurred_at timestamptz NOT NULL,
        entry varchar(32) NOT NULL,
        actor varchar(64) NOT NULL,
        request_id varchar(64),
        action varchar(16),
        reason_code varchar(64),
        reason_text varchar(1000),
        window_start timestamptz,
        window_end timestamptz,
        previous_window_start timestamptz,
        status varchar(16),
        version bigint,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, message_id)
    )
    """,
    """
    CREATE INDEX audit_trail_by_appointment ON portal.audit_trail (tenant_id, appointment_id, occurred_at)
    """,
    # A request may name a queue of the portal's for its outcome; `replied_at` makes the reply once.
    """
    ALTER TABLE portal.requests ADD COLUMN reply_to varchar(200), ADD COLUMN replied_at timestamptz
    """,
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("ALTER TABLE portal.requests DROP COLUMN reply_to, DROP COLUMN replied_at")
    op.execute("DROP TABLE portal.audit_trail")
