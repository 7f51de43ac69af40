"""The commands a user runs: `apptctl demo` (twice, to prove it re-runs) and worker processes on SIGTERM."""

import os
import subprocess
import sys
import uuid

import aio_pika

from apptctl.processes import WorkerProcesses
from infra import topology as topology_module


def _apptctl(*args: str, env: dict[str, str], timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "apptctl.main", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def test_demo_passes_and_can_run_again(service_urls, database_url):
    namespace = f"demo{uuid.uuid4().hex[:8]}"
    env = {"AMQP_URL": service_urls.amqp, "DATABASE_URL": database_url, "APPT_NAMESPACE": namespace}
    try:
        for _ in range(2):
            result = _apptctl("demo", env=env)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "demo: 10/10 scenarios ended as expected" in result.stdout
            assert "[FAIL]" not in result.stdout
    finally:
        connection = await aio_pika.connect(service_urls.amqp)
        async with connection:
            await topology_module.delete(await connection.channel(), topology_module.build(namespace))


async def test_worker_processes_drain_and_exit_cleanly_on_sigterm(settings, topology, tmp_path):
    workers = WorkerProcesses(
        {
            "AMQP_URL": settings.amqp_url,
            "DATABASE_URL": settings.database_url,
            "APPT_NAMESPACE": topology.namespace,
            "APPT_RETRY_DELAYS_S": settings.retry_delays,
        },
        tmp_path,
    )
    workers.start()
    try:
        await workers.wait_consuming(settings.amqp_url, topology)
    finally:
        codes = workers.stop(timeout_s=30)
    assert codes == {"policy_gate": 0, "modify_handler": 0, "portal_sync": 0}
    for name in codes:
        log = (tmp_path / f"{name}.log").read_text()
        assert '"worker.stopped"' in log, log[-2000:]


def test_unknown_worker_name_is_a_clear_cli_error():
    result = _apptctl("worker", "nope", env={})
    assert result.returncode == 2
    assert "unknown worker 'nope'" in result.stderr
