"""Does an exchange or queue exist on the broker: one passive declare, on a channel of its own.

A missing entity closes the channel it was asked on, so never ask on a channel used for anything else."""

import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.exceptions import ChannelNotFoundEntity


async def _probe(connection: AbstractConnection, declare: Callable[[AbstractChannel], Awaitable[Any]]) -> Any:
    """What a passive declare returns, or None when the broker has no such entity."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        return await declare(channel)
    except ChannelNotFoundEntity:
        return None
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def missing_exchanges(connection: AbstractConnection, names: Iterable[str]) -> set[str]:
    """The exchanges among `names` the broker does not have ("" is the default exchange, always there)."""
    missing: set[str] = set()
    for name in sorted({n for n in names if n}):
        declared = await _probe(
            connection, lambda channel, name=name: channel.declare_exchange(name, passive=True)
        )
        if declared is None:
            missing.add(name)
    return missing


async def queue_declaration(connection: AbstractConnection, name: str) -> Any | None:
    """The queue's live declaration result (message and consumer counts), or None when it is missing."""
    queue = await _probe(connection, lambda channel: channel.declare_queue(name, passive=True))
    return None if queue is None else queue.declaration_result
