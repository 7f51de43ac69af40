"""`apptctl`: operate the pipeline (migrate, topology, workers, demo, status, dead letters)."""

import asyncio
import json
import signal
import subprocess
import sys
import time
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
    """Declare exchanges, quorum queues, bindings, dead-letter and delay queues (idempotent)."""
    from infra.topology import apply

    settings = Settings()
    topology = asyncio.run(
        apply(settings.amqp_url, settings.namespace, settings.retry_delays_s, settings.quorum_group_size)
    )
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

    settings = Settings()
    text = render(definitions(build(settings.namespace, settings.retry_delays_s), vhost))
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

    drain_s = Settings().drain_timeout_s
    workers = WorkerProcesses({})
    signal.signal(signal.SIGTERM, _terminated)  # a SIGTERM to apptctl alone: pass it on (finally: stop)
    workers.start()
    interrupted = False
    try:
        while all(workers.alive().values()):
            try:
                next(iter(workers.processes.values())).wait(timeout=1)
            except subprocess.TimeoutExpired:
                continue
    except KeyboardInterrupt:
        # Ctrl-C reached the workers too (one process group): each drains by itself. A SIGTERM sent now
        # could land after a worker's event loop closed, when it kills instead of draining (exit -15).
        interrupted = True
        typer.echo("draining the workers (Ctrl-C again to stop waiting)...", err=True)
        _wait_all(workers.processes.values(), drain_s + 5)
    except _Terminated:
        interrupted = True
    finally:
        codes = workers.stop()  # SIGTERM, then kill, only for what is still running
    clean = all(code == 0 for code in codes.values())
    if clean and interrupted:
        typer.echo("workers drained and stopped", err=True)
    else:
        typer.echo(f"workers stopped: {codes}", err=True)
    sys.exit(0 if clean and interrupted else 1)


class _Terminated(Exception):
    """apptctl run itself got SIGTERM."""


def _terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough: the workers are being stopped
    raise _Terminated


def _wait_all(processes, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            return


@app.command()
def demo() -> None:
    """Migrate, declare topology, start the workers, run the industry stories, print what the portal shows.
    Exits 0 only when every scenario ended as expected."""
    from apptctl.demo import run_demo
    from workers.runtime.logging import configure_logging

    configure_logging("WARNING")
    ok = asyncio.run(run_demo(Settings()))
    raise typer.Exit(0 if ok else 1)


@app.command()
def audit(
    appointment_id: str = typer.Argument(..., help="the appointment's id"),
    tenant: str = typer.Option(..., "--tenant", "-t", help="the business (tenant id) it belongs to"),
    as_json: bool = typer.Option(False, "--json", help="print the lines as JSON"),
) -> None:
    """One appointment's audit trail, in order: who asked for what, the answer and the rule behind it,
    and what changed."""
    from apptctl import audit as audit_view
    from apptctl import readstore
    from workers.runtime.database import create_engine

    settings = Settings()

    async def read():
        engine = create_engine(settings.database_url, 1)
        try:
            return await readstore.audit_trail(engine, tenant, appointment_id)
        finally:
            await engine.dispose()

    lines = asyncio.run(read())
    if not lines:
        typer.echo(f"no audit trail for appointment {appointment_id!r} of tenant {tenant!r}", err=True)
        raise typer.Exit(1)
    text = audit_view.as_json(lines) if as_json else "\n".join(map(audit_view.describe, lines))
    typer.echo(text)


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
    watch: bool = typer.Option(False, "--watch", "-w", help="refresh until Ctrl-C"),
    interval: float = typer.Option(5.0, "--interval", min=0.5, help="seconds between refreshes with --watch"),
) -> None:
    """Queues (ready, unacked, consumers), dead letters by reason, outbox backlog, and what needs attention.
    Exit code as monitoring plugins have it: 0 ok, 1 warning, 2 critical, 3 unknown (e.g. the management
    API is unreachable)."""
    from apptctl.status import collect, render

    _quiet_amqp_logs()
    settings = Settings()

    def show() -> int:
        result = asyncio.run(collect(settings, outbox_max_age))
        typer.echo(json.dumps(result.to_json(), indent=2) if as_json else render(result))
        return result.exit_code

    if not watch:
        raise typer.Exit(show())
    clear = sys.stdout.isatty() and not as_json
    try:
        while True:
            if clear:
                typer.echo("\x1b[H\x1b[2J", nl=False)
            typer.echo(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  (every {interval:g} s, Ctrl-C to stop)")
            show()
            time.sleep(interval)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command()
def trace(
    request_id: str = typer.Argument(..., help="the portal's request id (the messages' correlation_id)"),
    tenant: str | None = typer.Option(None, "--tenant", help="only this tenant (default: every tenant)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of the report"),
) -> None:
    """One request's whole path: the decision (rule and setting), events, read-store rows, audit trail,
    dead letters and timings. Exits 1 when nothing anywhere carries the request id."""
    from apptctl.trace import gather, render

    _quiet_amqp_logs()
    try:
        result = asyncio.run(gather(Settings(), request_id, tenant))
    except OSError as exc:
        typer.echo(
            f"PostgreSQL is unreachable at DATABASE_URL ({exc}): check it, or run `bash infra/services.sh`",
            err=True,
        )
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result.to_json(), indent=2) if as_json else render(result))
    raise typer.Exit(0 if result.found else 1)


