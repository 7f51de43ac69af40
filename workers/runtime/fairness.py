"""Tenant lanes: deliveries in hand wait in one lane per tenant and take turns at a bounded number of slots.

The broker's queue is first in, first out: a tenant that sends 10,000 requests puts them all in front of
the next tenant's one. A consumer with a large prefetch takes the backlog into its hands at once, and this
scheduler then lets each tenant that is waiting have the next free slot in turn (round robin), so another
tenant's request waits for one turn, not for the backlog. Slots bound the work (database connections) as
the prefetch did before.
"""

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

T = TypeVar("T")


class LanesClosed(Exception):
    """The consumer is draining: a delivery still waiting for its turn goes back to the queue."""


class TenantLanes:
    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.slots = slots
        self._busy = 0
        self._lanes: dict[str, deque[asyncio.Future[None]]] = {}
        self._turns: deque[str] = deque()  # lanes with someone waiting, in the order they get a slot
        self._closed = False

    @property
    def busy(self) -> int:
        return self._busy

    def waiting(self, lane: str | None = None) -> int:
        if lane is not None:
            return len(self._lanes.get(lane, ()))
        return sum(len(q) for q in self._lanes.values())

    @asynccontextmanager
    async def turn(self, lane: str) -> AsyncIterator[None]:
        """Wait for a slot in `lane`'s turn, hold it for the block."""
        await self._acquire(lane)
        try:
            yield
        finally:
            self._release()

    def close(self) -> None:
        """Turn away every delivery still waiting (and any that comes later) with LanesClosed."""
        self._closed = True
        for queue in self._lanes.values():
            for waiter in queue:
                if not waiter.done():
                    waiter.set_exception(LanesClosed())
        self._lanes.clear()
        self._turns.clear()

    async def _acquire(self, lane: str) -> None:
        if self._closed:
            raise LanesClosed()
        if self._busy < self.slots and not self._turns:
            self._busy += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._lanes.get(lane)
        if queue is None:
            queue = self._lanes[lane] = deque()
            self._turns.append(lane)
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over as we were cancelled: pass it on
            else:
                self._forget(lane, waiter)
            raise

    def _forget(self, lane: str, waiter: asyncio.Future[None]) -> None:
        queue = self._lanes.get(lane)
        if queue is None:
            return
        try:
            queue.remove(waiter)
        except ValueError:
            return
        if not queue:
            del self._lanes[lane]
            self._turns.remove(lane)

    def _release(self) -> None:
        """Hand the slot to the first waiter of the next lane in turn (which then goes to the back)."""
        while self._turns:
            lane = self._turns.popleft()
            queue = self._lanes[lane]
            waiter = queue.popleft()
            if queue:
                self._turns.append(lane)
            else:
                del self._lanes[lane]
            if not waiter.done():
                waiter.set_result(None)
                return
        self._busy -= 1


def take_in_turn(items: list[T], limit: int, key: Callable[[T], str]) -> tuple[list[T], list[T]]:
    """Up to `limit` items taken one per key in turn (each key's items in their order), and the rest in
    their original order: a burst in which a tenant with one item waiting is not behind another's thousand."""
    if len(items) <= limit:
        return list(items), []
    lanes: dict[str, deque[int]] = {}
    for index, item in enumerate(items):
        lanes.setdefault(key(item), deque()).append(index)
    taken: list[int] = []
    turns = deque(lanes.values())
    while len(taken) < limit:
        lane = turns.popleft()
        taken.append(lane.popleft())
        if lane:
            turns.append(lane)
    chosen = set(taken)
    return [items[i] for i in taken], [item for i, item in enumerate(items) if i not in chosen]
