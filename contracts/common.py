"""Value objects shared by several message families: arrival windows, statuses, appointment snapshots."""

from datetime import timedelta
from enum import StrEnum

from pydantic import Field, model_validator

from contracts.envelope import Strict
from contracts.types import EntityId, Slug, Timestamp, Version


class AppointmentStatus(StrEnum):
    SCHEDULED = "scheduled"
    DISPATCHED = "dispatched"
    WORKING = "working"
    DONE = "done"
    CANCELED = "canceled"


class Confirmation(StrEnum):
    CONFIRMED = "confirmed"
    UNCONFIRMED = "unconfirmed"


class JobStatus(StrEnum):
    SCHEDULED = "scheduled"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELED = "canceled"


class ModifyAction(StrEnum):
    RESCHEDULE = "reschedule"
    CANCEL = "cancel"


class ContactRole(StrEnum):
    PROJECT_LEAD = "project_lead"
    SUBCONTRACTOR = "subcontractor"


MAX_WINDOW = timedelta(hours=24)


class ArrivalWindow(Strict):
    """The span in which the technician arrives. Both ends aware; end after start; at most a day."""

    start: Timestamp
    end: Timestamp

    @model_validator(mode="after")
    def _ordered(self) -> "ArrivalWindow":
        if self.end <= self.start:
            raise ValueError("arrival window must end after it starts")
        if self.end - self.start > MAX_WINDOW:
            raise ValueError("arrival window must not be longer than 24 hours")
        return self


class ProjectContact(Strict):
    contact_id: EntityId
    role: ContactRole


class Project(Strict):
    """A construction project: its named contacts may act on its appointments besides the customer."""

    project_id: EntityId
    contacts: list[ProjectContact] = Field(default_factory=list, max_length=50)
    portal_locked: bool = Field(default=False, description="The office froze portal changes for the project.")
    starts_at: Timestamp | None = Field(default=None, description="New windows must not start before this.")
    ends_at: Timestamp | None = Field(default=None, description="New windows must not end after this.")

    @model_validator(mode="after")
    def _dates_ordered(self) -> "Project":
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError("project must end after it starts")
        return self


class AppointmentSnapshot(Strict):
    """The state of an appointment after a change, as result events carry it (version orders them)."""

    appointment_id: EntityId
    job_id: EntityId
    customer_id: EntityId
    business_unit: Slug
    job_type: Slug
    project_id: EntityId | None = None
    window: ArrivalWindow
    status: AppointmentStatus
    confirmation: Confirmation
    version: Version
