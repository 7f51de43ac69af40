"""One trivial stage on OUR runtime: `python -m bench.rt_stage --stage N`.

What runs is the production runtime, unmodified: `workers.runtime.worker.Worker` with its QueueConsumer
(decode + strict validation, inbox claim, handler, commit, ack, dead-letter policy, structlog per
message) and, for stages 1 and 2, its OutboxRelay (LISTEN/NOTIFY wake-up, FOR UPDATE SKIP LOCKED batch,
confirmed publish, mark published). Only the handler is trivial: the same one-row insert the bare relay
does (the same SQL on the unit of work's asyncpg connection, in its transaction), then `uow.emit` of the
next-stage message into the outbox of that same transaction.

Routing without touching contracts/: the message is a ModifyRequested on the wire (so decode() knows
it), emitted as a bench-local subclass whose class-level exchange_role/routing_key point at the next
stage queue. The outbox stores role + routing key per row, and the relay resolves the role through the
Worker's Topology, which the bench builds for its own namespace: the production topology's queue
family of one worker (work queue, dead letters, any retry tiers, same arguments) cloned once per stage.
"""

import argparse
from dataclasses import replace
from datetime import UTC, datetime
from typing import ClassVar

from aio_pika.abc import ExchangeType

from bench.common import HOP_SQL, RUNTIME_NAMESPACE, RUNTIME_ROLE, STAGES, runtime_queue
from contracts.catalog import POLICY_GATE
from contracts.portal_v1 import ModifyRequested
from infra.topology import RETURN_ROLE, Binding, ExchangeSpec, QueueSpec, Topology
from infra.topology import build as build_production_topology
from workers.runtime import loop
from workers.runtime.database import UnitOfWork
from workers.runtime.logging import configure_logging
from workers.runtime.settings import Settings
from workers.runtime.worker import Worker, WorkerSpec

# Whose queue family (arguments, dead letters, retry tiers) each stage copies.
TEMPLATE_WORKER = POLICY_GATE.name


def _renamed(value, old: str, new: str):
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _renamed(v, old, new) for k, v in value.items()}
    return value


def topology() -> Topology:
    """Exchange `benchrt.stages` (topic) next to the production exchanges of the namespace; per stage,
    the production queue family of a worker (work queue `benchrt.stageN` bound to `stageN`, its dead
    letters, any retry tiers) with exactly the production arguments."""
    production = build_production_topology(RUNTIME_NAMESPACE)
    template = production.queue_of(TEMPLATE_WORKER)
    queues: list[QueueSpec] = []
    for stage in STAGES:
        name, worker = runtime_queue(stage), f"rt_stage{stage}"
        for spec in production.queues:
            if spec.worker != TEMPLATE_WORKER and spec.name != template.dead_letter_queue:
                continue
            clone = replace(
                spec,
                name=spec.name.replace(template.name, name),
                arguments=_renamed(spec.arguments, template.name, name),
                bindings=tuple(
                    replace(b, routing_key=b.routing_key.replace(template.name, name)) for b in spec.bindings
                ),
                worker=worker if spec.worker else None,
                dead_letter_queue=_renamed(spec.dead_letter_queue, template.name, name),
            )
            if spec.name == template.name:
                clone = replace(
                    clone, bindings=(Binding(RUNTIME_ROLE, f"stage{stage}"), Binding(RETURN_ROLE, name))
                )
            queues.append(clone)
    return Topology(
        RUNTIME_NAMESPACE,
        (
            *production.exchanges,
            ExchangeSpec(RUNTIME_ROLE, f"{RUNTIME_NAMESPACE}.stages", ExchangeType.TOPIC),
        ),
        tuple(queues),
    )


class ToStage2(ModifyRequested):
    exchange_role: ClassVar[str] = RUNTIME_ROLE
    routing_key: ClassVar[str] = "stage2"


class ToStage3(ModifyRequested):
    exchange_role: ClassVar[str] = RUNTIME_ROLE
    routing_key: ClassVar[str] = "stage3"


NEXT = {1: ToStage2, 2: ToStage3, 3: None}


def stage_spec(stage: int) -> WorkerSpec:
    name = f"rt_stage{stage}"
    following = NEXT[stage]

    async def handle(message: ModifyRequested, uow: UnitOfWork) -> None:
        # The bare stage's statement, on the unit of work's asyncpg connection (its transaction).
        await uow.driver.execute(HOP_SQL, message.correlation_id, stage)
        if following is not None:
            await uow.emit(
                # The next stage's request is this stage's own (a modify.requested names its portal as
                # its producer: contracts/portal_v1.py).
                following.follow(
                    message,
                    producer=name,
                    request_producer=name,
                    occurred_at=datetime.now(UTC),
                    payload=message.payload,
                )
            )

    return WorkerSpec(name, {ModifyRequested: handle}, emits_events=following is not None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    args = parser.parse_args()
    settings = Settings()
    configure_logging(settings.log_level, worker=f"rt_stage{args.stage}")
    loop.run(Worker(stage_spec(args.stage), settings, topology=topology()).run())


if __name__ == "__main__":
    main()
