"""Fault scenarios with the three workers as real processes under load; each ends with the reconciler:
0 lost, 0 duplicated, 0 unexpected, read store == source of truth, and the read store never went back.

Sizes scale with APPT_FAULTS_SCALE (1: ~2,000 requests across the suite; `make soak`: 10)."""

import asyncio
import random

import pytest

from apptctl import reconcile
from tests.faults import injectors, poison
from tests.faults.harness import (
    consumed_all,
    every,
    fault_run,
    load_seconds,
    outbox_rows,
    republish,
    scaled,
    timeout_s,
)
from tests.faults.load import publish_confirmed
from workers.registry import WORKER_NAMES
from workers.runtime import faults

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(timeout_s(900))]


async def test_kill_9_random_workers_under_load(settings, topology, tmp_path):
    rng = random.Random(61)
    async with fault_run("kill_9", settings, topology, tmp_path, requests=scaled(300), seed=61) as run:
        stop = asyncio.Event()
        victims: list[str] = []

        async def kill_one() -> None:
            # each worker type at least once: a shuffled round of all three, then another; a worker
            # still starting up after its last kill is spared until it works again
            if not victims:
                victims.extend(rng.sample(WORKER_NAMES, len(WORKER_NAMES)))
            if run.workers.uptime(victims[-1]) > 2.0:
                run.workers.kill(victims.pop())

        killer = asyncio.create_task(every(lambda: rng.uniform(1.0, 3.0), kill_one, stop))
        await run.publish_requests(load_seconds(len(run.plan.requests), 10.0))
        stop.set()
        await killer
        run.numbers.faults = {f"kill -9 {name}": n for name, n in sorted(run.workers.kills.items())}
        report = await run.settle()
        run.assert_clean(report)
        assert all(run.workers.kills[name] >= 1 for name in WORKER_NAMES), run.workers.kills


async def test_broker_connections_closed_repeatedly(settings, topology, tmp_path):
    rng = random.Random(62)
    async with fault_run("broker_cuts", settings, topology, tmp_path, requests=scaled(250), seed=62) as run:
        stop = asyncio.Event()
        cuts = {"rounds": 0, "connections closed": 0}

        async def cut_all() -> None:
            closed = await asyncio.to_thread(
                injectors.close_broker_connections, run.management, run.workers.pids()
            )
            cuts["rounds"] += 1
            cuts["connections closed"] += closed

        cutter = asyncio.create_task(every(lambda: rng.uniform(1.5, 3.0), cut_all, stop))
        await run.publish_requests(load_seconds(len(run.plan.requests)))
        stop.set()
        await cutter
        run.numbers.faults = cuts
        report = await run.settle()
        run.assert_clean(report)
        assert cuts["connections closed"] >= len(WORKER_NAMES), cuts


async def test_database_backends_terminated_mid_run(settings, topology, tmp_path):
    rng = random.Random(63)
    async with fault_run(
        "db_terminations", settings, topology, tmp_path, requests=scaled(250), seed=63
    ) as run:
        stop = asyncio.Event()
        terminated = {"rounds": 0, "backends terminated": 0}

        async def terminate() -> None:
            n = await injectors.terminate_backends(run.admin_dsn, run.database, run.workers.pids())
            terminated["rounds"] += 1
            terminated["backends terminated"] += n

        terminator = asyncio.create_task(every(lambda: rng.uniform(0.7, 1.5), terminate, stop))
        await run.publish_requests(load_seconds(len(run.plan.requests)))
        stop.set()
        await terminator
        run.numbers.faults = terminated
        report = await run.settle()
        run.assert_clean(report)
        assert terminated["backends terminated"] >= 10, terminated


