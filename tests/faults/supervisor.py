"""A tiny supervisor for the fault suite: the three workers as real processes, restarted when they die."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from apptctl.processes import WorkerProcesses
from workers.registry import WORKER_NAMES


@dataclass(frozen=True)
class Exit:
    worker: str
    code: int | None
    expected: bool  # we killed it (or it crashed where the test asked it to)


class Supervisor(WorkerProcesses):
    """`WorkerProcesses` that restarts any worker that exits while supervising, and can kill one.

    `env_for(worker, start)` adds environment for the `start`-th start of a worker (0 = first), so a test
    can give every life of a worker different instructions (e.g. APPT_FAULT_AT, workers/runtime/faults.py)."""

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        *,
        module: str = "workers.{name}",
        env_for: Callable[[str, int], dict[str, str]] | None = None,
        expected_codes: frozenset[int] = frozenset(),
    ) -> None:
        super().__init__(env, log_dir)
        self._module = module
        self._env_for = env_for or (lambda name, start: {})
        self._expected_codes = expected_codes
        self._killed: set[int] = set()
        self.starts: Counter = Counter()
        self._started_at: dict[str, float] = {}
        self.kills: Counter = Counter()
        self.exits: list[Exit] = []
        self._supervising = False
        self._task: asyncio.Task | None = None

    def start_one(self, name: str) -> None:
        assert self._log_dir is not None
        self._log_dir.mkdir(parents=True, exist_ok=True)
        output = (self._log_dir / f"{name}.log").open("ab")
        module = self._module.format(name=name)
        args = [sys.executable, "-m", module] + ([name] if "{name}" not in self._module else [])
        self.processes[name] = subprocess.Popen(
            args,
            env={**self._env, **self._env_for(name, self.starts[name])},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        output.close()
        self.starts[name] += 1
        self._started_at[name] = time.monotonic()

    def uptime(self, name: str) -> float:
        """Seconds since the current life of `name` started."""
        return time.monotonic() - self._started_at.get(name, time.monotonic())

    def start(self) -> None:
        for name in WORKER_NAMES:
            self.start_one(name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        if process.poll() is None:
            self._killed.add(process.pid)
            os.kill(process.pid, sig)
            self.kills[name] += 1

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values() if p.poll() is None]

    @property
    def unexpected_exits(self) -> list[Exit]:
        return [e for e in self.exits if not e.expected]

    def _reap(self) -> None:
        for name, process in list(self.processes.items()):
            code = process.poll()
            if code is None:
                continue
            expected = process.pid in self._killed or code in self._expected_codes
            self.exits.append(Exit(name, code, expected))
            self.start_one(name)

    async def _watch(self, interval_s: float) -> None:
        while self._supervising:
            self._reap()
            await asyncio.sleep(interval_s)

    def supervise(self, interval_s: float = 0.1) -> None:
        """Start restarting dead workers (in the background of the running event loop)."""
        self._supervising = True
        self._task = asyncio.get_running_loop().create_task(self._watch(interval_s))

    async def stop_supervising(self) -> None:
        self._supervising = False
        if self._task is not None:
            await self._task
            self._task = None

    def stop(self, timeout_s: float = 30.0) -> dict[str, int | None]:
        self._supervising = False
        return super().stop(timeout_s)
