"""The industry stories end to end: real broker, real database, the three real workers."""

import uuid

from apptctl import scenario_runner
from apptctl.scenarios import build_world


async def test_every_story_ends_as_the_portal_expects(workers, broker, engine):
    suffix = f"-{uuid.uuid4().hex[:6]}"
    world = build_world(uuid.uuid4().hex[:6], tenant_suffix=suffix)
    await scenario_runner.publish_all(broker, world.setup_messages)
    assert await scenario_runner.wait_for_setup(engine, world)

    results = await scenario_runner.run_scenarios(engine, broker, world)

    failures = {r.scenario.key: r.problems for r in results if not r.passed}
    assert failures == {}
    assert {r.scenario.key for r in results} == {s.key for s in world.scenarios}


async def test_malformed_message_is_dead_lettered_with_reason_and_workers_keep_going(workers, broker, engine):
    message_id = await scenario_runner.publish_malformed(broker, b"{not json")
    dead = await scenario_runner.take_dead_letters(broker, message_id, expected=2)
    assert sorted(d.queue.rsplit(".", 2)[-2] for d in dead) == ["policy_gate", "portal_sync"]
    assert {d.reason for d in dead} == {"malformed_json"}

    # valid traffic still flows afterwards
    world = build_world(uuid.uuid4().hex[:6], tenant_suffix=f"-{uuid.uuid4().hex[:6]}")
    await scenario_runner.publish_all(broker, world.setup_messages)
    assert await scenario_runner.wait_for_setup(engine, world)
