"""Every store protocol's operations exist on its PostgreSQL implementation and on its fake, the fake's
with the protocol's very parameters (a call the handlers make on one works on the other)."""

import inspect

import pytest

from tests.fakes.gate_store import FakeGateStore
from tests.fakes.portal_store import FakePortalStore
from tests.fakes.schedule_store import FakeScheduleStore
from workers.modify_handler.repository import PostgresSchedule, ScheduleStore
from workers.policy_gate.store import GateStore, PostgresGateStore
from workers.portal_sync.store import PortalStore, PostgresPortalStore


def operations(protocol: type) -> dict[str, inspect.Signature]:
    found = {}
    for cls in protocol.__mro__:
        if cls is object or not getattr(cls, "_is_protocol", False):
            continue
        for name, member in vars(cls).items():
            if inspect.iscoroutinefunction(member) and not name.startswith("_"):
                found.setdefault(name, inspect.signature(member))
    return found


@pytest.mark.parametrize(
    ("protocol", "real", "fake"),
    [
        (GateStore, PostgresGateStore, FakeGateStore),
        (ScheduleStore, PostgresSchedule, FakeScheduleStore),
        (PortalStore, PostgresPortalStore, FakePortalStore),
    ],
)
def test_the_fake_and_the_real_store_offer_every_operation_of_the_protocol(protocol, real, fake):
    expected = operations(protocol)
    assert expected, f"{protocol.__name__} declares no operations"
    for name, signature in expected.items():
        assert inspect.iscoroutinefunction(getattr(real, name, None)), f"{real.__name__} lacks {name}"
        assert inspect.iscoroutinefunction(getattr(fake, name, None)), f"{fake.__name__} lacks {name}"
        fake_parameters = inspect.signature(getattr(fake, name)).parameters
        variadic = any(p.kind is p.VAR_KEYWORD for p in fake_parameters.values())
        if not variadic:
            assert list(fake_parameters) == list(signature.parameters), f"{fake.__name__}.{name}"
