"""The route declaration: one source for bindings, permissions, consumers' route checks and replays."""

import json

import pytest

from apptctl.dlq import DeadLetter, replay_refusal
from contracts.decoding import DecodeFailure, decode, encode
from contracts.reasons import DeadLetterReason
from contracts.registry import MESSAGE_CLASSES, type_name
from contracts.routes import PUBLISHERS, ROUTES, SUBSCRIPTIONS, RouteTable, subscribed_routes, topic_matches
from contracts.signing import Keyring, KeyringError, SignatureLimits, signature_headers, verify
from infra.security.rabbitmq import IDENTITIES
from infra.topology import RETURN_ROLE, build
from infra.topology import SUBSCRIPTIONS as BINDINGS
from tests import factories as f
from workers.runtime.signatures import SignaturePolicy

TOPOLOGY = build("ns", (5,))


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("#", "appointment.canceled", True),
        ("#", "", True),
        ("appointment.*", "appointment.canceled", True),
        ("appointment.*", "appointment.canceled.x", False),
        ("appointment.#", "appointment", True),
        ("modify.requested", "modify.requested", True),
        ("modify.requested", "modify.approved", False),
        ("*.requested", "modify.requested", True),
    ],
)
def test_topic_patterns_match_like_the_broker(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


def test_every_message_type_has_one_route_and_a_known_publisher() -> None:
    assert {(r.message_type, r.schema_version) for r in ROUTES} == {
        (type_name(c), c.model_fields["schema_version"].default) for c in MESSAGE_CLASSES
    }
    assert set(PUBLISHERS.values()) <= set(IDENTITIES)


def test_the_topology_binds_each_work_queue_with_the_declared_subscriptions_and_the_return_exchange() -> None:
    for worker, subscriptions in SUBSCRIPTIONS.items():
        assert [(b.exchange_role, b.routing_key) for b in BINDINGS[worker]] == list(subscriptions)
        queue = TOPOLOGY.queue_of(worker)
        assert [(b.exchange_role, b.routing_key) for b in queue.bindings] == [
            *subscriptions,
            (RETURN_ROLE, queue.name),
        ]
        assert subscribed_routes(worker), f"{worker} subscribes to no declared route"
    for delay in TOPOLOGY.queues:
        if delay.kind == "delay":
            assert delay.arguments["x-dead-letter-exchange"] == TOPOLOGY.return_exchange


def test_the_portals_exchange_carries_portal_messages_only() -> None:
    portal_routes = [r for r in ROUTES if r.exchange_role == "requests"]
    assert portal_routes and {r.publisher for r in portal_routes} == {"portal"}
    assert {r.exchange_role for r in ROUTES if r.publisher == "portal"} == {"requests"}


def table(worker: str) -> RouteTable:
    return RouteTable.of(worker, TOPOLOGY.exchange_names())


@pytest.mark.parametrize("worker", sorted(SUBSCRIPTIONS))
def test_a_body_under_another_types_routing_key_is_refused(worker: str) -> None:
    routes = table(worker)
    for exchange, key, message_type, version in routes.accepted:
        assert routes.refusal(exchange, key, message_type, version) is None
        for other_exchange, other_key in routes.targets - {(exchange, key)}:
            refusal = routes.refusal(other_exchange, other_key, message_type, version)
            assert refusal is not None and f"it came by {other_exchange} / {other_key}" in refusal
        assert routes.refusal("", TOPOLOGY.queue_of(worker).name, message_type, version) is not None


def test_the_gate_accepts_an_office_approval_only_from_the_office_exchange() -> None:
    gate = table("policy_gate")
    assert gate.refusal("ns.office", "office.approval.decided", "office.approval.decided", 1) is None
    refusal = gate.refusal("ns.requests", "modify.requested", "office.approval.decided", 1)
    assert refusal == (
        "office.approval.decided v1 reaches policy_gate only by ns.office / office.approval.decided; "
        "it came by ns.requests / modify.requested"
    )
    assert table("portal_sync").refusal("ns.events", "modify.rejected", "appointment.canceled", 1) is not None
    assert table("modify_handler").refusal("ns.internal", "modify.approved", "modify.approved", 1) is None


def letter(queue: str, body: bytes, exchange: str, key: str) -> DeadLetter:
    headers = {"x-original-exchange": exchange, "x-original-routing-key": key}
    return DeadLetter(queue, "m-1", "x", headers, {"content_type": "application/json"}, body)


def test_a_replay_goes_only_to_a_route_of_the_dead_queues_own_worker_and_its_type() -> None:
    gate_dead = TOPOLOGY.queue_of("policy_gate").dead_letter_queue or ""
    approval = encode(f.approval_decided())
    approved = encode(f.modify_approved())
    ok = letter(gate_dead, approval, "ns.office", "office.approval.decided")
    assert replay_refusal(TOPOLOGY, ok, ("ns.office", "office.approval.decided")) is None
    into_internal = replay_refusal(TOPOLOGY, ok, ("ns.internal", "modify.approved"))
    assert into_internal is not None and "is not a route of policy_gate" in into_internal
    wrong_body = replay_refusal(
        TOPOLOGY, letter(gate_dead, approved, "", ""), ("ns.requests", "modify.requested")
    )
    assert wrong_body is not None and wrong_body.startswith("refused: modify.approved v1 is not a message")
    # an undecodable body may go back to its own route (it will be checked, and refused, again)
    assert (
        replay_refusal(TOPOLOGY, letter(gate_dead, b"{", "", ""), ("ns.requests", "modify.requested")) is None
    )
    assert (
        replay_refusal(TOPOLOGY, letter("ns.unknown.dead", approval, "", ""), ("ns.office", "x")) is not None
    )


# --- keys bound to businesses ----------------------------------------------------------------------

SECRET = "s" * 40
BOUND = Keyring.from_json(
    json.dumps(
        {
            "portal-web": {"current": {"id": "web-1", "secret": SECRET}},
            "portal-acme": {
                "current": {"id": "acme-1", "secret": SECRET + "a"},
                "tenants": ["acme", "acme-2"],
            },
        }
    )
)
POLICY = SignaturePolicy.for_handlers([type(f.modify_requested())], BOUND, "ns.requests", SignatureLimits())


def verified_for(message, producer: str):

    body = encode(message)
    headers = signature_headers(body, BOUND.current_for(producer), signed_at=1_800_000_000)
    return verify(body, headers, BOUND, now=1_800_000_000)


def test_a_bound_key_acts_only_for_its_tenants_and_an_unbound_key_for_any() -> None:
    assert POLICY is not None
    for tenant in ("acme", "acme-2"):
        message = f.modify_requested(tenant=tenant, producer="portal-acme")
        assert POLICY.check_parsed(message, verified_for(message, "portal-acme")) is None
    foreign = f.modify_requested(tenant="globex", producer="portal-acme")
    refused = POLICY.check_parsed(foreign, verified_for(foreign, "portal-acme"))
    assert refused is not None and refused.reason == DeadLetterReason.SIGNATURE_TENANT_NOT_ALLOWED
    assert "'globex'" in refused.detail and SECRET not in refused.detail
    anywhere = f.modify_requested(tenant="globex", producer="portal-web")
    assert POLICY.check_parsed(anywhere, verified_for(anywhere, "portal-web")) is None
    assert BOUND.current_for("portal-web").tenants is None


def test_a_portal_signature_never_makes_another_type_acceptable() -> None:
    assert POLICY is not None
    approval = f.approval_decided()
    refused = POLICY.check_parsed(approval, verified_for(f.modify_requested(), "portal-web"))
    assert refused is not None and refused.reason == DeadLetterReason.ROUTE_TYPE_MISMATCH
    assert POLICY.check_parsed(approval, None) is None  # unsigned, from the office: the route decides


@pytest.mark.parametrize("tenants", ["[]", '"acme"', "[1]", '[""]'])
def test_a_bad_tenant_list_is_refused_with_what_to_fix(tenants: str) -> None:
    keys = '{"portal-web": {"current": {"id": "k", "secret": "' + SECRET + '"}, "tenants": ' + tenants + "}}"
    with pytest.raises(KeyringError, match="'tenants' must be a non-empty list"):
        Keyring.from_json(keys)


# --- parser failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 30_000 + b"]" * 30_000,
        b'{"type": "modify.requested", "schema_version": 1, "payload": '
        + b"[" * 20_000
        + b"]" * 20_000
        + b"}",
        b'{"type": "modify.requested", "n": 1' + b"0" * 5_000 + b"}",
    ],
)
def test_any_parser_failure_is_malformed_json(body: bytes) -> None:
    assert len(body) < 64 * 1024
    result = decode(body)
    assert isinstance(result, DecodeFailure) and result.reason == DeadLetterReason.MALFORMED_JSON


# --- the development keyring ------------------------------------------------------------------------


def test_the_development_keyring_is_refused_outside_development_mode(monkeypatch) -> None:
    from workers.runtime.settings import DEV_PORTAL_KEYS_FILE, Settings

    for name in ("APPT_PORTAL_KEYS", "APPT_PORTAL_KEYS_FILE", "APPT_DEV_MODE"):
        monkeypatch.delenv(name, raising=False)
    dev = Settings(APPT_PORTAL_KEYS_FILE=str(DEV_PORTAL_KEYS_FILE))
    with pytest.raises(KeyringError, match=r"development keys .* set APPT_DEV_MODE=1") as refused:
        dev.production_keyring()
    assert not any(secret.decode() in str(refused.value) for secret in dev.keyring().secrets)  # type: ignore[union-attr]
    assert Settings(APPT_PORTAL_KEYS_FILE=str(DEV_PORTAL_KEYS_FILE), APPT_DEV_MODE="1").production_keyring()
    own = Settings(
        APPT_PORTAL_KEYS=json.dumps({"portal-web": {"current": {"id": "prod-1", "secret": SECRET}}})
    )
    assert own.production_keyring() is not None


def test_a_broker_dead_letter_goes_back_by_the_route_the_broker_saw_not_its_headers() -> None:
    from apptctl.dlq import replay_target

    forged = {"x-original-exchange": "ns.office", "x-original-routing-key": "office.approval.decided"}
    crash_loop = {"queue": "ns.policy_gate", "reason": "delivery_limit"}
    first = {**crash_loop, "exchange": "ns.requests", "routing-keys": ["modify.requested"]}
    assert replay_target(TOPOLOGY, {**forged, "x-death": [first]}, "ns.policy_gate") == (
        "ns.requests",
        "modify.requested",
    )
    # a retry copy the worker parked (back through the return exchange): its x-original-* are the worker's
    retried = {**crash_loop, "exchange": "ns.retry-return", "routing-keys": ["ns.policy_gate"]}
    expired = {"queue": "ns.policy_gate.delay.5s", "reason": "expired", "exchange": "ns.retry.policy_gate"}
    assert replay_target(TOPOLOGY, {**forged, "x-death": [retried, expired]}, "ns.policy_gate") == (
        "ns.office",
        "office.approval.decided",
    )
    # a worker's own dead letter names the route it came by
    ours = {**forged, "x-dead-lettered-by": "policy_gate"}
    assert replay_target(TOPOLOGY, ours, "ns.policy_gate") == ("ns.office", "office.approval.decided")
    assert replay_target(TOPOLOGY, forged, "ns.policy_gate") is None  # nothing believable says where
    # a crash loop keeps the publisher's headers, ours included: the broker's entry still decides
    forged_ours = {**ours, "x-death": [first]}
    assert replay_target(TOPOLOGY, forged_ours, "ns.policy_gate") == ("ns.requests", "modify.requested")
