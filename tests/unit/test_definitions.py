"""infra/definitions.json: RabbitMQ definitions of the default namespace, generated from the one spec."""

from pathlib import Path

from infra.definitions import definitions, render
from infra.topology import DEFAULT_NAMESPACE, build

COMMITTED = Path(__file__).resolve().parents[2] / "infra" / "definitions.json"


def test_the_committed_definitions_are_fresh():
    expected = render(definitions(build(DEFAULT_NAMESPACE)))
    assert COMMITTED.read_text() == expected, (
        "infra/definitions.json is stale: regenerate it with "
        "`APPT_NAMESPACE=appt apptctl topology export --output infra/definitions.json`"
    )


def test_definitions_hold_every_exchange_queue_argument_and_binding():
    topology = build("ns")
    document = definitions(topology, vhost="v")
    assert {e["name"]: e["type"] for e in document["exchanges"]} == {
        spec.name: spec.type.value for spec in topology.exchanges
    }
    assert {q["name"]: q["arguments"] for q in document["queues"]} == {
        spec.name: spec.arguments for spec in topology.queues
    }
    assert sorted((b["source"], b["destination"], b["routing_key"]) for b in document["bindings"]) == sorted(
        (topology.exchange(b.exchange_role), spec.name, b.routing_key)
        for spec in topology.queues
        for b in spec.bindings
    )
    assert {item["vhost"] for key in ("exchanges", "queues", "bindings") for item in document[key]} == {"v"}
    assert all(q["durable"] and not q["auto_delete"] for q in document["queues"])
