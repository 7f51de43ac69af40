"""Places in arrival windows: taken, freed and set in the same transaction as the appointment change.

Rows are locked in start order (`lock_places`), so two moves crossing the same windows in opposite
directions wait for each other instead of deadlocking; the rules are the pure ones in `domain`, and
the table's CHECK (booked <= capacity) refuses any write that would overbook behind their back.
A business unit (zone) with no capacity windows at all does not manage capacity: any window goes.

Whether a unit manages capacity, and which appointments hold places, must not depend on the order in
which bookings and capacity arrive: every change of an appointment's place holds a shared advisory lock
on its unit (zone) until commit, and setting places holds it exclusively, then counts the appointments
already in a window that did not hold a place there (booked before the window existed).
"""

from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import and_, exists, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.common import ArrivalWindow
from infra.db.tables import appointments
from infra.db.tables import capacity_windows as windows
from workers.modify_handler import domain
from workers.modify_handler.domain import Appointment, Failure, Place


@dataclass(frozen=True)
class ChangedPlace:
    """A window whose places or bookings changed, as saved (for the `capacity.window_changed` event)."""

    business_unit: str
    zone: str
    place: Place
    version: int


def _key(tenant_id: str, business_unit: str, zone: str):
    return and_(
        windows.c.tenant_id == tenant_id, windows.c.business_unit == business_unit, windows.c.zone == zone
    )


_UNIT_KEY = "hashtext('capacity:' || :tenant || ':' || :unit || ':' || :zone)"
_UNIT_LOCK = {
    False: text(f"SELECT pg_advisory_xact_lock_shared({_UNIT_KEY})"),
    True: text(f"SELECT pg_advisory_xact_lock({_UNIT_KEY})"),
}


async def guard_unit(
    conn: AsyncConnection, tenant_id: str, business_unit: str, zone: str, *, exclusive: bool = False
) -> None:
    """Until commit: shared by every change of a place in the unit (zone), exclusive while its places are
    set, so a booking never decides "no capacity here" while windows are being created unseen."""
    await conn.execute(_UNIT_LOCK[exclusive], dict(tenant=tenant_id, unit=business_unit, zone=zone))


async def unit_uses_capacity(conn: AsyncConnection, tenant_id: str, business_unit: str, zone: str) -> bool:
    await guard_unit(conn, tenant_id, business_unit, zone)
    return bool((await conn.execute(select(exists().where(_key(tenant_id, business_unit, zone))))).scalar())


async def lock_places(
    conn: AsyncConnection, tenant_id: str, business_unit: str, zone: str, starts: list[datetime]
) -> dict[datetime, Place]:
    await guard_unit(conn, tenant_id, business_unit, zone)
    rows = await conn.execute(
        select(windows)
        .where(_key(tenant_id, business_unit, zone), windows.c.starts_at.in_(sorted(set(starts))))
        .order_by(windows.c.starts_at)
        .with_for_update()
    )
    return {
        r.starts_at: Place(ArrivalWindow(start=r.starts_at, end=r.ends_at), r.places, r.capacity, r.booked)
        for r in rows
    }


async def save_place(
    conn: AsyncConnection, tenant_id: str, business_unit: str, zone: str, place: Place
) -> ChangedPlace:
    version = (
        await conn.execute(
            update(windows)
            .where(_key(tenant_id, business_unit, zone), windows.c.starts_at == place.window.start)
            .values(
                places=place.places,
                capacity=place.capacity,
                booked=place.booked,
                version=windows.c.version + 1,
                updated_at=func.now(),
            )
            .returning(windows.c.version)
        )
    ).scalar_one()
    return ChangedPlace(business_unit, zone, place, version)


async def _save(conn: AsyncConnection, tenant_id: str, plan: domain.PlacePlan) -> list[ChangedPlace]:
    return [await save_place(conn, tenant_id, unit, zone, place) for unit, zone, place in plan.updates]


async def move_for_customer(
    conn: AsyncConnection, current: Appointment, moved: Appointment
) -> tuple[Appointment, list[ChangedPlace]] | Failure:
    """A customer's reschedule, as `domain.plan_move` plans it on the locked places. Fails, changing
    nothing, when the new window has no free place."""
    tenant, unit, zone = current.tenant_id, current.business_unit, current.zone
    managed = await unit_uses_capacity(conn, tenant, unit, zone)
    starts = domain.starts_to_lock(current, moved, managed=managed)
    locked = await lock_places(conn, tenant, unit, zone, starts) if starts else {}
    plan = domain.plan_move(current, moved, managed=managed, places=locked)
    if isinstance(plan, Failure):
        return plan
    return replace(moved, holds_place=plan.holds_place), await _save(conn, tenant, plan)


