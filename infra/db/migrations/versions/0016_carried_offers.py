"""The offer travels with the change (issue 14): the gate remembers which approval carries its offer.

`policy.offers.carried_request_id` names the request whose `modify.approved` carries the stored offer
(computed for the state the change leaves). Such an offer reaches the portal only if the change is
applied, so until the gate recomputes the offer it knows the offer is one it cannot confirm: while the
change is on its way it recomputes for the state the change will leave; after (applied, failed, or
overtaken by the office) it announces the offer even when it equals the stored one. NULL: the stored
offer was announced on its own (`appointment.offer_changed`). The table is tenant-walled already
(migration 0007).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE policy.offers ADD COLUMN carried_request_id varchar(64)")


def downgrade() -> None:
    op.execute("ALTER TABLE policy.offers DROP COLUMN carried_request_id")
