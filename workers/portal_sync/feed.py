"""The live feed's events, pure: which views one change touched, for whom (routing by tenant, customer, job).

One handled message gives one `portal.view_changed` (v2) per routing key, listing every view it changed:
in practice one event (a message's views share its appointment's customer and job; free times go alone).
"""

from dataclasses import dataclass

from contracts.common import AppointmentSnapshot
from contracts.feed_v2 import PortalViewChangedV2Payload, ViewChange, ViewKind
from workers.portal_sync.projection import RequestOutcome


@dataclass(frozen=True)
class Changed:
    """One view that changed, and the customer and job it belongs to (the event's routing)."""

    customer_id: str | None
    job_id: str | None
    change: ViewChange


def appointment_changed(snapshot: AppointmentSnapshot) -> Changed:
    return Changed(
        snapshot.customer_id,
        snapshot.job_id,
        ViewChange(
            view=ViewKind.APPOINTMENT,
            appointment_id=snapshot.appointment_id,
            status=snapshot.status.value,
            version=snapshot.version,
        ),
    )


def offer_changed(row: dict) -> Changed:
    return Changed(
        row["customer_id"],
        row["job_id"],
        ViewChange(view=ViewKind.OFFER, appointment_id=row["appointment_id"], version=row["offer_version"]),
    )


def availability_changed(row: dict) -> Changed:
    return Changed(
        None,
        None,
        ViewChange(view=ViewKind.AVAILABILITY, business_unit=row["business_unit"], version=row["version"]),
    )


def job_changed(row: dict) -> Changed:
    return Changed(
        row["customer_id"],
        row["job_id"],
        ViewChange(view=ViewKind.JOB, status=row["status"], version=row["version"]),
    )


def request_changed(
    outcome: RequestOutcome, status: str, customer_id: str | None, job_id: str | None
) -> Changed:
    """`status`: the row's after the change (a request seen after its outcome fills in its details and
    stays final)."""
    return Changed(
        customer_id,
        job_id,
        ViewChange(
            view=ViewKind.REQUEST,
            appointment_id=outcome.appointment_id,
            request_id=outcome.request_id,
            status=status,
        ),
    )


def events(changed: list[Changed]) -> list[PortalViewChangedV2Payload]:
    """One event per routing key (customer, job), in the order first seen, listing its changes in order."""
    by_route: dict[tuple[str | None, str | None], list[ViewChange]] = {}
    for item in changed:
        by_route.setdefault((item.customer_id, item.job_id), []).append(item.change)
    return [
        PortalViewChangedV2Payload(customer_id=customer_id, job_id=job_id, changes=changes)
        for (customer_id, job_id), changes in by_route.items()
    ]
