"""Per-worker PostgreSQL roles: LOGIN roles with grants on exactly the tables each worker reads and writes.

What each role gets is its worker's catalog entry (contracts/catalog.py), read from the code (the
handlers, stores and the shared runtime):
  owns            its own schema (`Worker.owns`: policy_gate policy.*, modify_handler scheduling.*,
                  portal_sync portal.*)
  reads           the tables outside it that it uses, and how (`Worker.reads`: the gate reads the
                  schedule's appointments, projects and project contacts, nothing else of it)
  auditor         SELECT on the workers' schemas and messaging (`apptctl reconcile`, `apptctl status`),
                  nothing else, and BYPASSRLS: the workers' roles see one tenant per transaction
                  (row-level security, migration 0007), the auditor every tenant
  each worker     its own inbox partition `messaging.<worker>_inbox` (claim: INSERT, and SELECT for
                  RETURNING); those that publish (`Worker.emits_events`) also its own outbox partition
                  `messaging.<worker>_outbox` (INSERT, written with the change), the id sequence, and
                  EXECUTE on its own relay functions `messaging.<worker>_outbox_*` (claim, mark, purge,
                  backlog: SECURITY DEFINER, bound to its partition, every tenant). Never the parents
                  `messaging.inbox` / `messaging.outbox`, nor another worker's partition or functions
                  (migration 0008), so it cannot read, write or claim another worker's rows.
"Owns" is every table of the schema with SELECT, INSERT, UPDATE, DELETE (no TRUNCATE, no DDL): a table a
later migration adds to a worker's own schema is covered by re-running `apptctl security apply`.
Passwords are sent as SCRAM-SHA-256 verifiers, so the plain password is never in a statement (and so never
in PostgreSQL's statement log).
"""

import base64
import hashlib
import hmac
import secrets

import asyncpg

from contracts.catalog import AUDITOR as CATALOG_AUDITOR
from contracts.catalog import MESSAGING, PORTAL, WORKER_SCHEMAS, Worker, worker

OWN = ("SELECT", "INSERT", "UPDATE", "DELETE")
AUDITOR = CATALOG_AUDITOR.name  # reads everything (reconcile, status), writes nothing
OUTBOX_SEQUENCE = f"{MESSAGING}.outbox_id_seq"
# The relay's functions per worker (migration 0008), with their argument types.
RELAY_FUNCTIONS = {
    "outbox_claim": "(integer, interval)",
    "outbox_mark": "(uuid[])",
    "outbox_purge": "(interval)",
    "outbox_backlog": "()",
}


def uses(entry: Worker) -> dict[str, tuple[str, ...]]:
    """Tables outside its own schema a worker uses, and how: what it reads, its inbox partition and, when
    it publishes events, its outbox partition."""
    inbox = {entry.inbox_table: ("SELECT", "INSERT")}
    outbox = {entry.outbox_table: ("INSERT",)} if entry.emits_events else {}
    return {**entry.reads, **inbox, **outbox}


def relay_functions(entry: Worker) -> list[str]:
    """The relay functions of a worker, as GRANT EXECUTE names them."""
    return [f"{MESSAGING}.{_ident(f'{entry.name}_{name}')}{args}" for name, args in RELAY_FUNCTIONS.items()]


SCHEMAS = WORKER_SCHEMAS


def scram_verifier(password: str, *, iterations: int = 4096, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802 / 7677)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table(qualified: str) -> str:
    schema, table = qualified.split(".")
    return f"{_ident(schema)}.{_ident(table)}"


async def apply_role(connection: asyncpg.Connection, identity: str, role: str, password: str) -> None:
    """Create or update `role` for `identity` (a worker or the auditor) in the connected database: LOGIN,
    the password, and exactly the grants above (anything else it was granted on our schemas is revoked
    first)."""
    exists = await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    verifier = scram_verifier(password).replace("'", "''")
    verb = "ALTER" if exists else "CREATE"
    # Row-level security (migration 0007) walls each worker into its message's tenant; the auditor
    # reads every tenant.
    rls = "BYPASSRLS" if identity == AUDITOR else "NOBYPASSRLS"
    await connection.execute(
        f"{verb} ROLE {_ident(role)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE {rls} PASSWORD '{verifier}'"
    )
    database = await connection.fetchval("SELECT current_database()")
    async with connection.transaction():
        await connection.execute(f"GRANT CONNECT ON DATABASE {_ident(database)} TO {_ident(role)}")
        for schema in SCHEMAS:
            await connection.execute(
                f"REVOKE ALL ON ALL TABLES IN SCHEMA {_ident(schema)} FROM {_ident(role)}"
            )
            await connection.execute(
                f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {_ident(schema)} FROM {_ident(role)}"
            )
            await connection.execute(f"REVOKE ALL ON SCHEMA {_ident(schema)} FROM {_ident(role)}")
            await connection.execute(
                f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {_ident(schema)} FROM {_ident(role)}"
            )
        if identity == AUDITOR:
            for schema in SCHEMAS:
                await connection.execute(f"GRANT USAGE ON SCHEMA {_ident(schema)} TO {_ident(role)}")
                await connection.execute(
                    f"GRANT SELECT ON ALL TABLES IN SCHEMA {_ident(schema)} TO {_ident(role)}"
                )
            return
        entry = worker(identity)
        own = _ident(entry.owns)
        tables = uses(entry)
        for schema in sorted({entry.owns, *(t.split(".")[0] for t in tables)}):
            await connection.execute(f"GRANT USAGE ON SCHEMA {_ident(schema)} TO {_ident(role)}")
        await connection.execute(f"GRANT {', '.join(OWN)} ON ALL TABLES IN SCHEMA {own} TO {_ident(role)}")
        await connection.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {own} TO {_ident(role)}")
        for table, privileges in tables.items():
            await connection.execute(f"GRANT {', '.join(privileges)} ON {_table(table)} TO {_ident(role)}")
        if entry.emits_events:
            await connection.execute(f"GRANT USAGE ON SEQUENCE {_table(OUTBOX_SEQUENCE)} TO {_ident(role)}")
            for function in relay_functions(entry):
                await connection.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {_ident(role)}")


