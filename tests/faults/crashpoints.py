"""A worker that dies at one step boundary, the way `kill -9` would (os._exit: no ack, no rollback, no
flush, sockets dropped by the kernel). Test-only: it patches the runtime in its own process.

    APPT_CRASH_AT=<point> APPT_CRASH_AFTER=<n> python -m tests.faults.crashpoints <worker>

dies at the n-th passage through <point> in this process's life:
  after_receive        a delivery arrived; nothing decoded, nothing written
  mid_transaction      the handler wrote everything (inbox row, effect, outbox rows); not committed
  after_commit         the transaction committed; the delivery is not acked
  relay_after_publish  the relay published an outbox row and the broker confirmed it; not marked sent
Without APPT_CRASH_AT it is the plain worker. The exit code says which point fired (EXIT_CODES).

The runtime has no fault-injection hook, so this wraps private methods (`QueueConsumer._process`,
`UnitOfWork.commit`, `OutboxRelay._publish_all`); if one is renamed, the worker fails to start and the
test says so (docs/reliability.md describes the hook the runtime should offer instead).
"""

import itertools
import json
import os
import sys
from datetime import UTC, datetime

EXIT_CODES = {"after_receive": 71, "mid_transaction": 72, "after_commit": 73, "relay_after_publish": 74}
POINT_OF_CODE = {code: point for point, code in EXIT_CODES.items()}


def install(point: str, after: int, worker: str) -> None:
    from workers.runtime.consumer import QueueConsumer
    from workers.runtime.database import UnitOfWork
    from workers.runtime.outbox import OutboxRelay

    passages = itertools.count(1)

    def passage() -> None:
        if next(passages) == after:
            line = {"event": "crashpoint.hit", "point": point, "worker": worker}
            sys.stdout.write(json.dumps({**line, "timestamp": datetime.now(UTC).isoformat()}) + "\n")
            sys.stdout.flush()
            os._exit(EXIT_CODES[point])

    if point == "after_receive":
        process = QueueConsumer._process

        async def _process(self, incoming):
            passage()
            return await process(self, incoming)

        QueueConsumer._process = _process
    elif point in ("mid_transaction", "after_commit"):
        commit = UnitOfWork.commit

        async def _commit(self):
            if point == "mid_transaction":
                passage()
            await commit(self)
            if point == "after_commit":
                passage()

        UnitOfWork.commit = _commit
    elif point == "relay_after_publish":
        # The relay publishes a batch and awaits the confirms together (`_publish_all`); older runtimes
        # published row by row (`_publish_row`). Either way: confirmed by the broker, not yet marked.
        name = "_publish_all" if hasattr(OutboxRelay, "_publish_all") else "_publish_row"
        publish = getattr(OutboxRelay, name)

        async def _published(self, *args):
            result = await publish(self, *args)
            passage()
            return result

        setattr(OutboxRelay, name, _published)
    else:
        raise SystemExit(f"unknown APPT_CRASH_AT {point!r}; choose one of {', '.join(EXIT_CODES)}")


def main() -> None:
    worker = sys.argv[1]
    point = os.environ.get("APPT_CRASH_AT")
    if point:
        install(point, int(os.environ.get("APPT_CRASH_AFTER", "1")), worker)
    from workers.runtime.entrypoint import main as run

    run(worker)


if __name__ == "__main__":
    main()
