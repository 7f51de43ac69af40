"""The live feed inside the API: one queue per process, fanned out to event streams and long-polls.

One exclusive queue on the feed exchange per process, fanned out to Server-Sent Events streams (per
customer, or per business for office keys) and to long-polls waiting for a request's outcome; on
reconnect, what a stream missed is replayed from the read store's row times.

An event's data is the feed's `portal.view_changed` v2 payload (`customer_id`, `job_id`, `changes`: every
view one change touched, each with its ids, status and version) plus `occurred_at`; a replayed event
groups the rows one transaction wrote for one customer and job the same way, marked `replayed`."""

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.catalog import PORTAL_SYNC
from portal_api.reads import tenant_transaction
from workers.runtime.broker import Broker

log = structlog.get_logger(__name__)

# Rows commit out of order: a row written 2 s before another may commit after it. Replaying from a
# little before the last event's time sends a few events twice (harmless: each names a view and its
# version to re-read) so that none is lost.
REPLAY_SLACK_US = 5_000_000
SUBSCRIBER_BUFFER = 1000
FEED_PRODUCER = PORTAL_SYNC.name
FEED_SCHEMA_VERSION = 2  # contracts/feed_v2.py: one event per change, listing its views


def cursor(instant: datetime) -> int:
    """An event id: microseconds since the Unix epoch of the row's change."""
    return int(instant.timestamp() * 1_000_000)


def from_cursor(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, UTC)


@dataclass(frozen=True)
class FeedEvent:
    event_id: int
    tenant_id: str
    data: dict

    def sse(self, kind: str = "view_changed") -> str:
        return f"id: {self.event_id}\nevent: {kind}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n"


@dataclass(eq=False)
class Subscription:
    tenant_id: str
    customer_id: str | None  # None: the whole business (office)
    # As a project contact: the appointments (and their jobs) it may act on, as of subscribing.
    appointments: frozenset[str] = frozenset()
    jobs: frozenset[str] = frozenset()
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(SUBSCRIBER_BUFFER))
    overflowed: bool = False

    def wants(self, event: FeedEvent) -> bool:
        return event.tenant_id == self.tenant_id and (
            self.customer_id is None
            or event.data.get("customer_id") == self.customer_id
            or any(change.get("appointment_id") in self.appointments for change in changes_of(event))
            or (
                event.data.get("job_id") in self.jobs
                and any(change.get("view") == "job" for change in changes_of(event))
            )
        )


def changes_of(event: FeedEvent) -> list[dict]:
    """The views an event lists (v2 `changes`); nothing for anything else."""
    changes = event.data.get("changes")
    return [c for c in changes if isinstance(c, dict)] if isinstance(changes, list) else []


