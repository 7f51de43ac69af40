"""Capacity: arrival windows with places per business unit (and zone), held by appointments; the
portal's copy of free places.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

STATEMENTS = [
    # `capacity` is what the window holds now: the office's `places`, or more when the office booked
    # beyond them. A customer only takes a place while booked < places, so the CHECK refuses any
    # statement that would overbook without the office's say (it must raise capacity to do so).
    """
    CREATE TABLE scheduling.capacity_windows (
        tenant_id varchar(64) NOT NULL,
        business_unit varchar(64) NOT NULL,
        zone varchar(64) NOT NULL DEFAULT '',
        starts_at timestamptz NOT NULL,
        ends_at timestamptz NOT NULL,
        places integer NOT NULL,
        capacity integer NOT NULL,
        booked integer NOT NULL DEFAULT 0,
        version bigint NOT NULL DEFAULT 1,
        capacity_version bigint NOT NULL DEFAULT 0,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, business_unit, zone, starts_at),
        CONSTRAINT capacity_window_ordered CHECK (ends_at > starts_at),
        CONSTRAINT capacity_places_not_negative CHECK (places >= 0),
        CONSTRAINT capacity_never_overbooked CHECK (booked >= 0 AND booked <= capacity),
        CONSTRAINT capacity_covers_places CHECK (capacity >= places)
    )
    """,
    """
    ALTER TABLE scheduling.appointments
        ADD COLUMN zone varchar(64) NOT NULL DEFAULT '',
        ADD COLUMN holds_place boolean NOT NULL DEFAULT false
    """,
    """
    CREATE TABLE portal.available_windows (
        tenant_id varchar(64) NOT NULL,
        business_unit varchar(64) NOT NULL,
        zone varchar(64) NOT NULL DEFAULT '',
        starts_at timestamptz NOT NULL,
        ends_at timestamptz NOT NULL,
        free integer NOT NULL,
        version bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, business_unit, zone, starts_at)
    )
    """,
    # What a picked window must satisfy, per appointment (from the gate's offer).
    """
    ALTER TABLE policy.offers ADD COLUMN pick jsonb
    """,
    """
    ALTER TABLE portal.appointment_offers
        ADD COLUMN business_unit varchar(64),
        ADD COLUMN zone varchar(64) NOT NULL DEFAULT '',
        ADD COLUMN min_lead_hours integer,
        ADD COLUMN max_horizon_days integer,
        ADD COLUMN not_before timestamptz,
        ADD COLUMN not_after timestamptz
    """,
    # The portal's list of times a customer may pick now: free places in the appointment's unit (zone),
    # after the lead time, within the horizon and the project's dates, not its current window, and only
    # while a reschedule is offered at all.
    """
    CREATE VIEW portal.pickable_windows AS
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
      AND (a.window_start IS NULL OR w.starts_at <> a.window_start)
    """,
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP VIEW portal.pickable_windows")
    op.execute(
        "ALTER TABLE portal.appointment_offers DROP COLUMN business_unit, DROP COLUMN zone, "
        "DROP COLUMN min_lead_hours, DROP COLUMN max_horizon_days, "
        "DROP COLUMN not_before, DROP COLUMN not_after"
    )
    op.execute("ALTER TABLE policy.offers DROP COLUMN pick")
    op.execute("DROP TABLE portal.available_windows")
    op.execute("ALTER TABLE scheduling.appointments DROP COLUMN holds_place, DROP COLUMN zone")
    op.execute("DROP TABLE scheduling.capacity_windows")
