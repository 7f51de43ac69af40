"""The catalog of identities agrees with itself and with everything built from it: every consumed message
has a publisher, every worker its queues, handlers, schema, role, inbox and outbox, and nothing is left over.

`catalog_problems` checks a catalog (the real one, or one with an entry removed or broken) against the
contracts, the topology, the tables and the broker permissions; the tests below run it on the real catalog
and on broken copies, each of which it must catch."""

from collections.abc import Sequence
from dataclasses import replace
from importlib import import_module
from pathlib import Path
from types import MappingProxyType

import pytest

from contracts import catalog
from contracts.catalog import (
    AUDITOR,
    EXTERNAL_PUBLISHERS,
    MESSAGING,
    MODIFY_HANDLER,
    OFFICE_PUBLISHER,
    POLICY_GATE,
    PORTAL_SYNC,
    WORKERS,
    Publisher,
    Worker,
)
from contracts.portal_v1 import ModifyOutcome
from contracts.registry import MESSAGE_CLASSES, type_name
from contracts.routes import ALSO_PUBLISHED_BY, PUBLISHERS, SUBSCRIPTIONS, topic_matches
from infra.db import tables
from infra.security import postgres
from infra.security.rabbitmq import permissions
from infra.topology import DEAD_LETTER_ROLE, RETRY_ROLE, RETURN_ROLE, Topology, build, own_role
from workers.registry import worker_spec

TOPOLOGY = build("ns", (5, 30))
WORKER_PACKAGES = Path(__file__).resolve().parents[2] / "workers"
PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "DELETE"}
API_SCHEMA = "portal_api"  # the portal HTTP API's idempotency records: its roles', no worker's


def _version(cls) -> int:
    return cls.model_fields["schema_version"].default


