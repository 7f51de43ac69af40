"""The RabbitMQ topology, declared from one spec: exchanges, queues, bindings, dead letters, delays.

Quorum queues, and the delay queues transient failures are retried through.

Queue arguments are part of the contract: RabbitMQ refuses to redeclare a queue with other arguments
(PRECONDITION_FAILED), so changing one needs a migration (new queue name, move consumers, delete old).
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace

import aio_pika
from aio_pika.abc import AbstractChannel, ExchangeType

from contracts.catalog import WORKER_NAMES
from contracts.routes import SUBSCRIPTIONS as ROUTE_SUBSCRIPTIONS
from infra.nodes import connect_first

DEFAULT_NAMESPACE = "appt"
DELIVERY_LIMIT = 10
WORKERS = WORKER_NAMES  # one work queue, dead-letter queue and delay queues each (contracts/catalog.py)

# Exchange roles named by contracts (`Envelope.exchange_role`), plus where dead letters go.
EXCHANGE_ROLES = ("requests", "office", "internal", "events")
DEAD_LETTER_ROLE = "dead-letters"  # where the broker itself dead-letters (a work queue's delivery limit)
# Where a worker parks a message to retry it later: a direct exchange, one delay queue per tier.
RETRY_ROLE = "retry"
# Where a delay queue hands an expired message back to its work queue: a direct exchange that no identity
# may publish to, so a delivery that came by it was put back by the broker itself, and only then are the
# retry bookkeeping headers (`x-attempt`, the original route) believed.
RETURN_ROLE = "retry-return"
# Delay-queue tiers in seconds. Each tier is a queue whose name carries its delay, so other tiers are
# new queues (the old ones can be deleted once empty), never a changed argument.
DEFAULT_RETRY_DELAYS_S = (5.0, 30.0, 300.0)
MAX_RETRY_TIERS = 10

# The live feed: a topic exchange routed by tenant.customer.job that nobody has to listen to. Its
# alternate exchange takes what no subscriber's binding matched into a small bounded queue, so the
# outbox's mandatory publish is still routed and confirmed.
FEED_ROLE = "feed"
FEED_UNROUTED_ROLE = "feed.unrouted"
FEED_UNROUTED_MAX = 1000
# Replies to a portal's own queue (`reply_to`) go through a direct exchange the portal binds its reply
# queue to, with the queue's name as the routing key. (Not the default exchange: writing to it reaches
# every queue by name, so portal_sync's broker user could then feed any worker's work queue.)
REPLY_ROLE = "reply"
REPLY_EXCHANGE = "replies"
# Portals declare, bind and consume their own reply and feed queues under `<namespace>.portal.`; a
# request's `reply_to` must name one of the signing portal's, `<namespace>.portal.<producer>.<name>`.
PORTAL_QUEUES = "portal"

# What a queue is for: consumed by its worker, holding dead letters, or holding retries until they're due;
# a sink holds feed events nobody subscribed to (the oldest are dropped).
WORK, DEAD_LETTER, DELAY, SINK = "work", "dead-letter", "delay", "sink"

# The auditor's copy of a worker's dead letters (issue 19). RabbitMQ's read permission on a queue allows
# basic.get, consume, ack and queue.purge alike, so an identity that may read the real dead-letter queue
# may also remove from it. Each dead-letter binding therefore also routes into `<dead queue>.audit`, which
# only the auditor reads: whatever it takes or purges there, the real dead letters stay for ops (list,
# replay, purge). Bounded: the newest AUDIT_COPY_MAX dead letters (or AUDIT_COPY_MAX_BYTES of bodies) per
# worker; beyond that the oldest copies are dropped (drop-head never refuses a publish, so a full copy never
# stops a worker's or the broker's dead-lettering). It keeps the copies of replayed and purged ones too.
AUDIT = "dead-letter-audit"
AUDIT_SUFFIX = ".audit"
AUDIT_COPY_MAX = 10_000
AUDIT_COPY_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ExchangeSpec:
    role: str
    name: str
    type: ExchangeType
    alternate: str | None = None  # the exchange that takes what no binding matched


@dataclass(frozen=True)
class Binding:
    exchange_role: str
    routing_key: str


@dataclass(frozen=True)
class QueueSpec:
    name: str
    arguments: dict
    bindings: tuple[Binding, ...] = ()
    worker: str | None = None
    dead_letter_queue: str | None = None
    kind: str = WORK

    @property
    def delay_s(self) -> float | None:
        """How long a message waits in a delay queue before it goes back to the work queue."""
        ttl = self.arguments.get("x-message-ttl") if self.kind == DELAY else None
        return None if ttl is None else ttl / 1000


@dataclass(frozen=True)
class Topology:
    namespace: str
    exchanges: tuple[ExchangeSpec, ...]
    queues: tuple[QueueSpec, ...]

    def exchange(self, role: str) -> str:
        for spec in self.exchanges:
            if spec.role == role:
                return spec.name
        raise KeyError(f"no exchange with role {role!r}")

    def exchanges_with_role(self, role: str) -> frozenset[str]:
        """The names of the exchanges with `role` (empty for a topology without it)."""
        return frozenset(spec.name for spec in self.exchanges if spec.role == role)

    def queue_of(self, worker: str) -> QueueSpec:
        for spec in self.queues:
            if spec.worker == worker and spec.kind == WORK:
                return spec
        raise KeyError(f"no queue for worker {worker!r}")

    def audit_copies(self) -> tuple[QueueSpec, ...]:
        """The auditor's copies of the dead-letter queues (empty for a topology without them)."""
        return tuple(spec for spec in self.queues if spec.kind == AUDIT)

    def delay_queues_of(self, worker: str) -> tuple[QueueSpec, ...]:
        """The worker's delay queues, shortest delay first (empty for a topology without retry tiers)."""
        return tuple(spec for spec in self.queues if spec.worker == worker and spec.kind == DELAY)

    @property
    def portal_queue_prefix(self) -> str:
        return f"{self.namespace}.{PORTAL_QUEUES}."

    @property
    def return_exchange(self) -> str | None:
        """Where delay queues hand messages back (None in a topology without one)."""
        return next(iter(sorted(self.exchanges_with_role(RETURN_ROLE))), None)

    def exchange_names(self) -> dict[str, str]:
        """Each message exchange role (requests, office, internal, events) -> its name here."""
        return {spec.role: spec.name for spec in self.exchanges if spec.role in EXCHANGE_ROLES}

    @property
    def dead_letter_exchange(self) -> str:
        return self.exchange(DEAD_LETTER_ROLE)

    def own_exchange(self, role: str, worker: str) -> str:
        """The worker's own dead-letter or retry exchange; the shared one in a topology without it."""
        try:
            return self.exchange(own_role(role, worker))
        except KeyError:
            return self.exchange(role)


