"""policy_gate handlers: decide modify requests, keep settings layers current, settle office approvals."""

import time

import structlog

from contracts.catalog import POLICY_GATE
from contracts.envelope import Envelope
from contracts.events_v1 import (
    AppointmentOfferChangedPayload,
    AppointmentUpdated,
    ModifyAwaitingApproval,
    ModifyAwaitingApprovalPayload,
    ModifyFailed,
    ModifyRejected,
    ModifyRejectedPayload,
    ProjectUpdated,
    office_outcome,
)
from contracts.internal_v1 import ModifyApproved, ModifyApprovedPayload, RefreshOffers
from contracts.office_v1 import ApprovalDecided, PortalSettingsUpdated
from contracts.office_v2 import (
    CancelSettings,
    PortalSettingsUpdatedV2,
    RescheduleSettings,
    ScopeLevel,
    SettingsLayer,
    SettingsScope,
)
from contracts.portal_v1 import ModifyRequested
from contracts.reasons import DeadLetterReason, OfficeOutcomeCode, RejectionCode, customer_text
from workers.policy_gate import offering, store
from workers.policy_gate.admission import ADMISSION
from workers.policy_gate.limits import Refusal
from workers.policy_gate.offering import CHANGE_ADAPTER
from workers.policy_gate.rules import Decision, Outcome, decide
from workers.policy_gate.settings import resolve
from workers.runtime.database import UnitOfWork
from workers.runtime.errors import DeadLetter

log = structlog.get_logger(__name__)
PRODUCER = POLICY_GATE.name


async def _approve(
    uow: UnitOfWork,
    cause: Envelope,
    *,
    request_id: str,
    appointment_id: str,
    requester_id: str,
    change,
    version: int,
    offer: AppointmentOfferChangedPayload | None,
    request_producer: str | None = None,
) -> None:
    await uow.follow(
        cause,
        ModifyApproved,
        ModifyApprovedPayload(
            appointment_id=appointment_id,
            requester_id=requester_id,
            change=change,
            decided_on_version=version,
            offer=offer,
        ),
        correlation_id=request_id,
        request_producer=request_producer,
    )


async def _reject(
    uow: UnitOfWork,
    cause: Envelope,
    *,
    request_id: str,
    appointment_id: str,
    action: str,
    code: str,
    text: str,
    request_producer: str | None = None,
) -> None:
    await uow.follow(
        cause,
        ModifyRejected,
        ModifyRejectedPayload(
            request_id=request_id, appointment_id=appointment_id, action=action, reason_code=code, reason=text
        ),
        correlation_id=request_id,
        request_producer=request_producer,
    )


def rate_limited(refusal: Refusal) -> Decision:
    # The level that set the limit is not known here without a read: "business" when the business may set
    # it; docs/policy.md says the defaults apply where it sets none.
    return Decision(
        Outcome.REJECTED,
        f"{refusal.scope.value}_rate_limit",
        setting=refusal.setting,
        setting_level=ScopeLevel.BUSINESS.value,
        reason_code=RejectionCode.RATE_LIMITED.value,
        reason_text=customer_text(RejectionCode.RATE_LIMITED),
    )


async def refuse_rate_limited(message: ModifyRequested, uow: UnitOfWork, refusal: Refusal) -> None:
    """Over a limit: record the refusal by request id and tell the portal, reading nothing else."""
    request = message.payload
    decision = rate_limited(refusal)
    decided_at = await store.of(uow).record_refusal(
        tenant_id=message.tenant_id,
        request_id=message.correlation_id,
        message_id=message.message_id,
        appointment_id=request.appointment_id,
        requester_id=request.requester_id,
        change=request.change.model_dump(mode="json"),
        decision=decision,
        producer=message.producer,
    )
    if decided_at is None:
        await _already_decided(message, uow)
        return
    log.info("gate.rate_limited", scope=refusal.scope.value, retry_after_s=round(refusal.retry_after_s, 2))
    uow.saw_now(decided_at)  # the refusal's statement read the transaction's clock
    await _reject(
        uow,
        message,
        request_id=message.correlation_id,
        appointment_id=request.appointment_id,
        action=request.change.action,
        code=decision.reason_code or "",
        text=decision.reason_text or "",
    )


