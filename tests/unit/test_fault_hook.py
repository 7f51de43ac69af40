"""The runtime's fault hook: off by default, armed for the n-th passage of one point, parsed strictly."""

import pytest

from workers.runtime import faults
from workers.runtime.faults import FaultPoint, SimulatedCrash, fault_point


@pytest.fixture(autouse=True)
def _disarmed():
    faults.disarm()
    yield
    faults.disarm()


def crash() -> None:
    raise SimulatedCrash


def test_unarmed_points_do_nothing() -> None:
    for point in FaultPoint:
        fault_point(point)


def test_an_armed_point_fires_at_exactly_its_nth_passage_and_only_there() -> None:
    faults.arm(FaultPoint.AFTER_COMMIT, crash, after=3)
    fault_point(FaultPoint.BEFORE_COMMIT)  # another point does not count
    fault_point(FaultPoint.AFTER_COMMIT)
    fault_point(FaultPoint.AFTER_COMMIT)
    with pytest.raises(SimulatedCrash):
        fault_point(FaultPoint.AFTER_COMMIT)
    fault_point(FaultPoint.AFTER_COMMIT)  # once


def test_a_simulated_crash_is_not_an_exception_a_handler_could_swallow() -> None:
    assert not issubclass(SimulatedCrash, Exception)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("after_receive", (FaultPoint.AFTER_RECEIVE, 1)),
        ("before_commit:4", (FaultPoint.BEFORE_COMMIT, 4)),
        (" relay_after_publish:2", (FaultPoint.RELAY_AFTER_PUBLISH, 2)),
    ],
)
def test_the_environment_spec_parses(spec: str, expected) -> None:
    assert faults.parse(spec) == expected


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("mid_transaction", "unknown point 'mid_transaction'; choose one of after_receive"),
        ("after_commit:x", "whole number"),
        ("after_commit:0", "at least 1"),
    ],
)
def test_a_bad_spec_says_what_is_wrong(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        faults.parse(spec)


def test_arming_from_the_environment_arms_the_named_point_only_when_set() -> None:
    assert faults.arm_from_environment({}) is None
    assert faults.arm_from_environment({faults.ENV: "  "}) is None
    assert faults.arm_from_environment({faults.ENV: "after_ack:2"}) is FaultPoint.AFTER_ACK


def test_every_point_has_its_own_exit_code() -> None:
    assert set(faults.EXIT_CODES) == set(FaultPoint)
    assert len(set(faults.EXIT_CODES.values())) == len(FaultPoint)
