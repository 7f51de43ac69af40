"""Process accounting (psutil) and latency statistics."""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM: the most resident memory the process ever had (Linux); None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return None


@dataclass
class Monitor:
    """CPU seconds of the processes under test, plus the broker and PostgreSQL server processes.

    PostgreSQL is counted as the backends connected to the bench database plus the server's own
    processes (WAL writer, checkpointer, ...), whose pids the caller passes in (pg_stat_activity), so
    other people's test databases on the same server are left out. The broker (beam.smp) is shared with
    whatever else runs on the machine, so its number is indicative only.
    """

    processes: dict[str, psutil.Process] = field(default_factory=dict)

    def add(self, name: str, pid: int) -> None:
        self.processes[name] = psutil.Process(pid)

    @staticmethod
    def _servers(postgres_pids: set[int]) -> dict[str, dict[int, float]]:
        found: dict[str, dict[int, float]] = {"broker": {}, "postgres": {}}
        for process in psutil.process_iter(["name"]):
            name = process.info["name"] or ""
            key = (
                "broker" if name.startswith("beam") else "postgres" if process.pid in postgres_pids else None
            )
            if key is None:
                continue
            try:
                found[key][process.pid] = _cpu(process)
            except psutil.Error:
                continue
        return found

    def snapshot(self, postgres_pids: set[int]) -> dict:
        own = {}
        for name, process in self.processes.items():
            try:
                own[name] = _cpu(process)
            except psutil.Error:
                own[name] = math.nan
        machine = psutil.cpu_times()
        busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq + machine.steal
        servers = self._servers(postgres_pids)
        return {"own": own, "servers": servers, "machine_busy": busy, "wall": time.monotonic()}

    @staticmethod
    def machine_busy_percent(before: dict, after: dict) -> float:
        """How busy the whole machine was (all cores, every process, ours or not) between two snapshots."""
        wall = after["wall"] - before["wall"]
        cores = psutil.cpu_count() or 1
        return (
            100 * (after["machine_busy"] - before["machine_busy"]) / (wall * cores) if wall > 0 else math.nan
        )

    @staticmethod
    def delta(before: dict, after: dict) -> dict[str, float]:
        """CPU seconds spent between two snapshots, per process under test and per server."""
        spent = {name: after["own"][name] - before["own"].get(name, 0.0) for name in after["own"]}
        for key, pids in after["servers"].items():
            old = before["servers"].get(key, {})
            spent[key] = sum(cpu - old.get(pid, 0.0) for pid, cpu in pids.items())
        return spent


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest rank."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]
