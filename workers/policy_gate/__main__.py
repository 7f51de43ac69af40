"""Run the policy gate: `python -m workers.policy_gate` (or `apptctl worker policy_gate`)."""

from workers.runtime.lean import leave_out_unused_extras

leave_out_unused_extras()  # before anything imports structlog (workers/runtime/lean.py)

from contracts.catalog import POLICY_GATE  # noqa: E402
from workers.runtime.entrypoint import main  # noqa: E402

if __name__ == "__main__":
    main(POLICY_GATE.name)
