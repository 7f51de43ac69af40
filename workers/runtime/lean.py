"""What a worker process leaves unimported: optional extras its libraries load for features it never uses.

structlog imports its console renderer's extras whenever they are installed: `rich` (and through it
`pygments` and `attrs`), about 7 MB resident in every process. A worker writes JSON lines
(workers/runtime/logging.py) and never renders to a console, and `rich` is installed only for apptctl's
output. So the worker's `python -m` entry points mark it missing before anything imports structlog;
structlog then does without, as it does where `rich` is not installed. A process that has imported
`rich` already (apptctl) keeps it.
"""

import sys

UNUSED_EXTRAS = ("rich",)


def leave_out_unused_extras() -> None:
    """Make `import rich` fail in this process (ImportError), unless it was imported already."""
    for name in UNUSED_EXTRAS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "not importable"
