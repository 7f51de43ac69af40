"""Completions around a node loss: the throughput dip and the longest gap (pure: times in, figures out)."""

from bisect import bisect_left
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True)
class Around:
    """What a fault at `at` did to completions: requests finished per second in the `rate_window_s`
    before and after it, and the longest time without any completion from `gap_before_s` before the
    fault to `gap_after_s` after it."""

    label: str
    at: float
    before_per_s: float
    after_per_s: float
    longest_gap_s: float
    gap_starts_after_fault_s: float  # where that gap starts, relative to the fault (negative: before it)

    @property
    def dip(self) -> float:
        """How much lower the rate was after the fault than before it: 0.25 = a quarter lower."""
        if self.before_per_s <= 0:
            return 0.0
        return max(0.0, 1.0 - self.after_per_s / self.before_per_s)


def around(
    label: str,
    at: float,
    completions: list[float],
    rate_window_s: float = 20.0,
    gap_before_s: float = 10.0,
    gap_after_s: float = 60.0,
) -> Around:
    """`completions`: the times (seconds, one clock with `at`) requests became terminal, sorted."""

    def count(start: float, end: float) -> int:
        return bisect_left(completions, end) - bisect_left(completions, start)

    before = count(at - rate_window_s, at) / rate_window_s
    after = count(at, at + rate_window_s) / rate_window_s
    first, last = bisect_left(completions, at - gap_before_s), bisect_left(completions, at + gap_after_s)
    # the window's edges count as completions, so a window with none at all is one long gap
    points = [at - gap_before_s, *completions[first:last], at + gap_after_s]
    gap, start = max((b - a, a) for a, b in pairwise(points))
    return Around(label, at, round(before, 2), round(after, 2), round(gap, 2), round(start - at, 2))


def throughput(completions: list[float], bucket_s: float = 5.0, origin: float | None = None) -> list:
    """(bucket start relative to `origin`, by default the first completion; completions in it)."""
    if not completions:
        return []
    first = completions[0] if origin is None else origin
    buckets: dict[int, int] = {}
    for t in completions:
        bucket = int((t - first) // bucket_s)
        buckets[bucket] = buckets.get(bucket, 0) + 1
    return [(i * bucket_s, buckets.get(i, 0)) for i in range(min(0, *buckets), max(buckets) + 1)]
