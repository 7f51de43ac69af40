"""Start the three workers as child processes, wait until they consume, and stop them with SIGTERM."""

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from infra.nodes import connect_first
from infra.topology import Topology
from workers.registry import WORKER_NAMES


class WorkerProcesses:
    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path | None = None,
        commands: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """`commands`: process name -> argv, to run other processes the same way (the bench's stages and
        replicas); by default the three workers, one process each."""
        self._env = {**os.environ, **env}
        self._log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self._commands = {
            name: list(argv)
            for name, argv in (
                commands or {name: [sys.executable, "-m", f"workers.{name}"] for name in WORKER_NAMES}
            ).items()
        }

    def env_of(self, index: int) -> dict[str, str]:
        """A worker's environment: with APPT_METRICS_PORT=N, the workers serve on N, N+1, N+2 (0: each
        takes any free port; unset: none serves), so they never contend for one port."""
        port = self._env.get("APPT_METRICS_PORT", "").strip()
        if port.isdigit() and int(port) > 0:
            return {**self._env, "APPT_METRICS_PORT": str(int(port) + index)}
        return self._env

    def start(self) -> None:
        for index, (name, argv) in enumerate(self._commands.items()):
            output = None
            if self._log_dir is not None:
                self._log_dir.mkdir(parents=True, exist_ok=True)
                output = (self._log_dir / f"{name}.log").open("ab")
            self.processes[name] = subprocess.Popen(
                argv,
                env=self.env_of(index),
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    async def wait_consuming(self, amqp_url: str, topology: Topology, timeout_s: float = 30.0) -> None:
        """Return once every worker queue has a consumer; raise if a worker died or the time is up."""
        connection = await connect_first(amqp_url)
        try:
            channel = await connection.channel()
            deadline = asyncio.get_running_loop().time() + timeout_s
            while True:
                dead = [n for n, p in self.processes.items() if p.poll() is not None]
                if dead:
                    raise RuntimeError(
                        f"worker(s) exited during start-up: {', '.join(dead)} (see their logs)"
                    )
                counts = {}
                for name in WORKER_NAMES:
                    queue = await channel.declare_queue(topology.queue_of(name).name, passive=True)
                    counts[queue.name] = (queue.declaration_result.consumer_count, self._started(name))
                # More consumers than processes started here: another process takes part of the work (a
                # worker left over from an earlier run, perhaps of older code). Wait for it to go, or say so.
                strays = {q: c for q, c in counts.items() if c[1] and c[0] > c[1]}
                if all(n for n, _ in counts.values()) and not strays:
                    return
                if asyncio.get_running_loop().time() > deadline:
                    if strays:
                        raise RuntimeError(
                            "other processes consume these queues too (stop them first): "
                            + ", ".join(
                                f"{q} has {n} consumers, {m} started here" for q, (n, m) in strays.items()
                            )
                        )
                    raise TimeoutError("workers did not start consuming in time")
                await asyncio.sleep(0.2)
        finally:
            await connection.close()

    def _started(self, worker: str) -> int:
        """How many of the processes started here run `worker` (0: it runs elsewhere, not checked)."""
        return sum(1 for argv in self._commands.values() if f"workers.{worker}" in argv)

    def alive(self) -> dict[str, bool]:
        return {name: process.poll() is None for name, process in self.processes.items()}

    def stop(self, timeout_s: float = 30.0) -> dict[str, int | None]:
        """SIGTERM all, wait for the graceful drain, kill whatever is left; returns exit codes."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes
