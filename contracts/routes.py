"""The routes: which message travels on which exchange and key, who publishes it, who subscribes.

Which message type and schema version travels on which exchange and routing key (the message classes),
who publishes it and which routes each worker subscribes to (the catalog, contracts/catalog.py). The
one table that the topology's bindings, the broker permissions, every consumer's route check,
`dlq replay` and the AsyncAPI document read.

A route decides the type: a worker accepts a delivery only when the exchange and routing key it came by
and the type and schema version its body names are one route of the worker's subscriptions. So a
portal, whose broker user may publish only `modify.requested` to the requests exchange, can never have an
office, internal or event message accepted, whatever its body says and whoever signed it.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from contracts.catalog import EXTERNAL_PUBLISHERS, WORKERS
from contracts.envelope import Envelope
from contracts.registry import MESSAGE_CLASSES, type_name

# Every identity that publishes: nothing in code says who publishes (workers build messages in
# handlers), so each catalog entry declares it, and the broker permissions (topic permissions pin each
# identity's routing keys) are built from these.
_SENDERS = (*EXTERNAL_PUBLISHERS, *WORKERS)


def _publishers() -> dict[str, str]:
    """Each message type -> the one identity that lists it under `publishes`."""
    declared: dict[str, str] = {}
    for identity in _SENDERS:
        for type_ in identity.publishes:
            if type_ in declared:
                raise ValueError(
                    f"message type {type_!r} is published by both {declared[type_]} and {identity.name}; "
                    "list it under also_publishes of the second one (contracts/catalog.py)"
                )
            declared[type_] = identity.name
    return declared


PUBLISHERS: dict[str, str] = _publishers()
# Message types a second identity publishes too (`also_publishes`), after the one in PUBLISHERS.
ALSO_PUBLISHED_BY: dict[str, tuple[str, ...]] = {
    type_: tuple(i.name for i in _SENDERS if type_ in i.also_publishes)
    for type_ in dict.fromkeys(t for i in _SENDERS for t in i.also_publishes)
}


def publishers_of(type_: str) -> tuple[str, ...]:
    return (PUBLISHERS[type_], *ALSO_PUBLISHED_BY.get(type_, ()))


# What each worker consumes (its catalog entry's `consumes`): (exchange role, routing key pattern, AMQP
# topic syntax). The topology binds each work queue with these; the consumer accepts only the routes
# they match.
SUBSCRIPTIONS: dict[str, tuple[tuple[str, str], ...]] = {w.name: w.consumes for w in WORKERS}


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
    if name not in PUBLISHERS:
        raise ValueError(
            f"message type {name!r} has no publisher: list it under `publishes` of one identity in "
            "contracts/catalog.py"
        )
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
