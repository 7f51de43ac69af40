"""`apptctl`: operate the pipeline (migrate, topology, workers, demo)."""

import asyncio
import subprocess
import sys

import typer

from workers.runtime.settings import Settings

app = typer.Typer(
    help="Operate the appointment self-service pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
topology_app = typer.Typer(help="RabbitMQ exchanges, queues and bindings.", no_args_is_help=True)
app.add_typer(topology_app, name="topology")


@app.command()
def migrate() -> None:
    """Create the database if needed and apply every schema migration."""
    from infra.db.admin import ensure_database
    from infra.db.migrate import upgrade_async

    settings = Settings()

    async def run() -> None:
        created = await ensure_database(settings.database_url)
        await upgrade_async(settings.database_url)
        typer.echo(f"database {'created and ' if created else ''}migrated to head")

    asyncio.run(run())


@topology_app.command("apply")
def topology_apply() -> None:
    """Declare exchanges, quorum queues, bindings and dead-letter queues (idempotent)."""
    from infra.topology import apply

    settings = Settings()
    topology = asyncio.run(apply(settings.amqp_url, settings.namespace))
    typer.echo(
        f"topology '{topology.namespace}': {len(topology.exchanges)} exchanges, {len(topology.queues)} queues"
    )


@app.command()
def worker(name: str = typer.Argument(..., help="policy_gate, modify_handler or portal_sync")) -> None:
    """Run one worker in the foreground until SIGTERM/SIGINT (then drain and exit)."""
    from workers.registry import WORKER_NAMES
    from workers.runtime.entrypoint import main

    if name not in WORKER_NAMES:
        typer.echo(f"unknown worker {name!r}; choose one of {', '.join(WORKER_NAMES)}", err=True)
        raise typer.Exit(2)
    main(name)


@app.command()
def run() -> None:
    """Run all three workers in the foreground (one process each); Ctrl-C drains and stops them."""
    from apptctl.processes import WorkerProcesses

    workers = WorkerProcesses({})
    workers.start()
    try:
        while all(workers.alive().values()):
            try:
                next(iter(workers.processes.values())).wait(timeout=1)
            except subprocess.TimeoutExpired:
                continue
    except KeyboardInterrupt:
        pass
    finally:
        codes = workers.stop()
        typer.echo(f"workers stopped: {codes}", err=True)
    sys.exit(0 if all(c == 0 for c in codes.values()) else 1)


@app.command()
def demo() -> None:
    """Migrate, declare topology, start the workers, run the industry stories, print what the portal shows.
    Exits 0 only when every scenario ended as expected."""
    from apptctl.demo import run_demo
    from workers.runtime.logging import configure_logging

    configure_logging("WARNING")
    ok = asyncio.run(run_demo(Settings()))
    raise typer.Exit(0 if ok else 1)


if __name__ == "__main__":
    app()
