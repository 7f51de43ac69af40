"""Every message class by (type, schema version): the single list decoders and generators read."""

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
from contracts.internal_v1 import ModifyApproved, RefreshOffers
from contracts.office_v1 import (
    AppointmentRecorded,
    ApprovalDecided,
    CapacityUpdated,
    PortalSettingsUpdated,
    ProjectRecorded,
)
from contracts.office_v2 import AppointmentRecordedV2, PortalSettingsUpdatedV2
from contracts.portal_v1 import ModifyRequested

MESSAGE_CLASSES: tuple[type[Envelope], ...] = (
    ModifyRequested,
    AppointmentRecorded,
    AppointmentRecordedV2,
    PortalSettingsUpdated,
    PortalSettingsUpdatedV2,
    ApprovalDecided,
    ModifyApproved,
    RefreshOffers,
    ModifyRejected,
    ModifyAwaitingApproval,
    ModifyFailed,
    AppointmentRescheduled,
    AppointmentCanceled,
    AppointmentUpdated,
    JobStatusChanged,
    AppointmentOfferChanged,
    CapacityUpdated,
    CapacityWindowChanged,
    PortalViewChangedV2,
    ProjectRecorded,
    ProjectUpdated,
    OfficeOutcome,
)


def _key(cls: type[Envelope]) -> tuple[str, int]:
    return cls.model_fields["type"].default, cls.model_fields["schema_version"].default


MESSAGE_TYPES: dict[tuple[str, int], type[Envelope]] = {_key(cls): cls for cls in MESSAGE_CLASSES}
KNOWN_TYPES: frozenset[str] = frozenset(t for t, _ in MESSAGE_TYPES)


def message_class(type_: str, schema_version: int) -> type[Envelope] | None:
    return MESSAGE_TYPES.get((type_, schema_version))


def type_name(cls: type[Envelope]) -> str:
    return _key(cls)[0]
