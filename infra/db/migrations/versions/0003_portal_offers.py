"""What the portal offers per appointment: the gate's computed timelines and the read store's copy.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STATEMENTS = [
    """
    CREATE TABLE policy.offers (
        tenant_id varchar(64) NOT NULL,
        appointment_id varchar(64) NOT NULL,
        offer_version bigint NOT NULL DEFAULT 0,
        appointment_version bigint NOT NULL DEFAULT 0,
        segments jsonb NOT NULL DEFAULT '[]'::jsonb,
        computed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, appointment_id)
    )
    """,
    """
    CREATE TABLE portal.appointment_offers (
        tenant_id varchar(64) NOT NULL,
        appointment_id varchar(64) NOT NULL,
        job_id varchar(64) NOT NULL,
        customer_id varchar(64) NOT NULL,
        offer_version bigint NOT NULL,
        appointment_version bigint NOT NULL,
        segments jsonb NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, appointment_id)
    )
    """,
    """
    CREATE INDEX portal_offers_by_customer ON portal.appointment_offers (tenant_id, customer_id)
    """,
    # The portal's query: the one segment of each timeline that holds now.
    """
    CREATE VIEW portal.offers_now AS
    SELECT o.tenant_id, o.appointment_id, o.job_id, o.customer_id, o.offer_version, o.appointment_version,
           (s.reschedule ->> 'offered')::boolean OR (s.cancel ->> 'offered')::boolean AS modify_offered,
           (s.reschedule ->> 'offered')::boolean AS reschedule_offered,
           (s.reschedule ->> 'needs_approval')::boolean AS reschedule_needs_approval,
           s.reschedule ->> 'reason_code' AS reschedule_reason_code,
           s.reschedule ->> 'reason' AS reschedule_reason,
           (s.cancel ->> 'offered')::boolean AS cancel_offered,
           (s.cancel ->> 'needs_approval')::boolean AS cancel_needs_approval,
           s.cancel ->> 'reason_code' AS cancel_reason_code,
           s.cancel ->> 'reason' AS cancel_reason,
           s.valid_until AS offer_changes_at
    FROM portal.appointment_offers o
    CROSS JOIN LATERAL jsonb_to_recordset(o.segments)
        AS s(valid_from timestamptz, valid_until timestamptz, reschedule jsonb, cancel jsonb)
    WHERE (s.valid_from IS NULL OR s.valid_from <= now())
      AND (s.valid_until IS NULL OR now() < s.valid_until)
    """,
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP VIEW portal.offers_now")
    op.execute("DROP TABLE portal.appointment_offers")
    op.execute("DROP TABLE policy.offers")
