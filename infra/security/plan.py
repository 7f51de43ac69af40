"""Create, update and remove the per-worker credentials of one namespace, and write their env files."""

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
from sqlalchemy.engine import make_url

from contracts.catalog import DATABASE_IDENTITIES, IDENTITIES
from infra.nodes import node_urls
from infra.security import postgres, rabbitmq
from infra.topology import build
from workers.runtime.database import asyncpg_dsn


@dataclass(frozen=True)
class Credentials:
    """One worker's (or publisher's) identity; `amqp_url` / `database_url` carry the password."""

    name: str
    amqp_user: str
    amqp_password: str
    amqp_url: str
    db_role: str | None = None
    db_password: str | None = None
    database_url: str | None = None

    def env(self) -> dict[str, str]:
        env = {"AMQP_URL": self.amqp_url}
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        return env


def role_prefix(namespace: str) -> str:
    """A PostgreSQL-safe prefix from the namespace (roles are cluster-wide, so they carry it)."""
    return re.sub(r"[^a-z0-9_]", "_", namespace.lower())


def _with_credentials(url: str, user: str, password: str) -> str:
    """`url` (one node, or a cluster's node list) with the identity's credentials on every node."""
    return ",".join(_node_with_credentials(node, user, password) for node in node_urls(url))


def _node_with_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (
        f":{parts.port}" if parts.port else ""
    )
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _db_url(url: str, role: str, password: str) -> str:
    return make_url(url).set(username=role, password=password).render_as_string(hide_password=False)


def _read_env(path: Path) -> dict[str, str]:
    values = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
    return values


