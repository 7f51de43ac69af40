"""The routes: which message travels on which exchange and key, who publishes it, who subscribes.

Which message type and schema version travels on which exchange and routing key, who publishes it,
and which routes each worker subscribes to. The one declaration that the topology's
bindings, the broker permissions, every consumer's route check, `dlq replay` and the AsyncAPI document read.

A route decides the type: a worker accepts a delivery only when the exchange and routing key it came by
and the type and schema version its body names are one route of the worker's subscriptions. So a
portal, whose broker user may publish only `modify.requested` to the requests exchange, can never have an
office, internal or event message accepted, whatever its body says and whoever signed it.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from contracts.envelope import Envelope
from contracts.registry import MESSAGE_CLASSES, type_name

# Who publishes each message type: a broker identity (infra/security/rabbitmq.py). Nothing in code says
# who publishes (workers build messages in handlers), so it is declared here, and the broker permissions
# (topic permissions pin each identity's routing keys) are built from it.
PUBLISHERS: dict[str, str] = {
    "modify.requested": "portal",
    "office.appointment.recorded": "office",
    "office.portal_settings.updated": "office",
    "modify.approved": "policy_gate",
    "offers.refresh": "policy_gate",
    "office.approval.decided": "office",
    "modify.rejected": "policy_gate",
    "modify.awaiting_approval": "policy_gate",
    "modify.failed": "modify_handler",
    "appointment.rescheduled": "modify_handler",
    "appointment.canceled": "modify_handler",
    "appointment.updated": "modify_handler",
    "job.status_changed": "modify_handler",
    "appointment.offer_changed": "policy_gate",
    "office.capacity.updated": "office",
    "capacity.window_changed": "modify_handler",
    "portal.view_changed": "portal_sync",
    "office.project.recorded": "office",
    "project.updated": "modify_handler",
    "modify.outcome": "portal_sync",
    "office.outcome": "modify_handler",
}
# Message types a second worker publishes too: the office's outcomes of settings and approvals come
# from the gate, those of appointment records, capacity and projects from the scheduling worker.
ALSO_PUBLISHED_BY: dict[str, tuple[str, ...]] = {"office.outcome": ("policy_gate",)}


def publishers_of(type_: str) -> tuple[str, ...]:
    return (PUBLISHERS[type_], *ALSO_PUBLISHED_BY.get(type_, ()))


# What each worker consumes: (exchange role, routing key pattern, AMQP topic syntax). The topology binds
# each work queue with these; the consumer accepts only the routes they match.
SUBSCRIPTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "policy_gate": (
        ("requests", "modify.requested"),
        ("office", "office.portal_settings.updated"),
        ("office", "office.approval.decided"),
        ("internal", "offers.refresh"),  # to itself: a large settings change, a chunk at a time
        # Facts an offer rests on (never `appointment.*`: that would bring back the gate's own offers).
        ("events", "appointment.rescheduled"),
        ("events", "appointment.canceled"),
        ("events", "appointment.updated"),
        ("events", "project.updated"),
    ),
    "modify_handler": (
        ("internal", "modify.approved"),
        ("office", "office.appointment.recorded"),
        ("office", "office.capacity.updated"),
        ("office", "office.project.recorded"),
    ),
    "portal_sync": (
        ("requests", "modify.requested"),
        ("events", "#"),
        ("office", "office.capacity.updated"),  # only the business unit's time zone (issue 13)
    ),
}


@dataclass(frozen=True)
class Route:
    """One message type and schema version, the exchange role and routing key it travels by, and the
    identity that publishes it."""

    exchange_role: str
    routing_key: str
    message_type: str
    schema_version: int
    publisher: str


def route_of(cls: type[Envelope]) -> Route:
    name = type_name(cls)
    return Route(
        cls.exchange_role,
        cls.routing_key,
        name,
        cls.model_fields["schema_version"].default,
        PUBLISHERS[name],
    )


ROUTES: tuple[Route, ...] = tuple(route_of(cls) for cls in MESSAGE_CLASSES)


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: `*` is one word, `#` zero or more words."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and p[0] in ("*", k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), routing_key.split("."))


def subscribed_routes(worker: str) -> tuple[Route, ...]:
    """The routes a worker's subscriptions bring it (its bindings matched against every declared route)."""
    subscriptions = SUBSCRIPTIONS.get(worker, ())
    return tuple(
        route
        for route in ROUTES
        if any(
            role == route.exchange_role and topic_matches(pattern, route.routing_key)
            for role, pattern in subscriptions
        )
    )


@dataclass(frozen=True)
class RouteTable:
    """A worker's accepted (exchange name, routing key, message type, schema version) combinations."""

    worker: str
    accepted: frozenset[tuple[str, str, str, int]]
    exchange_roles: Mapping[str, str]  # exchange name -> role (for messages a person reads)

    @classmethod
    def of(cls, worker: str, exchanges: Mapping[str, str]) -> "RouteTable":
        """`exchanges`: exchange role -> the deployment's exchange name."""
        accepted = frozenset(
            (exchanges[r.exchange_role], r.routing_key, r.message_type, r.schema_version)
            for r in subscribed_routes(worker)
        )
        return cls(worker, accepted, {name: role for role, name in exchanges.items()})

    @property
    def targets(self) -> frozenset[tuple[str, str]]:
        """The (exchange, routing key) pairs that lead to this worker."""
        return frozenset((exchange, key) for exchange, key, _, _ in self.accepted)

    def refusal(self, exchange: str, routing_key: str, message_type: str, schema_version: int) -> str | None:
        """None when the combination is one of the worker's routes; otherwise why not (for a header)."""
        if (exchange, routing_key, message_type, schema_version) in self.accepted:
            return None
        expected = sorted(
            f"{e} / {k}" for e, k, t, v in self.accepted if (t, v) == (message_type, schema_version)
        )
        came = f"{exchange or '(default exchange)'} / {routing_key[:100]}"
        what = f"{message_type} v{schema_version}"
        if expected:
            return f"{what} reaches {self.worker} only by {', '.join(expected)}; it came by {came}"
        return f"{what} is not a message {self.worker} accepts (it came by {came})"
