"""Configuration from environment variables; every default points at the local services."""

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.signing import Keyring, KeyringError, SignatureLimits
from infra.topology import DEFAULT_RETRY_DELAYS_S, parse_retry_delays

# The development keyring: its secrets are public (in the repository), so workers refuse it unless
# APPT_DEV_MODE is set (the Makefile's demo, test, run, bench and soak targets set it).
DEV_PORTAL_KEYS_FILE = Path(__file__).resolve().parents[2] / "infra" / "dev" / "portal-keys.json"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    amqp_url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/", alias="AMQP_URL")
    rabbitmq_management_url: str = Field(
        default="http://guest:guest@127.0.0.1:15672", alias="RABBITMQ_MANAGEMENT_URL"
    )
    database_url: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/appointments", alias="DATABASE_URL"
    )
    namespace: str = Field(default="appt", alias="APPT_NAMESPACE", pattern=r"^[a-z0-9][a-z0-9_.-]{0,40}$")
    prefetch: int = Field(default=32, ge=1, le=1000, alias="APPT_PREFETCH")
    # Workers with tenant lanes (policy_gate, portal_sync) hold up to this many deliveries and handle at most
    # APPT_PREFETCH of them at once, taking tenants in turn (workers/runtime/fairness.py). 0: plain FIFO.
    fair_window: int = Field(default=2000, ge=0, le=60_000, alias="APPT_FAIR_WINDOW")
    # The gate's default request rate limits (a business's settings layer may set its own; docs/policy.md).
    rate_tenant_per_minute: int = Field(default=3000, ge=1, alias="APPT_RATE_TENANT_PER_MINUTE")
    rate_tenant_burst: int = Field(default=300, ge=1, alias="APPT_RATE_TENANT_BURST")
    rate_requester_per_minute: int = Field(default=10, ge=1, alias="APPT_RATE_REQUESTER_PER_MINUTE")
    rate_requester_burst: int = Field(default=5, ge=1, alias="APPT_RATE_REQUESTER_BURST")
    log_level: str = Field(default="INFO", alias="LOG_LEVEL")
    publish_timeout_s: float = Field(default=10.0, gt=0, alias="APPT_PUBLISH_TIMEOUT_S")
    drain_timeout_s: float = Field(default=30.0, gt=0, alias="APPT_DRAIN_TIMEOUT_S")
    # A worker's database connections: this pool (its health check included), plus its relay's session
    # connection (LISTEN and the outbox writer lock): APPT_DB_POOL_SIZE + 1 (docs/scaling.md).
    db_pool_size: int = Field(default=5, ge=1, le=200, alias="APPT_DB_POOL_SIZE")
    outbox_poll_interval_s: float = Field(default=1.0, gt=0, alias="APPT_OUTBOX_POLL_S")
    outbox_batch_size: int = Field(default=200, ge=1, le=5000, alias="APPT_OUTBOX_BATCH")
    outbox_retention_s: float = Field(default=3600.0, ge=0, alias="APPT_OUTBOX_RETENTION_S")
    # A delivery's events are published right after its commit; the relay takes what that missed once
    # it is older than the grace period. Off: the relay publishes everything, woken by NOTIFY.
    outbox_direct: bool = Field(default=True, alias="APPT_OUTBOX_DIRECT")
    outbox_grace_s: float = Field(default=30.0, gt=0, le=3600, alias="APPT_OUTBOX_GRACE_S")
    startup_retry_s: float = Field(default=60.0, ge=0, alias="APPT_STARTUP_RETRY_S")
    transient_retry_delay_s: float = Field(default=1.0, ge=0, alias="APPT_TRANSIENT_RETRY_DELAY_S")
    # Transient failures (database or broker away): a few quick retries in place, then delay queues.
    # Deliveries waiting are handled up to this many in one transaction (1: one per transaction).
    batch_max: int = Field(default=32, ge=1, le=500, alias="APPT_BATCH_MAX")
    retry_in_place: int = Field(default=2, ge=0, le=10, alias="APPT_RETRY_IN_PLACE")
    retry_delays: str = Field(
        default=",".join(f"{d:g}" for d in DEFAULT_RETRY_DELAYS_S), alias="APPT_RETRY_DELAYS_S"
    )
    # On a RabbitMQ cluster: the nodes each quorum queue is replicated on (unset: the broker's default).
    quorum_group_size: int | None = Field(default=None, ge=1, le=99, alias="APPT_QUORUM_GROUP_SIZE")
    retry_limit: int = Field(default=8, ge=0, le=1000, alias="APPT_RETRY_LIMIT")
    # The worker's HTTP endpoint (/metrics, /healthz, /readyz): unset = off, 0 = any free port.
    metrics_port: int | None = Field(default=None, ge=0, le=65535, alias="APPT_METRICS_PORT")
    metrics_host: str = Field(default="0.0.0.0", alias="APPT_METRICS_HOST")
    health_interval_s: float = Field(default=5.0, gt=0, le=300, alias="APPT_HEALTH_INTERVAL_S")
    # Portal message signatures (contracts/signing.py, docs/security.md): the keyring as JSON, inline or
    # in a file. Required unless APPT_REQUIRE_SIGNATURES=false (never in production).
    portal_keys: SecretStr | None = Field(default=None, alias="APPT_PORTAL_KEYS")
    portal_keys_file: Path | None = Field(default=None, alias="APPT_PORTAL_KEYS_FILE")
    require_signatures: bool = Field(default=True, alias="APPT_REQUIRE_SIGNATURES")
    signature_max_age_s: int = Field(default=86_400, ge=1, alias="APPT_SIGNATURE_MAX_AGE_S")
    signature_future_skew_s: int = Field(default=300, ge=0, alias="APPT_SIGNATURE_FUTURE_SKEW_S")
    # Development only: accept the development keyring (public secrets). Never set in production.
    dev_mode: bool = Field(default=False, alias="APPT_DEV_MODE")

    @field_validator("metrics_port", "quorum_group_size", "portal_keys", "portal_keys_file", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("retry_delays")
    @classmethod
    def _delays_parse(cls, value: str) -> str:
        parse_retry_delays(value)
        return value

    @property
    def retry_delays_s(self) -> tuple[float, ...]:
        """The delay-queue tiers, in order (part of the topology: `apptctl topology apply` declares them)."""
        return parse_retry_delays(self.retry_delays)

    def keyring(self) -> Keyring | None:
        """The portal keyring, or None when none is configured. KeyringError says what is wrong."""
        if self.portal_keys is not None and self.portal_keys_file is not None:
            raise KeyringError("set APPT_PORTAL_KEYS or APPT_PORTAL_KEYS_FILE, not both")
        if self.portal_keys is not None:
            return Keyring.from_json(self.portal_keys.get_secret_value())
        if self.portal_keys_file is not None:
            try:
                text = self.portal_keys_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise KeyringError(
                    f"APPT_PORTAL_KEYS_FILE {str(self.portal_keys_file)!r}: {exc.strerror}"
                ) from None
            return Keyring.from_json(text)
        return None

    def production_keyring(self) -> Keyring | None:
        """The keyring, refused (KeyringError) when it holds a development key outside development mode."""
        keyring = self.keyring()
        if keyring is None or self.dev_mode:
            return keyring
        public = set(development_secrets())
        leaked = sorted(key.key_id for key in keyring.by_id.values() if key.secret in public)
        if leaked:
            raise KeyringError(
                f"the portal keyring holds development keys ({', '.join(leaked)}, from "
                f"{DEV_PORTAL_KEYS_FILE.name}), whose secrets are public: configure the portals' own keys "
                "(docs/security.md), or, on a development machine only, set APPT_DEV_MODE=1"
            )
        return keyring

    @property
    def signature_limits(self) -> SignatureLimits:
        return SignatureLimits(max_age_s=self.signature_max_age_s, future_skew_s=self.signature_future_skew_s)


def development_secrets() -> tuple[bytes, ...]:
    """The secrets of the development keyring (none when the file is not there, as in an image)."""
    try:
        return Keyring.from_json(DEV_PORTAL_KEYS_FILE.read_text(encoding="utf-8")).secrets
    except (OSError, KeyringError):
        return ()
