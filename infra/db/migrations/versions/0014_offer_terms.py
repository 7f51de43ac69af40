"""The offer's terms: what a cancel must say, and who besides the customer may act (project contacts).

`policy.offers.terms` keeps the gate's last computed terms (to tell a changed offer from an unchanged
one); `portal.appointment_offers` gets them as the portal reads them: `cancel_reason_required`,
`cancel_reasons` (the business's list, null: any reason) and `contact_ids` (the project's named contacts,
whom the gate's ownership rule lets act on the appointment like its customer). They travel in the
offer, so they are versioned with it (an older offer never overwrites a newer one) and the read store
never disagrees with the gate. The tables are tenant-walled already (migration 0007).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE policy.offers ADD COLUMN terms jsonb")
    op.execute(
        "ALTER TABLE portal.appointment_offers "
        "ADD COLUMN cancel_reason_required boolean NOT NULL DEFAULT false, "
        "ADD COLUMN cancel_reasons jsonb, "
        "ADD COLUMN contact_ids varchar(64)[] NOT NULL DEFAULT '{}'"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE portal.appointment_offers DROP COLUMN cancel_reason_required, "
        "DROP COLUMN cancel_reasons, DROP COLUMN contact_ids"
    )
    op.execute("ALTER TABLE policy.offers DROP COLUMN terms")
