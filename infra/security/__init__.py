"""Least privilege: one RabbitMQ user and one PostgreSQL role per worker, allowed only what it uses.

`apply(...)` creates or updates them (idempotent) and writes one env file per worker with its own
AMQP_URL and DATABASE_URL; `drop(...)` removes them. `apptctl security apply|drop` runs these, and
`apply_api_roles` / `drop_api_roles` for the portal HTTP API's reader and writer roles.
"""

from infra.security.plan import (
    Credentials,
    apply,
    apply_api_roles,
    apply_database_roles,
    database_auth_warnings,
    drop,
    drop_api_roles,
    load_credentials,
)

__all__ = [
    "Credentials",
    "apply",
    "apply_api_roles",
    "apply_database_roles",
    "database_auth_warnings",
    "drop",
    "drop_api_roles",
    "load_credentials",
]
