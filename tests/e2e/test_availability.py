"""Availability through the real workers: the office sets places, the portal lists the times a customer
may pick, a taken place disappears from that list, and a pick that lost the race fails with its reason."""

from datetime import UTC, datetime, timedelta

import pytest

from apptctl import readstore
from apptctl.scenario_runner import publish_all, wait_until
from contracts.common import ArrivalWindow
from tests import factories as f
from tests.e2e.test_policy_engine import ALLOW, World, everything

DAY = (datetime.now(UTC) + timedelta(days=4)).date()


def at(hour: int, day_offset: int = 0) -> ArrivalWindow:
    start = datetime.combine(DAY + timedelta(days=day_offset), datetime.min.time(), tzinfo=UTC) + timedelta(
        hours=hour
    )
    return ArrivalWindow(start=start, end=start + timedelta(hours=2))


@pytest.fixture
def world(workers, broker, engine) -> World:
    return World(broker, engine)


async def set_places(world: World, windows: list[tuple[ArrivalWindow, int]], version: int = 1) -> None:
    message = f.capacity_updated(
        tenant=world.tenant,
        windows=[
            {"date": w.start.date(), "start": w.start.time(), "end": w.end.time(), "places": n}
            for w, n in windows
        ],
        capacity_version=version,
        change_id=f"cap-{version}",
    )
    await publish_all(world.broker, [message])


async def pickable(world: World, appointment_id: str, accept, within_s: float = 30):
    async def check():
        found = await readstore.pickable_windows(world.engine, world.tenant, appointment_id)
        return found if accept([w.starts_at for w in found]) else None

    result = await wait_until(check, within_s)
    assert result is not None, "the pickable windows never matched"
    return [w.starts_at for w in result]


async def test_the_portal_lists_free_times_and_a_taken_place_disappears(world: World):
    await world.settings({"settings": everything(ALLOW)})
    await set_places(world, [(at(8), 1), (at(10), 1), (at(12), 0), (at(14), 2)])
    await world.book("apt-1", window=at(8))
    await world.book("apt-2", window=at(14))
    # apt-1 may pick 10:00 and 14:00 (12:00 has no place; 08:00 is its own).
    assert await pickable(world, "apt-1", lambda s: s == [at(10).start, at(14).start])

    _, moved = await world.ask("apt-2", f.reschedule(at(10)))
    assert moved.status == "completed"
    # 10:00 is taken now, and apt-2 freed its place at 14:00 (which had one left anyway).
    assert await pickable(world, "apt-1", lambda s: s == [at(14).start])

    _, late = await world.ask("apt-1", f.reschedule(at(10)))
    assert (late.status, late.reason_code) == ("failed", "time_no_longer_available")
    assert "no longer available" in late.reason_text


async def test_lead_time_and_horizon_shape_the_list(world: World):
    soon = ArrivalWindow(
        start=datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=3),
        end=datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=5),
    )
    await world.settings({"settings": everything(ALLOW, min_lead_hours=24, max_horizon_days=10)})
    far = at(8, day_offset=20)
    await set_places(world, [(at(8), 1), (far, 1)])
    if soon.start.date() == soon.end.date():
        await set_places(world, [(soon, 1)], version=2)
    await world.book("apt-1", window=at(10))
    assert await pickable(world, "apt-1", lambda s: s == [at(8).start])


async def test_nothing_is_pickable_while_a_reschedule_is_not_offered(world: World):
    await set_places(world, [(at(8), 3)])
    await world.book("apt-1", window=at(10))
    offer = await wait_until(lambda: readstore.offers(world.engine, world.tenant, ["apt-1"]), 15)
    assert offer and not offer["apt-1"].reschedule_offered
    assert await readstore.pickable_windows(world.engine, world.tenant, "apt-1") == []