def catalog_problems(
    workers: Sequence[Worker] = WORKERS,
    publishers: Sequence[Publisher] = EXTERNAL_PUBLISHERS,
    topology: Topology = TOPOLOGY,
) -> list[str]:
    """Everything in which the catalog disagrees with itself, the contracts, the topology or the tables."""
    problems: list[str] = []
    senders = (*publishers, *workers)
    names = [identity.name for identity in senders] + [AUDITOR.name]
    if len(set(names)) != len(names):
        problems.append(f"two identities share a name: {names}")

    # Messages: every documented type has exactly one publisher, and nothing else is published.
    primary: dict[str, list[str]] = {}
    for identity in senders:
        for type_ in identity.publishes:
            primary.setdefault(type_, []).append(identity.name)
    documented = {type_name(cls) for cls in (*MESSAGE_CLASSES, ModifyOutcome)}
    for type_ in sorted(documented):
        if len(primary.get(type_, [])) != 1:
            problems.append(f"{type_}: published by {primary.get(type_) or 'no identity'} (want exactly one)")
    for identity in senders:
        for type_ in (*identity.publishes, *identity.also_publishes):
            if type_ not in documented:
                problems.append(f"{identity.name} publishes {type_!r}, which is no message of the contracts")
        for type_ in identity.also_publishes:
            if identity.name in primary.get(type_, []) or not primary.get(type_):
                problems.append(f"{identity.name} also publishes {type_!r} but nobody else first")

    # Consumption: each subscription brings at least one route, each route has a publisher and a handler.
    for worker in workers:
        routed = {
            cls
            for role, pattern in worker.consumes
            for cls in MESSAGE_CLASSES
            if cls.exchange_role == role and topic_matches(pattern, cls.routing_key)
        }
        for role, pattern in worker.consumes:
            if not any(c.exchange_role == role and topic_matches(pattern, c.routing_key) for c in routed):
                problems.append(f"{worker.name}: its subscription {role} / {pattern} brings no message")
        for cls in sorted(routed, key=lambda c: (type_name(c), _version(c))):
            if not primary.get(type_name(cls)):
                problems.append(
                    f"{worker.name} consumes {type_name(cls)} v{_version(cls)}, which nobody here publishes"
                )
        handlers = set(import_module(worker.handlers).HANDLERS)
        for cls in sorted(routed - handlers, key=type_name):
            problems.append(f"{worker.name} is bound to {type_name(cls)} v{_version(cls)} but has no handler")
        for cls in sorted(handlers - routed, key=type_name):
            problems.append(f"{worker.name} handles {type_name(cls)} v{_version(cls)}, which never comes")

    # Queues and exchanges: each worker's, bound as it consumes; none for anyone outside the catalog.
    worker_names = {worker.name for worker in workers}
    for worker in workers:
        try:
            queue = topology.queue_of(worker.name)
        except KeyError:
            problems.append(f"{worker.name}: no work queue in the topology")
            continue
        bindings = [(b.exchange_role, b.routing_key) for b in queue.bindings]
        if bindings != [*worker.consumes, (RETURN_ROLE, queue.name)]:
            problems.append(f"{worker.name}: its queue is bound by {bindings}, not by what it consumes")
        if queue.dead_letter_queue not in {q.name for q in topology.queues}:
            problems.append(f"{worker.name}: no dead-letter queue")
        if not topology.delay_queues_of(worker.name):
            problems.append(f"{worker.name}: no delay queues")
        for role in (DEAD_LETTER_ROLE, RETRY_ROLE):
            if not topology.exchanges_with_role(own_role(role, worker.name)):
                problems.append(f"{worker.name}: no {role} exchange of its own")
    for queue in topology.queues:
        if queue.worker is not None and queue.worker not in worker_names:
            problems.append(f"queue {queue.name} belongs to {queue.worker}, which is not in the catalog")

    # Database: each worker's own schema (no two share one), the tables it reads, its inbox and outbox.
    owners: dict[str, list[str]] = {}
    for worker in workers:
        owners.setdefault(worker.owns, []).append(worker.name)
        if worker.owns == MESSAGING:
            problems.append(f"{worker.name} owns the messaging schema, which every worker shares")
        for table, privileges in worker.reads.items():
            if table not in tables.metadata.tables:
                problems.append(f"{worker.name} reads {table}, which is no table")
            if table.split(".")[0] == worker.owns or not set(privileges) <= PRIVILEGES:
                problems.append(f"{worker.name} reads {table} {privileges}: outside its own schema, as DML")
        for table in (worker.inbox_table, *((worker.outbox_table,) if worker.emits_events else ())):
            if table not in tables.metadata.tables:
                problems.append(f"{worker.name}: no partition {table}")
    # Every schema but the shared messaging one and the portal HTTP API's own has one worker's role.
    schemas = {table.schema for table in tables.metadata.tables.values()} - {MESSAGING, API_SCHEMA}
    for schema in sorted(schemas | set(owners)):
        if len(owners.get(schema, [])) != 1:
            problems.append(f"schema {schema}: owned by {owners.get(schema) or 'no worker role'}")

    # Processes: a worker package runs a catalog worker; each catalog worker runs from its package.
    packages = {p.parent.name for p in WORKER_PACKAGES.glob("*/__main__.py")}
    for package in sorted(packages - worker_names):
        problems.append(f"workers/{package} runs a worker the catalog does not declare")
    for worker in workers:
        if not worker.handlers.startswith(f"workers.{worker.name}."):
            problems.append(f"{worker.name}: its handlers {worker.handlers} are not in workers/{worker.name}")
    return problems


def test_the_catalog_agrees_with_the_contracts_the_topology_and_the_tables() -> None:
    assert catalog_problems() == []


def test_routes_permissions_roles_and_registry_are_read_from_the_catalog() -> None:
    assert SUBSCRIPTIONS == {worker.name: worker.consumes for worker in WORKERS}
    assert PUBLISHERS == {
        t: identity.name for identity in (*EXTERNAL_PUBLISHERS, *WORKERS) for t in identity.publishes
    }
    assert ALSO_PUBLISHED_BY == {"office.outcome": (POLICY_GATE.name,)}
    allowed = permissions(TOPOLOGY)
    assert set(allowed) == set(catalog.IDENTITIES)
    for worker in WORKERS:
        spec = worker_spec(worker.name)
        assert (spec.name, spec.emits_events, spec.tenant_lanes) == (
            worker.name,
            worker.emits_events,
            worker.tenant_lanes,
        )
        assert spec.handlers is import_module(worker.handlers).HANDLERS
        assert tables.inbox_table(worker.name) == worker.inbox_table
        assert tables.outbox_table(worker.name) == worker.outbox_table
        assert worker.inbox_table in postgres.uses(worker) and worker.outbox_table in postgres.uses(worker)
    assert catalog.DATABASE_IDENTITIES == (*catalog.WORKER_NAMES, AUDITOR.name)
    with pytest.raises(KeyError, match="unknown worker 'nobody'; choose one of policy_gate"):
        worker_spec("nobody")