async def _already_decided(message: ModifyRequested, uow: UnitOfWork) -> None:
    """The request id is known: a re-send is a no-op (the first decision stands and its events went out);
    a different request under it is dead-lettered where an operator sees it, changing nothing."""
    request = message.payload
    same = await store.of(uow).same_request(
        tenant_id=message.tenant_id,
        request_id=message.correlation_id,
        producer=message.producer,
        appointment_id=request.appointment_id,
        requester_id=request.requester_id,
        change=request.change.model_dump(mode="json"),
    )
    if not same:
        # A request id means one request of one portal: a different change under this portal's known id
        # changes nothing (another portal's request under the same id is another request).
        raise DeadLetter(
            DeadLetterReason.REQUEST_ID_REUSED,
            f"request id {message.correlation_id} already names a different request of this portal "
            f"({message.producer}) in this tenant (another change, appointment or requester); nothing was "
            "changed: send the new request with a new request id",
        )
    log.info("gate.request_already_decided")


async def decide_modify_request(message: ModifyRequested, uow: UnitOfWork) -> None:
    request = message.payload
    # Limits first, from memory (the tenant's limits are read at most every LIMITS_TTL_S): a refused
    # request costs one insert and its event, however many arrive.
    refusal = await ADMISSION.check(uow, message.tenant_id, request.requester_id)
    if refusal is not None:
        await refuse_rate_limited(message, uow, refusal)
        return
    facts, layers = await store.of(uow).load_facts_and_layers(message.tenant_id, request.appointment_id)
    now = await uow.now()
    decision: Decision = decide(
        requester_id=request.requester_id,
        change=request.change,
        facts=facts,
        settings=resolve(layers),
        now=now,
        expected_version=request.expected_version,
    )
    first_time = await store.of(uow).record_decision(
        tenant_id=message.tenant_id,
        request_id=message.correlation_id,
        message_id=message.message_id,
        appointment_id=request.appointment_id,
        requester_id=request.requester_id,
        change=request.change.model_dump(mode="json"),
        decision=decision,
        decided_on_version=facts.version if facts else None,
        decided_at=now,
        producer=message.producer,
    )
    if not first_time:
        await _already_decided(message, uow)
        return
    log.info(
        "gate.decided",
        outcome=decision.outcome.value,
        rule=decision.rule,
        setting=decision.setting,
        setting_level=decision.setting_level,
        reason_code=decision.reason_code,
    )
    ids = dict(request_id=message.correlation_id, appointment_id=request.appointment_id)
    if decision.outcome is Outcome.APPROVED:
        assert facts is not None
        # The offer for the approved state travels with the approval (committed with the decision, so a
        # redelivered request, a duplicate, sends nothing new and the approval's offer stands).
        offer = await offering.carry_offer(
            uow,
            message.tenant_id,
            message.correlation_id,
            request.appointment_id,
            request.change,
            facts.version,
        )
        await _approve(
            uow,
            message,
            **ids,
            requester_id=request.requester_id,
            change=request.change,
            version=facts.version,
            offer=offer,
        )
    elif decision.outcome is Outcome.NEEDS_APPROVAL:
        await uow.follow(
            message,
            ModifyAwaitingApproval,
            ModifyAwaitingApprovalPayload(
                **ids,
                action=request.change.action,
                reason_code=decision.reason_code,
                reason=decision.reason_text,
            ),
        )
    else:
        await _reject(
            uow,
            message,
            **ids,
            action=request.change.action,
            code=decision.reason_code,
            text=decision.reason_text,
        )


