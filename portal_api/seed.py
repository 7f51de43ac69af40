"""The reference portal's demo data: businesses, customers, jobs, settings and arrival windows.

The four industry stories' businesses, customers, jobs and settings
(apptctl/scenarios.py, without their requests: the visitor makes those by clicking), plus each business
unit's arrival windows in its own time zone so there are times to pick."""

from datetime import UTC, date, datetime, time, timedelta
from uuid import uuid4

from apptctl.scenarios import build_world
from contracts.envelope import Envelope
from contracts.office_v1 import CapacityUpdated, CapacityUpdatedPayload, CapacityWindowSetting

# (business, business unit, IANA time zone): one zone per story, so local times differ visibly.
UNITS = (
    ("sunny-plumbing", "plumbing", "America/Chicago"),
    ("metro-hvac", "commercial-hvac", "America/New_York"),
    ("oak-homes", "construction", "America/Denver"),
    ("skyline-build", "commercial-build", "America/Los_Angeles"),
)
LOCAL_WINDOWS = ((time(8), time(10)), (time(10), time(12)), (time(13), time(15)))
DAYS = 14
PLACES = 3
TENANTS = tuple(business for business, _, _ in UNITS)


def capacity(
    tenant: str, business_unit: str, zone: str, today: date, now: datetime, version: int
) -> CapacityUpdated:
    return CapacityUpdated(
        message_id=uuid4(),
        tenant_id=tenant,
        correlation_id=f"capacity-{business_unit}-{version}",
        occurred_at=now,
        producer="office",
        payload=CapacityUpdatedPayload(
            business_unit=business_unit,
            timezone=zone,
            windows=[
                CapacityWindowSetting(date=today + timedelta(days=d), start=start, end=end, places=PLACES)
                for d in range(1, DAYS + 1)
                for start, end in LOCAL_WINDOWS
            ],
            capacity_version=version,
            changed_by="dispatcher-demo",
        ),
    )


def messages(run_id: str = "demo", *, tenant_suffix: str = "", now: datetime | None = None) -> list[Envelope]:
    """Settings, capacity (with the units' time zones), then the bookings."""
    now = now or datetime.now(UTC)
    world = build_world(run_id, now=now, tenant_suffix=tenant_suffix)
    version = int(now.timestamp() * 1000)
    units = [
        capacity(f"{tenant}{tenant_suffix}", unit, zone, now.date(), now, version)
        for tenant, unit, zone in UNITS
    ]
    return [*world.settings, *units, *world.bookings]