async def drop_role(connection: asyncpg.Connection, role: str) -> bool:
    """Revoke what `role` holds in the connected database and drop it; False when it did not exist.
    (A role with grants in other databases must be cleaned there first: DROP OWNED BY in each.)"""
    if not await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
        return False
    await connection.execute(f"DROP OWNED BY {_ident(role)}")
    await connection.execute(f"DROP ROLE {_ident(role)}")
    return True


async def accepts_any_password(dsn: str, role: str) -> bool:
    """Does the server let `role` in with a password that is not its own (a `trust` rule in pg_hba.conf
    for this host)? `dsn`: any URL of the server; its user and password are replaced."""
    wrong = f"not-the-password-{secrets.token_hex(8)}"
    try:
        connection = await asyncpg.connect(dsn, user=role, password=wrong, timeout=10)
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
        return False  # refused: the server checks (or rejects) this role
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False  # cannot tell from here (SSL required, ...): no claim either way
    await connection.close()
    return True


async def trust_rules(connection: asyncpg.Connection) -> list[str]:
    """The pg_hba.conf lines that let anyone in without a password (`trust`), as `line N: ...`; empty when
    there are none or the connected role may not read pg_hba_file_rules (superusers only, by default)."""
    try:
        rows = await connection.fetch(
            "SELECT line_number, type, database, user_name, address FROM pg_hba_file_rules "
            "WHERE auth_method = 'trust' ORDER BY line_number"
        )
    except asyncpg.InsufficientPrivilegeError:
        return []
    return [
        f"line {r['line_number']}: {r['type']} {','.join(r['database'] or [])} "
        f"{','.join(r['user_name'] or [])} {r['address'] or ''}".rstrip()
        for r in rows
    ]


# --- The portal HTTP API's roles (issue 13): not workers, no broker user -------------------------------
# portal_reader  the portal reader role: SELECT on the read store (portal.*, its views included) and on
#                the API's request records, under row-level security (NOBYPASSRLS): a transaction sees
#                the tenant it set in `appt.tenant_id`, nothing else. For the API's reads, and for portal
#                teams that read the read store directly.
# portal_api     the API's one write: its idempotency record (portal_api.requests), SELECT and INSERT.
PORTAL_READER = "portal_reader"
PORTAL_API = "portal_api"
API_ROLES: dict[str, dict[str, tuple[str, ...]]] = {
    PORTAL_READER: {f"{PORTAL}.*": ("SELECT",), "portal_api.requests": ("SELECT",)},
    PORTAL_API: {"portal_api.requests": ("SELECT", "INSERT")},
}
API_SCHEMAS = (PORTAL, "portal_api")


async def apply_api_role(connection: asyncpg.Connection, name: str, role: str, password: str) -> None:
    """Create or update one of the API's roles with exactly its grants (see API_ROLES)."""
    exists = await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    verifier = scram_verifier(password).replace("'", "''")
    verb = "ALTER" if exists else "CREATE"
    await connection.execute(
        f"{verb} ROLE {_ident(role)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS "
        f"PASSWORD '{verifier}'"
    )
    database = await connection.fetchval("SELECT current_database()")
    async with connection.transaction():
        await connection.execute(f"GRANT CONNECT ON DATABASE {_ident(database)} TO {_ident(role)}")
        for schema in (*SCHEMAS, *API_SCHEMAS):
            if not await connection.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
                continue
            await connection.execute(
                f"REVOKE ALL ON ALL TABLES IN SCHEMA {_ident(schema)} FROM {_ident(role)}"
            )
            await connection.execute(f"REVOKE ALL ON SCHEMA {_ident(schema)} FROM {_ident(role)}")
        for target, privileges in API_ROLES[name].items():
            schema, table = target.split(".")
            await connection.execute(f"GRANT USAGE ON SCHEMA {_ident(schema)} TO {_ident(role)}")
            where = f"ALL TABLES IN SCHEMA {_ident(schema)}" if table == "*" else _table(target)
            await connection.execute(f"GRANT {', '.join(privileges)} ON {where} TO {_ident(role)}")
