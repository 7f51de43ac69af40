"""The API's configuration from environment variables, on top of the workers' (broker, database, keyring)."""

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from portal_api.keys import ApiKeyring, ApiKeysError
from workers.runtime.settings import Settings


class ApiSettings(Settings):
    api_keys: SecretStr | None = Field(default=None, alias="APPT_API_KEYS")
    api_keys_file: Path | None = Field(default=None, alias="APPT_API_KEYS_FILE")
    # Reads go through the read-only portal reader role; the idempotency record through the API's role.
    # Unset: DATABASE_URL (a development set-up without `apptctl security apply`).
    reader_database_url: str | None = Field(default=None, alias="APPT_PORTAL_READER_DATABASE_URL")
    api_database_url: str | None = Field(default=None, alias="APPT_PORTAL_API_DATABASE_URL")
    api_pool_size: int = Field(default=5, ge=1, le=100, alias="APPT_API_DB_POOL_SIZE")
    sse_heartbeat_s: float = Field(default=15.0, gt=0, le=300, alias="APPT_API_SSE_HEARTBEAT_S")
    broker_retry_after_s: int = Field(default=5, ge=1, le=600, alias="APPT_API_RETRY_AFTER_S")
    # The reference portal and office board (portal_api/web.py): demo sign-in, so off unless asked for.
    demo_pages: bool = Field(default=False, alias="APPT_DEMO_PAGES")
    demo_tenants: str = Field(
        default="sunny-plumbing,metro-hvac,oak-homes,skyline-build", alias="APPT_DEMO_TENANTS"
    )
    demo_producer: str = Field(default="portal-web", alias="APPT_DEMO_PRODUCER")

    @field_validator("api_keys", "api_keys_file", "reader_database_url", "api_database_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def api_keyring(self) -> ApiKeyring:
        if self.api_keys is not None and self.api_keys_file is not None:
            raise ApiKeysError("set APPT_API_KEYS or APPT_API_KEYS_FILE, not both")
        if self.api_keys is not None:
            return ApiKeyring.from_json(self.api_keys.get_secret_value())
        if self.api_keys_file is None:
            raise ApiKeysError(
                "no API keys: set APPT_API_KEYS_FILE (e.g. infra/dev/api-keys.json) or APPT_API_KEYS"
            )
        try:
            return ApiKeyring.from_json(self.api_keys_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ApiKeysError(f"APPT_API_KEYS_FILE {str(self.api_keys_file)!r}: {exc.strerror}") from None

    @property
    def demo_tenant_list(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.demo_tenants.split(",") if t.strip())

    @property
    def reader_url(self) -> str:
        return self.reader_database_url or self.database_url

    @property
    def writer_url(self) -> str:
        return self.api_database_url or self.database_url
