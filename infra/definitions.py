"""RabbitMQ definitions (the management import/export JSON format) of a topology, built from the one spec."""

import json
from typing import Any

from infra.topology import Topology


def definitions(topology: Topology, vhost: str = "/") -> dict[str, Any]:
    """Exchanges, queues (with their arguments) and bindings, ready for `rabbitmqctl import_definitions`,
    the management UI's import, or the broker's `load_definitions` at boot."""
    exchange_names = {spec.role: spec.name for spec in topology.exchanges}
    return {
        "exchanges": [
            {
                "name": spec.name,
                "vhost": vhost,
                "type": spec.type.value,
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {"alternate-exchange": spec.alternate} if spec.alternate else {},
            }
            for spec in topology.exchanges
        ],
        "queues": [
            {
                "name": spec.name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": dict(spec.arguments),
            }
            for spec in topology.queues
        ],
        "bindings": [
            {
                "source": exchange_names[binding.exchange_role],
                "vhost": vhost,
                "destination": spec.name,
                "destination_type": "queue",
                "routing_key": binding.routing_key,
                "arguments": {},
            }
            for spec in topology.queues
            for binding in spec.bindings
        ],
    }


def render(document: dict[str, Any]) -> str:
    """The one text form of a definitions document (stable, so a committed copy can be checked)."""
    return json.dumps(document, indent=2) + "\n"
