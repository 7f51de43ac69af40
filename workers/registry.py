"""The workers by name: each one's handlers and run options, from its catalog entry (contracts/catalog.py)."""

from importlib import import_module

from contracts.catalog import WORKER_NAMES, worker
from workers.runtime.worker import WorkerSpec

__all__ = ["WORKER_NAMES", "worker_spec"]


def worker_spec(name: str) -> WorkerSpec:
    """What the runtime needs to run the worker `name`: its `HANDLERS`, imported only now (a worker loads
    its own handlers, not the others'), whether it writes an outbox and whether tenants take turns."""
    entry = worker(name)
    handlers = import_module(entry.handlers).HANDLERS
    return WorkerSpec(entry.name, handlers, emits_events=entry.emits_events, tenant_lanes=entry.tenant_lanes)
