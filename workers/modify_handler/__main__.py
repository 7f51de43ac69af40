"""Run the scheduling worker: `python -m workers.modify_handler` (or `apptctl worker modify_handler`)."""

from workers.runtime.lean import leave_out_unused_extras

leave_out_unused_extras()  # before anything imports structlog (workers/runtime/lean.py)

from contracts.catalog import MODIFY_HANDLER  # noqa: E402
from workers.runtime.entrypoint import main  # noqa: E402

if __name__ == "__main__":
    main(MODIFY_HANDLER.name)
