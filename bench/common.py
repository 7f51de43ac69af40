"""Names and settings shared by the bench's processes (orchestrator, load generator, stage processes)."""

import os
import re

from sqlalchemy.engine import make_url

from workers.runtime.database import asyncpg_dsn as asyncpg_dsn  # the one conversion, for the bench
from workers.runtime.settings import Settings

# BENCH_PREFIX names everything a run owns (default `bench`: database appt_bench, namespaces bench,
# benchrt, benchbare), so two people benchmarking on one shared machine don't reset each other's run.
PREFIX = os.environ.get("BENCH_PREFIX", "bench")
if not re.fullmatch(r"[a-z][a-z0-9]{0,15}", PREFIX):
    raise SystemExit(f"BENCH_PREFIX must be a short lowercase name, like bench or perf2; got {PREFIX!r}")
BENCH_DATABASE = f"appt_{PREFIX}"
OURS_NAMESPACE = PREFIX  # the real topology (infra.topology.build) under its own prefix
RUNTIME_NAMESPACE = f"{PREFIX}rt"  # three trivial stages on our runtime
BARE_NAMESPACE = f"{PREFIX}bare"  # three trivial stages on plain aio-pika + asyncpg

STAGES = (1, 2, 3)
PREFETCH = 32  # = APPT_PREFETCH's default, used by every consumer in every system
DB_POOL = 10  # = APPT_DB_POOL_SIZE's default (SQLAlchemy adds as many overflow connections)

# The trivial transaction every bare and runtime stage runs; the last stage's row marks "done".
HOPS_DDL = (
    "CREATE SCHEMA IF NOT EXISTS bench",
    "CREATE TABLE IF NOT EXISTS bench.hops ("
    " id text NOT NULL, stage smallint NOT NULL, at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (id, stage))",
)
HOP_SQL = "INSERT INTO bench.hops (id, stage) VALUES ($1, $2) ON CONFLICT DO NOTHING"


def amqp_url() -> str:
    return Settings().amqp_url


def database_url() -> str:
    """BENCH_DATABASE_URL, else DATABASE_URL (or its default) with the database renamed to appt_<prefix>."""
    explicit = os.environ.get("BENCH_DATABASE_URL")
    if explicit:
        return explicit
    url = make_url(Settings().database_url).set(database=BENCH_DATABASE)
    return url.render_as_string(hide_password=False)


# Bare relay names: one direct exchange, queue s<N> bound with routing key s<N>.
BARE_EXCHANGE = f"{BARE_NAMESPACE}.x"


def bare_queue(stage: int) -> str:
    return f"{BARE_NAMESPACE}.s{stage}"


# Runtime-stage names: exchange role "bench" -> benchrt.stages, queue benchrt.stage<N> bound to stage<N>.
RUNTIME_ROLE = "bench"


def runtime_queue(stage: int) -> str:
    return f"{RUNTIME_NAMESPACE}.stage{stage}"
