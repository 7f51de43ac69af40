"""`apptctl run` (behind `make run`): Ctrl-C, which the terminal sends to apptctl and its three workers
alike, drains them and exits 0; so does a SIGTERM sent to apptctl alone."""

import asyncio
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import aio_pika

from workers.registry import WORKER_NAMES

APPTCTL = shutil.which("apptctl", path=str(Path(sys.executable).parent)) or "apptctl"


async def start_run(settings, log: Path) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "AMQP_URL": settings.amqp_url,
        "DATABASE_URL": settings.database_url,
        "APPT_NAMESPACE": settings.namespace,
        "APPT_DB_POOL_SIZE": "2",
        "APPT_DRAIN_TIMEOUT_S": "10",
        "APPT_RETRY_DELAYS_S": settings.retry_delays,  # the test topology's one short tier
    }
    env.pop("APPT_METRICS_PORT", None)
    return await asyncio.create_subprocess_exec(
        APPTCTL,
        "run",
        env=env,
        stdout=log.open("wb"),  # the workers' JSON logs (a file: a full pipe would block them)
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's foreground job has
    )


def drained(log: Path) -> set[str]:
    """Workers whose log says they stopped after draining."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return {line["worker"] for line in lines if line["event"] == "worker.stopped"}


async def wait_consuming(settings, topology, process, timeout_s: float = 60) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for _ in range(int(timeout_s * 5)):
            if process.returncode is not None:
                out, err = await process.communicate()
                raise AssertionError(
                    f"apptctl run exited during start-up:\n{err.decode()}\n{out.decode()[-3000:]}"
                )
            counts = [
                (await channel.declare_queue(topology.queue_of(n).name, passive=True)).declaration_result
                for n in WORKER_NAMES
            ]
            if all(c.consumer_count for c in counts):
                return
            await asyncio.sleep(0.2)
    raise AssertionError("the workers did not start consuming")


async def test_ctrl_c_drains_the_workers_and_exits_0(settings, topology, tmp_path):
    process = await start_run(settings, tmp_path / "run.log")
    await wait_consuming(settings, topology, process)

    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground process group
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)

    assert process.returncode == 0, err.decode()
    assert "workers drained and stopped" in err.decode()
    assert drained(tmp_path / "run.log") == set(WORKER_NAMES)


async def test_sigterm_to_apptctl_alone_stops_the_workers_and_exits_0(settings, topology, tmp_path):
    process = await start_run(settings, tmp_path / "run.log")
    await wait_consuming(settings, topology, process)

    process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)

    assert process.returncode == 0, err.decode()
    assert "workers drained and stopped" in err.decode()
    assert drained(tmp_path / "run.log") == set(WORKER_NAMES)
