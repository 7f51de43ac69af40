"""Process entry point shared by the workers: settings, logging, run until SIGTERM."""

import signal
import sys

import structlog

from contracts.signing import KeyringError
from workers.runtime import faults, loop
from workers.runtime.logging import configure_logging
from workers.runtime.settings import Settings
from workers.runtime.worker import Worker


async def run_worker(name: str, settings: Settings | None = None) -> None:
    from workers.registry import worker_spec

    settings = settings or Settings()
    worker = Worker(worker_spec(name), settings)
    await worker.run()


def main(name: str) -> None:
    settings = Settings()
    configure_logging(settings.log_level, worker=name)
    try:
        point = faults.arm_from_environment()
    except ValueError as exc:
        sys.stderr.write(f"{name}: {exc}\n")
        sys.exit(2)
    if point is not None:
        structlog.get_logger(__name__).warning("worker.fault_armed", point=point.value)
    try:
        loop.run(run_worker(name, settings))
        # Drained and stopped: the event loop's signal handlers are gone with it. A SIGTERM arriving now
        # (a supervisor's stop after a Ctrl-C the worker already obeyed) must not turn a clean exit into
        # death by signal (-15) while the interpreter shuts down.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyringError as exc:  # a set-up error: say what to set, no traceback, exit 2 (no restart helps)
        structlog.get_logger(__name__).error("worker.misconfigured", error=str(exc))
        sys.stderr.write(f"{name}: {exc}\n")
        sys.exit(2)
