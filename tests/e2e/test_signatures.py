"""Portal signatures end to end, on the real broker and database: signed requests are served (with the
current key and, during a rotation, the previous one); unsigned, altered, unknown-key, expired, future and
another portal's messages are dead-lettered by both workers that read requests, with their reason, and
change nothing; a captured message sent again has no second effect; a worker without keys will not start."""

import asyncio
import json
import os
import sys
import time
from datetime import timedelta

import aio_pika
import pytest

from apptctl.portal_keys import DEV_PORTAL_KEYS_FILE
from apptctl.scenario_runner import publish_all, take_dead_letters
from apptctl.scenarios import window_on
from contracts.portal_v1 import Cancel, ModifyRequested, Reschedule
from contracts.signing import SIGNATURE_HEADER, Keyring, SigningKey, signature_headers
from infra.db import tables
from tests.e2e.test_delivery_guarantees import NOW, appointment_view, booked_world, outcome, request
from workers.runtime.broker import to_amqp
from workers.runtime.settings import Settings

DEV_KEYS = json.loads(DEV_PORTAL_KEYS_FILE.read_text())
REQUEST_READERS = 2  # policy_gate and portal_sync both consume the portals' exchange


def keyring(settings: Settings) -> Keyring:
    ring = settings.keyring()
    assert ring is not None
    return ring


async def send_raw(broker, message: ModifyRequested, body: bytes | None = None, headers: dict | None = None):
    """Publish as an intruder would: exactly these bytes and headers, nothing signed on the way."""
    amqp = to_amqp(message)
    raw = aio_pika.Message(
        body if body is not None else amqp.body,
        headers={**(amqp.headers or {}), **(headers or {})},
        content_type=amqp.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=amqp.message_id,
        correlation_id=amqp.correlation_id,
        type=amqp.type,
        app_id=None,  # nothing for the test broker to sign with
    )
    await broker.publish(broker.topology.exchange("requests"), message.routing_key, raw)


async def no_trace(engine, tenant: str, request_id: str) -> bool:
    """Nothing recorded the request: no portal row, no decision."""
    async with engine.connect() as connection:
        portal = await connection.scalar(
            tables.portal_requests.select()
            .with_only_columns(tables.portal_requests.c.request_id)
            .where(
                tables.portal_requests.c.tenant_id == tenant,
                tables.portal_requests.c.request_id == request_id,
            )
        )
        decision = await connection.scalar(
            tables.decisions.select()
            .with_only_columns(tables.decisions.c.request_id)
            .where(tables.decisions.c.tenant_id == tenant, tables.decisions.c.request_id == request_id)
        )
    return portal is None and decision is None


async def test_a_request_signed_with_the_current_or_the_previous_key_is_served(
    workers, broker, engine, settings
):
    tenant = await booked_world(broker, engine, [("apt-1", "job-1"), ("apt-2", "job-2")])
    previous = DEV_KEYS["portal-web"]["previous"]
    old_key = SigningKey(previous["id"], "portal-web", previous["secret"].encode())
    current = request(tenant, "apt-1", Cancel(reason="moving"))
    rotated_out = request(tenant, "apt-2", Cancel(reason="moving"))

    await publish_all(broker, [current])  # the test broker signs with the current key
    body = to_amqp(rotated_out).body
    await send_raw(broker, rotated_out, headers=signature_headers(body, old_key, signed_at=int(time.time())))

    for sent in (current, rotated_out):
        assert (await outcome(engine, tenant, sent.correlation_id)).status == "completed"


def refusals(ring: Keyring, message: ModifyRequested) -> dict[str, tuple[str, bytes, dict]]:
    """kind -> (reason, body, headers): every way a portal message is refused."""
    body = to_amqp(message).body
    web, app = ring.current_for("portal-web"), ring.current_for("portal-app")
    now = int(time.time())
    good = signature_headers(body, web, signed_at=now)
    return {
        "unsigned": ("signature_missing", body, {}),
        "altered": ("signature_invalid", body.replace(b'"apt-', b'"apX-', 1), good),
        "unknown_key": (
            "signature_unknown_key",
            body,
            signature_headers(body, SigningKey("leaked-1", "portal-web", b"k" * 40), signed_at=now),
        ),
        "expired": ("signature_expired", body, signature_headers(body, web, signed_at=now - 2 * 86_400)),
        "future": ("signature_expired", body, signature_headers(body, web, signed_at=now + 3_600)),
        "other_portals_key": (
            "signature_producer_mismatch",
            body,
            signature_headers(body, app, signed_at=now),
        ),
        "signature_header_only": ("signature_missing", body, {SIGNATURE_HEADER: good[SIGNATURE_HEADER]}),
    }


