"""Engine creation and the unit of work: one transaction per message, rolled back unless committed."""

from datetime import datetime
from types import TracebackType

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from contracts.envelope import Envelope
from workers.runtime import outbox


def create_engine(database_url: str, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        database_url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_recycle=1800
    )


class UnitOfWork:
    """Holds one connection in one transaction. `emit` queues events in the outbox of that transaction."""

    def __init__(self, engine: AsyncEngine, producer: str) -> None:
        self._engine = engine
        self.producer = producer
        self.connection: AsyncConnection
        self.emitted: list[Envelope] = []
        self._committed = False

    async def __aenter__(self) -> "UnitOfWork":
        self.connection = await self._engine.connect()
        await self.connection.begin()
        self.emitted = []
        self._committed = False
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if not self._committed:
                await self.connection.rollback()
        finally:
            await self.connection.close()

    async def now(self) -> datetime:
        """The transaction's clock (PostgreSQL `now()`), the same for every statement in it."""
        return (await self.connection.execute(select(func.now()))).scalar_one()

    async def emit(self, message: Envelope) -> None:
        await outbox.add(self.connection, message, producer=self.producer)
        self.emitted.append(message)

    async def commit(self) -> None:
        await self.connection.commit()
        self._committed = True
