"""Initial schemas: scheduling source of truth, policy, portal read store, messaging inbox/outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


STATEMENTS = [
    """
    CREATE SCHEMA IF NOT EXISTS scheduling
    """,
    """
    CREATE SCHEMA IF NOT EXISTS policy
    """,
    """
    CREATE SCHEMA IF NOT EXISTS portal
    """,
    """
    CREATE SCHEMA IF NOT EXISTS messaging
    """,
    """
    CREATE TABLE scheduling.jobs (
        tenant_id varchar(64) NOT NULL,
        job_id varchar(64) NOT NULL,
        customer_id varchar(64) NOT NULL,
        status varchar(16) NOT NULL,
        version bigint NOT NULL DEFAULT 0,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, job_id),
        CONSTRAINT job_status_known CHECK (status IN ('scheduled','in_progress','completed','canceled'))
    )
    """,
    """
    CREATE TABLE scheduling.project_contacts (
        tenant_id varchar(64) NOT NULL,
        project_id varchar(64) NOT NULL,
        contact_id varchar(64) NOT NULL,
        role varchar(32) NOT NULL,
        PRIMARY KEY (tenant_id, project_id, contact_id)
    )
    """,
    """
    CREATE TABLE scheduling.appointments (
        tenant_id varchar(64) NOT NULL,
        appointment_id varchar(64) NOT NULL,
        job_id varchar(64) NOT NULL,
        customer_id varchar(64) NOT NULL,
        business_unit varchar(64) NOT NULL,
        job_type varchar(64) NOT NULL,
        project_id varchar(64),
        window_start timestamptz NOT NULL,
        window_end timestamptz NOT NULL,
        status varchar(16) NOT NULL,
        confirmation varchar(16) NOT NULL,
        version bigint NOT NULL DEFAULT 1,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, appointment_id),
        FOREIGN KEY (tenant_id, job_id) REFERENCES scheduling.jobs (tenant_id, job_id),
        CONSTRAINT appointment_window_ordered CHECK (window_end > window_start),
        CONSTRAINT appointment_status_known
            CHECK (status IN ('scheduled','dispatched','working','done','canceled')),
        CONSTRAINT appointment_confirmation_known CHECK (confirmation IN ('confirmed','unconfirmed'))
    )
    """,
    """
    CREATE INDEX appointments_by_job ON scheduling.appointments (tenant_id, job_id)
    """,
    """
    CREATE TABLE policy.portal_settings (
        tenant_id varchar(64) NOT NULL PRIMARY KEY,
        feature_enabled boolean NOT NULL,
        rules jsonb NOT NULL,
        settings_version bigint NOT NULL,
        changed_by varchar(64) NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE policy.decisions (
        tenant_id varchar(64) NOT NULL,
        request_id varchar(64) NOT NULL,
        message_id uuid NOT NULL,
        appointment_id varchar(64) NOT NULL,
        action varchar(16) NOT NULL,
        outcome varchar(16) NOT NULL,
        reason_code varchar(64),
        reason_text varchar(1000),
        decided_on_version bigint,
        decided_at timestamptz NOT NULL,
        PRIMARY KEY (tenant_id, request_id),
        CONSTRAINT decision_outcome_known CHECK (outcome IN ('approved','rejected'))
    )
    """,
    """
    CREATE TABLE portal.appointments (
        tenant_id varchar(64) NOT NULL,
        appointment_id varchar(64) NOT NULL,
        job_id varchar(64) NOT NULL,
        customer_id varchar(64) NOT NULL,
        project_id varchar(64),
        business_unit varchar(64) NOT NULL,
        job_type varchar(64) NOT NULL,
        window_start timestamptz NOT NULL,
        window_end timestamptz NOT NULL,
        status varchar(16) NOT NULL,
        confirmation varchar(16) NOT NULL,
        version bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, appointment_id)
    )
    """,
    """
    CREATE INDEX portal_appointments_by_customer ON portal.appointments (tenant_id, customer_id)
    """,
    """
    CREATE TABLE portal.jobs (
        tenant_id varchar(64) NOT NULL,
        job_id varchar(64) NOT NULL,
        customer_id varchar(64) NOT NULL,
        status varchar(16) NOT NULL,
        active_appointments integer NOT NULL,
        version bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, job_id)
    )
    """,
    """
    CREATE TABLE portal.requests (
        tenant_id varchar(64) NOT NULL,
        request_id varchar(64) NOT NULL,
        appointment_id varchar(64) NOT NULL,
        requester_id varchar(64),
        action varchar(16) NOT NULL,
        status varchar(16) NOT NULL,
        reason_code varchar(64),
        reason_text varchar(1000),
        requested_at timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, request_id),
        CONSTRAINT request_status_known CHECK (status IN ('pending','rejected','completed','failed'))
    )
    """,
    """
    CREATE TABLE messaging.inbox (
        consumer varchar(64) NOT NULL,
        message_id uuid NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (consumer, message_id)
    )
    """,
    """
    CREATE TABLE messaging.outbox (
        id bigserial PRIMARY KEY,
        message_id uuid NOT NULL UNIQUE,
        producer varchar(64) NOT NULL,
        exchange_role varchar(32) NOT NULL,
        routing_key varchar(128) NOT NULL,
        message_type varchar(64) NOT NULL,
        correlation_id varchar(64) NOT NULL,
        tenant_id varchar(64) NOT NULL,
        headers jsonb NOT NULL,
        body bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        published_at timestamptz
    )
    """,
    """
    CREATE INDEX outbox_unpublished ON messaging.outbox (id) WHERE published_at IS NULL
    """,
    """
    -- Wake outbox relays as soon as a transaction that wrote events commits (NOTIFY is
    -- delivered at commit); relays also poll, so a missed notification only delays.
    CREATE FUNCTION messaging.notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('outbox', '');
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER outbox_notify AFTER INSERT ON messaging.outbox
        FOR EACH STATEMENT EXECUTE FUNCTION messaging.notify_outbox()
    """,
]


def upgrade() -> None:
    # asyncpg runs one statement per execute.
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP SCHEMA IF EXISTS messaging, portal, policy, scheduling CASCADE")
