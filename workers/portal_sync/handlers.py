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
from contracts.feed_v1 import PortalViewChanged, PortalViewChangedPayload
from contracts.office_v1 import CapacityUpdated
from contracts.portal_v1 import ModifyOutcome, ModifyOutcomePayload, ModifyRequested
from workers.portal_sync import feed, projection, store
from workers.runtime.database import UnitOfWork

log = structlog.get_logger(__name__)


async def project_event(message: Envelope, uow: UnitOfWork) -> None:
    """Write what the event says into the read store; after each row that changed, tell the live feed."""
    conn = uow.driver
    changed: list[PortalViewChangedPayload] = []

    def wrote(clock) -> bool:
        """A write returns the transaction's clock when it changed a row (None when it did not)."""
        if clock is None:
            return False
        uow.saw_now(clock)
        return True

    snapshot = projection.appointment_snapshot(message)
    if snapshot is not None:
        written = wrote(
            await store.upsert_appointment(conn, message.tenant_id, projection.appointment_row(snapshot))
        )
        log.info("portal.appointment", version=snapshot.version, written=written)
        if written:
            changed.append(feed.appointment_changed(snapshot))
    offer = projection.offer_row(message)
    if offer is not None:
        written = wrote(await store.upsert_offer(conn, message.tenant_id, offer))
        log.info("portal.offer", offer_version=offer["offer_version"], written=written)
        if written:
            changed.append(feed.offer_changed(offer))
    window = projection.available_window_row(message)
    if window is not None:
        written = wrote(await store.upsert_available_window(conn, message.tenant_id, window))
        log.info("portal.available_window", free=window["free"], version=window["version"], written=written)
        if written:
            changed.append(feed.availability_changed(window))
    unit = projection.business_unit_row(message)
    if unit is not None:
        wrote(await store.upsert_business_unit(conn, message.tenant_id, unit))
    job = projection.job_row(message)
    if job is not None and wrote(await store.upsert_job(conn, message.tenant_id, job)):
        changed.append(feed.job_changed(job))
    office = projection.office_outcome_row(message)
    if office is not None:
        written = await store.record_office_outcome(conn, message.tenant_id, office)
        log.info("portal.office_outcome", status=office["status"], written=written)
    outcome = projection.request_outcome(message)
    recorded = None
    if outcome is not None:
        requested_at = message.occurred_at if isinstance(message, ModifyRequested) else None
        recorded = await store.record_request(conn, message.tenant_id, outcome, requested_at)
        log.info(
            "portal.request",
            request_id=outcome.request_id,
            status=outcome.status,
            written=recorded is not None,
        )
        if recorded is not None:
            uow.saw_now(recorded.now)
            changed.append(
                feed.request_changed(outcome, recorded.customer_id or outcome.requester_id, recorded.job_id)
            )
        # Once per request, whichever of the request and its outcome came last (the row says so).
        reply = (
            await store.claim_reply(conn, message.tenant_id, outcome.request_id, recorded.producer)
            if recorded is not None and recorded.reply_due
            else None
        )
        if reply is not None:
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
    audit = projection.audit_entry(message)
    # A request's own line only when this is the first sighting of the request: a re-sent or reused
    # request id writes nothing (the gate dead-letters a reused one).
    if audit is not None and (recorded is not None or not isinstance(message, ModifyRequested)):
        await store.append_audit(conn, message.tenant_id, audit)
    for payload in changed:
        await uow.follow(message, PortalViewChanged, payload)


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