def _without(entries: Sequence, gone) -> tuple:
    return tuple(entry for entry in entries if entry is not gone)


def _changed(entry: Worker, **changes) -> tuple[Worker, ...]:
    """The catalog's workers with one entry changed."""
    return tuple(replace(w, **changes) if w is entry else w for w in WORKERS)


@pytest.mark.parametrize(
    ("workers", "publishers", "expected"),
    [
        pytest.param(
            _without(WORKERS, POLICY_GATE),
            EXTERNAL_PUBLISHERS,
            "modify_handler consumes modify.approved v1, which nobody here publishes",
            id="a worker removed: what it published is consumed by nobody's publisher",
        ),
        pytest.param(
            _without(WORKERS, MODIFY_HANDLER),
            EXTERNAL_PUBLISHERS,
            "schema scheduling: owned by no worker role",
            id="a worker removed: its schema has no role",
        ),
        pytest.param(
            _without(WORKERS, PORTAL_SYNC),
            EXTERNAL_PUBLISHERS,
            "queue ns.portal_sync belongs to portal_sync, which is not in the catalog",
            id="a worker removed: its queue is left over",
        ),
        pytest.param(
            WORKERS,
            _without(EXTERNAL_PUBLISHERS, OFFICE_PUBLISHER),
            "modify_handler consumes office.appointment.recorded v2, which nobody here publishes",
            id="a publisher removed",
        ),
        pytest.param(
            _changed(POLICY_GATE, consumes=(*POLICY_GATE.consumes, ("events", "job.status_changed"))),
            EXTERNAL_PUBLISHERS,
            "policy_gate is bound to job.status_changed v1 but has no handler",
            id="a subscription without a handler",
        ),
        pytest.param(
            _changed(POLICY_GATE, consumes=POLICY_GATE.consumes[1:]),
            EXTERNAL_PUBLISHERS,
            "policy_gate handles modify.requested v1, which never comes",
            id="a handler without a subscription",
        ),
        pytest.param(
            _changed(POLICY_GATE, consumes=(*POLICY_GATE.consumes, ("office", "office.nothing"))),
            EXTERNAL_PUBLISHERS,
            "policy_gate: its subscription office / office.nothing brings no message",
            id="a subscription to nothing",
        ),
        pytest.param(
            _changed(MODIFY_HANDLER, publishes=(*MODIFY_HANDLER.publishes, "modify.approved")),
            EXTERNAL_PUBLISHERS,
            "modify.approved: published by ['policy_gate', 'modify_handler'] (want exactly one)",
            id="a type with two first publishers",
        ),
        pytest.param(
            _changed(MODIFY_HANDLER, owns="policy"),
            EXTERNAL_PUBLISHERS,
            "schema policy: owned by ['policy_gate', 'modify_handler']",
            id="a schema owned twice",
        ),
        pytest.param(
            _changed(POLICY_GATE, reads=MappingProxyType({"scheduling.nothing": ("SELECT",)})),
            EXTERNAL_PUBLISHERS,
            "policy_gate reads scheduling.nothing, which is no table",
            id="a read of no table",
        ),
        pytest.param(
            _changed(POLICY_GATE, handlers="workers.portal_sync.handlers"),
            EXTERNAL_PUBLISHERS,
            "policy_gate: its handlers workers.portal_sync.handlers are not in workers/policy_gate",
            id="another worker's handlers",
        ),
    ],
)
def test_a_removed_or_inconsistent_entry_is_caught(workers, publishers, expected: str) -> None:
    assert expected in catalog_problems(workers, publishers)


def test_a_worker_without_its_queues_in_the_topology_is_caught() -> None:
    without = replace(TOPOLOGY, queues=tuple(q for q in TOPOLOGY.queues if q.worker != "modify_handler"))
    assert "modify_handler: no work queue in the topology" in catalog_problems(topology=without)
