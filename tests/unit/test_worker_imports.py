"""A worker process loads only what it uses: its idle memory is mostly imports (docs/benchmarks.md,
"A worker's memory"), and three libraries it never needs would add ~20 MB to every worker."""

import json
import os
import subprocess
import sys

import pytest

from workers.registry import WORKER_NAMES

# What a worker built as `python -m workers.<name>` builds it (metrics endpoint off, as by default) must
# not have imported: each with what it costs and why it is not needed.
NOT_IMPORTED = {
    "aiohttp": "the metrics endpoint's server (~9 MB): imported only when APPT_METRICS_PORT is set",
    "rich": "structlog's console extras (~7 MB with pygments): a worker writes JSON lines",
    "pygments": "pulled in by rich",
}
# The SQLAlchemy table definitions of every schema (~4 MB): the runtime needs only the messaging tables'
# names (infra/db/names.py); portal_sync's store still builds its upserts from the definitions.
TABLES = "infra.db.tables"

_PROBE = """
import json, sys
import workers.{name}.__main__  # the entry point's own imports, as `python -m` runs them
from workers.registry import worker_spec
from workers.runtime.settings import Settings
from workers.runtime.worker import Worker

Worker(worker_spec("{name}"), Settings())  # built (engine, broker, consumer, relay), not started
print(json.dumps(sorted(name for name, module in sys.modules.items() if module is not None)))
"""


def loaded_by_worker(name: str) -> set[str]:
    env = {key: value for key, value in os.environ.items() if key != "APPT_METRICS_PORT"}
    env["APPT_REQUIRE_SIGNATURES"] = "false"  # no keyring needed to build it
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(name=name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("name", WORKER_NAMES)
def test_a_worker_does_not_import_what_it_never_uses(name: str) -> None:
    loaded = loaded_by_worker(name)
    unexpected = {
        top: why
        for top, why in NOT_IMPORTED.items()
        if any(module == top or module.startswith(top + ".") for module in loaded)
    }
    assert not unexpected, f"{name} imported {unexpected}"
    if name != "portal_sync":
        assert TABLES not in loaded, f"{name} imported {TABLES}: import names from infra.db.names"
    assert "workers.runtime.worker" in loaded  # the probe built the worker


def test_the_metrics_endpoint_still_loads_its_server_when_configured() -> None:
    env = {**os.environ, "APPT_METRICS_PORT": "0", "APPT_REQUIRE_SIGNATURES": "false"}
    probe = _PROBE.format(name="modify_handler")
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "workers.runtime.ops_server" in json.loads(result.stdout.strip().splitlines()[-1])