async def settle_office_approval(message: ApprovalDecided, uow: UnitOfWork) -> None:
    """The office approved or declined a waiting request. A decision for a request that is not waiting
    (unknown, or already settled) changes nothing."""
    decision = message.payload
    now = await uow.now()
    # Request ids are per portal: the office names the portal when two portals' requests wait under one
    # id (`request_producer`); without it, the one waiting request with that id is meant.
    waiting = await store.of(uow).lock_pending_approvals(
        message.tenant_id, decision.request_id, message.request_producer
    )
    if len(waiting) != 1:
        code = OfficeOutcomeCode.APPROVAL_AMBIGUOUS if waiting else OfficeOutcomeCode.APPROVAL_NOT_PENDING
        log.info("gate.approval_not_settled", request_id=decision.request_id, reason_code=code.value)
        await uow.emit(office_outcome(message, now, decision.request_id, code, producer=PRODUCER))
        return
    pending = waiting[0]
    ids = dict(
        request_id=pending.request_id,
        appointment_id=pending.appointment_id,
        request_producer=pending.producer or None,
    )
    change = CHANGE_ADAPTER.validate_python(pending.change)
    if decision.approved:
        code = text = None
    else:
        code = RejectionCode.OFFICE_DECLINED.value
        text = customer_text(
            RejectionCode.OFFICE_DECLINED, office_reason=decision.reason or "no reason was given."
        )
    await store.of(uow).settle_approval(
        message.tenant_id,
        pending.request_id,
        producer=pending.producer,
        approved=decision.approved,
        reason_code=code,
        reason_text=text,
        decided_by=decision.decided_by,
        decided_at=now,
    )
    log.info("gate.office_decided", request_id=pending.request_id, approved=decision.approved)
    if decision.approved:
        await _approve(
            uow,
            message,
            **ids,
            requester_id=pending.requester_id,
            change=change,
            version=pending.decided_on_version,
            offer=await offering.carry_offer(
                uow,
                message.tenant_id,
                pending.request_id,
                pending.appointment_id,
                change,
                pending.decided_on_version,
            ),
        )
    else:
        await _reject(uow, message, **ids, action=pending.action, code=code, text=text)
    await uow.emit(office_outcome(message, now, pending.request_id, None, producer=PRODUCER))


async def update_settings_layer(message: PortalSettingsUpdatedV2, uow: UnitOfWork) -> None:
    p = message.payload
    applied = await store.of(uow).save_layer(
        message.tenant_id,
        p.scope,
        p.settings,
        settings_version=p.settings_version,
        changed_by=p.changed_by,
        message_id=message.message_id,
    )
    log.info("gate.settings", applied=applied, level=p.scope.level.value, settings_version=p.settings_version)
    await _settings_outcome(message, uow, p.scope.key, applied)
    if applied and p.scope.level is ScopeLevel.BUSINESS:
        # This replica's next request uses them (others within admission.LIMITS_TTL_S).
        limits = p.settings.rate_limits
        ADMISSION.learn(
            message.tenant_id,
            limits.model_dump(exclude_none=True) if limits else None,
            p.settings_version,
            time.monotonic(),
        )
    if applied:
        await offering.follow_scope(uow, message, p.scope.level, p.scope.key)


async def _settings_outcome(message: Envelope, uow: UnitOfWork, subject: str | None, applied: bool) -> None:
    code = None if applied else OfficeOutcomeCode.OLDER_REVISION
    await uow.emit(office_outcome(message, await uow.now(), subject, code, producer=PRODUCER))


def business_layer_from_v1(message: PortalSettingsUpdated) -> SettingsLayer:
    """Version 1 settings are a business layer with the feature switch and allow/deny permissions."""
    rules = message.payload.rules
    return SettingsLayer(
        feature_enabled=message.payload.feature_enabled,
        reschedule=RescheduleSettings(
            confirmed=rules.reschedule.confirmed.value, unconfirmed=rules.reschedule.unconfirmed.value
        ),
        cancel=CancelSettings(
            confirmed=rules.cancel.confirmed.value, unconfirmed=rules.cancel.unconfirmed.value
        ),
    )


async def update_portal_settings_v1(message: PortalSettingsUpdated, uow: UnitOfWork) -> None:
    applied = await store.of(uow).save_layer(
        message.tenant_id,
        SettingsScope(level=ScopeLevel.BUSINESS),
        business_layer_from_v1(message),
        settings_version=message.payload.settings_version,
        changed_by=message.payload.changed_by,
        message_id=message.message_id,
    )
    log.info(
        "gate.settings", applied=applied, level="business", settings_version=message.payload.settings_version
    )
    await _settings_outcome(message, uow, None, applied)
    if applied:  # a version 1 business layer sets no rate limits: the defaults apply
        ADMISSION.learn(message.tenant_id, None, message.payload.settings_version, time.monotonic())
        await offering.follow_scope(uow, message, ScopeLevel.BUSINESS, None)


HANDLERS = {
    ModifyRequested: decide_modify_request,
    PortalSettingsUpdated: update_portal_settings_v1,
    PortalSettingsUpdatedV2: update_settings_layer,
    ApprovalDecided: settle_office_approval,
    # A customer's change carries the offer the gate computed when it approved (offering.carry_offer);
    # the gate recomputes on what it could not know in advance: the office, a failed change, projects.
    AppointmentUpdated: offering.follow_appointment,
    ModifyFailed: offering.follow_failed_change,
    ProjectUpdated: offering.follow_project,
    RefreshOffers: offering.continue_refresh,
}
