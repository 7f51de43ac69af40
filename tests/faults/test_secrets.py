"""The pipeline on least-privilege credentials, and no secret in any log: each worker runs on its own
RabbitMQ user and PostgreSQL role only (`apptctl security apply`), with password-bearing URLs, at DEBUG,
through the failures that make it talk about its connections (cut broker connections, terminated database
sessions, a restart, an unreachable broker, a wrong password); every request must end as it must, and no
line of any worker's or ops command's output may contain a password."""

import asyncio
import json
import os
import secrets
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from infra import security
from tests.faults import injectors
from tests.faults.harness import fault_run

pytestmark = pytest.mark.integration


def _with_port(url: str, port: int) -> str:
    return url.replace(":5672/", f":{port}/", 1)


async def _run(args: list[str], env: dict[str, str], timeout_s: float = 60) -> str:
    process = await asyncio.create_subprocess_exec(
        *args, env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    return out.decode(errors="replace")


async def test_least_privilege_pipeline_under_faults_and_no_password_in_any_log_line(
    settings, topology, tmp_path: Path
):
    created = await security.apply(
        amqp_url=settings.amqp_url,
        management_url=settings.rabbitmq_management_url,
        database_url=settings.database_url,
        namespace=topology.namespace,
        env_dir=tmp_path / "env",
    )
    outputs: dict[str, str] = {}
    try:
        passwords = {c.amqp_password for c in created.values()} | {
            c.db_password for c in created.values() if c.db_password
        }
        # The portals' signing keys of this run, inline in the environment: none may be logged either.
        portal_secrets = {producer: secrets.token_urlsafe(40) for producer in ("portal-web", "portal-app")}
        passwords |= set(portal_secrets.values())
        portal_keys = json.dumps(
            {p: {"current": {"id": f"lp-{p}-1", "secret": secret}} for p, secret in portal_secrets.items()}
        )
        settings = settings.model_copy(
            update={"portal_keys": SecretStr(portal_keys), "portal_keys_file": None}
        )

        def worker_env(worker: str, start: int) -> dict[str, str]:
            return {
                **created[worker].env(),
                "LOG_LEVEL": "DEBUG",
                "APPT_PORTAL_KEYS": portal_keys,
                "APPT_PORTAL_KEYS_FILE": "",
            }

        async with fault_run(
            "least_privilege",
            settings,
            topology,
            tmp_path,
            requests=60,
            seed=81,
            tenants=1,
            env_for=worker_env,
        ) as run:
            load = asyncio.create_task(run.publish_requests(4.0))
            cut = terminated = rounds = 0
            # At least two rounds, and until a cut took: the management API lists a new connection only
            # after its next statistics refresh (a few seconds), so early rounds may find none to close.
            while rounds < 2 or (cut == 0 and rounds < 12):
                rounds += 1
                await asyncio.sleep(1.5)
                pids = run.workers.pids()
                cut += await asyncio.to_thread(injectors.close_broker_connections, run.management, pids)
                terminated += await injectors.terminate_backends(run.admin_dsn, run.database, pids)
            await load
            run.workers.kill("portal_sync")  # and its restart logs its start-up again
            run.numbers.faults = {
                "broker connections closed": cut,
                "backends terminated": terminated,
                "kill -9": 1,
            }
            report = await run.settle(timeout_s=60)
            run.assert_clean(report)

        # A worker that cannot reach the broker, and one with a wrong password, say so and give up.
        wrong = secrets.token_urlsafe(18)
        passwords.add(wrong)
        gate = created["policy_gate"]
        for label, amqp_url in (
            ("unreachable", _with_port(gate.amqp_url, 5999)),
            ("wrong_password", gate.amqp_url.replace(gate.amqp_password, wrong)),
        ):
            outputs[f"worker {label}"] = await _run(
                [sys.executable, "-m", "workers.policy_gate"],
                {
                    **gate.env(),
                    "AMQP_URL": amqp_url,
                    "APPT_NAMESPACE": topology.namespace,
                    "APPT_STARTUP_RETRY_S": "2",
                    "LOG_LEVEL": "DEBUG",
                },
            )
        # The ops commands, with an admin URL that carries a password, working and failing.
        admin_password = secrets.token_urlsafe(18)
        passwords.add(admin_password)
        management = settings.rabbitmq_management_url.replace("guest:guest@", f"guest:{admin_password}@")
        auditor = created["auditor"]
        ops_env = {
            "AMQP_URL": _with_port(auditor.amqp_url, 5999),
            "DATABASE_URL": auditor.database_url or "",
            "RABBITMQ_MANAGEMENT_URL": management,
            "APPT_NAMESPACE": topology.namespace,
        }
        for command in (["status"], ["dlq", "list"], ["reconcile", "--grace", "0"]):
            outputs[" ".join(command)] = await _run([sys.executable, "-m", "apptctl.main", *command], ops_env)
        assert "dead letters not read" in outputs["reconcile --grace 0"], outputs["reconcile --grace 0"][
            -1500:
        ]
    finally:
        await security.drop(
            management_url=settings.rabbitmq_management_url,
            database_url=settings.database_url,
            namespace=topology.namespace,
        )

    assert "broker.connect_retry" in outputs["worker unreachable"], outputs["worker unreachable"][-2000:]
    logs = {path.name: path.read_text(errors="replace") for path in (tmp_path / "logs").glob("*.log")}
    assert "CONNECTION_FORCED" in "".join(logs.values()), "the broker cuts left no trace in the logs"
    leaks = [
        (source, line[:300])
        for source, text in {**logs, **outputs}.items()
        for line in text.splitlines()
        if any(p in line for p in passwords)
    ]
    assert not leaks, f"{len(leaks)} line(s) carry a password: {leaks[:10]}"
