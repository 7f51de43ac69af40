"""Run the scheduling worker: `python -m workers.modify_handler` (or `apptctl worker modify_handler`)."""

from contracts.catalog import MODIFY_HANDLER
from workers.runtime.entrypoint import main

if __name__ == "__main__":
    main(MODIFY_HANDLER.name)
