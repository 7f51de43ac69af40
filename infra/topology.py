"""The RabbitMQ topology, declared from one spec: exchanges, quorum queues, bindings, dead letters.

Queue arguments are part of the contract: RabbitMQ refuses to redeclare a queue with other arguments
(PRECONDITION_FAILED), so changing one needs a migration (new queue name, move consumers, delete old).
"""

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, ExchangeType

DEFAULT_NAMESPACE = "appt"
DELIVERY_LIMIT = 10
WORKERS = ("policy_gate", "modify_handler", "portal_sync")

# Exchange roles named by contracts (`Envelope.exchange_role`), plus where dead letters go.
EXCHANGE_ROLES = ("requests", "office", "internal", "events")
DEAD_LETTER_ROLE = "dead-letters"


@dataclass(frozen=True)
class ExchangeSpec:
    role: str
    name: str
    type: ExchangeType


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

    def queue_of(self, worker: str) -> QueueSpec:
        for spec in self.queues:
            if spec.worker == worker:
                return spec
        raise KeyError(f"no queue for worker {worker!r}")

    @property
    def dead_letter_exchange(self) -> str:
        return self.exchange(DEAD_LETTER_ROLE)


# What each worker consumes: (exchange role, routing key).
SUBSCRIPTIONS: dict[str, tuple[Binding, ...]] = {
    "policy_gate": (
        Binding("requests", "modify.requested"),
        Binding("office", "office.portal_settings.updated"),
        Binding("office", "office.approval.decided"),
    ),
    "modify_handler": (
        Binding("internal", "modify.approved"),
        Binding("office", "office.appointment.recorded"),
    ),
    "portal_sync": (
        Binding("requests", "modify.requested"),
        Binding("events", "#"),
    ),
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


def build(namespace: str = DEFAULT_NAMESPACE) -> Topology:
    exchanges = (
        *(ExchangeSpec(role, f"{namespace}.{role}", ExchangeType.TOPIC) for role in EXCHANGE_ROLES),
        ExchangeSpec(DEAD_LETTER_ROLE, f"{namespace}.{DEAD_LETTER_ROLE}", ExchangeType.DIRECT),
    )
    dlx = f"{namespace}.{DEAD_LETTER_ROLE}"
    queues: list[QueueSpec] = []
    for worker in WORKERS:
        name = f"{namespace}.{worker}"
        dead = f"{name}.dead"
        queues.append(QueueSpec(name, _work_queue_arguments(dlx, dead), SUBSCRIPTIONS[worker], worker, dead))
        queues.append(
            QueueSpec(dead, {"x-queue-type": "quorum"}, (Binding(DEAD_LETTER_ROLE, dead),), None, None)
        )
    return Topology(namespace, exchanges, tuple(queues))


async def declare(channel: AbstractChannel, topology: Topology) -> None:
    """Declare everything; safe to run any number of times with the same spec."""
    declared: dict[str, aio_pika.abc.AbstractExchange] = {}
    for spec in topology.exchanges:
        declared[spec.role] = await channel.declare_exchange(spec.name, spec.type, durable=True)
    for spec in topology.queues:
        queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
        for binding in spec.bindings:
            await queue.bind(declared[binding.exchange_role], routing_key=binding.routing_key)


async def delete(channel: AbstractChannel, topology: Topology) -> None:
    """Remove the namespace's queues and exchanges (tests and demo resets only)."""
    for spec in topology.queues:
        await channel.queue_delete(spec.name)
    for spec in topology.exchanges:
        await channel.exchange_delete(spec.name)


async def apply(amqp_url: str, namespace: str = DEFAULT_NAMESPACE) -> Topology:
    topology = build(namespace)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await declare(channel, topology)
    return topology
