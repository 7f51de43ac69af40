"""policy_gate handlers: decide modify requests, keep settings layers current, settle office approvals."""

import structlog
from pydantic import TypeAdapter

from contracts.envelope import Envelope
from contracts.events_v1 import (
    AppointmentCanceled,
    AppointmentRescheduled,
    AppointmentUpdated,
    ModifyAwaitingApproval,
    ModifyAwaitingApprovalPayload,
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
from contracts.portal_v1 import ModifyChange, ModifyRequested
from contracts.reasons import DeadLetterReason, OfficeOutcomeCode, RejectionCode, customer_text
from workers.policy_gate import offering, store
from workers.policy_gate.rules import Decision, Outcome, decide
from workers.policy_gate.settings import resolve
from workers.runtime.database import UnitOfWork
from workers.runtime.errors import DeadLetter

log = structlog.get_logger(__name__)
PRODUCER = "policy_gate"
# The stored change (JSON) back into its model.
CHANGE_ADAPTER: TypeAdapter = TypeAdapter(ModifyChange)


def _approval(
    cause: Envelope, now, *, request_id: str, appointment_id: str, requester_id: str, change, version: int
):
    return ModifyApproved.follow(
        cause,
        producer=PRODUCER,
        occurred_at=now,
        correlation_id=request_id,
        payload=ModifyApprovedPayload(
            appointment_id=appointment_id,
            requester_id=requester_id,
            change=change,
            decided_on_version=version,
        ),
    )


def _rejection(
    cause: Envelope, now, *, request_id: str, appointment_id: str, action: str, code: str, text: str
):
    return ModifyRejected.follow(
        cause,
        producer=PRODUCER,
        occurred_at=now,
        correlation_id=request_id,
        payload=ModifyRejectedPayload(
            request_id=request_id, appointment_id=appointment_id, action=action, reason_code=code, reason=text
        ),
    )


async def decide_modify_request(message: ModifyRequested, uow: UnitOfWork) -> None:
    request = message.payload
    facts, layers = await store.load_facts_and_layers(uow, message.tenant_id, request.appointment_id)
    now = await uow.now()
    decision: Decision = decide(
        requester_id=request.requester_id,
        change=request.change,
        facts=facts,
        settings=resolve(layers),
        now=now,
        expected_version=request.expected_version,
    )
    first_time = await store.record_decision(
        uow.driver,
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
        same = await store.same_request(
            uow.driver,
            tenant_id=message.tenant_id,
            request_id=message.correlation_id,
            producer=message.producer,
            appointment_id=request.appointment_id,
            requester_id=request.requester_id,
            change=request.change.model_dump(mode="json"),
        )
        if not same:
            # A request id means one request (of one portal): a different change under a known id, or
            # another portal's id, changes nothing and is dead-lettered where an operator sees it.
            raise DeadLetter(
                DeadLetterReason.REQUEST_ID_REUSED,
                f"request id {message.correlation_id} already names a different request of this tenant "
                "(another change, appointment, requester or portal); nothing was changed: send the new "
                "request with a new request id",
            )
        # The portal re-sent a request it already sent: the first decision stands and its events went out.
        log.info("gate.request_already_decided")
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
        result: Envelope = _approval(
            message,
            now,
            **ids,
            requester_id=request.requester_id,
            change=request.change,
            version=facts.version,
        )
    elif decision.outcome is Outcome.NEEDS_APPROVAL:
        result = ModifyAwaitingApproval.follow(
            message,
            producer=PRODUCER,
            occurred_at=now,
            payload=ModifyAwaitingApprovalPayload(
                **ids,
                action=request.change.action,
                reason_code=decision.reason_code,
                reason=decision.reason_text,
            ),
        )
    else:
        result = _rejection(
            message,
            now,
            **ids,
            action=request.change.action,
            code=decision.reason_code,
            text=decision.reason_text,
        )
    await uow.emit(result)


async def settle_office_approval(message: ApprovalDecided, uow: UnitOfWork) -> None:
    """The office approved or declined a waiting request. A decision for a request that is not waiting
    (unknown, or already settled) changes nothing."""
    decision = message.payload
    conn = uow.connection
    now = await uow.now()
    pending = await store.lock_pending_approval(conn, message.tenant_id, decision.request_id)
    if pending is None:
        log.info("gate.approval_not_pending", request_id=decision.request_id)
        await uow.emit(
            office_outcome(
                message, now, decision.request_id, OfficeOutcomeCode.APPROVAL_NOT_PENDING, producer=PRODUCER
            )
        )
        return
    ids = dict(request_id=pending.request_id, appointment_id=pending.appointment_id)
    change = CHANGE_ADAPTER.validate_python(pending.change)
    if decision.approved:
        result: Envelope = _approval(
            message,
            now,
            **ids,
            requester_id=pending.requester_id,
            change=change,
            version=pending.decided_on_version,
        )
        code = text = None
    else:
        code = RejectionCode.OFFICE_DECLINED.value
        text = customer_text(
            RejectionCode.OFFICE_DECLINED, office_reason=decision.reason or "no reason was given."
        )
        result = _rejection(message, now, **ids, action=pending.action, code=code, text=text)
    await store.settle_approval(
        conn,
        message.tenant_id,
        pending.request_id,
        approved=decision.approved,
        reason_code=code,
        reason_text=text,
        decided_by=decision.decided_by,
        decided_at=now,
    )
    log.info("gate.office_decided", request_id=pending.request_id, approved=decision.approved)
    await uow.emit(result)
    await uow.emit(office_outcome(message, now, pending.request_id, None, producer=PRODUCER))


async def update_settings_layer(message: PortalSettingsUpdatedV2, uow: UnitOfWork) -> None:
    p = message.payload
    applied = await store.save_layer(
        uow.connection,
        message.tenant_id,
        p.scope,
        p.settings,
        settings_version=p.settings_version,
        changed_by=p.changed_by,
        message_id=message.message_id,
    )
    log.info("gate.settings", applied=applied, level=p.scope.level.value, settings_version=p.settings_version)
    await _settings_outcome(message, uow, p.scope.key, applied)
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
    applied = await store.save_layer(
        uow.connection,
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
    if applied:
        await offering.follow_scope(uow, message, ScopeLevel.BUSINESS, None)


HANDLERS = {
    ModifyRequested: decide_modify_request,
    PortalSettingsUpdated: update_portal_settings_v1,
    PortalSettingsUpdatedV2: update_settings_layer,
    ApprovalDecided: settle_office_approval,
    AppointmentRescheduled: offering.follow_appointment,
    AppointmentCanceled: offering.follow_appointment,
    AppointmentUpdated: offering.follow_appointment,
    ProjectUpdated: offering.follow_project,
    RefreshOffers: offering.continue_refresh,
}
