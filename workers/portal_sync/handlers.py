"""portal_sync handler: one entry for every event it projects."""

import structlog

from contracts.envelope import Envelope
from contracts.events_v1 import (
    AppointmentCanceled,
    AppointmentOfferChanged,
    AppointmentRescheduled,
    AppointmentUpdated,
    CapacityWindowChanged,
    JobStatusChanged,
    ModifyAwaitingApproval,
    ModifyFailed,
    ModifyRejected,
    OfficeOutcome,
    ProjectUpdated,
)
from contracts.feed_v2 import PortalViewChangedV2
from contracts.office_v1 import CapacityUpdated
from contracts.portal_v1 import ModifyOutcome, ModifyOutcomePayload, ModifyRequested
from workers.portal_sync import feed, projection, store
from workers.runtime.database import UnitOfWork

log = structlog.get_logger(__name__)


def writes_of(message: Envelope) -> store.Writes:
    """Everything the event says about the read store (pure)."""
    snapshot = projection.appointment_snapshot(message)
    is_request = isinstance(message, ModifyRequested)
    return store.Writes(
        appointment=None if snapshot is None else projection.appointment_row(snapshot),
        offer=projection.offer_row(message),
        available_window=projection.available_window_row(message),
        business_unit=projection.business_unit_row(message),
        job=projection.job_row(message),
        office_outcome=projection.office_outcome_row(message),
        request=projection.request_outcome(message),
        requested_at=message.occurred_at if is_request else None,
        audit=projection.audit_entry(message),
        # A request's own line only with the first sighting of the request: a re-sent or reused request
        # id writes nothing (the gate dead-letters a reused one).
        audit_if_recorded=is_request,
    )


def changes_of(message: Envelope, writes: store.Writes, written: store.Written) -> list[feed.Changed]:
    """The views the statement changed, for the live feed (pure)."""
    changed: list[feed.Changed] = []
    snapshot = projection.appointment_snapshot(message)
    if snapshot is not None and "appointment" in written:
        changed.append(feed.appointment_changed(snapshot))
    if writes.offer is not None and "offer" in written:
        changed.append(feed.offer_changed(writes.offer))
    if writes.available_window is not None and "available_window" in written:
        changed.append(feed.availability_changed(writes.available_window))
    if writes.job is not None and "job" in written:
        changed.append(feed.job_changed(writes.job))
    outcome, recorded = writes.request, written.request
    if outcome is not None and recorded is not None:
        # Routed with the event's own appointment when it carries one (the read store's row may be the
        # one this statement just wrote), else as the read store knew the appointment.
        customer_id = snapshot.customer_id if snapshot else recorded.customer_id or outcome.requester_id
        job_id = snapshot.job_id if snapshot else recorded.job_id
        changed.append(feed.request_changed(outcome, recorded.status, customer_id, job_id))
    return changed


_WRITTEN = "portal_sync.written"  # uow.memo: message id -> what the batch's statement wrote for it


async def _written(message: Envelope, writes: store.Writes, uow: UnitOfWork) -> store.Written:
    """What the read store took of `message`. In a batch, the first call for a tenant writes for every
    message of that tenant in the transaction at once (store.write_many: one statement per round), and
    the others find theirs. Only that tenant's: the transaction is scoped to it now (row-level security;
    the runtime groups a batch's messages by tenant and scopes each handler to its message's)."""
    done: dict = uow.memo.setdefault(_WRITTEN, {})
    if message.message_id in done:
        return done.pop(message.message_id)
    batch = [
        m
        for m in uow.batch
        if m.tenant_id == message.tenant_id and m.message_id not in done and type(m) in HANDLERS
    ]
    if len(batch) > 1 and any(m.message_id == message.message_id for m in batch):
        results = await store.of(uow).write_many(
            message.tenant_id, [writes if m is message else writes_of(m) for m in batch]
        )
        done.update({m.message_id: w for m, w in zip(batch, results, strict=True)})
        return done.pop(message.message_id)
    return await store.of(uow).write(message.tenant_id, writes)


async def project_event(message: Envelope, uow: UnitOfWork) -> None:
    """Write what the event says into the read store (one statement, or one for the whole batch); then
    the reply (once per request) and one live-feed event listing every view that changed."""
    writes = writes_of(message)
    written = await _written(message, writes, uow)
    if written.now is not None:
        uow.saw_now(written.now)
    recorded = written.request
    log.info(
        "portal.projected",
        written=sorted(written.rows | ({"request"} if recorded else set())),
        request_id=None if writes.request is None else writes.request.request_id,
    )
    if recorded is not None and recorded.reply is not None:
        reply = recorded.reply
        await uow.follow(
            message,
            ModifyOutcome,
            ModifyOutcomePayload(
                request_id=reply["request_id"],
                appointment_id=reply["appointment_id"],
                action=reply["action"],
                status=reply["status"],
                reason_code=reply["reason_code"],
                reason=reply["reason_text"],
                reply_to=reply["reply_to"],
            ),
            correlation_id=reply["request_id"],
            request_producer=recorded.producer or None,
        )
    for payload in feed.events(changes_of(message, writes, written)):
        await uow.follow(message, PortalViewChangedV2, payload)


HANDLERS = {
    cls: project_event
    for cls in (
        ModifyRequested,
        ModifyRejected,
        ModifyAwaitingApproval,
        ModifyFailed,
        AppointmentRescheduled,
        AppointmentCanceled,
        AppointmentUpdated,
        JobStatusChanged,
        AppointmentOfferChanged,
        CapacityWindowChanged,
        OfficeOutcome,
        CapacityUpdated,  # only the business unit's time zone; the windows arrive as events
        ProjectUpdated,  # nothing of its own in the read store; the offers it changes arrive as events
    )
}
