"""Configuration from environment variables; every default points at the local services."""

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.topology import DEFAULT_RETRY_DELAYS_S, parse_retry_delays


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
    log_level: str = Field(default="INFO", alias="LOG_LEVEL")
    publish_timeout_s: float = Field(default=10.0, gt=0, alias="APPT_PUBLISH_TIMEOUT_S")
    drain_timeout_s: float = Field(default=30.0, gt=0, alias="APPT_DRAIN_TIMEOUT_S")
    db_pool_size: int = Field(default=10, ge=1, le=200, alias="APPT_DB_POOL_SIZE")
    outbox_poll_interval_s: float = Field(default=1.0, gt=0, alias="APPT_OUTBOX_POLL_S")
    outbox_batch_size: int = Field(default=200, ge=1, le=5000, alias="APPT_OUTBOX_BATCH")
    outbox_retention_s: float = Field(default=3600.0, ge=0, alias="APPT_OUTBOX_RETENTION_S")
    startup_retry_s: float = Field(default=60.0, ge=0, alias="APPT_STARTUP_RETRY_S")
    transient_retry_delay_s: float = Field(default=1.0, ge=0, alias="APPT_TRANSIENT_RETRY_DELAY_S")
    # Transient failures (database or broker away): a few quick retries in place, then delay queues.
    retry_in_place: int = Field(default=2, ge=0, le=10, alias="APPT_RETRY_IN_PLACE")
    retry_delays: str = Field(
        default=",".join(f"{d:g}" for d in DEFAULT_RETRY_DELAYS_S), alias="APPT_RETRY_DELAYS_S"
    )
    retry_limit: int = Field(default=8, ge=0, le=1000, alias="APPT_RETRY_LIMIT")
    # The worker's HTTP endpoint (/metrics, /healthz, /readyz): unset = off, 0 = any free port.
    metrics_port: int | None = Field(default=None, ge=0, le=65535, alias="APPT_METRICS_PORT")
    metrics_host: str = Field(default="0.0.0.0", alias="APPT_METRICS_HOST")
    health_interval_s: float = Field(default=5.0, gt=0, le=300, alias="APPT_HEALTH_INTERVAL_S")

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _blank_port_is_off(cls, value: object) -> object:
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
