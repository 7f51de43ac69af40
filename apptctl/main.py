"""`apptctl`: operate the pipeline (migrate, topology, workers, demo, status, dead letters)."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import typer

from workers.runtime.settings import Settings

app = typer.Typer(
    help="Operate the appointment self-service pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
topology_app = typer.Typer(help="RabbitMQ exchanges, queues and bindings.", no_args_is_help=True)
app.add_typer(topology_app, name="topology")
dlq_app = typer.Typer(help="Dead letters: list, show, replay, purge.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


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


OUTPUT_OPTION = typer.Option(None, "--output", "-o", help="file to write (default: stdout)")


@topology_app.command("export")
def topology_export(
    output: Path | None = OUTPUT_OPTION,
    vhost: str = typer.Option("/", help="virtual host the definitions name"),
) -> None:
    """Write the topology of APPT_NAMESPACE as RabbitMQ definitions JSON (exchanges, queues, bindings)."""
    from infra.definitions import definitions, render
    from infra.topology import build

    text = render(definitions(build(Settings().namespace), vhost))
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text)
    typer.echo(f"wrote {output}", err=True)


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


def _quiet_amqp_logs() -> None:
    """Connection errors are reported by the command itself, once and with what to do next."""
    import logging

    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of the report"),
    outbox_max_age: float = typer.Option(
        60.0,
        "--outbox-max-age",
        min=0,
        help="seconds an unpublished outbox row may wait before it's a problem",
    ),
) -> None:
    """Queues (ready, unacked, consumers), dead letters by reason, outbox backlog.
    Exits 1 when something needs attention, and says what."""
    from apptctl.status import collect, render

    _quiet_amqp_logs()
    result = asyncio.run(collect(Settings(), outbox_max_age))
    typer.echo(json.dumps(result.to_json(), indent=2) if as_json else render(result))
    raise typer.Exit(0 if result.healthy else 1)


# --- dead letters -----------------------------------------------------------------------------------

QUEUE_OPTION = typer.Option(
    None,
    "--queue",
    "-q",
    help="one dead-letter queue: policy_gate, appt.policy_gate or appt.policy_gate.dead",
)


def _dead_letter_queues(settings: Settings, queue: str | None) -> list[str]:
    from apptctl.dlq import UnknownQueue, resolve_queues
    from infra.topology import build

    try:
        return resolve_queues(build(settings.namespace), queue)
    except UnknownQueue as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _with_broker(settings: Settings, action):
    """Run `action(broker)` on a connected broker; an unreachable broker or missing queue is a clear error."""
    from apptctl.dlq import DeadLetterQueueMissing
    from infra.topology import build
    from workers.runtime.broker import Broker

    _quiet_amqp_logs()

    async def run():
        broker = Broker(settings.amqp_url, build(settings.namespace), name="apptctl")
        try:
            await broker.connect()
        except Exception as exc:
            typer.echo(
                f"RabbitMQ is unreachable at AMQP_URL ({exc}): start it (`bash infra/services.sh`) "
                "or set AMQP_URL",
                err=True,
            )
            raise typer.Exit(1) from None
        try:
            return await action(broker)
        finally:
            await broker.close()

    try:
        return asyncio.run(run())
    except DeadLetterQueueMissing as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


@dlq_app.command("list")
def dlq_list(
    queue: str | None = QUEUE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of the table"),
) -> None:
    """Dead letters grouped by queue and reason, with counts and sample message ids."""
    from apptctl import dlq

    settings = Settings()
    queues = _dead_letter_queues(settings, queue)
    sweep = _with_broker(settings, lambda broker: dlq.read(broker.connection, queues))
    groups = dlq.group(sweep.letters)
    if as_json:
        typer.echo(
            json.dumps({"total": len(sweep.letters), "groups": [g.to_json() for g in groups]}, indent=2)
        )
        return
    if not groups:
        typer.echo(f"no dead letters in {', '.join(queues)}")
        return
    for name in queues:
        mine = [g for g in groups if g.queue == name]
        if not mine:
            continue
        more = "+" if name in sweep.truncated else ""
        typer.echo(f"{name}: {sum(g.count for g in mine)}{more} dead letter(s)")
        for g in mine:
            typer.echo(f"  {g.reason:<28} {g.count:>6}   e.g. {', '.join(g.sample_ids) or '(no message id)'}")
    typer.echo("next: `apptctl dlq show MESSAGE_ID`, `apptctl dlq replay ...` or `apptctl dlq purge ...`")


@dlq_app.command("show")
def dlq_show(
    message_id: str = typer.Argument(..., help="the message id (AMQP message_id property)"),
    queue: str | None = QUEUE_OPTION,
) -> None:
    """One dead letter (every copy with that message id): why, properties, headers, body."""
    from apptctl import dlq

    settings = Settings()
    queues = _dead_letter_queues(settings, queue)
    sweep = _with_broker(settings, lambda broker: dlq.read(broker.connection, queues))
    found = [letter for letter in sweep.letters if letter.message_id == message_id]
    if not found:
        typer.echo(
            f"no dead letter with message id {message_id} in {', '.join(queues)}; see `apptctl dlq list`",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo("\n\n".join(dlq.describe(letter) for letter in found))


@dlq_app.command("replay")
def dlq_replay(
    message_id: str | None = typer.Option(
        None, "--id", help="replay the dead letter(s) with this message id"
    ),
    reason: str | None = typer.Option(None, "--reason", help="replay every dead letter with this reason"),
    everything: bool = typer.Option(False, "--all", help="replay every dead letter"),
    queue: str | None = QUEUE_OPTION,
) -> None:
    """Republish dead letters to their original exchange and routing key (same message id, so consumers
    that already handled one drop it), then remove them. Only confirmed publishes are removed."""
    from apptctl import dlq

    if sum((message_id is not None, reason is not None, everything)) != 1:
        typer.echo(
            "say which dead letters to replay: exactly one of --id MESSAGE_ID, --reason REASON, --all",
            err=True,
        )
        raise typer.Exit(2)
    settings = Settings()
    queues = _dead_letter_queues(settings, queue)
    selection = dlq.Selection(message_id=message_id, reason=reason)
    result = _with_broker(settings, lambda broker: dlq.replay(broker, queues, selection))
    if result.matched == 0:
        typer.echo("no dead letter matched; see `apptctl dlq list`", err=message_id is not None)
        raise typer.Exit(1 if message_id is not None else 0)
    targets: dict[tuple[str, str, str], int] = {}
    for letter, exchange, routing_key in result.replayed:
        key = (letter.queue, exchange, routing_key)
        targets[key] = targets.get(key, 0) + 1
    for (source, exchange, routing_key), count in sorted(targets.items()):
        typer.echo(f"replayed {count} from {source} to {exchange or '(default exchange)'} / {routing_key}")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    for failure in result.failed:
        typer.echo(
            f"not replayed {failure.letter.message_id} ({failure.letter.queue}): {failure.error}", err=True
        )
    typer.echo(
        f"replayed {len(result.replayed)} of {result.matched} dead letter(s); {len(result.failed)} failed"
    )
    raise typer.Exit(1 if result.failed else 0)


@dlq_app.command("purge")
def dlq_purge(
    queue: str | None = QUEUE_OPTION,
    reason: str | None = typer.Option(None, "--reason", help="only dead letters with this reason"),
    message_id: str | None = typer.Option(None, "--id", help="only the dead letter(s) with this message id"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
) -> None:
    """Delete dead letters for good (all of them, or those of one queue / reason / message id)."""
    from apptctl import dlq

    settings = Settings()
    queues = _dead_letter_queues(settings, queue)
    selection = dlq.Selection(message_id=message_id, reason=reason)
    if not yes:
        if not sys.stdin.isatty():
            typer.echo("refusing to purge without confirmation: no terminal to ask on; pass --yes", err=True)
            raise typer.Exit(2)
        sweep = _with_broker(settings, lambda broker: dlq.read(broker.connection, queues))
        count = sum(1 for letter in sweep.letters if selection.matches(letter))
        if count == 0:
            typer.echo("no dead letter matched; nothing to purge")
            return
        typer.confirm(f"permanently delete {count} dead letter(s) from {', '.join(queues)}?", abort=True)
    removed = _with_broker(settings, lambda broker: dlq.purge(broker.connection, queues, selection))
    for name, count in sorted(removed.items()):
        typer.echo(f"purged {count} from {name}")
    typer.echo(f"purged {sum(removed.values())} dead letter(s)")


if __name__ == "__main__":
    app()
