"""Faults, each aimed only at the test's own worker processes (other test runs share the services)."""

import asyncio
import shutil
import subprocess
import time

import asyncpg
import psutil

from infra.security.rabbitmq import ManagementClient, ManagementError

AMQP_PORT = 5672
PG_PORT = 5432


def local_ports(pids: list[int], remote_port: int) -> set[int]:
    """The local TCP ports of these processes' connections to `remote_port`."""
    ports: set[int] = set()
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        ports.update(c.laddr.port for c in connections if c.raddr and c.raddr.port == remote_port)
    return ports


def close_broker_connections(api: ManagementClient, pids: list[int]) -> int:
    """Close (management API, DELETE /api/connections/{name}) every broker connection of these processes;
    returns how many were closed. The broker lists a new connection within its stats interval (~5 s)."""
    ports = local_ports(pids, AMQP_PORT)
    closed = 0
    try:
        connections = api.connections()
    except ManagementError:
        return 0
    for connection in connections:
        if connection.get("peer_port") in ports:
            try:
                closed += api.close_connection(connection["name"], "fault suite: connection cut")
            except ManagementError:
                pass
    return closed


async def terminate_backends(admin_dsn: str, database: str, pids: list[int]) -> int:
    """pg_terminate_backend on every backend these processes hold on `database`; returns how many."""
    ports = sorted(local_ports(pids, PG_PORT))
    if not ports:
        return 0
    connection = await asyncpg.connect(admin_dsn)
    try:
        rows = await connection.fetch(
            "SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity "
            "WHERE datname = $1 AND client_port = ANY($2::int[]) AND pid <> pg_backend_pid()",
            database,
            ports,
        )
    finally:
        await connection.close()
    return sum(1 for r in rows if r["done"])


# --- whole-service restarts (only for tests marked service_restart) -------------------------------------


def _run(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout_s)


def can_restart_services() -> str | None:
    """None when this host can restart its local RabbitMQ and PostgreSQL; else why not."""
    for tool in ("rabbitmqctl", "rabbitmq-diagnostics", "pg_ctlcluster", "pg_isready"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (the services are not local)"
    return None


async def wait_for(check, what: str, timeout_s: float = 120.0) -> float:
    started = time.monotonic()
    while not await asyncio.to_thread(check):
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what} did not come back within {timeout_s:.0f}s")
        await asyncio.sleep(0.5)
    return time.monotonic() - started


def rabbitmq_healthy() -> bool:
    return _run("rabbitmq-diagnostics", "-q", "check_running", timeout_s=20).returncode == 0 and (
        _run("rabbitmq-diagnostics", "-q", "check_port_connectivity", timeout_s=20).returncode == 0
    )


def postgres_healthy() -> bool:
    return _run("pg_isready", "-h", "127.0.0.1", "-p", str(PG_PORT), timeout_s=10).returncode == 0


async def restart_rabbitmq() -> float:
    """stop_app + start_app (durable queues and messages survive), then wait until it serves again.
    Returns the seconds it was away."""
    started = time.monotonic()
    try:
        await asyncio.to_thread(_run, "rabbitmqctl", "-q", "stop_app")
    finally:
        if (await asyncio.to_thread(_run, "rabbitmqctl", "-q", "start_app")).returncode != 0:
            await asyncio.to_thread(_run, "rabbitmq-server", "-detached")  # the whole node was down
        await wait_for(rabbitmq_healthy, "RabbitMQ")
    return time.monotonic() - started


def _pg_cluster() -> tuple[str, str]:
    lines = _run("pg_lsclusters", "-h").stdout.split("\n")
    version, name = lines[0].split()[:2]
    return version, name


async def restart_postgres() -> float:
    """pg_ctlcluster restart (fast shutdown: every backend is terminated), then wait until it accepts."""
    started = time.monotonic()
    version, name = _pg_cluster()
    try:
        await asyncio.to_thread(
            _run, "pg_ctlcluster", "--skip-systemctl-redirect", version, name, "restart", "-m", "fast"
        )
    finally:
        try:
            await wait_for(postgres_healthy, "PostgreSQL", timeout_s=30)
        except TimeoutError:
            start = ("pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start")
            await asyncio.to_thread(_run, *start)
            await wait_for(postgres_healthy, "PostgreSQL")
    return time.monotonic() - started
