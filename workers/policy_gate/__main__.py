"""Run the policy gate: `python -m workers.policy_gate` (or `apptctl worker policy_gate`)."""

from contracts.catalog import POLICY_GATE
from workers.runtime.entrypoint import main

if __name__ == "__main__":
    main(POLICY_GATE.name)