class FeedHub:
    """Consumes the feed exchange (all tenants: `#`) on an exclusive, auto-deleted queue of its own."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._subscriptions: set[Subscription] = set()
        self._request_waiters: dict[tuple[str, str], set[asyncio.Event]] = {}
        self._channel = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        assert self._broker.connection is not None
        self._channel = await self._broker.connection.channel()
        await self._channel.set_qos(prefetch_count=200)
        # Under the portals' own prefix: the `portal` broker user may declare and bind only such queues.
        name = f"{self._broker.topology.portal_queue_prefix}api-feed.{uuid.uuid4().hex}"
        queue = await self._channel.declare_queue(name, exclusive=True, auto_delete=True)
        await queue.bind(self._broker.topology.exchange("feed"), routing_key="#")
        await queue.consume(self._on_message, no_ack=True)
        self._broker.connection.reconnect_callbacks.add(self._resync)
        self.ready.set()

    def _resync(self, *_args) -> None:
        """After a broker reconnect the feed events of the outage are gone: end every open stream (its
        client reconnects with Last-Event-ID and gets them from the read store) and wake every long-poll
        (it reads the read store again)."""
        log.warning("api.feed_reconnected", streams=len(self._subscriptions))
        for subscription in list(self._subscriptions):
            subscription.overflowed = True
            with contextlib.suppress(asyncio.QueueFull):
                subscription.queue.put_nowait(None)
        for waiters in self._request_waiters.values():
            for waiter in waiters:
                waiter.set()

    async def stop(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            body = json.loads(message.body)
            payload = body["payload"]
            tenant = body["tenant_id"]
            occurred = datetime.fromisoformat(body["occurred_at"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("api.feed_unreadable", error=repr(exc)[:200])
            return
        if (
            body.get("producer") != FEED_PRODUCER
            or body.get("schema_version") != FEED_SCHEMA_VERSION
            or not isinstance(payload, dict)
        ):
            return
        event = FeedEvent(cursor(occurred), tenant, {**payload, "occurred_at": body["occurred_at"]})
        self.dispatch(event)

    def dispatch(self, event: FeedEvent) -> None:
        for subscription in list(self._subscriptions):
            if subscription.wants(event):
                try:
                    subscription.queue.put_nowait(event)
                except asyncio.QueueFull:
                    subscription.overflowed = True
        for change in changes_of(event):
            request_id = change.get("request_id")
            if request_id:
                for waiter in self._request_waiters.get((event.tenant_id, request_id), ()):
                    waiter.set()

    def subscribe(
        self,
        tenant_id: str,
        customer_id: str | None,
        contact_of: Iterable[tuple[str, str]] = (),
    ) -> Subscription:
        """`contact_of`: (appointment, job) pairs the customer may act on as a project contact."""
        pairs = list(contact_of)
        subscription = Subscription(
            tenant_id,
            customer_id,
            frozenset(appointment for appointment, _ in pairs),
            frozenset(job for _, job in pairs),
        )
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def request_waiter(self, tenant_id: str, request_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._request_waiters.setdefault((tenant_id, request_id), set()).add(event)
        return event

    def drop_waiter(self, tenant_id: str, request_id: str, event: asyncio.Event) -> None:
        waiters = self._request_waiters.get((tenant_id, request_id))
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._request_waiters[(tenant_id, request_id)]


# What changed since a time, per view, as the feed would have said it (customer: NULL = all customers).
REPLAY = text(
    """
    WITH contact_of AS (
        SELECT appointment_id, job_id FROM portal.appointment_offers
        WHERE tenant_id = :tenant AND CAST(:customer AS varchar) = ANY(contact_ids)
    )
    SELECT 'appointment' AS view, a.customer_id, a.job_id, a.appointment_id, NULL AS request_id,
           a.status, a.version, a.updated_at
    FROM portal.appointments a
    WHERE a.tenant_id = :tenant AND a.updated_at > :since
      AND (CAST(:customer AS varchar) IS NULL OR a.customer_id = :customer
           OR a.appointment_id IN (SELECT appointment_id FROM contact_of))
    UNION ALL
    SELECT 'job', j.customer_id, j.job_id, NULL, NULL, j.status, j.version, j.updated_at
    FROM portal.jobs j
    WHERE j.tenant_id = :tenant AND j.updated_at > :since
      AND (CAST(:customer AS varchar) IS NULL OR j.customer_id = :customer
           OR j.job_id IN (SELECT job_id FROM contact_of))
    UNION ALL
    SELECT 'request', a.customer_id, a.job_id, r.appointment_id, r.request_id, r.status, NULL, r.updated_at
    FROM portal.requests r
    JOIN portal.appointments a ON a.tenant_id = r.tenant_id AND a.appointment_id = r.appointment_id
    WHERE r.tenant_id = :tenant AND r.updated_at > :since
      AND (CAST(:customer AS varchar) IS NULL OR a.customer_id = :customer
           OR a.appointment_id IN (SELECT appointment_id FROM contact_of))
    UNION ALL
    SELECT 'offer', o.customer_id, o.job_id, o.appointment_id, NULL, NULL, o.offer_version, o.updated_at
    FROM portal.appointment_offers o
    WHERE o.tenant_id = :tenant AND o.updated_at > :since
      AND (CAST(:customer AS varchar) IS NULL OR o.customer_id = :customer
           OR o.appointment_id IN (SELECT appointment_id FROM contact_of))
    ORDER BY updated_at
    LIMIT 5000
    """
)


CONTACT_OF = text(
    "SELECT appointment_id, job_id FROM portal.appointment_offers "
    "WHERE tenant_id = :tenant AND :customer = ANY(contact_ids) LIMIT 5000"
)


async def contact_appointments(
    engine: AsyncEngine, tenant_id: str, customer_id: str
) -> list[tuple[str, str]]:
    """The (appointment, job) pairs a project contact may act on (none for a plain customer)."""
    async with tenant_transaction(engine, tenant_id) as conn:
        rows = await conn.execute(CONTACT_OF, {"tenant": tenant_id, "customer": customer_id})
        return [(r.appointment_id, r.job_id) for r in rows]


async def replay(
    engine: AsyncEngine, tenant_id: str, customer_id: str | None, last_id: int
) -> list[FeedEvent]:
    since = from_cursor(last_id - REPLAY_SLACK_US)
    async with tenant_transaction(engine, tenant_id) as conn:
        rows = (
            await conn.execute(REPLAY, {"tenant": tenant_id, "customer": customer_id, "since": since})
        ).all()
    # One event per transaction (its clock, `updated_at`) and customer and job, as the feed groups them.
    grouped: dict[tuple[datetime, str | None, str | None], list[dict]] = {}
    for r in rows:
        change = {
            "view": r.view,
            "appointment_id": r.appointment_id,
            "request_id": r.request_id,
            "status": r.status,
            "version": r.version,
        }
        grouped.setdefault((r.updated_at, r.customer_id, r.job_id), []).append(
            {k: v for k, v in change.items() if v is not None}
        )
    events = []
    for (updated_at, customer_id, job_id), changes in grouped.items():
        data = {
            "customer_id": customer_id,
            "job_id": job_id,
            "changes": changes,
            "occurred_at": updated_at.isoformat(),
            "replayed": True,
        }
        events.append(FeedEvent(cursor(updated_at), tenant_id, data))
    return events


async def sse(
    hub: FeedHub,
    engine: AsyncEngine,
    tenant_id: str,
    customer_id: str | None,
    last_id: int | None,
    *,
    heartbeat_s: float,
) -> AsyncIterator[str]:
    """The stream: subscribe first (nothing is missed while replaying), replay what came after
    `last_id`, then live events; a `ready` event carries an id so a client that saw nothing else yet
    still resumes from here."""
    contact_of = await contact_appointments(engine, tenant_id, customer_id) if customer_id else []
    subscription = hub.subscribe(tenant_id, customer_id, contact_of)
    try:
        yield "retry: 1000\n\n"
        if last_id is not None:
            for event in await replay(engine, tenant_id, customer_id, last_id):
                yield event.sse()
        yield FeedEvent(cursor(datetime.now(UTC)), tenant_id, {"view": "ready"}).sse("ready")
        while True:
            try:
                event = await asyncio.wait_for(subscription.queue.get(), heartbeat_s)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if subscription.overflowed or event is None:
                return  # the client reconnects with its Last-Event-ID and gets the rest from the replay
            yield event.sse()
    finally:
        hub.unsubscribe(subscription)