@pytest.mark.parametrize(
    "kind",
    ["unsigned", "altered", "unknown_key", "expired", "future", "other_portals_key", "signature_header_only"],
)
async def test_a_refused_signature_is_dead_lettered_with_its_reason_and_changes_nothing(
    workers, broker, engine, settings, kind
):
    tenant = await booked_world(broker, engine, [("apt-1", "job-1")])
    before = await appointment_view(engine, tenant, "apt-1")
    message = request(tenant, "apt-1", Reschedule(new_window=window_on(NOW + timedelta(days=4), 13)))
    reason, body, headers = refusals(keyring(settings), message)[kind]

    await send_raw(broker, message, body=body, headers=headers)

    letters = await take_dead_letters(broker, str(message.message_id), expected=REQUEST_READERS)
    assert sorted(letter.queue.split(".")[-2] for letter in letters) == ["policy_gate", "portal_sync"]
    assert {letter.reason for letter in letters} == {reason}
    secrets = [k["secret"] for keys in DEV_KEYS.values() for k in keys.values()]
    assert not any(secret in letter.detail for letter in letters for secret in secrets)
    assert await no_trace(engine, tenant, message.correlation_id)
    assert await appointment_view(engine, tenant, "apt-1") == before


async def test_a_captured_message_sent_again_has_no_second_effect(workers, broker, engine, settings):
    tenant = await booked_world(broker, engine, [("apt-1", "job-1")])
    move = request(tenant, "apt-1", Reschedule(new_window=window_on(NOW + timedelta(days=4), 13)))
    body = to_amqp(move).body
    captured = signature_headers(
        body, keyring(settings).current_for("portal-web"), signed_at=int(time.time())
    )

    await send_raw(broker, move, headers=captured)
    assert (await outcome(engine, tenant, move.correlation_id)).status == "completed"
    moved = await appointment_view(engine, tenant, "apt-1")

    duplicates = workers["policy_gate"].consumer.counts.get("duplicate", 0)
    await send_raw(broker, move, headers=captured)  # the same bytes, the same signature
    for _ in range(100):
        if workers["policy_gate"].consumer.counts.get("duplicate", 0) > duplicates:
            break
        await asyncio.sleep(0.1)
    assert workers["policy_gate"].consumer.counts.get("duplicate", 0) == duplicates + 1
    assert await appointment_view(engine, tenant, "apt-1") == moved


async def test_a_worker_that_must_verify_and_has_no_keys_does_not_start(settings):
    env = {k: v for k, v in os.environ.items() if k not in ("APPT_PORTAL_KEYS", "APPT_PORTAL_KEYS_FILE")}
    env.update(
        DATABASE_URL=settings.database_url, AMQP_URL=settings.amqp_url, APPT_NAMESPACE=settings.namespace
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workers.policy_gate",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert "set APPT_PORTAL_KEYS or APPT_PORTAL_KEYS_FILE" in err.decode()


async def test_a_broken_keyring_stops_the_worker_with_what_to_fix(settings, tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text('{"portal-web": {"current": {"id": "k1", "secret": "too-short"}}}')
    env = {k: v for k, v in os.environ.items() if k != "APPT_PORTAL_KEYS"}
    env.update(
        APPT_PORTAL_KEYS_FILE=str(keys),
        DATABASE_URL=settings.database_url,
        AMQP_URL=settings.amqp_url,
        APPT_NAMESPACE=settings.namespace,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.portal_sync", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert "secret must be at least 32 bytes" in err.decode() and "too-short" not in err.decode()
