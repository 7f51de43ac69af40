"""`apptctl demo`: set everything up, run the industry stories through real workers, print the portal."""

import secrets
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import typer

from apptctl import scenario_runner
from apptctl.portal_keys import tool_keyring
from apptctl.processes import WorkerProcesses
from apptctl.scenarios import build_world
from infra import topology as topology_module
from infra.db.admin import ensure_database
from infra.db.migrate import upgrade_async
from workers.runtime.broker import Broker
from workers.runtime.database import create_engine
from workers.runtime.settings import Settings


def _fmt_offer(offer) -> str:
    """The Modify button as the portal would draw it now: each action offered, or why not."""

    def one(action: str, offered: bool, approval: bool, code: str | None) -> str:
        if offered:
            return f"{action} yes" + (" (office approves)" if approval else "")
        return f"{action} no [{code}]"

    return (
        f"Modify {'shown' if offer.modify_offered else 'hidden'}: "
        + one(
            "reschedule",
            offer.reschedule_offered,
            offer.reschedule_needs_approval,
            offer.reschedule_reason_code,
        )
        + "; "
        + one("cancel", offer.cancel_offered, offer.cancel_needs_approval, offer.cancel_reason_code)
    )


def _fmt_window(view) -> str:
    if view is None:
        return "-"
    return f"{view.window_start:%a %d %b %H:%M}-{view.window_end:%H:%M} UTC"


async def run_demo(settings: Settings, log_dir: Path | None = None) -> bool:
    run_id = secrets.token_hex(3)
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="apptctl-demo-"))
    database = settings.database_url.rsplit("/", 1)[-1]
    typer.echo(f"demo run {run_id}: database {database}, namespace {settings.namespace}")
    await ensure_database(settings.database_url)
    await upgrade_async(settings.database_url)
    topology = await topology_module.apply(
        settings.amqp_url, settings.namespace, settings.retry_delays_s, settings.quorum_group_size
    )
    typer.echo(f"schema migrated, topology declared; starting workers (logs in {log_dir})")

    keyring, keys_env = tool_keyring(settings)
    if keys_env:
        typer.echo(f"portal messages signed with the development keyring {keys_env['APPT_PORTAL_KEYS_FILE']}")
    workers = WorkerProcesses(
        {
            **keys_env,
            "APPT_NAMESPACE": settings.namespace,
            "APPT_RETRY_DELAYS_S": settings.retry_delays,
            "DATABASE_URL": settings.database_url,
            "AMQP_URL": settings.amqp_url,
        },
        log_dir,
    )
    engine = create_engine(settings.database_url, pool_size=2)
    broker = Broker(settings.amqp_url, topology, name="apptctl-demo", signer=keyring)
    ok = True
    try:
        workers.start()
        await workers.wait_consuming(settings.amqp_url, topology)
        await broker.connect()
        world = build_world(run_id, datetime.now(UTC))
        await scenario_runner.publish_all(broker, world.setup_messages)
        if not await scenario_runner.wait_for_setup(engine, world):
            typer.echo("FAIL: the office set-up did not reach the read store in time", err=True)
            return False

        malformed_id = await scenario_runner.publish_malformed(broker)
        results = await scenario_runner.run_scenarios(engine, broker, world)
        dead = await scenario_runner.take_dead_letters(broker, malformed_id, expected=2)

        typer.echo("\nWhat the portal now shows:\n")
        for result in results:
            mark = "PASS" if result.passed else "FAIL"
            request = result.request
            typer.echo(f"[{mark}] {result.scenario.title}  ({result.scenario.tenant_id})")
            typer.echo(
                f"       request   {result.scenario.request.correlation_id}: "
                f"{request.status if request else 'missing'}"
                + (
                    f"  [{request.reason_code}] {request.reason_text}"
                    if request and request.reason_code
                    else ""
                )
            )
            if result.appointment:
                typer.echo(
                    f"       appt      {result.appointment.appointment_id}: {result.appointment.status}, "
                    f"{result.appointment.confirmation}, {_fmt_window(result.appointment)}, "
                    f"v{result.appointment.version}; job {result.job_status}"
                )
            if result.offer:
                typer.echo(f"       offers    {_fmt_offer(result.offer)}")
            for problem in result.problems:
                typer.echo(f"       problem   {problem}")
            ok &= result.passed
        reasons = sorted({d.reason for d in dead})
        malformed_ok = len(dead) >= 2 and reasons == ["malformed_json"]
        alive = workers.alive()
        mark = "PASS" if malformed_ok and all(alive.values()) else "FAIL"
        typer.echo(f"[{mark}] A malformed message is dead-lettered with its reason; the workers keep running")
        for d in dead:
            typer.echo(f"       dead letter in {d.queue}: reason={d.reason} ({d.detail})")
        typer.echo(f"       workers alive: {', '.join(f'{k}={v}' for k, v in alive.items())}")
        ok &= mark == "PASS"
    finally:
        await broker.close()
        await engine.dispose()
        codes = workers.stop()
        typer.echo(f"\nworkers stopped (exit codes {codes})")
        ok &= all(code == 0 for code in codes.values())
    passed = sum(r.passed for r in results) + (1 if malformed_ok else 0)
    typer.echo(f"demo: {passed}/{len(results) + 1} scenarios ended as expected")
    return ok
