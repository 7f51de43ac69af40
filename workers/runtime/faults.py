"""Fault injection at the runtime's step boundaries, for tests: die (or fail) exactly between two steps.

The runtime calls `fault_point(<point>)` at each boundary; with nothing configured that is one global
read and a return. Two ways to arm it:

- In a worker process, from the environment (the fault suite's crash tests):

      APPT_FAULT_AT=<point>[:<n>]   the n-th passage (default 1) through <point> in this process's life
                                    ends the process with os._exit(EXIT_CODES[point]), as `kill -9` would:
                                    no ack, no rollback, no flush; the kernel drops the sockets.

- In a test's own process: `arm(point, action, after=n)` runs `action()` at the n-th passage (e.g. raise
  `SimulatedCrash`, a BaseException the runtime does not catch as a handler error), `disarm()` undoes it.

Points (in the order a delivery meets them):
  after_receive        a delivery arrived; nothing decoded, nothing written
  before_commit        the handler's writes (inbox row, effect, outbox rows) are done; not committed
  after_commit         the transaction committed; its events are not published, the delivery not acked
  after_publish        the committed events were published directly and confirmed; not marked sent,
                       the delivery not acked
  after_ack            acked
  relay_after_publish  the relay's batch was published and confirmed; its rows are not marked sent
"""

import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum


class FaultPoint(StrEnum):
    AFTER_RECEIVE = "after_receive"
    BEFORE_COMMIT = "before_commit"
    AFTER_COMMIT = "after_commit"
    AFTER_PUBLISH = "after_publish"
    AFTER_ACK = "after_ack"
    RELAY_AFTER_PUBLISH = "relay_after_publish"


EXIT_CODES: dict[FaultPoint, int] = {
    FaultPoint.AFTER_RECEIVE: 71,
    FaultPoint.BEFORE_COMMIT: 72,
    FaultPoint.AFTER_COMMIT: 73,
    FaultPoint.RELAY_AFTER_PUBLISH: 74,
    FaultPoint.AFTER_ACK: 75,
    FaultPoint.AFTER_PUBLISH: 76,
}
POINT_OF_EXIT_CODE = {code: point for point, code in EXIT_CODES.items()}
ENV = "APPT_FAULT_AT"


class SimulatedCrash(BaseException):
    """Raised by an armed fault point in a test's own process; like a crash, nothing may catch it."""


class _Armed:
    def __init__(self, point: FaultPoint, action: Callable[[], None], after: int) -> None:
        self.point = point
        self.action = action
        self.after = after
        self.passages = 0


_armed: _Armed | None = None


def parse(spec: str) -> tuple[FaultPoint, int]:
    """`<point>[:<n>]` -> (point, n); ValueError naming the valid points."""
    name, _, count = spec.partition(":")
    try:
        point = FaultPoint(name.strip())
    except ValueError:
        raise ValueError(
            f"{ENV}={spec!r}: unknown point {name!r}; choose one of {', '.join(p.value for p in FaultPoint)}"
        ) from None
    try:
        after = int(count) if count else 1
    except ValueError:
        raise ValueError(f"{ENV}={spec!r}: the passage after ':' must be a whole number") from None
    if after < 1:
        raise ValueError(f"{ENV}={spec!r}: the passage after ':' must be at least 1")
    return point, after


def _die(point: FaultPoint) -> Callable[[], None]:
    def action() -> None:
        line = {"event": "fault.crash", "point": point.value, "timestamp": datetime.now(UTC).isoformat()}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        os._exit(EXIT_CODES[point])

    return action


def arm(point: FaultPoint, action: Callable[[], None], *, after: int = 1) -> None:
    global _armed
    _armed = _Armed(point, action, after)


def disarm() -> None:
    global _armed
    _armed = None


def arm_from_environment(environ: dict[str, str] | None = None) -> FaultPoint | None:
    """Arm from APPT_FAULT_AT (a worker calls this at start-up); None when it is not set."""
    spec = (environ if environ is not None else os.environ).get(ENV, "").strip()
    if not spec:
        return None
    point, after = parse(spec)
    arm(point, _die(point), after=after)
    return point


def fault_point(point: FaultPoint) -> None:
    armed = _armed
    if armed is None or armed.point is not point:
        return
    armed.passages += 1
    if armed.passages == armed.after:
        armed.action()
