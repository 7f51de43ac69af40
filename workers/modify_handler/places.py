"""Places in arrival windows: taken, freed and set in the same transaction as the appointment change.

Rows are locked in start order (`lock_places`), so two moves crossing the same windows in opposite
directions wait for each other instead of deadlocking; the rules are the pure ones in `domain`, and
the table's CHECK (booked <= capacity) refuses any write that would overbook behind their back.
A business unit (zone) with no capacity windows at all does not manage capacity: any window goes.

Whether a unit manages capacity, and which appointments hold places, must not depend on the order in
which bookings and capacity arrive: every change of an appointment's place holds a shared advisory lock
on its unit (zone) until commit, and setting places holds it exclusively, then counts the appointments
already in a window that did not hold a place there (booked before the window existed).

The moves below run on `Places` (the three statements they need, as a protocol): PostgreSQL's are the
functions here, reached through `repository.PostgresSchedule`; tests/fakes/schedule_store.py holds places
in memory.
"""

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

import asyncpg

from contracts.common import ArrivalWindow
from workers.modify_handler import domain
from workers.modify_handler.domain import Appointment, Failure, Place


@dataclass(frozen=True)
class ChangedPlace:
    """A window whose places or bookings changed, as saved (for the `capacity.window_changed` event)."""

    business_unit: str
    zone: str
    place: Place
    version: int


class Places(Protocol):
    """The places of a unit (zone), as the moves below take and free them, on one transaction."""

    async def unit_uses_capacity(self, tenant_id: str, business_unit: str, zone: str) -> bool: ...

    async def lock_places(
        self, tenant_id: str, business_unit: str, zone: str, starts: list[datetime]
    ) -> dict[datetime, Place]: ...

    async def save_place(
        self, tenant_id: str, business_unit: str, zone: str, place: Place
    ) -> ChangedPlace: ...


def _place(row) -> Place:
    return Place(
        ArrivalWindow(start=row["starts_at"], end=row["ends_at"]),
        row["places"],
        row["capacity"],
        row["booked"],
    )


_UNIT_LOCK = {
    False: "SELECT pg_advisory_xact_lock_shared(hashtext('capacity:' || $1 || ':' || $2 || ':' || $3))",
    True: "SELECT pg_advisory_xact_lock(hashtext('capacity:' || $1 || ':' || $2 || ':' || $3))",
}
_UNIT_HAS_WINDOWS = """
SELECT EXISTS (SELECT 1 FROM scheduling.capacity_windows
                WHERE tenant_id = $1 AND business_unit = $2 AND zone = $3)
"""
_LOCK_PLACES = """
SELECT starts_at, ends_at, places, capacity, booked FROM scheduling.capacity_windows
 WHERE tenant_id = $1 AND business_unit = $2 AND zone = $3 AND starts_at = ANY($4::timestamptz[])
 ORDER BY starts_at
   FOR UPDATE
"""
_SAVE_PLACE = """
UPDATE scheduling.capacity_windows
   SET places = $5, capacity = $6, booked = $7, version = version + 1, updated_at = now()
 WHERE tenant_id = $1 AND business_unit = $2 AND zone = $3 AND starts_at = $4
RETURNING version
"""


async def guard_unit(
    conn: asyncpg.Connection, tenant_id: str, business_unit: str, zone: str, *, exclusive: bool = False
) -> None:
    """Until commit: shared by every change of a place in the unit (zone), exclusive while its places are
    set, so a booking never decides "no capacity here" while windows are being created unseen."""
    await conn.execute(_UNIT_LOCK[exclusive], tenant_id, business_unit, zone)


async def unit_uses_capacity(conn: asyncpg.Connection, tenant_id: str, business_unit: str, zone: str) -> bool:
    await guard_unit(conn, tenant_id, business_unit, zone)
    return bool(await conn.fetchval(_UNIT_HAS_WINDOWS, tenant_id, business_unit, zone))


async def lock_places(
    conn: asyncpg.Connection, tenant_id: str, business_unit: str, zone: str, starts: list[datetime]
) -> dict[datetime, Place]:
    await guard_unit(conn, tenant_id, business_unit, zone)
    rows = await conn.fetch(_LOCK_PLACES, tenant_id, business_unit, zone, sorted(set(starts)))
    return {r["starts_at"]: _place(r) for r in rows}


async def save_place(
    conn: asyncpg.Connection, tenant_id: str, business_unit: str, zone: str, place: Place
) -> ChangedPlace:
    version = await conn.fetchval(
        _SAVE_PLACE,
        tenant_id,
        business_unit,
        zone,
        place.window.start,
        place.places,
        place.capacity,
        place.booked,
    )
    if version is None:  # as SQLAlchemy's scalar_one() did: the window was locked, so it is there
        raise LookupError(f"capacity window {business_unit}/{zone}/{place.window.start} is gone")
    return ChangedPlace(business_unit, zone, place, version)


async def _save(places: Places, tenant_id: str, plan: domain.PlacePlan) -> list[ChangedPlace]:
    return [await places.save_place(tenant_id, unit, zone, place) for unit, zone, place in plan.updates]