@app.command()
def teardown(
    keep_database: bool = typer.Option(False, "--keep-database", help="remove only the RabbitMQ topology"),
    keep_topology: bool = typer.Option(False, "--keep-topology", help="drop only the database"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
) -> None:
    """Remove APPT_NAMESPACE's exchanges and queues (messages and dead letters included) and drop the
    database DATABASE_URL names. Says what that destroys and asks first. Broker users and database roles
    from `apptctl security apply` are removed with `apptctl security drop`."""
    from apptctl import teardown as plan_module

    _quiet_amqp_logs()
    settings = Settings()
    try:
        planned = asyncio.run(plan_module.plan(settings))
    except (OSError, ConnectionError) as exc:
        typer.echo(f"cannot see what exists ({exc}): check AMQP_URL and DATABASE_URL", err=True)
        raise typer.Exit(1) from None
    topology, database = not keep_topology, not keep_database
    typer.echo(planned.describe(topology=topology, database=database))
    if (not topology or not planned.queues) and (not database or not planned.database_exists):
        typer.echo("nothing to remove")
        raise typer.Exit(0)
    if not yes:
        if not sys.stdin.isatty():
            typer.echo(
                "refusing to tear down without confirmation: no terminal to ask on; pass --yes", err=True
            )
            raise typer.Exit(2)
        typer.confirm("remove all of this for good?", abort=True)
    for line in asyncio.run(plan_module.execute(settings, planned, topology=topology, database=database)):
        typer.echo(line)


# --- dead letters -----------------------------------------------------------------------------------

QUEUE_OPTION = typer.Option(
    None,
    "--queue",
    "-q",
    help="one dead-letter queue: policy_gate, appt.policy_gate or appt.policy_gate.dead",
)


AUDIT_OPTION = typer.Option(
    False,
    "--audit",
    help="read the auditor's copies (`<queue>.audit`: every dead letter, replayed and purged ones too, "
    "the newest 10,000 per worker) instead of the dead-letter queues; the auditor's broker user reads "
    "only these",
)


def _dead_letter_queues(settings: Settings, queue: str | None, *, audit: bool = False) -> list[str]:
    from apptctl.dlq import UnknownQueue, resolve_queues
    from infra.topology import build

    try:
        return resolve_queues(build(settings.namespace), queue, audit=audit)
    except UnknownQueue as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _with_broker(settings: Settings, action):
    """Run `action(broker)` on a connected broker; an unreachable broker or missing queue is a clear error."""
    from aiormq.exceptions import ChannelAccessRefused

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
    except ChannelAccessRefused as exc:
        typer.echo(
            f"RabbitMQ refused this user ({str(exc)[:200]}): the dead-letter queues are for ops; "
            "the auditor reads its copies with `--audit`",
            err=True,
        )
        raise typer.Exit(1) from None


@dlq_app.command("list")
def dlq_list(
    queue: str | None = QUEUE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of the table"),
    audit: bool = AUDIT_OPTION,
) -> None:
    """Dead letters grouped by queue and reason, with counts and sample message ids."""
    from apptctl import dlq

    settings = Settings()
    queues = _dead_letter_queues(settings, queue, audit=audit)
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
    if audit:
        typer.echo("next: `apptctl dlq show MESSAGE_ID --audit`")
        return
    typer.echo("next: `apptctl dlq show MESSAGE_ID`, `apptctl dlq replay ...` or `apptctl dlq purge ...`")


@dlq_app.command("show")
def dlq_show(
    message_id: str = typer.Argument(..., help="the message id (AMQP message_id property)"),
    queue: str | None = QUEUE_OPTION,
    audit: bool = AUDIT_OPTION,
) -> None:
    """One dead letter (every copy with that message id): why, properties, headers, body."""
    from apptctl import dlq

    settings = Settings()
    queues = _dead_letter_queues(settings, queue, audit=audit)
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


# --- reconciliation ---------------------------------------------------------------------------------


TENANT_OPTION = typer.Option(None, "--tenant", "-t", help="only this tenant (repeatable)")
SENT_OPTION = typer.Option(
    None,
    "--sent",
    help="JSON lines of the requests the portal sent: missing ones are lost, others unexpected",
)


@app.command()
def reconcile(
    tenant: list[str] | None = TENANT_OPTION,
    since: str | None = typer.Option(
        None, "--since", help="only rows touched since then: ISO 8601 time with a timezone, or 15m / 2h / 7d"
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of the report"),
    sent: Path | None = SENT_OPTION,
    grace: float = typer.Option(
        60.0, "--grace", min=0, help="seconds unfinished work may take before it counts as lost"
    ),
    dead_letters: bool = typer.Option(
        True, "--dead-letters/--no-dead-letters", help="read the dead-letter queues (nothing is removed)"
    ),
    all_requests: bool = typer.Option(False, "--all", help="with --json: every request's verdict"),
) -> None:
    """Check that every accepted request ended in one outcome (applied, rejected, failed, dead-lettered),
    that no change happened without a request or twice, and that the read store equals the schedule.
    Exits 1 on any violation."""
    from apptctl import reconcile as checker

    _quiet_amqp_logs()
    try:
        report = asyncio.run(
            checker.run(
                Settings(),
                tenants=tenant,
                since=since,
                sent_path=sent,
                grace_s=grace,
                read_dlq=dead_letters,
            )
        )
    except checker.BadSince as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    except checker.DatabaseUnavailable as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(
        json.dumps(report.to_json(all_requests=all_requests), indent=2) if as_json else checker.render(report)
    )
    raise typer.Exit(0 if report.ok else 1)


# --- least privilege ----------------------------------------------------------------------------------

security_app = typer.Typer(help="Per-worker RabbitMQ users and PostgreSQL roles.", no_args_is_help=True)
app.add_typer(security_app, name="security")
ENV_DIR_OPTION = typer.Option(
    None, "--env-dir", help="write <name>.env (mode 0600) with each one's AMQP_URL / DATABASE_URL"
)
PREFIX_OPTION = typer.Option(None, "--prefix", help="user and role name prefix (default: namespace)")


@security_app.command("apply")
def security_apply(
    env_dir: Path | None = ENV_DIR_OPTION,
    prefix: str | None = PREFIX_OPTION,
) -> None:
    """Create or update one RabbitMQ user per worker (and for portal and office publishers), allowed only
    its own queue and the exchanges it publishes to, and one PostgreSQL role per worker with grants only on
    the tables it uses. Idempotent; passwords already in --env-dir are kept. Passwords are never printed.
    Ends with a WARNING when PostgreSQL lets the roles in without their password (`trust`)."""
    from infra import security

    settings = Settings()
    created = asyncio.run(
        security.apply(
            amqp_url=settings.amqp_url,
            management_url=settings.rabbitmq_management_url,
            database_url=settings.database_url,
            namespace=settings.namespace,
            env_dir=env_dir,
            prefix=prefix,
        )
    )
    for name, creds in created.items():
        role = f", postgresql role {creds.db_role}" if creds.db_role else ""
        typer.echo(f"{name}: rabbitmq user {creds.amqp_user}{role}")
    # The portal HTTP API's roles: the read-only portal reader, and the API's idempotency writer.
    api_roles = asyncio.run(
        security.apply_api_roles(
            database_url=settings.database_url, namespace=settings.namespace, env_dir=env_dir, prefix=prefix
        )
    )
    for name, creds in api_roles.items():
        typer.echo(f"{name}: postgresql role {creds.db_role}")
    if env_dir is not None:
        typer.echo(f"credentials written to {env_dir}/<name>.env (mode 0600)")
    # Per-role passwords mean nothing on a server that does not ask for them: say so loudly.
    everyone = {**created, **api_roles}
    for warning in asyncio.run(security.database_auth_warnings(settings.database_url, everyone)):
        typer.secho(warning, err=True, fg=typer.colors.YELLOW, bold=True)


@security_app.command("drop")
def security_drop(
    prefix: str | None = PREFIX_OPTION,
) -> None:
    """Remove the users and roles `security apply` created."""
    from infra import security

    settings = Settings()
    removed = asyncio.run(
        security.drop(
            management_url=settings.rabbitmq_management_url,
            database_url=settings.database_url,
            namespace=settings.namespace,
            prefix=prefix,
        )
    )
    removed += asyncio.run(
        security.drop_api_roles(
            database_url=settings.database_url, namespace=settings.namespace, prefix=prefix
        )
    )
    typer.echo("\n".join(removed) or "nothing to remove")


# --- message fixtures -------------------------------------------------------------------------------

fixtures_app = typer.Typer(
    help="Message fixtures: replay them, record live traffic into them, generate the library and load sets.",
    no_args_is_help=True,
)
app.add_typer(fixtures_app, name="fixtures")

FIXTURE_PATHS = typer.Argument(..., help="fixture files or folders (a folder: its *.json, recursively)")
TENANT_RENAME_OPTION = typer.Option(None, "--tenant", help="OLD=NEW: replay OLD as NEW (repeatable)")
RECORD_OUT_OPTION = typer.Option(..., "--out", "-o", help="folder for the fixture files (created if missing)")
GENERATE_OUT_OPTION = typer.Option(..., "--out", "-o", help="folder to write into (created if missing)")


@fixtures_app.command("replay")
def fixtures_replay(
    paths: list[Path] = FIXTURE_PATHS,
    dry_run: bool = typer.Option(False, "--dry-run", help="validate (and rewrite) only; publish nothing"),
    rate: float = typer.Option(0.0, "--rate", min=0, help="messages per second; 0 = as fast as possible"),
    fresh_ids: bool = typer.Option(
        False, "--fresh-ids", help="new message ids (default: keep them, so the inboxes drop a replay)"
    ),
    tenant_suffix: str = typer.Option(
        "", "--tenant-suffix", help="append to every tenant id (and derive new message ids): new data"
    ),
    tenant: list[str] | None = TENANT_RENAME_OPTION,
    keep_times: bool = typer.Option(
        False, "--keep-times", help="publish times as written (default: shift them by now - anchor)"
    ),
    settle: bool = typer.Option(
        True,
        "--settle/--no-settle",
        help="before each file, wait until the workers handled the earlier files' messages (their inbox)",
    ),
    check: bool = typer.Option(
        False, "--check", help="afterwards, wait for each fixture's expect (request outcome, dead letter)"
    ),
    skip_malformed: bool = typer.Option(
        False, "--skip-malformed", help="do not publish fixtures marked expect.dead_letter"
    ),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, help="seconds to wait (--settle, --check)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar (only on a terminal)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object"),
) -> None:
    """Validate every fixture against the contracts, then publish them to APPT_NAMESPACE (confirmed,
    persistent, mandatory), file by file. Publishes nothing when a fixture is invalid (exit 1); intentionally
    malformed ones (expect.dead_letter) are published as they are. See docs/fixtures.md."""
    from apptctl.fixture_replay import ReplayOptions, replay, report
    from apptctl.fixtures import FixturePathError, Rewrite, RewriteError, load, parse_tenant_map

    _quiet_amqp_logs()
    try:
        checked = load(paths)
        rewrite = Rewrite(
            shift_times=not keep_times,
            fresh_ids=fresh_ids,
            tenant_map=parse_tenant_map(tenant or []),
            tenant_suffix=tenant_suffix,
        )
    except (FixturePathError, RewriteError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    options = ReplayOptions(
        dry_run=dry_run,
        rate=rate,
        settle=settle,
        check=check,
        skip_malformed=skip_malformed,
        timeout_s=timeout,
        progress=progress,
    )
    summary = asyncio.run(replay(Settings(), checked, rewrite, options))
    out, err = report(summary)
    if err:
        typer.echo(err, err=True)
    typer.echo(json.dumps(summary.to_json(), indent=2) if as_json else out)
    raise typer.Exit(0 if summary.ok else 1)


@fixtures_app.command("record")
def fixtures_record(
    queue: str = typer.Argument(
        ..., help="worker whose bindings to copy: policy_gate, modify_handler, portal_sync"
    ),
    out: Path = RECORD_OUT_OPTION,
    count: int | None = typer.Option(None, "--count", min=1, help="stop after this many messages"),
    timeout: float | None = typer.Option(None, "--timeout", min=0.1, help="stop after this many seconds"),
) -> None:
    """Record what is published from now on to a worker queue's bindings, one fixture file per message,
    named to sort in arrival order. A temporary exclusive queue gets copies: the worker misses nothing."""
    import signal

    from aiormq.exceptions import ChannelNotFoundEntity

    from apptctl.fixture_record import UnknownWorkQueue, record, resolve_work_queue
    from infra.topology import build

    settings = Settings()
    topology = build(settings.namespace)
    try:
        spec = resolve_work_queue(topology, queue)
    except UnknownWorkQueue as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)

    async def action(broker):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await record(
                broker.connection,
                topology,
                spec,
                out,
                count=count,
                timeout_s=timeout,
                stop=stop,
                on_ready=lambda text: typer.echo(text, err=True),
            )
        except ChannelNotFoundEntity as exc:
            typer.echo(f"{exc}: run `apptctl topology apply` (or check APPT_NAMESPACE)", err=True)
            raise typer.Exit(1) from None

    recording = _with_broker(settings, action)
    typer.echo(
        f"recorded {len(recording.written)} message(s) from {recording.queue}'s bindings into {out} "
        f"(stopped by {recording.stopped_by})"
    )


@fixtures_app.command("generate")
def fixtures_generate(
    kind: str = typer.Argument(..., help="library (what tests/fixtures holds) or load"),
    out: Path = GENERATE_OUT_OPTION,
    count: int = typer.Option(1000, "--count", min=1, help="load: appointments (booked, then changed once)"),
    seed: str | None = typer.Option(None, "--seed", help="load: names its tenants (default: random)"),
) -> None:
    """Generate fixtures from the contract models: `library` rewrites the committed set (stories,
    rejections, malformed, a small load set); `load` writes settings, bookings and requests files for
    COUNT appointments (2 x COUNT + 1 per 100 messages) with times relative to now."""
    import secrets

    from apptctl import fixture_library

    if kind == "library":
        files = fixture_library.library()
    elif kind == "load":
        try:
            files = fixture_library.load(
                count, seed or secrets.token_hex(3), fixture_library.now_anchor(), folder="."
            )
        except ValueError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
    else:
        typer.echo(f"unknown kind {kind!r}: choose library or load", err=True)
        raise typer.Exit(2)
    written = fixture_library.write(files, out)
    typer.echo(f"wrote {len(written)} fixture file(s) under {out}")


if __name__ == "__main__":
    app()
