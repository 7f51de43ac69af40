"""The live feed's events, pure: which view changed, for whom (routing by tenant, customer, job)."""

from contracts.common import AppointmentSnapshot
from contracts.feed_v1 import PortalViewChangedPayload, ViewKind
from workers.portal_sync.projection import RequestOutcome


def appointment_changed(snapshot: AppointmentSnapshot) -> PortalViewChangedPayload:
    return PortalViewChangedPayload(
        view=ViewKind.APPOINTMENT,
        customer_id=snapshot.customer_id,
        job_id=snapshot.job_id,
        appointment_id=snapshot.appointment_id,
        status=snapshot.status.value,
        version=snapshot.version,
    )


def offer_changed(row: dict) -> PortalViewChangedPayload:
    return PortalViewChangedPayload(
        view=ViewKind.OFFER,
        customer_id=row["customer_id"],
        job_id=row["job_id"],
        appointment_id=row["appointment_id"],
        version=row["offer_version"],
    )


def availability_changed(row: dict) -> PortalViewChangedPayload:
    return PortalViewChangedPayload(
        view=ViewKind.AVAILABILITY, business_unit=row["business_unit"], version=row["version"]
    )


def job_changed(row: dict) -> PortalViewChangedPayload:
    return PortalViewChangedPayload(
        view=ViewKind.JOB,
        customer_id=row["customer_id"],
        job_id=row["job_id"],
        status=row["status"],
        version=row["version"],
    )


def request_changed(
    outcome: RequestOutcome, customer_id: str | None, job_id: str | None
) -> PortalViewChangedPayload:
    return PortalViewChangedPayload(
        view=ViewKind.REQUEST,
        customer_id=customer_id,
        job_id=job_id,
        appointment_id=outcome.appointment_id,
        request_id=outcome.request_id,
        status=outcome.status,
    )