def _password_in(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return make_url(url).password  # type: ignore[return-value]
    except Exception:
        return None


def load_credentials(env_dir: Path, name: str) -> dict[str, str]:
    return _read_env(env_dir / f"{name}.env")


def _write_env(path: Path, env: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("# written by `apptctl security apply`; secret: keep it out of logs and repositories\n")
        for key, value in env.items():
            out.write(f"{key}={value}\n")
    os.chmod(path, 0o600)


async def apply_database_roles(
    *, database_url: str, namespace: str, prefix: str | None = None, passwords: dict[str, str] | None = None
) -> dict[str, tuple[str, str, str]]:
    """Create or update the namespace's PostgreSQL roles (the database half of `apply`); per identity:
    (role, password, its DATABASE_URL). `passwords`: ones to keep (else new ones are generated)."""
    db_prefix = role_prefix(prefix or namespace)
    roles: dict[str, tuple[str, str, str]] = {}
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for name in DATABASE_IDENTITIES:
            role = f"{db_prefix}_{name}"
            password = (passwords or {}).get(name) or secrets.token_urlsafe(24)
            await postgres.apply_role(connection, name, role, password)
            roles[name] = (role, password, _db_url(database_url, role, password))
    finally:
        await connection.close()
    return roles


async def apply(
    *,
    amqp_url: str,
    management_url: str,
    database_url: str,
    namespace: str,
    env_dir: Path | None = None,
    prefix: str | None = None,
) -> dict[str, Credentials]:
    """Create or update every user and role of the namespace (idempotent; passwords already in
    `env_dir` are kept, new ones generated), and write `env_dir/<name>.env` (mode 0600) if given."""
    from apptctl.management import vhost_of

    topology = build(namespace)
    prefix = prefix or namespace
    vhost = vhost_of(amqp_url)
    api = rabbitmq.ManagementClient(management_url)
    wanted = rabbitmq.permissions(topology)
    olds = {name: _read_env(env_dir / f"{name}.env") if env_dir else {} for name in IDENTITIES}
    kept = {name: p for name, old in olds.items() if (p := _password_in(old.get("DATABASE_URL")))}
    roles = await apply_database_roles(
        database_url=database_url, namespace=namespace, prefix=prefix, passwords=kept
    )
    result: dict[str, Credentials] = {}
    for name in IDENTITIES:
        amqp_user = f"{prefix}-{name}"
        amqp_password = _password_in(olds[name].get("AMQP_URL")) or secrets.token_urlsafe(24)
        api.put_user(amqp_user, amqp_password)
        api.put_permissions(vhost, amqp_user, wanted[name])
        creds = Credentials(
            name, amqp_user, amqp_password, _with_credentials(amqp_url, amqp_user, amqp_password)
        )
        if name in roles:
            role, db_password, url = roles[name]
            creds = Credentials(
                **{**creds.__dict__, "db_role": role, "db_password": db_password, "database_url": url}
            )
        if env_dir is not None:
            _write_env(env_dir / f"{name}.env", creds.env())
        result[name] = creds
    return result


async def database_auth_warnings(database_url: str, roles: dict[str, Credentials]) -> list[str]:
    """What makes the roles' passwords meaningless on this server, in sentences for the operator: a role
    that got in with a wrong password, and the `trust` lines of pg_hba.conf (when readable)."""
    dsn = asyncpg_dsn(database_url)
    let_in = [
        c.db_role for c in roles.values() if c.db_role and await postgres.accepts_any_password(dsn, c.db_role)
    ]
    if not let_in:
        return []
    connection = await asyncpg.connect(dsn)
    try:
        rules = await postgres.trust_rules(connection)
    finally:
        await connection.close()
    warning = (
        f"WARNING: the PostgreSQL server accepted role(s) {', '.join(let_in)} with a WRONG password: it "
        "does not check passwords for them (a `trust` rule in pg_hba.conf), so their passwords protect "
        "nothing and any local user can connect as any role. For a deployment, require "
        "`scram-sha-256` for these roles in pg_hba.conf and reload PostgreSQL (docs/security.md)."
    )
    return [warning] + [f"WARNING: pg_hba.conf trusts without a password: {rule}" for rule in rules]


async def drop(
    *,
    management_url: str,
    database_url: str,
    namespace: str,
    prefix: str | None = None,
) -> list[str]:
    """Remove the namespace's users and roles; returns what was removed."""
    prefix = prefix or namespace
    api = rabbitmq.ManagementClient(management_url)
    removed = []
    for name in IDENTITIES:
        user = f"{prefix}-{name}"
        if api.call("GET", f"/api/users/{quote(user, safe='')}", missing_ok=True) is not None:
            api.delete_user(user)
            removed.append(f"rabbitmq user {user}")
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for name in DATABASE_IDENTITIES:
            role = f"{role_prefix(prefix)}_{name}"
            if await postgres.drop_role(connection, role):
                removed.append(f"postgresql role {role}")
    finally:
        await connection.close()
    return removed


# --- The portal HTTP API's database roles (issue 13): kept apart from the workers' identities ---------
async def apply_api_roles(
    *, database_url: str, namespace: str, env_dir: Path | None = None, prefix: str | None = None
) -> dict[str, Credentials]:
    """Create or update the portal reader role and the API's role (postgres.API_ROLES); database only, no
    broker user. Writes `env_dir/<name>.env` with DATABASE_URL if given; passwords there are kept."""
    db_prefix = role_prefix(prefix or namespace)
    result: dict[str, Credentials] = {}
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for name in postgres.API_ROLES:
            old = _read_env(env_dir / f"{name}.env") if env_dir else {}
            role = f"{db_prefix}_{name}"
            password = _password_in(old.get("DATABASE_URL")) or secrets.token_urlsafe(24)
            await postgres.apply_api_role(connection, name, role, password)
            url = _db_url(database_url, role, password)
            if env_dir is not None:
                _write_env(env_dir / f"{name}.env", {"DATABASE_URL": url})
            result[name] = Credentials(name, "", "", "", role, password, url)
    finally:
        await connection.close()
    return result


async def drop_api_roles(*, database_url: str, namespace: str, prefix: str | None = None) -> list[str]:
    removed = []
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for name in postgres.API_ROLES:
            role = f"{role_prefix(prefix or namespace)}_{name}"
            if await postgres.drop_role(connection, role):
                removed.append(f"postgresql role {role}")
    finally:
        await connection.close()
    return removed