async def move_for_customer(
    places: Places, current: Appointment, moved: Appointment
) -> tuple[Appointment, list[ChangedPlace]] | Failure:
    """A customer's reschedule, as `domain.plan_move` plans it on the locked places. Fails, changing
    nothing, when the new window has no free place."""
    tenant, unit, zone = current.tenant_id, current.business_unit, current.zone
    managed = await places.unit_uses_capacity(tenant, unit, zone)
    starts = domain.starts_to_lock(current, moved, managed=managed)
    locked = await places.lock_places(tenant, unit, zone, starts) if starts else {}
    plan = domain.plan_move(current, moved, managed=managed, places=locked)
    if isinstance(plan, Failure):
        return plan
    return replace(moved, holds_place=plan.holds_place), await _save(places, tenant, plan)


async def free_place(places: Places, appointment: Appointment) -> list[ChangedPlace]:
    """Give back the place an appointment held (a cancel)."""
    if not appointment.holds_place:
        return []
    tenant, unit, zone = appointment.tenant_id, appointment.business_unit, appointment.zone
    locked = await places.lock_places(tenant, unit, zone, [appointment.window.start])
    return await _save(places, tenant, domain.plan_free(appointment, locked.get(appointment.window.start)))


async def follow_office_record(
    places: Places, previous: Appointment | None, recorded: Appointment
) -> tuple[bool, list[ChangedPlace]]:
    """Apply `domain.plan_office_record` to the places involved. Returns whether the appointment now
    holds a place, and the windows that changed."""
    tenant = recorded.tenant_id
    old, new = domain.office_place_keys(previous, recorded)
    locked: dict[domain.PlaceKey, Place] = {}
    # Lock every window involved in one fixed order (unit, zone, start) before changing any.
    for unit, zone, start in domain.office_places_to_lock(previous, recorded):
        for found_start, place in (await places.lock_places(tenant, unit, zone, [start])).items():
            locked[(unit, zone, found_start)] = place
    plan = domain.plan_office_record(old, new, locked, recorded)
    return plan.holds_place, await _save(places, tenant, plan)


# New windows are created; the others updated unless this unit's capacity was already set by a newer
# message. Places below the bookings keep the bookings (capacity = greatest(places, booked)).
_SET_PLACES = """
INSERT INTO scheduling.capacity_windows AS w (tenant_id, business_unit, zone, starts_at, ends_at, places,
                                              capacity, capacity_version)
SELECT $1, $2, $3, s, e, p, p, $7 FROM unnest($4::timestamptz[], $5::timestamptz[], $6::int[]) AS u(s, e, p)
ON CONFLICT (tenant_id, business_unit, zone, starts_at) DO UPDATE
   SET places = EXCLUDED.places, capacity = greatest(EXCLUDED.places, w.booked), ends_at = EXCLUDED.ends_at,
       capacity_version = EXCLUDED.capacity_version, version = w.version + 1, updated_at = now()
 WHERE w.capacity_version < EXCLUDED.capacity_version
RETURNING starts_at, ends_at, places, capacity, booked, version
"""


async def set_places(
    conn: asyncpg.Connection,
    tenant_id: str,
    business_unit: str,
    zone: str,
    settings: list[tuple[ArrivalWindow, int]],
    capacity_version: int,
) -> list[ChangedPlace]:
    """The office set the places of some windows: create the new ones, update the others unless this
    unit's capacity was already set by a newer message. Places below the bookings keep the bookings
    (nobody loses an appointment); customers see no free place until enough are freed."""
    if not settings:
        return []
    await guard_unit(conn, tenant_id, business_unit, zone, exclusive=True)
    ordered = sorted(settings, key=lambda item: item[0].start)
    rows = await conn.fetch(
        _SET_PLACES,
        tenant_id,
        business_unit,
        zone,
        [window.start for window, _ in ordered],
        [window.end for window, _ in ordered],
        [places for _, places in ordered],
        capacity_version,
    )
    found = {r["starts_at"]: _place(r) for r in rows}
    versions = {r["starts_at"]: r["version"] for r in rows}
    for start, count in (await _count_earlier_bookings(conn, tenant_id, business_unit, zone, found)).items():
        place = found[start]
        booked = place.booked + count
        found[start] = replace(place, booked=booked, capacity=max(place.places, booked))
        versions[start] = (await save_place(conn, tenant_id, business_unit, zone, found[start])).version
    return [ChangedPlace(business_unit, zone, found[start], versions[start]) for start in sorted(found)]


_COUNT_EARLIER_BOOKINGS = """
UPDATE scheduling.appointments SET holds_place = true
 WHERE tenant_id = $1 AND business_unit = $2 AND zone = $3 AND NOT holds_place AND status <> 'canceled'
   AND (window_start, window_end) IN (SELECT * FROM unnest($4::timestamptz[], $5::timestamptz[]))
RETURNING window_start
"""


async def _count_earlier_bookings(
    conn: asyncpg.Connection, tenant_id: str, business_unit: str, zone: str, found: dict[datetime, Place]
) -> dict[datetime, int]:
    """Appointments in exactly one of these windows that hold no place (booked before the window
    existed, or before its end was set as it is now) now hold one: how many per window start."""
    if not found:
        return {}
    starts = [place.window.start for place in found.values()]
    ends = [place.window.end for place in found.values()]
    rows = await conn.fetch(_COUNT_EARLIER_BOOKINGS, tenant_id, business_unit, zone, starts, ends)
    counts: dict[datetime, int] = {}
    for (start,) in rows:
        counts[start] = counts.get(start, 0) + 1
    return counts
