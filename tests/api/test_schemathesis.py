"""Property-based requests to every operation of the committed OpenAPI document (Schemathesis) against
the API on the real services: no 5xx, and every response (status, headers, content type, body) matches
the document. The event streams never end, so they are left to tests/api/test_streams_and_office.py."""

import asyncio
import concurrent.futures
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from infra import topology as topology_module
from portal_api import openapi
from portal_api.keys import hash_key
from tests.conftest import TEST_RETRY_DELAYS_S, unique_tenant

pytestmark = pytest.mark.integration
schema = schemathesis.openapi.from_path(openapi.DOCUMENT).exclude(path_regex=r"events$")
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
EXAMPLES = int(os.environ.get("APPT_SCHEMATHESIS_EXAMPLES", "40"))


def _in_thread(coroutine):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(service_urls, database_url):
    """The API in its own process (Schemathesis calls it synchronously), on a namespace of its own."""
    namespace = f"t{uuid.uuid4().hex[:10]}"
    spec = _in_thread(topology_module.apply(service_urls.amqp, namespace, TEST_RETRY_DELAYS_S))
    tenant = unique_tenant("st")
    portal, office = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    keys = {
        "keys": [
            {"id": "st-portal", "kind": "portal", "sha256": hash_key(portal), "tenants": [tenant],
             "producer": "portal-web"},
            {"id": "st-office", "kind": "office", "sha256": hash_key(office), "tenants": [tenant]},
        ]
    }  # fmt: skip
    port = _free_port()
    env = {
        **os.environ,
        "AMQP_URL": service_urls.amqp,
        "DATABASE_URL": database_url,
        "APPT_NAMESPACE": namespace,
        "APPT_API_KEYS": json.dumps(keys),
        "APPT_API_KEYS_FILE": "",
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "portal_api", "--port", str(port)], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as response:
                    if json.loads(response.read())["feed"]:
                        break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)
        yield base, tenant, portal, office
    finally:
        process.terminate()
        process.wait(30)

        async def delete():
            import aio_pika

            connection = await aio_pika.connect(service_urls.amqp)
            async with connection:
                await topology_module.delete(await connection.channel(), spec)

        _in_thread(delete())


@schema.parametrize()
@settings(max_examples=EXAMPLES, suppress_health_check=list(HealthCheck), deadline=None)
def test_every_operation_answers_within_its_documented_contract(case, served):
    base, tenant, portal, office = served
    key = office if case.path.startswith("/v1/office") else portal
    # Mostly the caller's real identity (so requests get past authentication), sometimes what was drawn.
    headers = {"Authorization": f"Bearer {key}"}
    if case.headers is None or case.headers.get("X-Tenant-Id", "").startswith(("a", "b", "c")):
        headers["X-Tenant-Id"] = tenant
    case.call_and_validate(base_url=base, headers=headers, checks=CHECKS, timeout=40)
