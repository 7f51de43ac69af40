"""Table definitions for every schema: scheduling (source of truth), policy, portal (read store), messaging.

Migrations under `migrations/` create these; a test checks the two never drift apart.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from contracts.catalog import MESSAGING, POLICY, PORTAL, SCHEDULING, WORKER_SCHEMAS

# Re-exported: the partitions' names, which the workers import from names.py without these definitions.
from infra.db.names import UNASSIGNED, WORKERS, inbox_table, outbox_function, outbox_table  # noqa: F401

metadata = MetaData()

# The workers' schemas and messaging (contracts/catalog.py), and the portal HTTP API's own.
SCHEMAS = (*WORKER_SCHEMAS, "portal_api")

ID = String(64)
APPOINTMENT_STATUSES = "('scheduled','dispatched','working','done','canceled')"
JOB_STATUSES = "('scheduled','in_progress','completed','canceled')"


def _now() -> Column:
    return Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now())


# --- scheduling: the source of truth --------------------------------------------------------------
jobs = Table(
    "jobs",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("job_id", ID, nullable=False),
    Column("customer_id", ID, nullable=False),
    Column("status", String(16), nullable=False),
    Column("version", BigInteger, nullable=False, server_default=text("0")),
    _now(),
    PrimaryKeyConstraint("tenant_id", "job_id"),
    CheckConstraint(f"status IN {JOB_STATUSES}", name="job_status_known"),
    schema=SCHEDULING,
)

project_contacts = Table(
    "project_contacts",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("project_id", ID, nullable=False),
    Column("contact_id", ID, nullable=False),
    Column("role", String(32), nullable=False),
    PrimaryKeyConstraint("tenant_id", "project_id", "contact_id"),
    schema=SCHEDULING,
)

projects = Table(
    "projects",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("project_id", ID, nullable=False),
    Column("portal_locked", Boolean, nullable=False, server_default=text("false")),
    Column("starts_at", DateTime(timezone=True)),
    Column("ends_at", DateTime(timezone=True)),
    _now(),
    PrimaryKeyConstraint("tenant_id", "project_id"),
    schema=SCHEDULING,
)

appointments = Table(
    "appointments",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("appointment_id", ID, nullable=False),
    Column("job_id", ID, nullable=False),
    Column("customer_id", ID, nullable=False),
    Column("business_unit", ID, nullable=False),
    Column("job_type", ID, nullable=False),
    Column("project_id", ID),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),
    Column("confirmation", String(16), nullable=False),
    Column("version", BigInteger, nullable=False, server_default=text("1")),
    _now(),
    Column("customer_reschedules", Integer, nullable=False, server_default=text("0")),
    Column("zone", ID, nullable=False, server_default=text("''")),
    Column("holds_place", Boolean, nullable=False, server_default=text("false")),
    # Versioned office writes (migration 0009, docs/scheduling.md): the office's last applied revision,
    # the version its last record produced, and the version the last customer change produced.
    Column("office_revision", BigInteger),
    Column("office_version", BigInteger),
    Column("customer_version", BigInteger),
    PrimaryKeyConstraint("tenant_id", "appointment_id"),
    ForeignKeyConstraint(["tenant_id", "job_id"], ["scheduling.jobs.tenant_id", "scheduling.jobs.job_id"]),
    CheckConstraint("window_end > window_start", name="appointment_window_ordered"),
    CheckConstraint(f"status IN {APPOINTMENT_STATUSES}", name="appointment_status_known"),
    CheckConstraint("confirmation IN ('confirmed','unconfirmed')", name="appointment_confirmation_known"),
    Index("appointments_by_job", "tenant_id", "job_id"),
    schema=SCHEDULING,
)

# An arrival window of a business unit (zone '' = the whole unit) with its places. `capacity` is what it
# holds now: `places`, or more when the office booked beyond them (see migration 0004).
capacity_windows = Table(
    "capacity_windows",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("business_unit", ID, nullable=False),
    Column("zone", ID, nullable=False, server_default=text("''")),
    Column("starts_at", DateTime(timezone=True), nullable=False),
    Column("ends_at", DateTime(timezone=True), nullable=False),
    Column("places", Integer, nullable=False),
    Column("capacity", Integer, nullable=False),
    Column("booked", Integer, nullable=False, server_default=text("0")),
    Column("version", BigInteger, nullable=False, server_default=text("1")),
    Column("capacity_version", BigInteger, nullable=False, server_default=text("0")),
    _now(),
    PrimaryKeyConstraint("tenant_id", "business_unit", "zone", "starts_at"),
    CheckConstraint("ends_at > starts_at", name="capacity_window_ordered"),
    CheckConstraint("places >= 0", name="capacity_places_not_negative"),
    CheckConstraint("booked >= 0 AND booked <= capacity", name="capacity_never_overbooked"),
    CheckConstraint("capacity >= places", name="capacity_covers_places"),
    schema=SCHEDULING,
)

# --- policy: the gate's settings and its decisions -----------------------------------------------
settings_layers = Table(
    "settings_layers",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("level", String(16), nullable=False),
    Column("scope_key", ID, nullable=False),  # '' for the business level
    Column("settings", JSONB, nullable=False),
    Column("settings_version", BigInteger, nullable=False),
    Column("changed_by", ID, nullable=False),
    _now(),
    PrimaryKeyConstraint("tenant_id", "level", "scope_key"),
    CheckConstraint(
        "level IN ('business','business_unit','job_type','project')", name="settings_level_known"
    ),
    schema=POLICY,
)

settings_history = Table(
    "settings_history",
    metadata,
    Column("id", BigInteger, nullable=False, autoincrement=True),
    Column("tenant_id", ID, nullable=False),
    Column("level", String(16), nullable=False),
    Column("scope_key", ID, nullable=False),
    Column("settings_version", BigInteger, nullable=False),
    Column("settings", JSONB, nullable=False),
    Column("previous", JSONB),
    Column("changed_by", ID, nullable=False),
    Column("message_id", UUID(as_uuid=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # tenant_id first in every key: ready to distribute by tenant (docs/scaling.md, migration 0012)
    PrimaryKeyConstraint("tenant_id", "id"),
    Index("settings_history_by_scope", "tenant_id", "level", "scope_key", "id"),
    schema=POLICY,
)

decisions = Table(
    "decisions",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("request_id", ID, nullable=False),
    Column("message_id", UUID(as_uuid=True), nullable=False),
    Column("appointment_id", ID, nullable=False),
    Column("action", String(16), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("reason_code", String(64)),
    Column("reason_text", String(1000)),
    Column("decided_on_version", BigInteger),
    Column("decided_at", DateTime(timezone=True), nullable=False),
    Column("requester_id", ID),
    Column("change", JSONB),
    Column("rule", String(64)),
    Column("setting", String(64)),
    Column("setting_level", String(16)),
    Column("office_decided_by", ID),
    Column("office_decided_at", DateTime(timezone=True)),
    # the portal that sent the request (migration 0009); '' for decisions recorded before 0009. A request
    # id means one request of one portal: the key has it (migration 0017)
    Column("producer", String(64), nullable=False, server_default=text("''")),
    PrimaryKeyConstraint("tenant_id", "producer", "request_id"),
    CheckConstraint("outcome IN ('approved','rejected','needs_approval')", name="decision_outcome_known"),
    schema=POLICY,
)

offers = Table(
    "offers",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("appointment_id", ID, nullable=False),
    Column("offer_version", BigInteger, nullable=False, server_default=text("0")),
    Column("appointment_version", BigInteger, nullable=False, server_default=text("0")),
    Column("segments", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("computed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("pick", JSONB),
    Column("terms", JSONB),
    Column("carried_request_id", ID),  # the approval that carries this offer (migration 0016)
    PrimaryKeyConstraint("tenant_id", "appointment_id"),
    schema=POLICY,
)

# --- portal: the read store portals query ---------------------------------------------------------
portal_appointments = Table(
    "appointments",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("appointment_id", ID, nullable=False),
    Column("job_id", ID, nullable=False),
    Column("customer_id", ID, nullable=False),
    Column("project_id", ID),
    Column("business_unit", ID, nullable=False),
    Column("job_type", ID, nullable=False),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),
    Column("confirmation", String(16), nullable=False),
    Column("version", BigInteger, nullable=False),
    _now(),
    PrimaryKeyConstraint("tenant_id", "appointment_id"),
    Index("portal_appointments_by_customer", "tenant_id", "customer_id"),
    schema=PORTAL,
)

portal_jobs = Table(
    "jobs",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("job_id", ID, nullable=False),
    Column("customer_id", ID, nullable=False),
    Column("status", String(16), nullable=False),
    Column("active_appointments", Integer, nullable=False),
    Column("version", BigInteger, nullable=False),
    _now(),
    PrimaryKeyConstraint("tenant_id", "job_id"),
    schema=PORTAL,
)

portal_requests = Table(
    "requests",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("request_id", ID, nullable=False),
    Column("appointment_id", ID, nullable=False),
    Column("requester_id", ID),
    Column("action", String(16), nullable=False),
    Column("status", String(24), nullable=False),
    Column("reason_code", String(64)),
    Column("reason_text", String(1000)),
    Column("requested_at", DateTime(timezone=True)),
    _now(),
    Column("reply_to", String(200)),
    Column("replied_at", DateTime(timezone=True)),
    # the request's portal (migration 0017; '' where it was not known then)
    Column("producer", String(64), nullable=False, server_default=text("''")),
    PrimaryKeyConstraint("tenant_id", "producer", "request_id"),
    CheckConstraint(
        "status IN ('pending','awaiting_approval','rejected','completed','failed')",
        name="request_status_known",
    ),
    schema=PORTAL,
)

# What the portal may offer per appointment, as the gate's timeline; the view `portal.offers_now`
# (migration 0003) gives the segment that holds now.
portal_appointment_offers = Table(
    "appointment_offers",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("appointment_id", ID, nullable=False),
    Column("job_id", ID, nullable=False),
    Column("customer_id", ID, nullable=False),
    Column("offer_version", BigInteger, nullable=False),
    Column("appointment_version", BigInteger, nullable=False),
    Column("segments", JSONB, nullable=False),
    _now(),
    Column("business_unit", ID),
    Column("zone", ID, nullable=False, server_default=text("''")),
    Column("min_lead_hours", Integer),
    Column("max_horizon_days", Integer),
    Column("not_before", DateTime(timezone=True)),
    Column("not_after", DateTime(timezone=True)),
    Column("cancel_reason_required", Boolean, nullable=False, server_default=text("false")),
    Column("cancel_reasons", JSONB),
    Column("contact_ids", ARRAY(ID), nullable=False, server_default=text("'{}'")),
    PrimaryKeyConstraint("tenant_id", "appointment_id"),
    Index("portal_offers_by_customer", "tenant_id", "customer_id"),
    schema=PORTAL,
)

portal_available_windows = Table(
    "available_windows",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("business_unit", ID, nullable=False),
    Column("zone", ID, nullable=False, server_default=text("''")),
    Column("starts_at", DateTime(timezone=True), nullable=False),
    Column("ends_at", DateTime(timezone=True), nullable=False),
    Column("free", Integer, nullable=False),
    Column("version", BigInteger, nullable=False),
    _now(),
    PrimaryKeyConstraint("tenant_id", "business_unit", "zone", "starts_at"),
    schema=PORTAL,
)

# Per appointment, in order: who asked for what, the decision and why, what changed (one row per event).
portal_audit_trail = Table(
    "audit_trail",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("message_id", UUID(as_uuid=True), nullable=False),
    Column("appointment_id", ID, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("entry", String(32), nullable=False),
    Column("actor", ID, nullable=False),
    Column("request_id", ID),
    Column("action", String(16)),
    Column("reason_code", String(64)),
    Column("reason_text", String(1000)),
    Column("window_start", DateTime(timezone=True)),
    Column("window_end", DateTime(timezone=True)),
    Column("previous_window_start", DateTime(timezone=True)),
    Column("status", String(16)),
    Column("version", BigInteger),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("tenant_id", "message_id"),
    Index("audit_trail_by_appointment", "tenant_id", "appointment_id", "occurred_at"),
    # One line per fact, whatever message carried it (migration 0009).
    Index(
        "audit_trail_by_meaning",
        "tenant_id",
        "appointment_id",
        "entry",
        text("COALESCE(request_id, '')"),
        text("COALESCE(version, -1)"),
        unique=True,
    ),
    schema=PORTAL,
)

# What became of each office message (migration 0009): the office integrator's read model.
portal_office_outcomes = Table(
    "office_outcomes",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("office_message_id", UUID(as_uuid=True), nullable=False),
    Column("correlation_id", ID, nullable=False),
    Column("message_type", String(64), nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("subject", ID),
    Column("reason_code", String(64)),
    Column("reason_text", String(1000)),
    Column("current_state", JSONB),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("tenant_id", "office_message_id"),
    CheckConstraint("status IN ('applied','ignored','refused')", name="office_outcome_status_known"),
    Index("office_outcomes_by_subject", "tenant_id", "subject", "occurred_at"),
    schema=PORTAL,
)

# Each business unit's IANA time zone (from the office's capacity settings), for local times.
portal_business_units = Table(
    "business_units",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("business_unit", ID, nullable=False),
    Column("time_zone", ID, nullable=False),
    Column("capacity_version", BigInteger, nullable=False),
    _now(),
    PrimaryKeyConstraint("tenant_id", "business_unit"),
    schema=PORTAL,
)

# --- portal_api: the HTTP API's idempotency record (one row per request id) ----------------------
api_requests = Table(
    "requests",
    metadata,
    Column("tenant_id", ID, nullable=False),
    Column("request_id", ID, nullable=False),
    Column("customer_id", ID, nullable=False),
    Column("appointment_id", ID, nullable=False),
    Column("action", String(16), nullable=False),
    Column("body_sha256", String(64), nullable=False),
    Column("message_id", UUID(as_uuid=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # the portal whose key sent it (migration 0017; '' where it was not known then)
    Column("producer", String(64), nullable=False, server_default=text("''")),
    PrimaryKeyConstraint("tenant_id", "producer", "request_id"),
    schema="portal_api",
)

# --- messaging: inbox (dedupe) and outbox (events committed with the change) ----------------------
# Partitioned by worker (migration 0008): each worker's role is granted only `messaging.<worker>_inbox`
# and `messaging.<worker>_outbox`, never the parents (which the owner and the auditor read whole); any
# other name lands in the `unassigned_*` default partitions (tests, tools). Row-level security by tenant
# on every partition; the relay crosses tenants only through its worker's SECURITY DEFINER functions.
# WORKERS, UNASSIGNED and the name helpers: names.py (imported above).


def _inbox_columns() -> list:
    return [
        Column("consumer", String(64), nullable=False),
        Column("message_id", UUID(as_uuid=True), nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        # '' for a claim made before migration 0008 (tenant unknown; still a duplicate by its key)
        Column("tenant_id", ID, nullable=False),
        PrimaryKeyConstraint("consumer", "message_id"),
    ]


def _outbox_columns() -> list:
    return [
        Column(
            "id",
            BigInteger,
            nullable=False,
            server_default=text("nextval('messaging.outbox_id_seq'::regclass)"),
        ),
        Column("message_id", UUID(as_uuid=True), nullable=False),
        Column("producer", String(64), nullable=False),
        Column("exchange_role", String(32), nullable=False),
        Column("routing_key", String(128), nullable=False),
        Column("message_type", String(64), nullable=False),
        Column("correlation_id", String(64), nullable=False),
        Column("tenant_id", ID, nullable=False),
        Column("headers", JSONB, nullable=False),
        Column("body", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("published_at", DateTime(timezone=True)),
        # The worker process that wrote the row (migration 0013; workers/runtime/outbox.py, writers).
        Column(
            "writer",
            Integer,
            server_default=text("NULLIF(current_setting('appt.outbox_writer', true), '')::integer"),
        ),
        PrimaryKeyConstraint("producer", "id"),
    ]


inbox = Table(
    "inbox", metadata, *_inbox_columns(), schema=MESSAGING, postgresql_partition_by="LIST (consumer)"
)
outbox = Table(
    "outbox",
    metadata,
    *_outbox_columns(),
    UniqueConstraint("producer", "message_id", name="outbox_message_id_key"),
    Index("outbox_unpublished", "producer", "id", postgresql_where=text("published_at IS NULL")),
    schema=MESSAGING,
    postgresql_partition_by="LIST (producer)",
)
# The partitions, as the code and the drift test see them (PostgreSQL names their copies of the
# parent's indexes itself).
INBOXES = {
    name: Table(f"{name}_inbox", metadata, *_inbox_columns(), schema=MESSAGING)
    for name in (*WORKERS, UNASSIGNED)
}
OUTBOXES = {
    name: Table(
        f"{name}_outbox",
        metadata,
        *_outbox_columns(),
        UniqueConstraint("producer", "message_id", name=f"{name}_outbox_producer_message_id_key"),
        Index(
            f"{name}_outbox_producer_id_idx", "producer", "id", postgresql_where=text("published_at IS NULL")
        ),
        schema=MESSAGING,
    )
    for name in (*WORKERS, UNASSIGNED)
}
