"""Each worker's inbox and outbox are its own and tenant-scoped; views run with the reader's rights.

Before this, `messaging.inbox` / `messaging.outbox` were one table each, shared by every worker role and
outside row-level security: the gate's role could read other workers' outbox bodies across tenants,
write an outbox row as `producer='modify_handler'` (which modify_handler's relay then published), and
pre-claim a message id in modify_handler's inbox (issue 19). Now:

- Both tables are partitioned by worker (LIST on `consumer` / `producer`): `messaging.<worker>_inbox`
  and `messaging.<worker>_outbox` for each worker, and `messaging.unassigned_inbox` / `_outbox` (the
  default partition) for any other name (tests, tools: the owner only). A worker's role is granted its
  own partitions only (`apptctl security apply`), never the parent, so it can neither read nor write
  another worker's rows; and a row written into its own partition must carry its own name (the
  partition constraint), so it cannot pose as another producer.
- The inbox gains `tenant_id`, and every partition (and the parent) gets the row-level security policy
  of migration 0007: a worker's transaction sees and claims only its message's tenant. The dedupe key
  stays (consumer, message_id): a claim still conflicts with a row it cannot see, so a message id claimed
  before this migration (tenant unknown: '') is still a duplicate.
- The outbox relay must take its worker's rows of every tenant, and a transaction names one tenant.
  So the relay's four statements (claim a batch FOR UPDATE SKIP LOCKED, mark published, purge, backlog)
  are functions: `messaging.outbox_<op>(producer, ...)` run with the caller's rights (the owner's tools
  and tests), and per worker `messaging.<worker>_outbox_<op>(...)`, SECURITY DEFINER, bound to that
  worker's partition and executable only by that worker's role. Nothing else crosses tenants.
- Every view in our schemas gets `security_invoker = true`: a view owned by the migration role otherwise
  reads its tables with the owner's rights, past row-level security (a portal_sync transaction with no
  tenant saw every tenant's offers and windows through `portal.offers_now` / `portal.pickable_windows`).

Existing rows are copied over (the outbox keeps its ids and its sequence).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

WORKERS = ("policy_gate", "modify_handler", "portal_sync")  # infra.db.tables.WORKERS, frozen here
SCHEMAS = ("scheduling", "policy", "portal", "messaging")
SAME_TENANT = "tenant_id = current_setting('appt.tenant_id', true)"
OUTBOX_COLUMNS = (
    "id, message_id, producer, exchange_role, routing_key, message_type, correlation_id, tenant_id, "
    "headers, body, created_at, published_at"
)
CLAIMED = (
    "id bigint, message_id uuid, exchange_role varchar, routing_key varchar, message_type varchar, "
    "correlation_id varchar, tenant_id varchar, headers jsonb, body bytea"
)
# The relay's statements, for one producer, with the caller's rights. plpgsql: plans are cached.
GENERIC_FUNCTIONS = (
    f"""
    CREATE FUNCTION messaging.outbox_claim(p_producer text, p_limit integer, p_grace interval)
    RETURNS TABLE ({CLAIMED}) LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
        RETURN QUERY
        SELECT o.id, o.message_id, o.exchange_role, o.routing_key, o.message_type, o.correlation_id,
               o.tenant_id, o.headers, o.body
        FROM messaging.outbox o
        WHERE o.producer = p_producer AND o.published_at IS NULL AND o.created_at < now() - p_grace
        ORDER BY o.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED;
    END $$
    """,
    """
    CREATE FUNCTION messaging.outbox_mark(p_producer text, p_message_ids uuid[])
    RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
    DECLARE marked bigint;
    BEGIN
        UPDATE messaging.outbox SET published_at = now()
        WHERE producer = p_producer AND message_id = ANY(p_message_ids) AND published_at IS NULL;
        GET DIAGNOSTICS marked = ROW_COUNT;
        RETURN marked;
    END $$
    """,
    """
    CREATE FUNCTION messaging.outbox_purge(p_producer text, p_retention interval)
    RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
    DECLARE purged bigint;
    BEGIN
        DELETE FROM messaging.outbox WHERE producer = p_producer AND published_at < now() - p_retention;
        GET DIAGNOSTICS purged = ROW_COUNT;
        RETURN purged;
    END $$
    """,
    """
    CREATE FUNCTION messaging.outbox_backlog(p_producer text)
    RETURNS TABLE (pending bigint, oldest_s double precision)
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
        RETURN QUERY
        SELECT count(*), COALESCE(extract(epoch FROM now() - min(o.created_at)), 0)::float8
        FROM messaging.outbox o WHERE o.producer = p_producer AND o.published_at IS NULL;
    END $$
    """,
)
# Per worker: the same, as the owner (every tenant), for that worker's rows only.
WORKER_FUNCTIONS = (
    (
        "outbox_claim",
        "p_limit integer, p_grace interval",
        f"TABLE ({CLAIMED})",
        "SELECT * FROM messaging.outbox_claim('{w}', p_limit, p_grace)",
    ),
    ("outbox_mark", "p_message_ids uuid[]", "bigint", "SELECT messaging.outbox_mark('{w}', p_message_ids)"),
    ("outbox_purge", "p_retention interval", "bigint", "SELECT messaging.outbox_purge('{w}', p_retention)"),
    (
        "outbox_backlog",
        "",
        "TABLE (pending bigint, oldest_s double precision)",
        "SELECT * FROM messaging.outbox_backlog('{w}')",
    ),
)
GENERIC_SIGNATURES = (
    "messaging.outbox_claim(text, integer, interval)",
    "messaging.outbox_mark(text, uuid[])",
    "messaging.outbox_purge(text, interval)",
    "messaging.outbox_backlog(text)",
)
WORKER_SIGNATURES = {
    "outbox_claim": "(integer, interval)",
    "outbox_mark": "(uuid[])",
    "outbox_purge": "(interval)",
    "outbox_backlog": "()",
}


def _set_views_invoker(value: bool) -> None:
    schemas = ", ".join(f"'{s}'" for s in SCHEMAS)
    op.execute(
        f"""
        DO $$
        DECLARE v record;
        BEGIN
            FOR v IN SELECT schemaname, viewname FROM pg_views WHERE schemaname IN ({schemas}) LOOP
                EXECUTE format('ALTER VIEW %I.%I SET (security_invoker = {str(value).lower()})',
                               v.schemaname, v.viewname);
            END LOOP;
        END $$
        """
    )


def _wall(table: str) -> None:
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY tenant_wall ON {table} USING ({SAME_TENANT}) WITH CHECK ({SAME_TENANT})")


def upgrade() -> None:
    # The old tables step aside (their index names are schema-wide, so those too); the sequence stays.
    op.execute("ALTER TABLE messaging.inbox RENAME TO inbox_0007")
    op.execute("ALTER INDEX messaging.inbox_pkey RENAME TO inbox_0007_pkey")
    op.execute("ALTER TABLE messaging.outbox RENAME TO outbox_0007")
    op.execute("ALTER INDEX messaging.outbox_pkey RENAME TO outbox_0007_pkey")
    op.execute("ALTER INDEX messaging.outbox_message_id_key RENAME TO outbox_0007_message_id_key")
    op.execute("ALTER INDEX messaging.outbox_unpublished RENAME TO outbox_0007_unpublished")
    op.execute("ALTER SEQUENCE messaging.outbox_id_seq OWNED BY NONE")

    op.execute(
        """
        CREATE TABLE messaging.inbox (
            consumer varchar(64) NOT NULL,
            message_id uuid NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now(),
            tenant_id varchar(64) NOT NULL,
            PRIMARY KEY (consumer, message_id)
        ) PARTITION BY LIST (consumer)
        """
    )
    op.execute(
        """
        CREATE TABLE messaging.outbox (
            id bigint NOT NULL DEFAULT nextval('messaging.outbox_id_seq'),
            message_id uuid NOT NULL,
            producer varchar(64) NOT NULL,
            exchange_role varchar(32) NOT NULL,
            routing_key varchar(128) NOT NULL,
            message_type varchar(64) NOT NULL,
            correlation_id varchar(64) NOT NULL,
            tenant_id varchar(64) NOT NULL,
            headers jsonb NOT NULL,
            body bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            published_at timestamptz,
            PRIMARY KEY (producer, id),
            CONSTRAINT outbox_message_id_key UNIQUE (producer, message_id)
        ) PARTITION BY LIST (producer)
        """
    )
    op.execute(
        "CREATE INDEX outbox_unpublished ON messaging.outbox (producer, id) WHERE published_at IS NULL"
    )
    for worker in WORKERS:
        op.execute(
            f"CREATE TABLE messaging.{worker}_inbox PARTITION OF messaging.inbox FOR VALUES IN ('{worker}')"
        )
        op.execute(
            f"CREATE TABLE messaging.{worker}_outbox PARTITION OF messaging.outbox FOR VALUES IN ('{worker}')"
        )
    op.execute("CREATE TABLE messaging.unassigned_inbox PARTITION OF messaging.inbox DEFAULT")
    op.execute("CREATE TABLE messaging.unassigned_outbox PARTITION OF messaging.outbox DEFAULT")

    op.execute(
        "INSERT INTO messaging.inbox (consumer, message_id, received_at, tenant_id) "
        "SELECT consumer, message_id, received_at, '' FROM messaging.inbox_0007"
    )
    op.execute(
        f"INSERT INTO messaging.outbox ({OUTBOX_COLUMNS}) SELECT {OUTBOX_COLUMNS} FROM messaging.outbox_0007"
    )
    op.execute("DROP TABLE messaging.inbox_0007, messaging.outbox_0007")
    op.execute("ALTER SEQUENCE messaging.outbox_id_seq OWNED BY messaging.outbox.id")

    for table in ("inbox", "outbox"):
        _wall(f"messaging.{table}")
        for worker in (*WORKERS, "unassigned"):
            _wall(f"messaging.{worker}_{table}")

    for statement in GENERIC_FUNCTIONS:
        op.execute(statement)
    for signature in GENERIC_SIGNATURES:
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
    for worker in WORKERS:
        for name, arguments, returns, body in WORKER_FUNCTIONS:
            op.execute(
                f"CREATE FUNCTION messaging.{worker}_{name}({arguments}) RETURNS {returns} "
                "LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp "
                f"AS $$ {body.format(w=worker)} $$"
            )
            op.execute(
                f"REVOKE ALL ON FUNCTION messaging.{worker}_{name}{WORKER_SIGNATURES[name]} FROM PUBLIC"
            )

    _set_views_invoker(True)


def downgrade() -> None:
    _set_views_invoker(False)
    for worker in WORKERS:
        for name in WORKER_SIGNATURES:
            op.execute(f"DROP FUNCTION messaging.{worker}_{name}{WORKER_SIGNATURES[name]}")
    for signature in GENERIC_SIGNATURES:
        op.execute(f"DROP FUNCTION {signature}")
    op.execute("ALTER TABLE messaging.inbox RENAME TO inbox_0008")
    op.execute("ALTER INDEX messaging.inbox_pkey RENAME TO inbox_0008_pkey")
    op.execute("ALTER TABLE messaging.outbox RENAME TO outbox_0008")
    op.execute("ALTER INDEX messaging.outbox_pkey RENAME TO outbox_0008_pkey")
    op.execute("ALTER INDEX messaging.outbox_message_id_key RENAME TO outbox_0008_message_id_key")
    op.execute("ALTER INDEX messaging.outbox_unpublished RENAME TO outbox_0008_unpublished")
    op.execute("ALTER SEQUENCE messaging.outbox_id_seq OWNED BY NONE")
    op.execute(
        """
        CREATE TABLE messaging.inbox (
            consumer varchar(64) NOT NULL,
            message_id uuid NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (consumer, message_id)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE messaging.outbox (
            id bigint PRIMARY KEY DEFAULT nextval('messaging.outbox_id_seq'),
            message_id uuid NOT NULL UNIQUE,
            producer varchar(64) NOT NULL,
            exchange_role varchar(32) NOT NULL,
            routing_key varchar(128) NOT NULL,
            message_type varchar(64) NOT NULL,
            correlation_id varchar(64) NOT NULL,
            tenant_id varchar(64) NOT NULL,
            headers jsonb NOT NULL,
            body bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            published_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX outbox_unpublished ON messaging.outbox (id) WHERE published_at IS NULL")
    op.execute(
        "INSERT INTO messaging.inbox (consumer, message_id, received_at) "
        "SELECT consumer, message_id, received_at FROM messaging.inbox_0008"
    )
    op.execute(
        f"INSERT INTO messaging.outbox ({OUTBOX_COLUMNS}) SELECT {OUTBOX_COLUMNS} FROM messaging.outbox_0008"
    )
    op.execute("DROP TABLE messaging.inbox_0008, messaging.outbox_0008")
    op.execute("ALTER SEQUENCE messaging.outbox_id_seq OWNED BY messaging.outbox.id")
