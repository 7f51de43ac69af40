"""Tenant-local wall-clock times to UTC instants, pure: the office thinks in local time, we store UTC.

A wall-clock time that does not exist (clocks go forward through it) is refused with a sentence that
says so; one that happens twice (clocks go back) means its first occurrence, as most schedulers read it.
"""

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones


def zone(name: str) -> ZoneInfo:
    """The IANA time zone of that name; ValueError for anything else (including "local" or offsets)."""
    if name not in _known_zones():
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as 'America/Chicago'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:  # pragma: no cover - listed but unreadable
        raise ValueError(f"unknown time zone {name!r}") from exc


_ZONES: frozenset[str] | None = None


def _known_zones() -> frozenset[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(available_timezones())
    return _ZONES


def to_utc(day: date, clock: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of a wall-clock time on a day in a zone."""
    local = datetime.combine(day, clock, tzinfo=tz)  # fold=0: the first of two occurrences
    instant = local.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) != local.replace(tzinfo=None):
        raise ValueError(
            f"{day.isoformat()} {clock.strftime('%H:%M')} does not exist in {tz.key} "
            "(the clocks go forward through it)"
        )
    return instant
