"""`apptctl teardown`: remove a namespace's RabbitMQ topology and its PostgreSQL database, after saying what
that destroys (queued messages, dead letters, the database)."""

import contextlib
from dataclasses import dataclass, field

import aio_pika
import asyncpg
from aiormq.exceptions import ChannelNotFoundEntity

from infra.db.admin import _maintenance_dsn, drop_database
from infra.topology import Topology, build, delete
from workers.runtime.settings import Settings

CONNECT_TIMEOUT_S = 5.0


@dataclass
class Plan:
    namespace: str
    database: str
    queues: dict[str, int] = field(default_factory=dict)  # existing queue -> messages ready in it
    dead_letters: int = 0
    database_exists: bool = False
    topology: Topology | None = None

    @property
    def empty(self) -> bool:
        return not self.queues and not self.database_exists

    def describe(self, *, topology: bool, database: bool) -> str:
        lines = [f"teardown of namespace {self.namespace!r}:"]
        if topology:
            if self.queues:
                messages = sum(self.queues.values())
                assert self.topology is not None
                lines.append(
                    f"  RabbitMQ: {len(self.queues)} queue(s) holding {messages} message(s), "
                    f"{self.dead_letters} of them dead letters, "
                    f"and {len(self.topology.exchanges)} exchange(s)"
                )
            else:
                lines.append("  RabbitMQ: no queue of this namespace exists")
        if database:
            lines.append(
                f"  PostgreSQL: database {self.database!r} "
                "(appointments, decisions, read store, outbox, inbox)"
                if self.database_exists
                else f"  PostgreSQL: database {self.database!r} does not exist"
            )
        return "\n".join(lines)


async def plan(settings: Settings) -> Plan:
    """What exists now (reads only)."""
    topology = build(settings.namespace, settings.retry_delays_s)
    dsn, name = _maintenance_dsn(settings.database_url)
    result = Plan(settings.namespace, name or "", topology=topology)
    connection = await aio_pika.connect(settings.amqp_url, timeout=CONNECT_TIMEOUT_S)
    async with connection:
        for spec in topology.queues:
            channel = await connection.channel(publisher_confirms=False)
            try:
                declared = await channel.declare_queue(spec.name, passive=True)
            except ChannelNotFoundEntity:
                continue  # the failed passive declare closed this channel
            result.queues[spec.name] = declared.declaration_result.message_count
            if spec.kind == "dead-letter":
                result.dead_letters += declared.declaration_result.message_count
            with contextlib.suppress(Exception):
                await channel.close()
    database = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        result.database_exists = bool(
            await database.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        )
    finally:
        await database.close()
    return result


async def execute(settings: Settings, planned: Plan, *, topology: bool, database: bool) -> list[str]:
    """Remove what was planned; returns what was done, in words."""
    done = []
    if topology and planned.topology is not None:
        connection = await aio_pika.connect(settings.amqp_url, timeout=CONNECT_TIMEOUT_S)
        async with connection:
            await delete(await connection.channel(), planned.topology)
        done.append(f"deleted the queues and exchanges of namespace {planned.namespace!r}")
    if database and planned.database_exists:
        await drop_database(settings.database_url)
        done.append(f"dropped database {planned.database!r}")
    return done
