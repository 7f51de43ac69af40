"""The Node.js publisher example (examples/node-publisher): it signs the vectors exactly as
contracts/signing.py does, and a request it publishes on the real broker is served by the real workers."""

import asyncio
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from apptctl.portal_keys import DEV_PORTAL_KEYS_FILE
from apptctl.scenario_runner import take_dead_letters
from tests.e2e.test_delivery_guarantees import appointment_view, booked_world, outcome
from tests.e2e.test_signatures import REQUEST_READERS, no_trace

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node-publisher"
VECTORS = EXAMPLE.parents[1] / "contracts" / "signing-vectors.json"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(
    NODE is None, reason="Node.js is not installed (.ci/run installs it: apt-get install -y nodejs npm)"
)


async def run(*args: str, env: dict[str, str] | None = None, timeout_s: float = 180) -> tuple[int, str, str]:
    """Run a command without blocking the event loop the in-process workers share."""
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=EXAMPLE,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=timeout_s)
    return process.returncode, out.decode(), err.decode()


@pytest.fixture(scope="module")
async def node_modules() -> None:
    """amqplib, installed from the committed package-lock.json when the example has not been set up."""
    if (EXAMPLE / "node_modules" / "amqplib").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: apt-get install -y npm (or run .ci/run)")
    code, out, err = await run(npm, "ci", "--no-audit", "--no-fund")
    assert code == 0, f"npm ci failed:\n{out}\n{err}"


async def test_the_node_signer_matches_every_signing_vector() -> None:
    code, out, err = await run(NODE, "check-vectors.js", str(VECTORS))
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))
    total = 2 * len(vectors["accepted"]) + len(vectors["refused"])
    assert code == 0, out + err
    assert f"{total} of {total} vector checks passed" in out


async def node_publish(settings, tenant: str, request_id: str, *extra: str) -> dict:
    code, out, err = await run(
        NODE,
        "publish.js",
        "--tenant",
        tenant,
        "--appointment",
        "apt-1",
        "--requester",
        "cust-1",
        "--request",
        request_id,
        "--cancel",
        "moving house",
        *extra,
        env={
            "AMQP_URL": settings.amqp_url,
            "APPT_NAMESPACE": settings.namespace,
            "APPT_PORTAL_KEYS_FILE": str(DEV_PORTAL_KEYS_FILE),
        },
        timeout_s=60,
    )
    assert code == 0, out + err
    return json.loads(out)


async def test_a_request_published_by_the_node_example_is_served_by_the_real_workers(
    node_modules, workers, broker, engine, settings
):
    tenant = await booked_world(broker, engine, [("apt-1", "job-1")])
    request_id = f"req-node-{uuid.uuid4().hex[:8]}"

    sent = await node_publish(settings, tenant, request_id)

    assert sent["requestId"] == request_id and sent["exchange"] == f"{settings.namespace}.requests"
    result = await outcome(engine, tenant, request_id)
    assert result is not None and result.status == "completed", result
    assert (await appointment_view(engine, tenant, "apt-1")).status == "canceled"


async def test_an_expired_node_signature_is_dead_lettered_as_expired(
    node_modules, workers, broker, engine, settings
):
    tenant = await booked_world(broker, engine, [("apt-1", "job-1")])
    request_id = f"req-node-{uuid.uuid4().hex[:8]}"

    sent = await node_publish(settings, tenant, request_id, "--signed-at", str(int(time.time()) - 2 * 86_400))

    letters = await take_dead_letters(broker, sent["messageId"], expected=REQUEST_READERS)
    assert {letter.reason for letter in letters} == {"signature_expired"}
    assert await no_trace(engine, tenant, request_id)
