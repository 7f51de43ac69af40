"""The audit trail of an appointment: who asked for what, the decision and why, what changed, in order."""

import pytest

from apptctl import readstore
from apptctl.scenario_runner import wait_until
from tests import factories as f
from tests.e2e.test_policy_engine import ALLOW, World, everything


@pytest.fixture
def world(workers, broker, engine) -> World:
    return World(broker, engine)


async def test_the_trail_tells_the_story_in_order_with_the_rule_behind_each_answer(world: World):
    await world.settings({"settings": everything(ALLOW, max_customer_reschedules=1)})
    await world.book("apt-1")
    new_window = f.arrival_window(9)
    moved_id, moved = await world.ask("apt-1", f.reschedule(new_window))
    refused_id, refused = await world.ask("apt-1", f.reschedule(f.arrival_window(10)))
    assert (moved.status, refused.status) == ("completed", "rejected")

    async def complete():
        lines = await readstore.audit_trail(world.engine, world.tenant, "apt-1")
        return lines if len(lines) >= 5 else None

    lines = await wait_until(complete, 15)
    assert lines, "the audit trail never filled"
    assert [(line.entry, line.actor, line.request_id) for line in lines] == [
        ("office_recorded", "office", None),
        ("requested", f.CUSTOMER_ID, moved_id),
        ("rescheduled", "customer", moved_id),
        ("requested", f.CUSTOMER_ID, refused_id),
        ("rejected", "policy_gate", refused_id),
    ]
    office, asked, done, _, rejected = lines
    assert (done.window_start, done.previous_window_start, done.version) == (
        new_window.start,
        office.window_start,
        2,
    )
    assert asked.window_start == new_window.start and asked.action == "reschedule"
    assert done.rule == "all_rules_passed"
    assert (rejected.reason_code, rejected.rule, rejected.setting, rejected.setting_level) == (
        "reschedule_limit_reached",
        "reschedule_limit",
        "reschedule.max_customer_reschedules",
        "business",
    )
    assert "once" in rejected.reason_text


async def test_apptctl_audit_prints_the_story_and_refuses_an_unknown_appointment(world: World, settings):
    import asyncio
    import subprocess
    import sys

    await world.settings({"settings": everything(ALLOW)})
    await world.book("apt-1")
    request_id, done = await world.ask("apt-1", f.cancel("moving away"))
    assert done.status == "completed"

    async def three_lines():
        return len(await readstore.audit_trail(world.engine, world.tenant, "apt-1")) >= 3

    assert await wait_until(three_lines, 15)
    env = {"DATABASE_URL": settings.database_url, "PATH": "/usr/bin:/bin"}
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "apptctl.main", "audit", "apt-1", "--tenant", world.tenant],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "office_recorded" in lines[0]
    assert "asks to cancel (moving away)" in lines[1] and request_id in lines[1]
    assert "canceled" in lines[2] and "rule all_rules_passed" in lines[2]
    missing = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "apptctl.main", "audit", "nope", "--tenant", world.tenant],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert missing.returncode == 1 and "no audit trail" in missing.stderr


async def test_facts_carried_again_under_new_message_ids_add_nothing(world: World, workers):
    """What a relay, a bridge or a replayed copy can produce: every request and result event of a story
    sent again with new message ids. The audit trail and the rest of the read store stay as they were."""
    import uuid

    from sqlalchemy import text

    from apptctl.scenario_runner import publish_all
    from contracts.decoding import decode

    broker = world.broker
    channel = await broker.connection.channel()
    tap = await channel.declare_queue(exclusive=True, auto_delete=True)
    await tap.bind(broker.topology.exchange("events"), "#")
    await tap.bind(broker.topology.exchange("requests"), "modify.requested")

    await world.settings({"settings": everything(ALLOW, max_customer_reschedules=1)})
    await world.book("apt-1")
    _, moved = await world.ask("apt-1", f.reschedule(f.arrival_window(9)))
    _, refused = await world.ask("apt-1", f.reschedule(f.arrival_window(10)))
    _, canceled = await world.ask("apt-1", f.cancel("moving away"))
    assert (moved.status, refused.status, canceled.status) == ("completed", "rejected", "completed")

    async def story_told():
        return len(await readstore.audit_trail(world.engine, world.tenant, "apt-1")) >= 7

    assert await wait_until(story_told, 15)

    async def read_store() -> dict:
        async with world.engine.connect() as conn:
            return {
                table: sorted(
                    map(
                        tuple,
                        (
                            await conn.execute(
                                text(f"SELECT * FROM {table} WHERE tenant_id = :t"), dict(t=world.tenant)
                            )
                        ).all(),
                    ),
                    key=repr,
                )
                for table in (
                    "portal.audit_trail",
                    "portal.appointments",
                    "portal.jobs",
                    "portal.requests",
                    "portal.office_outcomes",
                )
            }

    before = await read_store()
    carried = []
    while (message := await tap.get(no_ack=True, fail=False)) is not None:
        decoded = decode(message.body, content_type=message.content_type, property_type=message.type)
        if getattr(decoded, "tenant_id", None) == world.tenant:
            carried.append(decoded.model_copy(update={"message_id": uuid.uuid4()}))
    await channel.close()
    assert len([m for m in carried if m.type.startswith("appointment.")]) >= 3
    handled_before = sum(workers["portal_sync"].consumer.counts.values())
    await publish_all(broker, carried)

    async def all_handled():
        return sum(workers["portal_sync"].consumer.counts.values()) >= handled_before + len(carried)

    assert await wait_until(all_handled, 30)
    assert await read_store() == before
