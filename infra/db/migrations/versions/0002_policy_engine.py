"""Policy engine: layered settings with history, explained decisions, approvals, projects, reschedule count.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STATEMENTS = [
    """
    CREATE TABLE policy.settings_layers (
        tenant_id varchar(64) NOT NULL,
        level varchar(16) NOT NULL,
        scope_key varchar(64) NOT NULL,
        settings jsonb NOT NULL,
        settings_version bigint NOT NULL,
        changed_by varchar(64) NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, level, scope_key),
        CONSTRAINT settings_level_known CHECK (level IN ('business','business_unit','job_type','project'))
    )
    """,
    """
    CREATE TABLE policy.settings_history (
        id bigserial PRIMARY KEY,
        tenant_id varchar(64) NOT NULL,
        level varchar(16) NOT NULL,
        scope_key varchar(64) NOT NULL,
        settings_version bigint NOT NULL,
        settings jsonb NOT NULL,
        previous jsonb,
        changed_by varchar(64) NOT NULL,
        message_id uuid NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE INDEX settings_history_by_scope ON policy.settings_history (tenant_id, level, scope_key, id)
    """,
    # Version 1 settings become business layers; permissions keep their meaning.
    """
    INSERT INTO policy.settings_layers
        (tenant_id, level, scope_key, settings, settings_version, changed_by, updated_at)
    SELECT tenant_id, 'business', '',
           jsonb_build_object('feature_enabled', feature_enabled,
                              'reschedule', rules -> 'reschedule', 'cancel', rules -> 'cancel'),
           settings_version, changed_by, updated_at
    FROM policy.portal_settings
    """,
    """
    DROP TABLE policy.portal_settings
    """,
    """
    ALTER TABLE policy.decisions
        ADD COLUMN requester_id varchar(64),
        ADD COLUMN change jsonb,
        ADD COLUMN rule varchar(64),
        ADD COLUMN setting varchar(64),
        ADD COLUMN setting_level varchar(16),
        ADD COLUMN office_decided_by varchar(64),
        ADD COLUMN office_decided_at timestamptz,
        DROP CONSTRAINT decision_outcome_known,
        ADD CONSTRAINT decision_outcome_known CHECK (outcome IN ('approved','rejected','needs_approval'))
    """,
    """
    CREATE TABLE scheduling.projects (
        tenant_id varchar(64) NOT NULL,
        project_id varchar(64) NOT NULL,
        portal_locked boolean NOT NULL DEFAULT false,
        starts_at timestamptz,
        ends_at timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, project_id)
    )
    """,
    """
    ALTER TABLE scheduling.appointments ADD COLUMN customer_reschedules integer NOT NULL DEFAULT 0
    """,
    """
    ALTER TABLE portal.requests
        ALTER COLUMN status TYPE varchar(24),
        DROP CONSTRAINT request_status_known,
        ADD CONSTRAINT request_status_known
            CHECK (status IN ('pending','awaiting_approval','rejected','completed','failed'))
    """,
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("0002 drops policy.portal_settings; restore from a backup to go back")
