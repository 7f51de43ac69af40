"""policy_gate handlers: decide modify requests; keep the business's settings current."""

import structlog

from contracts.envelope import Envelope
from contracts.events_v1 import ModifyRejected, ModifyRejectedPayload
from contracts.internal_v1 import ModifyApproved, ModifyApprovedPayload
from contracts.office_v1 import PortalSettingsUpdated
from contracts.portal_v1 import ModifyRequested
from workers.policy_gate import store
from workers.policy_gate.rules import decide
from workers.runtime.database import UnitOfWork

log = structlog.get_logger(__name__)
PRODUCER = "policy_gate"


async def decide_modify_request(message: ModifyRequested, uow: UnitOfWork) -> None:
    request = message.payload
    conn = uow.connection
    now = await uow.now()
    facts = await store.load_facts(conn, message.tenant_id, request.appointment_id)
    settings = await store.load_settings(conn, message.tenant_id)
    decision = decide(
        requester_id=request.requester_id, change=request.change, facts=facts, settings=settings, now=now
    )
    first_time = await store.record_decision(
        conn,
        tenant_id=message.tenant_id,
        request_id=message.correlation_id,
        message_id=message.message_id,
        appointment_id=request.appointment_id,
        action=request.change.action,
        decision=decision,
        decided_on_version=facts.version if facts else None,
        decided_at=now,
    )
    if not first_time:
        # The portal re-sent a request it already sent: the first decision stands and its events went out.
        log.info("gate.request_already_decided")
        return
    log.info("gate.decided", approved=decision.approved, rule=decision.rule, reason_code=decision.reason_code)
    result: Envelope
    if decision.approved:
        assert facts is not None
        result = ModifyApproved.follow(
            message,
            producer=PRODUCER,
            occurred_at=now,
            payload=ModifyApprovedPayload(
                appointment_id=request.appointment_id,
                requester_id=request.requester_id,
                change=request.change,
                decided_on_version=facts.version,
            ),
        )
    else:
        result = ModifyRejected.follow(
            message,
            producer=PRODUCER,
            occurred_at=now,
            payload=ModifyRejectedPayload(
                request_id=message.correlation_id,
                appointment_id=request.appointment_id,
                action=request.change.action,
                reason_code=decision.reason_code,
                reason=decision.reason_text,
            ),
        )
    await uow.emit(result)


async def update_portal_settings(message: PortalSettingsUpdated, uow: UnitOfWork) -> None:
    applied = await store.save_settings(uow.connection, message.tenant_id, message.payload)
    log.info("gate.settings", applied=applied, settings_version=message.payload.settings_version)


HANDLERS = {
    ModifyRequested: decide_modify_request,
    PortalSettingsUpdated: update_portal_settings,
}
