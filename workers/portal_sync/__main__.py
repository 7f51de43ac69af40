"""Run the read-store projector: `python -m workers.portal_sync` (or `apptctl worker portal_sync`)."""

from contracts.catalog import PORTAL_SYNC
from workers.runtime.entrypoint import main

if __name__ == "__main__":
    main(PORTAL_SYNC.name)
