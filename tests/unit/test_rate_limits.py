"""Rate limits (token buckets per tenant and requester) and tenant lanes, without a clock or a broker."""

import asyncio

import pytest
from pydantic import ValidationError

from contracts.office_v2 import PortalSettingsV2Payload
from contracts.reasons import RejectionCode, customer_text
from workers.policy_gate.limits import PRUNE_EVERY_S, LimitScope, RateLimiter, RateLimits
from workers.runtime.fairness import LanesClosed, TenantLanes

LIMITS = RateLimits(tenant_per_minute=600, tenant_burst=20, requester_per_minute=6, requester_burst=3)


def test_a_requester_gets_its_burst_then_one_request_per_refill():
    limiter = RateLimiter()
    assert [limiter.admit("t", "cust-1", LIMITS, 100.0) for _ in range(3)] == [None, None, None]
    refused = limiter.admit("t", "cust-1", LIMITS, 100.0)
    assert refused is not None and refused.scope is LimitScope.REQUESTER
    assert refused.setting == "rate_limits.requester_per_minute"
    assert refused.retry_after_s == pytest.approx(10.0)  # 6 per minute
    assert limiter.admit("t", "cust-1", LIMITS, 109.9) is not None
    assert limiter.admit("t", "cust-1", LIMITS, 110.0) is None
    assert limiter.admit("t", "cust-1", LIMITS, 110.0) is not None


def test_200_reschedules_in_nine_seconds_are_mostly_refused():
    limiter = RateLimiter()
    admitted = sum(limiter.admit("t", "cust-1", LIMITS, 100.0 + i * 0.0435) is None for i in range(200))
    assert admitted == 3  # the burst; at 6 per minute, 8.7 s do not refill a token


def test_the_tenant_limit_covers_all_its_requesters_and_no_other_tenant():
    limiter = RateLimiter()
    results = [limiter.admit("flood", f"cust-{i}", LIMITS, 5.0) for i in range(25)]
    assert sum(r is None for r in results) == 20
    assert {r.scope for r in results if r is not None} == {LimitScope.TENANT}
    assert limiter.admit("flood", "cust-99", LIMITS, 5.0).setting == "rate_limits.tenant_per_minute"
    assert limiter.admit("victim", "cust-1", LIMITS, 5.0) is None


def test_a_refused_request_takes_no_token():
    limiter = RateLimiter()
    for _ in range(3):
        limiter.admit("t", "cust-1", LIMITS, 0.0)
    for i in range(100):  # refused all along: the refill is not spent on them
        assert limiter.admit("t", "cust-1", LIMITS, i * 0.01) is not None
    assert limiter.admit("t", "cust-1", LIMITS, 10.0) is None


def test_a_requester_refusal_leaves_the_tenant_bucket_alone():
    limiter = RateLimiter()
    for _ in range(50):
        limiter.admit("t", "cust-1", LIMITS, 0.0)
    admitted = sum(limiter.admit("t", f"other-{i}", LIMITS, 0.0) is None for i in range(30))
    assert admitted == 20 - 3


def test_full_buckets_are_forgotten_and_changed_limits_apply():
    limiter = RateLimiter()
    for i in range(15):
        limiter.admit("t", f"cust-{i}", LIMITS, 0.0)
    assert limiter.tracked() == 16
    limiter.admit("t", "cust-0", LIMITS, PRUNE_EVERY_S + 600)
    assert limiter.tracked() == 2
    strict = LIMITS.overlaid(requester_burst=1, tenant_per_minute=None)
    assert strict.requester_burst == 1 and strict.tenant_per_minute == 600
    assert limiter.admit("t", "cust-7", strict, PRUNE_EVERY_S + 600) is None
    assert limiter.admit("t", "cust-7", strict, PRUNE_EVERY_S + 600) is not None


def test_rate_limits_are_a_business_setting_with_a_customer_sentence():
    layer = {"rate_limits": {"requester_per_minute": 2, "requester_burst": 1}}
    business = PortalSettingsV2Payload.model_validate(
        {"scope": {"level": "business"}, "settings": layer, "settings_version": 1, "changed_by": "a"}
    )
    assert business.settings.rate_limits.requester_burst == 1
    with pytest.raises(ValidationError, match="only be set on the business layer"):
        PortalSettingsV2Payload.model_validate(
            {
                "scope": {"level": "job_type", "key": "hvac"},
                "settings": layer,
                "settings_version": 1,
                "changed_by": "a",
            }
        )
    with pytest.raises(ValidationError):
        PortalSettingsV2Payload.model_validate(
            {
                "scope": {"level": "business"},
                "settings": {"rate_limits": {"requester_burst": 0}},
                "settings_version": 1,
                "changed_by": "a",
            }
        )
    assert "wait a minute" in customer_text(RejectionCode.RATE_LIMITED)


async def test_lanes_give_a_waiting_tenant_the_next_slot_ahead_of_a_backlog():
    lanes = TenantLanes(slots=2)
    order: list[str] = []
    release = asyncio.Event()

    async def work(lane: str, name: str) -> None:
        async with lanes.turn(lane):
            order.append(name)
            await release.wait()

    tasks = [asyncio.create_task(work("flood", f"f{i}")) for i in range(50)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(work("victim", "v0")))
    await asyncio.sleep(0)
    assert order == ["f0", "f1"] and lanes.waiting("flood") == 48 and lanes.waiting("victim") == 1
    release.set()
    await asyncio.gather(*tasks)
    # Once a slot frees, lanes take turns: the victim's one request comes before the flood's third.
    assert order[:4] == ["f0", "f1", "v0", "f2"] or order[:4] == ["f0", "f1", "f2", "v0"]
    assert order.index("v0") <= 3
    assert lanes.busy == 0 and lanes.waiting() == 0


async def test_lanes_alternate_between_tenants_with_backlogs():
    lanes = TenantLanes(slots=1)
    order: list[str] = []

    async def work(lane: str) -> None:
        async with lanes.turn(lane):
            order.append(lane)
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(work(lane)) for lane in ["a"] * 6 + ["b"] * 3]
    await asyncio.gather(*tasks)
    assert order == ["a", "a", "b", "a", "b", "a", "b", "a", "a"]


async def test_a_cancelled_waiter_does_not_lose_a_slot_and_closing_turns_away_the_rest():
    lanes = TenantLanes(slots=1)
    gate = asyncio.Event()

    async def hold() -> None:
        async with lanes.turn("a"):
            await gate.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(hold())
    waiting = asyncio.create_task(hold())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    assert lanes.waiting("a") == 1
    lanes.close()
    with pytest.raises(LanesClosed):
        await waiting
    gate.set()
    await holder
    assert lanes.busy == 0
    with pytest.raises(LanesClosed):
        async with lanes.turn("b"):
            pass


def test_the_gate_keeps_the_newest_business_limits_it_has_seen():
    from workers.policy_gate.admission import Admission

    admission = Admission(defaults=LIMITS)
    admission.learn("t", {"requester_burst": 1}, settings_version=2, now=0.0)
    # A request's read that started before version 2 was applied must not bring version 1's limits back.
    admission.learn("t", {"requester_burst": 9}, settings_version=1, now=1.0)
    assert admission.known("t") == LIMITS.overlaid(requester_burst=1)
    admission.learn("t", None, settings_version=3, now=2.0)  # a version 1 message: the defaults again
    assert admission.known("t") == LIMITS