# What each worker consumes: (exchange role, routing key), from the contracts' route declaration.
SUBSCRIPTIONS: dict[str, tuple[Binding, ...]] = {
    worker: tuple(Binding(role, key) for role, key in bindings)
    for worker, bindings in ROUTE_SUBSCRIPTIONS.items()
}


# Bindings a worker's queue had in an earlier release and must not keep: `apply` removes them from a
# broker that has them (declaring never removes a binding, and the worker would dead-letter what a
# stale one brings). The gate stopped following a customer's change when the offer began to travel
# with it (issue 14).
RETIRED_BINDINGS: dict[str, tuple[Binding, ...]] = {
    "policy_gate": (Binding("events", "appointment.rescheduled"), Binding("events", "appointment.canceled")),
}


def _work_queue_arguments(dlx: str, dead_letter_queue: str) -> dict:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": dlx,
        "x-dead-letter-routing-key": dead_letter_queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def parse_retry_delays(text: str | Sequence[float]) -> tuple[float, ...]:
    """Delay tiers from `"5,30,300"` (seconds; millisecond precision, each distinct, at most a day)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        delays = tuple(float(item) for item in items if str(item).strip())
    except ValueError:
        raise ValueError(
            f"retry delays must be seconds separated by commas, like 5,30,300; got {text!r}"
        ) from None
    if not 1 <= len(delays) <= MAX_RETRY_TIERS:
        raise ValueError(f"give 1 to {MAX_RETRY_TIERS} retry delays, like 5,30,300; got {text!r}")
    if any(not 0.001 <= delay <= 86_400 for delay in delays):
        raise ValueError(f"each retry delay must be between 0.001 and 86400 seconds; got {text!r}")
    if len({_ttl_ms(delay) for delay in delays}) != len(delays):
        raise ValueError(f"retry delays must differ from each other; got {text!r}")
    return delays


def _ttl_ms(delay_s: float) -> int:
    return round(delay_s * 1000)


def delay_label(delay_s: float) -> str:
    """A tier's name part: `5s`, `300s`, `250ms`."""
    ms = _ttl_ms(delay_s)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _delay_queue_arguments(return_exchange: str, work_queue: str, delay_s: float) -> dict:
    # Expired messages go back to the work queue through the return exchange, which only the broker
    # writes to (work queues are bound to it by their own name). Quorum + at-least-once: a retry is never
    # dropped on its way back, even while the work queue's leader moves.
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": _ttl_ms(delay_s),
        "x-dead-letter-exchange": return_exchange,
        "x-dead-letter-routing-key": work_queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def audit_copy_of(dead_letter_queue: str) -> str:
    """The auditor's copy of a dead-letter queue."""
    return dead_letter_queue + AUDIT_SUFFIX


