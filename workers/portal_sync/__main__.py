"""Run the read-store projector: `python -m workers.portal_sync` (or `apptctl worker portal_sync`)."""

from workers.runtime.lean import leave_out_unused_extras

leave_out_unused_extras()  # before anything imports structlog (workers/runtime/lean.py)

from contracts.catalog import PORTAL_SYNC  # noqa: E402
from workers.runtime.entrypoint import main  # noqa: E402

if __name__ == "__main__":
    main(PORTAL_SYNC.name)
