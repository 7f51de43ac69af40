"""The event loop a worker runs on: uvloop when it is installed, unless APPT_UVLOOP=0.

uvloop runs the same asyncio code with the loop and its transports in C; for a worker that spends a
sixth of its CPU in the event loop and socket transports, that is a large part of the difference to a
bare relay. Read from the environment, not Settings, because the loop exists before anything else.
"""

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's default loop."""
    if os.environ.get("APPT_UVLOOP", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on the loop `loop_factory` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
