"""`apptctl dlq show`: a dead letter's age is counted from when it was dead-lettered, in words a person
reads, whatever timestamp the message itself carries."""

from datetime import UTC, datetime, timedelta

import pytest

from apptctl.dlq import DeadLetter, describe, human_age

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def letter(headers: dict) -> DeadLetter:
    a_year_ago = NOW - timedelta(days=335)  # the message's own timestamp: a portal's clock, or a replay
    return DeadLetter(
        "appt.policy_gate.dead", "m-1", "malformed_json", headers, {"timestamp": a_year_ago}, b"{"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (59, "59 s"), (60, "1 min"), (3599, "59 min"), (3600, "1 h"), (8_100, "2 h 15 min"),
     (86_400, "1 day"), (28_924_336, "334 days")],
)  # fmt: skip
def test_human_ages(seconds: float, text: str) -> None:
    assert human_age(seconds) == text


def test_the_age_is_since_our_dead_lettered_at_header() -> None:
    shown = describe(letter({"x-dead-lettered-at": (NOW - timedelta(minutes=5)).isoformat()}), now=NOW)
    assert "dead-lettered 5 min ago (2026-12-06T11:55:00+00:00)" in shown
    assert "days" not in shown.splitlines()[1]


def test_a_broker_dead_letter_is_aged_from_its_latest_x_death_time() -> None:
    deaths = [
        {"reason": "delivery_limit", "time": NOW - timedelta(hours=2)},
        {"reason": "expired", "time": NOW - timedelta(hours=3)},
    ]
    assert "dead-lettered 2 h ago" in describe(letter({"x-death": deaths}), now=NOW)


def test_without_a_dead_lettering_time_it_says_so() -> None:
    assert "dead-lettered: when unknown" in describe(letter({}), now=NOW)
