"""Markers of the fault suite. `faults`: real worker processes under faults (`make soak` runs these at
APPT_FAULTS_SCALE=10). `service_restart`: restarts the shared RabbitMQ / PostgreSQL; opt-in, see
docs/reliability.md."""

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: fault-injection runs with real worker processes")
    config.addinivalue_line(
        "markers", "service_restart: restarts the shared RabbitMQ/PostgreSQL (APPT_SERVICE_RESTART_TESTS=1)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("APPT_SERVICE_RESTART_TESTS") == "1":
        return
    skip = pytest.mark.skip(
        reason="restarts the shared RabbitMQ/PostgreSQL: run with APPT_SERVICE_RESTART_TESTS=1 "
        "(`make test-restarts`), alone on the services"
    )
    for item in items:
        if "service_restart" in item.keywords:
            item.add_marker(skip)
