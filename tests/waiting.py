"""Waiting on real signals in tests: poll a condition until it holds, never sleep a fixed time for work."""

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

WAIT_S = 10.0


async def eventually(
    check: Callable[[], Any], what: str, timeout_s: float = WAIT_S, interval_s: float = 0.05
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")
