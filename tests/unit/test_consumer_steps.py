"""The consumer's steps and retry bookkeeping, pure: a delivery in, a typed answer out (no services)."""

from types import SimpleNamespace

from contracts.decoding import CONTENT_TYPE, encode
from contracts.portal_v1 import ModifyRequested
from contracts.reasons import DeadLetterReason
from contracts.routes import RouteTable
from infra.topology import build
from tests import factories as f
from workers.runtime.outcomes import DeadLettered, Duplicate, Handled, Requeued, RetryLater
from workers.runtime.redelivery import (
    ATTEMPT_HEADER,
    ORIGINAL_EXCHANGE,
    ORIGINAL_ROUTING_KEY,
    Bookkeeping,
    DelayedRetry,
)
from workers.runtime.steps import Admitted, Refusal, admit

TOPOLOGY = build("unit")
QUEUE = TOPOLOGY.queue_of("policy_gate").name
DELAYED = DelayedRetry("unit.retry.policy_gate", ("unit.policy_gate.delay.5s",), (5.0,), 3)
RETURN = TOPOLOGY.return_exchange
ROUTES = RouteTable.of("policy_gate", TOPOLOGY.exchange_names())


async def handler(message, uow) -> None:
    return None


def delivery(body: bytes, *, exchange: str, routing_key: str, headers: dict | None = None):
    return SimpleNamespace(
        body=body,
        headers=headers or {},
        content_type=CONTENT_TYPE,
        type=None,
        exchange=exchange,
        routing_key=routing_key,
    )


def accepted_route(message) -> tuple[str, str]:
    return next((e, k) for e, k, t, _ in ROUTES.accepted if t == message.type)


def steps(incoming):
    where = Bookkeeping.of(incoming, queue_name=QUEUE, delayed=DELAYED, return_exchange=RETURN)
    return admit(
        incoming,
        where,
        signatures=None,
        routes=ROUTES,
        handlers={ModifyRequested: handler},
        worker="policy_gate",
    )


def test_a_message_by_its_route_is_admitted_to_its_handler() -> None:
    message = f.modify_requested()
    exchange, key = accepted_route(message)
    admitted = steps(delivery(encode(message), exchange=exchange, routing_key=key))
    assert isinstance(admitted, Admitted) and admitted.handler is handler and admitted.message == message


def test_each_step_refuses_with_its_reason() -> None:
    message = f.modify_requested()
    exchange, key = accepted_route(message)
    malformed = steps(delivery(b"{not json", exchange=exchange, routing_key=key))
    assert malformed == Refusal(DeadLetterReason.MALFORMED_JSON, malformed.detail)
    misrouted = steps(delivery(encode(message), exchange=exchange, routing_key="somewhere.else"))
    assert isinstance(misrouted, Refusal) and misrouted.reason == DeadLetterReason.ROUTE_TYPE_MISMATCH
    assert misrouted.message_type == message.type


def test_retry_headers_are_believed_only_from_the_broker_through_the_return_exchange() -> None:
    message = f.modify_requested()
    exchange, key = accepted_route(message)
    claimed = {
        ATTEMPT_HEADER: 3,
        ORIGINAL_EXCHANGE: exchange,
        ORIGINAL_ROUTING_KEY: key,
        "x-death": [{"reason": "expired", "queue": DELAYED.queues[0]}],
    }
    forged = delivery(encode(message), exchange="unit.elsewhere", routing_key=QUEUE, headers=claimed)
    assert Bookkeeping.of(forged, queue_name=QUEUE, delayed=DELAYED, return_exchange=RETURN) == Bookkeeping(
        "unit.elsewhere", QUEUE, 0
    )
    returned = delivery(encode(message), exchange=RETURN or "", routing_key=QUEUE, headers=claimed)
    assert Bookkeeping.of(returned, queue_name=QUEUE, delayed=DELAYED, return_exchange=RETURN) == Bookkeeping(
        exchange, key, 3
    )


def test_outcomes_carry_what_metrics_and_logs_read() -> None:
    assert [o.label for o in (Handled(), Duplicate(), DeadLettered("x"), RetryLater(0), Requeued())] == [
        "handled",
        "duplicate",
        "dead_lettered",
        "retried",
        "requeued",
    ]
    assert DeadLettered("malformed_json").key == "dead_lettered:malformed_json"
    assert DELAYED.tier_index(7) == 0 and DELAYED.tier(0) == ("unit.policy_gate.delay.5s", 5.0)