async def test_every_message_delivered_twice_some_three_times(settings, topology, tmp_path):
    """Every request twice (the copy a few messages later), one in three a third time seconds later, every
    office record twice; then, after quiescence, every request, office record and event our workers
    published once more (a portal or an office retrying, a relay that died between publish and mark):
    exactly one effect, and one office outcome, each."""
    rng = random.Random(64)
    async with fault_run("duplicates", settings, topology, tmp_path, requests=scaled(250), seed=64) as run:
        run.writer.copies = 2
        requests = run.plan.requests
        placed: list[tuple[float, int, object]] = []
        for i, request in enumerate(requests):
            placed.append((i, 0, request))
            placed.append((i + 1 + rng.randrange(5) + 0.5, 1, request))  # right behind it
            if i % 3 == 0:  # a third copy, ~100 messages (seconds) later
                placed.append((i + 80 + rng.randrange(40) + 0.7, 2, request))
        stream = [message for _, _, message in sorted(placed, key=lambda p: p[:2])]
        await run.publish_requests(load_seconds(len(requests)), copies=stream)
        report = await run.settle()
        run.assert_clean(report)

        rows = await outbox_rows(run)
        replayed = await republish(run, rows)
        await asyncio.gather(*(publish_confirmed(run.broker, r) for r in requests))
        late_office = await run.writer.resend_all()
        run.numbers.published += len(requests)
        run.numbers.faults = {
            "copies of each request": 2,
            "third copies": len(stream) - 2 * len(requests),
            "late request copies": len(requests),
            "copies of each office record": 2,
            "late office record copies": late_office,
            "events republished": len(replayed),
        }
        report = await run.settle()  # waits for the queues to drain, then looks again a moment later
        run.assert_clean(report)


