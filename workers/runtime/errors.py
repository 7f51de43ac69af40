"""Which failures are worth retrying: lost connections and lock conflicts, not bugs or bad data."""

import asyncio

import aio_pika.exceptions
import aiormq.exceptions
import asyncpg
from sqlalchemy import exc as sa_exc

# Serialization failure and deadlock: the whole transaction is retried at once.
CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})
# The database went away or refuses connections for now.
UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "55P03"})


class DeadLetter(Exception):
    """A handler's verdict that the message must not be processed at all (e.g. a reused request id):
    the transaction is rolled back and the message dead-lettered with this reason, never retried."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def sqlstate(error: BaseException) -> str | None:
    orig = getattr(error, "orig", None)
    for candidate in (error, orig, getattr(orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def is_conflict(error: BaseException) -> bool:
    return sqlstate(error) in CONFLICT_SQLSTATES


def is_transient(error: BaseException) -> bool:
    """The operation may succeed if tried again later, unchanged."""
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    code = sqlstate(error)
    if code is not None and (code.startswith("08") or code in UNAVAILABLE_SQLSTATES):
        return True
    return isinstance(
        error,
        OSError
        | TimeoutError
        | asyncio.TimeoutError
        | sa_exc.InterfaceError
        | sa_exc.OperationalError
        | sa_exc.TimeoutError
        | asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.CannotConnectNowError
        | asyncpg.exceptions.InterfaceError
        | aiormq.exceptions.AMQPConnectionError
        | aio_pika.exceptions.ChannelInvalidStateError,
    )


def failure_kind(error: BaseException) -> str:
    """What kind of failure ended a transaction, as metrics label it: conflict, transient, dead_letter or
    handler_error (anything else: a bug, bad data)."""
    if is_conflict(error):
        return "conflict"
    if is_transient(error):
        return "transient"
    if isinstance(error, DeadLetter):
        return "dead_letter"
    return "handler_error"