def _audit_copy_arguments() -> dict:
    # New queue, new arguments: the real dead-letter queues keep theirs (`{"x-queue-type": "quorum"}`).
    return {
        "x-queue-type": "quorum",
        "x-max-length": AUDIT_COPY_MAX,
        "x-max-length-bytes": AUDIT_COPY_MAX_BYTES,
        "x-overflow": "drop-head",
    }


def own_role(role: str, worker: str) -> str:
    """A worker's own exchange for `role` (dead letters, retries): the only one of that kind its broker
    user may write to, so no worker can put a message into another worker's dead-letter or delay queue
    (from which a delay queue hands it to that worker's work queue)."""
    return f"{role}.{worker}"


def build(
    namespace: str = DEFAULT_NAMESPACE,
    retry_delays_s: Sequence[float] = DEFAULT_RETRY_DELAYS_S,
    quorum_group_size: int | None = None,
) -> Topology:
    """`quorum_group_size`: on a cluster, how many nodes each quorum queue is replicated on
    (`x-quorum-initial-group-size`); None leaves it to the broker (every node, up to its default)."""
    delays = parse_retry_delays(retry_delays_s)
    exchanges = (
        *(ExchangeSpec(role, f"{namespace}.{role}", ExchangeType.TOPIC) for role in EXCHANGE_ROLES),
        ExchangeSpec(DEAD_LETTER_ROLE, f"{namespace}.{DEAD_LETTER_ROLE}", ExchangeType.DIRECT),
        ExchangeSpec(RETRY_ROLE, f"{namespace}.{RETRY_ROLE}", ExchangeType.DIRECT),
        ExchangeSpec(RETURN_ROLE, f"{namespace}.{RETURN_ROLE}", ExchangeType.DIRECT),
        *(
            ExchangeSpec(own_role(role, worker), f"{namespace}.{own_role(role, worker)}", ExchangeType.DIRECT)
            for worker in WORKERS
            for role in (DEAD_LETTER_ROLE, RETRY_ROLE)
        ),
        ExchangeSpec(REPLY_ROLE, f"{namespace}.{REPLY_EXCHANGE}", ExchangeType.DIRECT),
        ExchangeSpec(FEED_UNROUTED_ROLE, f"{namespace}.{FEED_UNROUTED_ROLE}", ExchangeType.FANOUT),
        ExchangeSpec(
            FEED_ROLE, f"{namespace}.{FEED_ROLE}", ExchangeType.TOPIC, f"{namespace}.{FEED_UNROUTED_ROLE}"
        ),
    )
    dlx = f"{namespace}.{DEAD_LETTER_ROLE}"
    return_exchange = f"{namespace}.{RETURN_ROLE}"
    queues: list[QueueSpec] = []
    for worker in WORKERS:
        name = f"{namespace}.{worker}"
        dead = f"{name}.dead"
        bindings = (*SUBSCRIPTIONS[worker], Binding(RETURN_ROLE, name))
        queues.append(QueueSpec(name, _work_queue_arguments(dlx, dead), bindings, worker, dead))
        # The shared exchanges stay bound (the broker dead-letters through the shared one); the workers
        # publish through their own.
        dead_bindings = (Binding(DEAD_LETTER_ROLE, dead), Binding(own_role(DEAD_LETTER_ROLE, worker), dead))
        queues.append(QueueSpec(dead, {"x-queue-type": "quorum"}, dead_bindings, None, None, DEAD_LETTER))
        # the same bindings: every dead letter of the worker, the broker's and the worker's own, lands in both
        queues.append(QueueSpec(audit_copy_of(dead), _audit_copy_arguments(), dead_bindings, kind=AUDIT))
        for delay in delays:
            # `.delay.`, not the earlier `.retry.` (whose expired messages came back through the default
            # exchange): new arguments need new queues; delete the old ones once they are empty.
            tier = f"{name}.delay.{delay_label(delay)}"
            arguments = _delay_queue_arguments(return_exchange, name, delay)
            tier_bindings = (Binding(RETRY_ROLE, tier), Binding(own_role(RETRY_ROLE, worker), tier))
            queues.append(QueueSpec(tier, arguments, tier_bindings, worker, None, DELAY))
    queues.append(
        QueueSpec(
            f"{namespace}.{FEED_UNROUTED_ROLE}",
            {"x-queue-type": "classic", "x-max-length": FEED_UNROUTED_MAX, "x-overflow": "drop-head"},
            (Binding(FEED_UNROUTED_ROLE, ""),),
            None,
            None,
            SINK,
        )
    )
    if quorum_group_size is not None:
        group = {"x-quorum-initial-group-size": quorum_group_size}
        queues = [
            replace(q, arguments={**q.arguments, **group})
            if q.arguments.get("x-queue-type") == "quorum"
            else q
            for q in queues
        ]
    return Topology(namespace, exchanges, tuple(queues))


