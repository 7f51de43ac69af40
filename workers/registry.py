"""The three workers by name: each one's handlers and whether it emits events through the outbox."""

from workers.runtime.worker import WorkerSpec


def worker_spec(name: str) -> WorkerSpec:
    if name == "policy_gate":
        from workers.policy_gate.handlers import HANDLERS

        return WorkerSpec("policy_gate", HANDLERS, emits_events=True, tenant_lanes=True)
    if name == "modify_handler":
        from workers.modify_handler.handlers import HANDLERS

        return WorkerSpec("modify_handler", HANDLERS, emits_events=True)
    if name == "portal_sync":
        from workers.portal_sync.handlers import HANDLERS

        # The live feed; a flood's refusals reach it too.
        return WorkerSpec("portal_sync", HANDLERS, emits_events=True, tenant_lanes=True)
    raise KeyError(f"unknown worker {name!r}; choose one of policy_gate, modify_handler, portal_sync")


WORKER_NAMES = ("policy_gate", "modify_handler", "portal_sync")
