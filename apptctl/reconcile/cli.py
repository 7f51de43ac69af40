"""`apptctl reconcile`: gather, classify and report in one call (`check`), and the command's options."""

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from apptctl.reconcile.classify import reconcile
from apptctl.reconcile.facts import DeadLetterRef, SentRequest
from apptctl.reconcile.gather import gather, load_manifest, read_dead_letters
from apptctl.reconcile.report import Report


async def check(
    engine: Any,
    *,
    amqp_url: str | None = None,
    namespace: str | None = None,
    tenants: Sequence[str] | None = None,
    since: datetime | None = None,
    sent: list[SentRequest] | None = None,
    dead_letters: list[DeadLetterRef] | None = None,
    grace_s: float = 0.0,
    retention_s: float = 3600.0,
    dead_letters_required: bool = True,
) -> Report:
    """Gather and reconcile. Dead letters are read from the namespace's queues when `amqp_url` and
    `namespace` are given and `dead_letters` is not; with `dead_letters_required=False` an unreachable
    broker is a note in the report (dead-lettered requests then show as lost), not an error."""
    unread: str | None = None
    if dead_letters is None and amqp_url is not None and namespace is not None:
        try:
            dead_letters = await read_dead_letters(amqp_url, namespace)
        except Exception as exc:
            if dead_letters_required:
                raise
            unread = f"{type(exc).__name__}: {exc}"[:200]
    facts = await gather(engine, tenants=tenants, since=since, dead_letters=dead_letters, sent=sent)
    report = reconcile(facts, grace_s=grace_s, retention_s=retention_s)
    if unread is not None:
        report.notes = [
            n.replace("dead letters not read", f"dead letters not read (RabbitMQ: {unread})")
            for n in report.notes
        ]
    return report


class DatabaseUnavailable(Exception):
    pass


class BadSince(ValueError):
    pass


def parse_since(text: str, now: datetime) -> datetime:
    """`--since`: an ISO 8601 time with a timezone, or an age such as 90s, 15m, 2h, 7d."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    value = text.strip()
    if value[:-1].isdigit() and value[-1:] in units:
        return now - timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise BadSince(
            f"--since {text!r}: give an ISO 8601 time with a timezone or an age like 15m"
        ) from None
    if when.tzinfo is None:
        raise BadSince(f"--since {text!r} has no timezone: add one, e.g. {value}+00:00")
    return when


async def run(
    settings: Any,
    *,
    tenants: Sequence[str] | None,
    since: str | None,
    sent_path: Path | None,
    grace_s: float,
    read_dlq: bool,
) -> Report:
    """`apptctl reconcile`: the settings' database and namespace, checked as of now."""
    from datetime import UTC

    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    when = parse_since(since, datetime.now(UTC)) if since else None
    sent = load_manifest(sent_path) if sent_path else None
    engine = create_async_engine(settings.database_url, poolclass=NullPool, connect_args={"timeout": 10})
    try:
        async with engine.connect():
            pass
    except Exception as exc:
        await engine.dispose()
        why = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        raise DatabaseUnavailable(
            f"PostgreSQL is unreachable at DATABASE_URL ({why}): start it (`bash infra/services.sh`), "
            "check DATABASE_URL, run `apptctl migrate`"
        ) from None
    try:
        return await check(
            engine,
            amqp_url=settings.amqp_url if read_dlq else None,
            namespace=settings.namespace,
            tenants=tenants or None,
            since=when,
            sent=sent,
            grace_s=grace_s,
            retention_s=settings.outbox_retention_s,
            dead_letters_required=False,
        )
    finally:
        await engine.dispose()
