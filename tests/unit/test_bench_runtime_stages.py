"""The bench's RUNTIME stages (bench/rt_stage.py) pass each request on as a message the next stage accepts.

Their end-to-end run is `make bench`; this checks, without a broker, what broke it once: the message a stage
emits must be a valid modify.requested of its own (its producer as the request's portal), decodable by the
next stage, up to the last one.
"""

from bench import rt_stage
from contracts.portal_v1 import ModifyRequested
from tests import factories as f


class _Driver:
    def __init__(self) -> None:
        self.statements: list[tuple] = []

    async def execute(self, *args) -> None:
        self.statements.append(args)


class _UnitOfWork:
    def __init__(self) -> None:
        self.driver = _Driver()
        self.emitted: list = []

    async def emit(self, message) -> None:
        self.emitted.append(message)


async def test_each_stage_hands_the_next_a_request_it_accepts():
    message: ModifyRequested = f.modify_requested(request_id="rt-1", producer="portal-web")
    for stage in (1, 2, 3):
        uow = _UnitOfWork()
        spec = rt_stage.stage_spec(stage)
        await spec.handlers[ModifyRequested](message, uow)
        assert uow.driver.statements and uow.driver.statements[0][1:] == ("rt-1", stage)
        if stage == 3:
            assert uow.emitted == []
            break
        (emitted,) = uow.emitted
        assert emitted.producer == f"rt_stage{stage}" and emitted.correlation_id == "rt-1"
        # what the next stage decodes from the wire
        message = ModifyRequested.model_validate_json(emitted.model_dump_json())
        assert message.payload == emitted.payload
