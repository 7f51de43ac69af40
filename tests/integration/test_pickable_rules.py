"""The portal's `portal.pickable_windows` view agrees with the new-window rules
(workers/policy_gate/new_window.py) on generated appointments, pick rules and windows, on a real database."""

import json
from datetime import datetime, timedelta

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from contracts.common import ArrivalWindow
from tests.conftest import unique_tenant
from workers.policy_gate.new_window import WindowRules, refusal

HOUR = timedelta(hours=1)
UNIT, ZONE = "bu-1", "north"

# Offsets from the transaction's now() in quarter hours (-2 days .. +12 days), lengths up to 4 hours.
offsets = st.integers(-8 * 24, 12 * 24 * 4)
lengths = st.integers(1, 16)
window = st.tuples(offsets, lengths)
case = st.fixed_dictionaries(
    {
        "lead_hours": st.integers(0, 72),
        "horizon_days": st.integers(0, 10),
        "not_before": st.none() | offsets,
        "not_after": st.none() | offsets,
        "current": window,
        # a free window at the current start: the same window, or one that ends elsewhere
        "at_current": st.none() | st.integers(1, 16),
        "windows": st.lists(st.tuples(offsets, lengths, st.integers(0, 2), st.booleans()), max_size=12),
        "reschedule_offered": st.booleans(),
    }
)


def _at(now: datetime, quarters: int) -> datetime:
    return now + quarters * HOUR / 4


async def _seed(conn, tenant: str, now: datetime, c: dict) -> tuple[WindowRules, ArrivalWindow, list[tuple]]:
    rules = WindowRules(
        min_lead_hours=c["lead_hours"],
        max_horizon_days=c["horizon_days"],
        not_before=None if c["not_before"] is None else _at(now, c["not_before"]),
        not_after=None if c["not_after"] is None else _at(now, c["not_after"]),
    )
    start, length = c["current"]
    current = ArrivalWindow(start=_at(now, start), end=_at(now, start + length))
    windows: dict[tuple[datetime, str], tuple] = {}
    for offset, size, free, other_zone in c["windows"]:
        zone = "south" if other_zone else ZONE
        windows[(_at(now, offset), zone)] = (_at(now, offset), _at(now, offset + size), free, zone)
    # Windows on every boundary of the rules and a quarter either side, where `<` and `<=` differ.
    edges = [4 * c["lead_hours"], 4 * 24 * c["horizon_days"], 0]
    edges += [] if c["not_before"] is None else [c["not_before"]]
    edges += [] if c["not_after"] is None else [c["not_after"] - 4]
    for edge in edges:
        for offset in (edge - 1, edge, edge + 1):
            windows.setdefault((_at(now, offset), ZONE), (_at(now, offset), _at(now, offset + 4), 1, ZONE))
    if c["at_current"] is not None:
        windows[(current.start, ZONE)] = (current.start, _at(now, start + c["at_current"]), 1, ZONE)
    segment = {
        "valid_from": None,
        "valid_until": None,
        "reschedule": {"offered": c["reschedule_offered"], "needs_approval": False},
        "cancel": {"offered": True, "needs_approval": False},
    }
    await conn.execute(
        text(
            "INSERT INTO portal.appointment_offers (tenant_id, appointment_id, job_id, customer_id, "
            "offer_version, appointment_version, segments, business_unit, zone, min_lead_hours, "
            "max_horizon_days, not_before, not_after) VALUES (:tenant, 'apt-1', 'job-1', 'cus-1', 1, 1, "
            "CAST(:segments AS jsonb), :unit, :zone, :lead, :horizon, :not_before, :not_after)"
        ),
        dict(
            tenant=tenant,
            segments=json.dumps([segment]),
            unit=UNIT,
            zone=ZONE,
            lead=rules.min_lead_hours,
            horizon=rules.max_horizon_days,
            not_before=rules.not_before,
            not_after=rules.not_after,
        ),
    )
    await conn.execute(
        text(
            "INSERT INTO portal.appointments (tenant_id, appointment_id, job_id, customer_id, business_unit, "
            "job_type, window_start, window_end, status, confirmation, version, updated_at) VALUES "
            "(:tenant, 'apt-1', 'job-1', 'cus-1', :unit, 'install', :start, :end, 'scheduled', "
            "'unconfirmed', 1, now())"
        ),
        dict(tenant=tenant, unit=UNIT, start=current.start, end=current.end),
    )
    for starts_at, ends_at, free, zone in windows.values():
        await conn.execute(
            text(
                "INSERT INTO portal.available_windows (tenant_id, business_unit, zone, starts_at, ends_at, "
                "free, version, updated_at) "
                "VALUES (:tenant, :unit, :zone, :starts_at, :ends_at, :free, 1, now())"
            ),
            dict(tenant=tenant, unit=UNIT, zone=zone, starts_at=starts_at, ends_at=ends_at, free=free),
        )
    return rules, current, list(windows.values())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c=case)
@example(  # a free window at the current start that ends elsewhere is a different window: pickable
    c={
        "lead_hours": 0,
        "horizon_days": 10,
        "not_before": None,
        "not_after": None,
        "current": (40, 8),
        "at_current": 4,
        "windows": [],
        "reschedule_offered": True,
    }
)
@example(  # the current window itself is never pickable
    c={
        "lead_hours": 0,
        "horizon_days": 10,
        "not_before": None,
        "not_after": None,
        "current": (40, 8),
        "at_current": 8,
        "windows": [],
        "reschedule_offered": True,
    }
)
@example(  # the project's dates inside the lead time and horizon: their edges decide
    c={
        "lead_hours": 1,
        "horizon_days": 10,
        "not_before": 40,
        "not_after": 400,
        "current": (200, 8),
        "at_current": None,
        "windows": [],
        "reschedule_offered": True,
    }
)
async def test_the_pickable_view_lists_exactly_the_windows_the_rules_accept(engine, c):
    tenant = unique_tenant("pick")
    async with engine.connect() as conn:
        transaction = await conn.begin()
        try:
            now = (await conn.execute(text("SELECT now()"))).scalar_one()
            rules, current, windows = await _seed(conn, tenant, now, c)
            listed = {
                (row.starts_at, row.ends_at)
                for row in await conn.execute(
                    text(
                        "SELECT starts_at, ends_at FROM portal.pickable_windows "
                        "WHERE tenant_id = :tenant AND appointment_id = 'apt-1'"
                    ),
                    dict(tenant=tenant),
                )
            }
        finally:
            await transaction.rollback()
    expected = {
        (starts_at, ends_at)
        for starts_at, ends_at, free, zone in windows
        if c["reschedule_offered"]
        and zone == ZONE
        and free > 0
        and refusal(rules, ArrivalWindow(start=starts_at, end=ends_at), current, now) is None
    }
    assert listed == expected
