"""Drop the shared `outbox` NOTIFY trigger: every writer now notifies its own producer's channel
(`outbox.<producer>`) in the statement that writes its rows, and nothing listens on `outbox` any more,
so the trigger only cost a notification per insert that woke nobody.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS outbox_notify ON messaging.outbox")
    op.execute("DROP FUNCTION IF EXISTS messaging.notify_outbox()")


def downgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION messaging.notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('outbox', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_notify AFTER INSERT ON messaging.outbox "
        "FOR EACH STATEMENT EXECUTE FUNCTION messaging.notify_outbox()"
    )
