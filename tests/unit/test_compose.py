"""docker-compose.yml runs the system: each worker gets every setting it refuses to start without (found by
building the real Worker from the service's environment, not from a list here), drains before Docker
kills it, keeps its data across a recreate, and is scraped by the compose Prometheus."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from contracts.signing import KeyringError
from infra.topology import build
from workers.registry import WORKER_NAMES, worker_spec
from workers.runtime.settings import Settings
from workers.runtime.worker import Worker

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
# Every service that runs a worker, the opt-in profiles' (the RabbitMQ cluster) included.
WORKER_SERVICES = {
    name: service
    for name, service in SERVICES.items()
    if service.get("command", [])[:2] == ["apptctl", "worker"]
}
# The default stack's (`docker compose up`, no profile): one service per worker, scraped by Prometheus.
DEFAULT_WORKERS = {name: s for name, s in WORKER_SERVICES.items() if not s.get("profiles")}
# Every environment variable the settings model reads: none may leak in from the test's own environment.
SETTING_NAMES = [field.alias for field in Settings.model_fields.values() if field.alias]
# A default that points at this machine means nothing inside a container: the service must set it.
LOCAL_DEFAULTS = [
    field.alias
    for field in Settings.model_fields.values()
    if isinstance(field.default, str) and re.search(r"127\.0\.0\.1|localhost", field.default)
]


def host_path(service: dict, value: str) -> str:
    """A container path the service mounts, as the path on this machine (so the test can read it)."""
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith(".") and (value == target or value.startswith(target + "/")):
            return str(ROOT / source) + value[len(target) :]
    return value


def settings_of(service: dict, monkeypatch, drop: str | None = None) -> Settings:
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    env = {k: host_path(service, str(v)) for k, v in service.get("environment", {}).items() if k != drop}
    return Settings(**env)


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert match and duration, f"unexpected duration {duration!r}"
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def test_every_worker_has_a_service() -> None:
    assert sorted(service["command"][2] for service in DEFAULT_WORKERS.values()) == sorted(WORKER_NAMES)


@pytest.mark.parametrize("name", sorted(WORKER_SERVICES))
def test_a_worker_service_gets_every_setting_its_process_needs(name: str, monkeypatch) -> None:
    service = WORKER_SERVICES[name]
    settings = settings_of(service, monkeypatch)
    assert LOCAL_DEFAULTS and not [n for n in LOCAL_DEFAULTS if n not in service["environment"]]
    Worker(worker_spec(service["command"][2]), settings)  # raises what the process would exit 2 on
    assert settings.metrics_port is not None, "no /metrics for Prometheus and no /readyz for the healthcheck"


def test_the_check_would_catch_a_worker_without_its_keyring(monkeypatch) -> None:
    """Which workers need the keyring comes from the Worker itself: drop it and the gate refuses."""
    service = WORKER_SERVICES["policy_gate"]
    with pytest.raises(KeyringError, match="APPT_PORTAL_KEYS"):
        Worker(worker_spec("policy_gate"), settings_of(service, monkeypatch, drop="APPT_PORTAL_KEYS_FILE"))


def test_the_portal_api_service_gets_what_its_process_needs(monkeypatch) -> None:
    """The API's own settings model, and what its start-up builds: its API keys and the broker that signs
    the requests it publishes with the portal keyring."""
    from portal_api.app import Services
    from portal_api.settings import ApiSettings

    service = SERVICES["portal_api"]
    for name in [f.alias for f in ApiSettings.model_fields.values() if f.alias]:
        monkeypatch.delenv(name, raising=False)
    env = {k: host_path(service, str(v)) for k, v in service["environment"].items()}
    settings = ApiSettings(**env)
    assert not [n for n in LOCAL_DEFAULTS if n not in service["environment"]]
    Services(settings, settings.api_keyring(), build(settings.namespace))  # what the app's lifespan does
    assert settings.keyring() is not None, "the API would publish unsigned requests: they are dead-lettered"
    port = service["command"][service["command"].index("--port") + 1]
    assert (
        f"{port}:{port}" in service["ports"]
        and f"127.0.0.1:{port}/healthz" in service["healthcheck"]["test"][-1]
    )


def test_the_setup_service_points_at_the_compose_services(monkeypatch) -> None:
    service = SERVICES["setup"]
    settings = settings_of(service, monkeypatch)
    assert not [n for n in LOCAL_DEFAULTS if n not in service["environment"]]
    assert "@postgres:" in settings.database_url and "@rabbitmq:" in settings.amqp_url


def test_the_mounted_keyring_is_the_development_one_and_marked_so() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "DEVELOPMENT KEYRING" in text and "PUBLIC secrets" in text
    for service in [*WORKER_SERVICES.values(), SERVICES["portal_api"]]:
        for volume in service.get("volumes", []):
            assert volume.split(":")[0].startswith("./infra/dev/") and volume.endswith(":ro")


@pytest.mark.parametrize("name", [*sorted(WORKER_SERVICES), "portal_api"])
def test_docker_waits_longer_than_the_drain(name: str, monkeypatch) -> None:
    service = SERVICES[name]
    assert seconds(service["stop_grace_period"]) > settings_of(service, monkeypatch).drain_timeout_s


def test_data_survives_a_recreate() -> None:
    assert SERVICES["rabbitmq"]["hostname"] == "rabbitmq"  # the node name names the data directory
    for name, path in (("postgres", "/var/lib/postgresql/data"), ("rabbitmq", "/var/lib/rabbitmq")):
        volumes = [v.split(":") for v in SERVICES[name]["volumes"]]
        assert next(source for source, target in volumes if target == path) in COMPOSE["volumes"]


def test_prometheus_scrapes_every_worker_service_on_its_metrics_port(monkeypatch) -> None:
    config = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        (target, group["labels"]["worker"])
        for job in config["scrape_configs"]
        if job["job_name"] == "appt-workers"
        for group in job["static_configs"]
        for target in group["targets"]
    }
    expected = {
        (f"{name}:{settings_of(service, monkeypatch).metrics_port}", service["command"][2])
        for name, service in DEFAULT_WORKERS.items()
    }
    assert targets == expected


def test_docker_compose_config_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose CLI is not installed here")
    result = subprocess.run(
        [docker, "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