async def test_result_events_reordered_and_replayed_late(settings, topology, tmp_path):
    """While the load runs, old result events come back in random order with new message ids (so only the
    version guard and the first-outcome-wins rule stand between them and the portal); after quiescence,
    every event once more, shuffled. The read store never moves back and ends equal to the schedule."""
    rng = random.Random(65)
    async with fault_run("reordered", settings, topology, tmp_path, requests=scaled(250), seed=65) as run:
        stop = asyncio.Event()
        replayed: list[str] = []

        async def replay_some() -> None:
            rows = await outbox_rows(run, roles=("events",))
            sample = rng.sample(rows, k=len(rows) // 3)
            replayed.extend(await republish(run, sample, new_ids=True))

        replayer = asyncio.create_task(every(lambda: rng.uniform(0.8, 1.5), replay_some, stop))
        await run.publish_requests(load_seconds(len(run.plan.requests)))
        stop.set()
        await replayer
        report = await run.settle()
        run.assert_clean(report)
        before = await run.reconcile()

        rows = await outbox_rows(run, roles=("events",))
        rng.shuffle(rows)
        late = await republish(run, rows, new_ids=True)
        await consumed_all(run, "portal_sync", replayed + late)
        run.numbers.faults = {"events replayed during load": len(replayed), "events replayed late": len(late)}
        report = await run.settle()
        run.assert_clean(report)
        assert report.counts == before.counts


async def test_poison_messages_mixed_into_valid_traffic(settings, topology, tmp_path):
    async with fault_run("poison", settings, topology, tmp_path, requests=scaled(250), seed=66) as run:
        appointment_ids = [b.appointment_id for b in run.plan.bookings]
        items = poison.catalog(run.plan.tenants, appointment_ids, total=scaled(220), seed=66)
        requests = list(run.plan.requests)
        stream = requests + items
        random.Random(66).shuffle(stream)

        async def send(batch: list) -> None:
            for item in batch:
                if isinstance(item, poison.Poison):
                    await poison.publish(run.broker, item)
                else:
                    await publish_confirmed(run.broker, item)

        # valid and poison interleaved on the same queues, in 8 parallel streams, the office writing too
        await asyncio.gather(*(send(stream[k::8]) for k in range(8)), run.write_office(8.0))
        run.numbers.published = len(requests)
        run.numbers.poison = len(items)
        report = await run.settle()
        run.assert_clean(report)

        letters = await reconcile.read_dead_letters(settings.amqp_url, topology.namespace)
        found = {(x.queue, x.message_id): x.reason for x in letters}
        wrong = []
        for item in items:
            for queue in item.queues(topology):
                if found.get((queue, item.message_id)) != item.reason:
                    wrong.append(
                        f"{item.kind} in {queue}: {found.get((queue, item.message_id))}, not {item.reason}"
                    )
        kinds = sorted({item.kind.split(":")[-1] for item in items})
        run.numbers.faults = {"poison kinds": len(kinds), "dead letters": len(letters)}
        run.numbers.write()
        assert not wrong, f"{len(wrong)} poison message(s) not dead-lettered as expected: {wrong[:15]}"
        assert run.workers.starts == {name: 1 for name in WORKER_NAMES}, "a worker crashed"


# Every boundary a worker whose events matter passes; portal_sync's feed events are not checked here.
EMITTER_POINTS = (
    "after_receive",
    "before_commit",
    "after_commit",
    "after_publish",
    "after_ack",
    "relay_after_publish",
)
POINTS = {
    "policy_gate": EMITTER_POINTS,
    "modify_handler": EMITTER_POINTS,
    "portal_sync": ("after_receive", "before_commit", "after_commit", "after_ack"),
}


async def test_crash_at_every_step_boundary(settings, topology, tmp_path):
    """Each worker dies (os._exit, like kill -9) once at every step boundary: after receive, with the
    transaction's writes done but not committed, after commit before its events are published, after
    their direct publish is confirmed but before they are marked sent, after ack, and (relays) after a
    confirmed publish before marking the rows sent. The runtime's own hook does it
    (workers/runtime/faults.py, APPT_FAULT_AT=<point>:<n>), in the plain worker processes."""
    rng = random.Random(67)

    def env_for(worker: str, start: int) -> dict[str, str]:
        # start 0 is the clean start that seeds the tenants; lives 1.. each crash at one point
        points = POINTS[worker]
        if 1 <= start <= len(points):
            point = points[start - 1]
            # The relay publishes only what the direct path left: in that life it publishes everything.
            direct = "false" if point == "relay_after_publish" else "true"
            return {faults.ENV: f"{point}:{rng.randint(2, 6)}", "APPT_OUTBOX_DIRECT": direct}
        return {faults.ENV: "", "APPT_OUTBOX_DIRECT": "true"}

    async with fault_run(
        "crash_points",
        settings,
        topology,
        tmp_path,
        requests=scaled(250),
        seed=67,
        env_for=env_for,
        expected_codes=frozenset(faults.EXIT_CODES.values()),
    ) as run:
        # the seeded life ends cleanly; from here on each life crashes at its point
        for name in WORKER_NAMES:
            run.workers.kill(name)
        await run.publish_requests(load_seconds(len(run.plan.requests)))
        report = await run.settle()
        hits = {
            (e.worker, faults.POINT_OF_EXIT_CODE[e.code].value)
            for e in run.workers.exits
            if e.code in faults.POINT_OF_EXIT_CODE
        }
        run.numbers.faults = {
            f"crash points hit ({', '.join(sorted({p for _, p in hits}))})": len(hits),
            "workers restarted": sum(run.workers.starts.values()) - len(WORKER_NAMES),
        }
        run.assert_clean(report)
        missing = [(w, p) for w, points in POINTS.items() for p in points if (w, p) not in hits]
        assert not missing, f"crash points never reached: {missing}"


async def test_a_killed_workers_committed_events_go_out_within_seconds_not_the_grace_period(
    settings, topology, tmp_path
):
    """The gate and the handler each die (os._exit, like kill -9) right after a commit, before its events
    are published, with a grace period (120 s) far longer than the run: the restarted worker's relay sees
    that the dead process holds no writer lock and publishes its rows at once (migration 0013). Every
    event goes out within seconds of its commit, and nothing is lost or duplicated."""
    grace_s = 120.0
    crashing = ("policy_gate", "modify_handler")

    def env_for(worker: str, start: int) -> dict[str, str]:
        crash = worker in crashing and start == 1  # start 0 seeds the tenants and ends cleanly
        return {faults.ENV: "after_commit:3" if crash else "", "APPT_OUTBOX_GRACE_S": str(grace_s)}

    async with fault_run(
        "crash_tail",
        settings,
        topology,
        tmp_path,
        requests=scaled(120),
        seed=68,
        env_for=env_for,
        expected_codes=frozenset({faults.EXIT_CODES[faults.FaultPoint.AFTER_COMMIT]}),
    ) as run:
        for name in WORKER_NAMES:
            run.workers.kill(name)
        await run.publish_requests(load_seconds(len(run.plan.requests)))
        report = await run.settle()
        run.assert_clean(report)
        crashed = {
            e.worker for e in run.workers.exits if e.code == faults.EXIT_CODES[faults.FaultPoint.AFTER_COMMIT]
        }
        assert crashed == set(crashing), run.workers.exits

        rows = await outbox_rows(run)
        lags = sorted((row.published_at - row.created_at).total_seconds() for row in rows)
        writers = {(row.producer, row.writer) for row in rows}
        run.numbers.faults = {
            "crashed after commit": len(crashed),
            "slowest event (s)": round(lags[-1], 1),
            "writers": len(writers),
        }
        run.numbers.write()
        # both lives of each crashing worker wrote events: the dead one's were taken over
        assert all(len({w for p, w in writers if p == name}) >= 2 for name in crashing), writers
        assert lags[-1] < 20.0, f"an event waited {lags[-1]:.1f} s after its commit (grace {grace_s:.0f} s)"
