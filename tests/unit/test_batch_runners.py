"""The batch runners never leave a delivery waiting with no runner to take it (workers/runtime/batch.py)."""

import asyncio

from tests import factories as f
from workers.runtime.batch import Batches
from workers.runtime.outcomes import Handled


class _Transactions:
    """The single path's transaction, stood in: every delivery is handled."""

    def __init__(self) -> None:
        self.handled: list[str] = []

    async def once(self, message, handler) -> Handled:
        self.handled.append(message.correlation_id)
        return Handled()


def _batches(transactions: _Transactions, runners: int) -> Batches:
    return Batches(
        worker="portal_sync",
        engine=None,
        publisher=None,
        transactions=transactions,
        metrics=None,
        batch_max=32,
        runners=runners,
    )


async def _handler(message, uow) -> None:
    return None


async def test_a_delivery_submitted_as_the_last_runner_ends_is_taken():
    # The submitter of a delivery wakes before the ended runner's done-callback runs; a runner that still
    # counted itself then left the next delivery waiting for ever (seen in portal_sync: an office.outcome
    # received and never handled until shutdown).
    transactions = _Transactions()
    batches = _batches(transactions, runners=1)

    async def one_after_another() -> list:
        # Awaited directly in one task: the next submit runs in the same turn of the loop as the answer.
        return [await batches.submit(f.modify_requested(request_id=f"r-{i}"), _handler) for i in range(5)]

    answers = await asyncio.wait_for(one_after_another(), timeout=2)
    assert all(isinstance(a, Handled) for a in answers)
    assert transactions.handled == [f"r-{i}" for i in range(5)]
