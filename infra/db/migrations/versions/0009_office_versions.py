"""Versioned office writes, office outcomes, the audit trail keyed by meaning, and request ids per producer.

- `scheduling.appointments` remembers the office's last applied revision (`office_revision`), the version
  the last office record produced (`office_version`, what a version 1 record is read as built on) and the
  version the last customer change produced (`customer_version`): docs/scheduling.md.
- `portal.office_outcomes`: what became of each office message (applied / ignored / refused), for the
  office's integrator to query.
- `portal.audit_trail` gets a unique index by meaning (appointment, entry kind, request, version), so a
  fact carried again under a new message id adds nothing; existing repeats are removed first.
- `policy.decisions.producer`: a request id belongs to the tenant and the portal that sent it first.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SAME_TENANT = "tenant_id = current_setting('appt.tenant_id', true)"
AUDIT_MEANING = "tenant_id, appointment_id, entry, COALESCE(request_id, ''), COALESCE(version, -1)"

STATEMENTS = [
    "ALTER TABLE scheduling.appointments ADD COLUMN office_revision bigint",
    "ALTER TABLE scheduling.appointments ADD COLUMN office_version bigint",
    "ALTER TABLE scheduling.appointments ADD COLUMN customer_version bigint",
    "ALTER TABLE policy.decisions ADD COLUMN producer varchar(64)",
    """
    CREATE TABLE portal.office_outcomes (
        tenant_id varchar(64) NOT NULL,
        office_message_id uuid NOT NULL,
        correlation_id varchar(64) NOT NULL,
        message_type varchar(64) NOT NULL,
        schema_version integer NOT NULL,
        status varchar(16) NOT NULL,
        subject varchar(64),
        reason_code varchar(64),
        reason_text varchar(1000),
        current_state jsonb,
        occurred_at timestamptz NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, office_message_id),
        CONSTRAINT office_outcome_status_known CHECK (status IN ('applied','ignored','refused'))
    )
    """,
    "CREATE INDEX office_outcomes_by_subject ON portal.office_outcomes (tenant_id, subject, occurred_at)",
    "ALTER TABLE portal.office_outcomes ENABLE ROW LEVEL SECURITY",
    f"CREATE POLICY tenant_wall ON portal.office_outcomes USING ({SAME_TENANT}) WITH CHECK ({SAME_TENANT})",
    f"""
    DELETE FROM portal.audit_trail t USING (
        SELECT tenant_id, message_id, row_number() OVER (
                   PARTITION BY {AUDIT_MEANING} ORDER BY recorded_at, message_id) AS n
          FROM portal.audit_trail) d
     WHERE d.n > 1 AND t.tenant_id = d.tenant_id AND t.message_id = d.message_id
    """,
    f"CREATE UNIQUE INDEX audit_trail_by_meaning ON portal.audit_trail ({AUDIT_MEANING})",
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS portal.audit_trail_by_meaning")
    op.execute("DROP TABLE IF EXISTS portal.office_outcomes")
    op.execute("ALTER TABLE policy.decisions DROP COLUMN IF EXISTS producer")
    for column in ("customer_version", "office_version", "office_revision"):
        op.execute(f"ALTER TABLE scheduling.appointments DROP COLUMN IF EXISTS {column}")