async def declare(channel: AbstractChannel, topology: Topology) -> None:
    """Declare everything; safe to run any number of times with the same spec."""
    declared: dict[str, aio_pika.abc.AbstractExchange] = {}
    for spec in topology.exchanges:
        arguments = {"alternate-exchange": spec.alternate} if spec.alternate else None
        declared[spec.role] = await channel.declare_exchange(
            spec.name, spec.type, durable=True, arguments=arguments
        )
    for spec in topology.queues:
        queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
        for binding in spec.bindings:
            await queue.bind(declared[binding.exchange_role], routing_key=binding.routing_key)
        if spec.kind == WORK and spec.worker is not None:
            for binding in RETIRED_BINDINGS.get(spec.worker, ()):
                if binding not in spec.bindings:  # unbinding one that does not exist is a no-op
                    await queue.unbind(declared[binding.exchange_role], routing_key=binding.routing_key)


async def delete(channel: AbstractChannel, topology: Topology) -> None:
    """Remove the namespace's queues and exchanges (tests and demo resets only)."""
    for spec in topology.queues:
        await channel.queue_delete(spec.name)
    for spec in topology.exchanges:
        await channel.exchange_delete(spec.name)


async def apply(
    amqp_url: str,
    namespace: str = DEFAULT_NAMESPACE,
    retry_delays_s: Sequence[float] = DEFAULT_RETRY_DELAYS_S,
    quorum_group_size: int | None = None,
) -> Topology:
    topology = build(namespace, retry_delays_s, quorum_group_size)
    connection = await connect_first(amqp_url)
    async with connection:
        channel = await connection.channel()
        await declare(channel, topology)
    return topology
