"""A unit of work in memory: what a handler sees of the runtime's (`follow`, `emit`, `now`, `saw_now`, its
store), with a fixed clock, the events it committed, and a rollback that puts its store back."""

import copy
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

from contracts.envelope import Envelope

E = TypeVar("E", bound=Envelope)


class FakeUnitOfWork:
    """`store` is the worker's in-memory store (reached by the handlers through `<store module>.of(uow)`).
    Like the real one it rolls back unless committed: the store's state as it was at the start, no events.
    `events` holds what every committed transaction emitted, in order."""

    def __init__(self, store: Any, *, producer: str, now: datetime | None = None) -> None:
        self.store = store
        self.producer = producer
        self.clock = now or datetime.now(UTC)
        self.events: list[Envelope] = []
        self.committed = False
        # As the runtime's: the messages of the batch this transaction handles (`handle_batch`; empty for
        # one message) and what a handler keeps for the next one's call in the same transaction.
        self.batch: tuple[Envelope, ...] = ()
        self.memo: dict[str, Any] = {}
        self._pending: list[Envelope] = []
        self._before: dict | None = None

    async def __aenter__(self) -> "FakeUnitOfWork":
        self._before = copy.deepcopy(vars(self.store))
        self._pending = []
        self.committed = False
        self.batch = ()
        self.memo = {}
        self.store.now = self.clock  # the transaction's clock, as PostgreSQL's now() reads it
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.committed:
            self.rollback()

    def rollback(self) -> None:
        if self._before is not None:
            vars(self.store).clear()
            vars(self.store).update(self._before)
        self._pending = []

    async def commit(self) -> None:
        self.events += self._pending
        self._pending = []
        self.committed = True

    async def now(self) -> datetime:
        return self.clock

    def saw_now(self, value: datetime) -> None:
        """The real store hands the database's clock over; the fake's is fixed."""

    async def emit(self, message: Envelope) -> None:
        self._pending.append(message)

    async def follow(
        self,
        cause: Envelope,
        event_type: type[E],
        payload: object,
        *,
        correlation_id: str | None = None,
        request_producer: str | None = None,
    ) -> E:
        event = event_type.follow(
            cause,
            producer=self.producer,
            occurred_at=self.clock,
            correlation_id=correlation_id,
            request_producer=request_producer,
            payload=payload,
        )
        await self.emit(event)
        return event

    async def handle(
        self, handler: Callable[[Any, Any], Awaitable[None]], message: Envelope
    ) -> list[Envelope]:
        """What the runtime does around a handler: one transaction, committed when the handler returns,
        rolled back when it raises. Returns the events this message emitted."""
        before = len(self.events)
        async with self:
            await handler(message, self)
            await self.commit()
        return self.events[before:]

    async def handle_batch(
        self, handlers: Mapping[type, Callable[[Any, Any], Awaitable[None]]], messages: Sequence[Envelope]
    ) -> list[Envelope]:
        """What workers/runtime/batch.py does with a batch (its messages already grouped by tenant): one
        transaction, `batch` set, each message's handler in turn, one commit. A message already in the batch
        is skipped, as the inbox claim skips it. Returns the events emitted."""
        before = len(self.events)
        claimed = {m.message_id: m for m in reversed(messages)}  # each id's first message
        handled = [m for m in messages if claimed.pop(m.message_id, None) is m]
        async with self:
            self.batch = tuple(handled)
            for message in handled:
                await handlers[type(message)](message, self)
            await self.commit()
        return self.events[before:]
