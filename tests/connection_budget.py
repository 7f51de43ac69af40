"""Measure the PostgreSQL connections a test run holds at peak: `python -m tests.connection_budget [pytest
args]` runs pytest and samples pg_stat_activity every 20 ms for the run's own databases (appt_test_<pid>_*,
the fault suite's and every database the run creates, all named after the pytest process id)."""

import asyncio
import os
import subprocess
import sys
import time

import asyncpg

from infra.db.admin import _maintenance_dsn
from workers.runtime.settings import Settings

BUDGET = 30  # README, "Tests": the suite must stay within this many connections at any moment
SAMPLE_S = 0.02


async def sample(pid: int, process: subprocess.Popen) -> tuple[int, dict[str, int]]:
    dsn, _ = _maintenance_dsn(os.environ.get("DATABASE_URL", Settings().database_url))
    connection = await asyncpg.connect(dsn)
    peak, at_peak = 0, {}
    try:
        while process.poll() is None:
            rows = await connection.fetch(
                "SELECT datname, count(*) AS n FROM pg_stat_activity WHERE datname LIKE $1 GROUP BY datname",
                f"%\\_{pid}\\_%",
            )
            total = sum(row["n"] for row in rows)
            if total > peak:
                peak, at_peak = total, {row["datname"]: row["n"] for row in rows}
            await asyncio.sleep(SAMPLE_S)
    finally:
        await connection.close()
    return peak, at_peak


def main(args: list[str]) -> int:
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "pytest", *args])
    peak, at_peak = asyncio.run(sample(process.pid, process))
    code = process.wait()
    print(f"\npeak PostgreSQL connections of this run: {peak} (budget {BUDGET}) {at_peak}")
    print(f"pytest exit code {code} after {time.monotonic() - started:.0f} s")
    return code or (1 if peak > BUDGET else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
