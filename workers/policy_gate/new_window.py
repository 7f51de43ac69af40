"""The new-window rules, pure: which start a rescheduled window may have (the one home of these rules).

The gate's decision (`rules.decide`), the offer's pick rules (`offering.pick_rules`) and the portal's
`portal.pickable_windows` view all follow these; tests/integration/test_pickable_rules.py proves the
view agrees with `refusal` on generated cases.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from contracts.common import ArrivalWindow

# A new window starts strictly after now, so the earliest start there is lies 1 µs ahead.
SMALLEST_LEAD = timedelta(microseconds=1)


class Refusal(StrEnum):
    """Why a new window is refused, in the order the rules are checked."""

    IN_PAST = "in_past"
    SAME_WINDOW = "same_window"
    TOO_SOON = "too_soon"
    TOO_FAR = "too_far"
    OUTSIDE_PROJECT_DATES = "outside_project_dates"


@dataclass(frozen=True)
class WindowRules:
    """What a new window must satisfy for one appointment: lead time, horizon and the project's dates."""

    min_lead_hours: int
    max_horizon_days: int
    not_before: datetime | None = None
    not_after: datetime | None = None

    @property
    def lead(self) -> timedelta:
        """How far after now a new window starts at the earliest (the lead time, at least 1 µs)."""
        return max(timedelta(hours=self.min_lead_hours), SMALLEST_LEAD)

    @property
    def horizon(self) -> timedelta:
        """How far after now a new window starts at the latest."""
        return timedelta(days=self.max_horizon_days)

    def earliest_start(self, now: datetime) -> datetime:
        return now + self.lead

    def latest_start(self, now: datetime) -> datetime:
        return now + self.horizon


def refusal(
    rules: WindowRules, new: ArrivalWindow, current: ArrivalWindow | None, now: datetime
) -> Refusal | None:
    """Why `new` may not replace `current` at `now` (None: it may)."""
    if new.start <= now:
        return Refusal.IN_PAST
    if current is not None and new == current:
        return Refusal.SAME_WINDOW
    if new.start < now + timedelta(hours=rules.min_lead_hours):
        return Refusal.TOO_SOON
    if new.start > rules.latest_start(now):
        return Refusal.TOO_FAR
    if (rules.not_before is not None and new.start < rules.not_before) or (
        rules.not_after is not None and new.end > rules.not_after
    ):
        return Refusal.OUTSIDE_PROJECT_DATES
    return None


def no_start_left(rules: WindowRules, now: datetime) -> Refusal | None:
    """Why no new window at all can pass at `now` (None: some start still can), so the portal does not
    offer a reschedule that every pick would fail."""
    earliest = rules.earliest_start(now)
    if rules.not_before is not None:
        earliest = max(earliest, rules.not_before)
    if rules.not_after is not None and earliest >= rules.not_after:
        return Refusal.OUTSIDE_PROJECT_DATES
    if earliest > rules.latest_start(now):
        return Refusal.TOO_FAR
    return None
