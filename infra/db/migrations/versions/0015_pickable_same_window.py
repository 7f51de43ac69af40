"""`portal.pickable_windows` hides only the appointment's current window (same start and end), as the
gate's new-window rules (workers/policy_gate/new_window.py) do; it used to hide every window at the
current start. tests/integration/test_pickable_rules.py proves the view and the rules agree.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# CREATE OR REPLACE keeps the view's grants; its options are replaced, so security_invoker is restated.
VIEW = """
CREATE OR REPLACE VIEW portal.pickable_windows WITH (security_invoker = true) AS
SELECT o.tenant_id, o.appointment_id, o.customer_id, w.starts_at, w.ends_at, w.free
FROM portal.appointment_offers o
JOIN portal.offers_now n ON n.tenant_id = o.tenant_id AND n.appointment_id = o.appointment_id
JOIN portal.available_windows w
  ON w.tenant_id = o.tenant_id AND w.business_unit = o.business_unit AND w.zone = o.zone
LEFT JOIN portal.appointments a ON a.tenant_id = o.tenant_id AND a.appointment_id = o.appointment_id
WHERE n.reschedule_offered
  AND w.free > 0
  AND w.starts_at > now()
  AND w.starts_at >= now() + make_interval(hours => o.min_lead_hours)
  AND w.starts_at <= now() + make_interval(days => o.max_horizon_days)
  AND (o.not_before IS NULL OR w.starts_at >= o.not_before)
  AND (o.not_after IS NULL OR w.ends_at <= o.not_after)
  AND {current}
"""
SAME_WINDOW = "(a.window_start IS NULL OR (w.starts_at, w.ends_at) <> (a.window_start, a.window_end))"
SAME_START = "(a.window_start IS NULL OR w.starts_at <> a.window_start)"


def upgrade() -> None:
    op.execute(VIEW.format(current=SAME_WINDOW))


def downgrade() -> None:
    op.execute(VIEW.format(current=SAME_START))