async def free_place(conn: AsyncConnection, appointment: Appointment) -> list[ChangedPlace]:
    """Give back the place an appointment held (a cancel)."""
    if not appointment.holds_place:
        return []
    tenant, unit, zone = appointment.tenant_id, appointment.business_unit, appointment.zone
    places = await lock_places(conn, tenant, unit, zone, [appointment.window.start])
    return await _save(conn, tenant, domain.plan_free(appointment, places.get(appointment.window.start)))


async def follow_office_record(
    conn: AsyncConnection, previous: Appointment | None, recorded: Appointment
) -> tuple[bool, list[ChangedPlace]]:
    """Apply `domain.plan_office_record` to the places involved. Returns whether the appointment now
    holds a place, and the windows that changed."""
    tenant = recorded.tenant_id
    old, new = domain.office_place_keys(previous, recorded)
    locked: dict[domain.PlaceKey, Place] = {}
    if old != new:
        # Lock every window involved in one fixed order (unit, zone, start) before changing any.
        for unit, zone, start in sorted(k for k in (old, new) if k is not None):
            for found_start, place in (await lock_places(conn, tenant, unit, zone, [start])).items():
                locked[(unit, zone, found_start)] = place
    plan = domain.plan_office_record(old, new, locked, recorded)
    return plan.holds_place, await _save(conn, tenant, plan)


async def set_places(
    conn: AsyncConnection,
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
    statement = insert(windows).values(
        [
            dict(
                tenant_id=tenant_id,
                business_unit=business_unit,
                zone=zone,
                starts_at=window.start,
                ends_at=window.end,
                places=places,
                capacity=places,
                capacity_version=capacity_version,
            )
            for window, places in sorted(settings, key=lambda item: item[0].start)
        ]
    )
    ex = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=[windows.c.tenant_id, windows.c.business_unit, windows.c.zone, windows.c.starts_at],
        set_={
            "places": ex.places,
            "capacity": func.greatest(ex.places, windows.c.booked),
            "ends_at": ex.ends_at,
            "capacity_version": ex.capacity_version,
            "version": windows.c.version + 1,
            "updated_at": func.now(),
        },
        where=windows.c.capacity_version < ex.capacity_version,
    ).returning(windows)
    rows = list(await conn.execute(statement))
    found = {
        r.starts_at: Place(ArrivalWindow(start=r.starts_at, end=r.ends_at), r.places, r.capacity, r.booked)
        for r in rows
    }
    versions = {r.starts_at: r.version for r in rows}
    for start, count in (await _count_earlier_bookings(conn, tenant_id, business_unit, zone, found)).items():
        place = found[start]
        booked = place.booked + count
        found[start] = replace(place, booked=booked, capacity=max(place.places, booked))
        versions[start] = (await save_place(conn, tenant_id, business_unit, zone, found[start])).version
    return [ChangedPlace(business_unit, zone, found[start], versions[start]) for start in sorted(found)]


async def _count_earlier_bookings(
    conn: AsyncConnection, tenant_id: str, business_unit: str, zone: str, found: dict[datetime, Place]
) -> dict[datetime, int]:
    """Appointments in exactly one of these windows that hold no place (booked before the window
    existed, or before its end was set as it is now) now hold one: how many per window start."""
    if not found:
        return {}
    rows = await conn.execute(
        update(appointments)
        .where(
            appointments.c.tenant_id == tenant_id,
            appointments.c.business_unit == business_unit,
            appointments.c.zone == zone,
            ~appointments.c.holds_place,
            appointments.c.status != "canceled",
            tuple_(appointments.c.window_start, appointments.c.window_end).in_(
                [(place.window.start, place.window.end) for place in found.values()]
            ),
        )
        .values(holds_place=True)
        .returning(appointments.c.window_start)
    )
    counts: dict[datetime, int] = {}
    for (start,) in rows:
        counts[start] = counts.get(start, 0) + 1
    return counts
