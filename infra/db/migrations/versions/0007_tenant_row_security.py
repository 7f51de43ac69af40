"""Row-level security: a worker's transaction sees and writes only the tenant of the message it handles.

The second wall behind the gate's ownership rules (docs/security.md): every table that holds a tenant's
data in `scheduling`, `policy` and `portal` gets a policy comparing `tenant_id` with the transaction's
`appt.tenant_id` setting, which the runtime's unit of work sets with BEGIN from the message's tenant.
A transaction that set none sees no rows and can write none. The policies bind the per-worker roles
(`apptctl security apply`); the tables' owner (who runs migrations, the demo and the tests' set-up)
and superusers are not bound, and the auditor role is created with BYPASSRLS (it reads every tenant).
`messaging.*` stays outside: the outbox relay publishes every tenant's events.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TENANT_TABLES = (
    "scheduling.jobs",
    "scheduling.appointments",
    "scheduling.projects",
    "scheduling.project_contacts",
    "scheduling.capacity_windows",
    "policy.settings_layers",
    "policy.settings_history",
    "policy.decisions",
    "policy.offers",
    "portal.appointments",
    "portal.jobs",
    "portal.requests",
    "portal.appointment_offers",
    "portal.available_windows",
    "portal.audit_trail",
)
SAME_TENANT = "tenant_id = current_setting('appt.tenant_id', true)"


def upgrade() -> None:
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY tenant_wall ON {table} USING ({SAME_TENANT}) WITH CHECK ({SAME_TENANT})")


def downgrade() -> None:
    for table in TENANT_TABLES:
        op.execute(f"DROP POLICY IF EXISTS tenant_wall ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
