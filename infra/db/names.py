"""The messaging tables' names by worker: inbox and outbox partitions and the relay's functions.

Plain strings from the catalog, apart from the table definitions (tables.py builds SQLAlchemy tables for
every schema, ~4 MB resident that a worker, which runs only SQL text, need not load).
"""

from contracts.catalog import MESSAGING, WORKER_NAMES, worker

# Partitioned by worker (migration 0008): each worker's role is granted only `messaging.<worker>_inbox`
# and `messaging.<worker>_outbox`, never the parents (which the owner and the auditor read whole); any
# other name lands in the `unassigned_*` default partitions (tests, tools).
WORKERS = WORKER_NAMES
UNASSIGNED = "unassigned"


def inbox_table(consumer: str) -> str:
    """Where `consumer`'s claims are written: its own partition when it is a worker (its role may write
    nowhere else), else the parent (the owner's tools and tests; rows go to the default partition)."""
    return worker(consumer).inbox_table if consumer in WORKERS else f"{MESSAGING}.inbox"


def outbox_table(producer: str) -> str:
    """Where `producer`'s events are written (as `inbox_table`)."""
    return worker(producer).outbox_table if producer in WORKERS else f"{MESSAGING}.outbox"


def outbox_function(producer: str, operation: str) -> tuple[str, tuple[str, ...]]:
    """The relay's `operation` (claim, mark, purge, backlog) for `producer`: the function's name and the
    leading arguments it takes. A worker's own SECURITY DEFINER function is bound to its partition;
    anyone else calls the generic one with the producer's name (with the caller's rights: the owner)."""
    if producer in WORKERS:
        return f"{worker(producer).outbox_table}_{operation}", ()
    return f"{MESSAGING}.outbox_{operation}", (producer,)
