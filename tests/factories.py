"""Valid wire messages with sensible defaults, one factory per message type, for every test to reuse."""

# Each factory returns a model instance; pass keyword arguments to change what a test cares about.
# Windows default to the future relative to now, so a default request is never "in the past";
# our own messages are built with Envelope.follow, as the workers build them.

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from contracts.common import (
    AppointmentSnapshot,
    AppointmentStatus,
    ArrivalWindow,
    Confirmation,
    ContactRole,
    JobStatus,
    Project,
    ProjectContact,
)
from contracts.envelope import Envelope
from contracts.events_v1 import (
    AppointmentCanceled,
    AppointmentCanceledPayload,
    AppointmentOfferChanged,
    AppointmentOfferChangedPayload,
    AppointmentRescheduled,
    AppointmentRescheduledPayload,
    AppointmentUpdated,
    AppointmentUpdatedPayload,
    CapacityWindowChanged,
    CapacityWindowChangedPayload,
    Initiator,
    JobStatusChanged,
    JobStatusChangedPayload,
    ModifyAwaitingApproval,
    ModifyAwaitingApprovalPayload,
    ModifyFailed,
    ModifyFailedPayload,
    ModifyRejected,
    ModifyRejectedPayload,
    OfferedAction,
    OfferSegment,
    OfficeOutcome,
    ProjectUpdated,
    ProjectUpdatedPayload,
    office_outcome,
)
from contracts.feed_v2 import PortalViewChangedV2, PortalViewChangedV2Payload, ViewChange, ViewKind
from contracts.internal_v1 import ModifyApproved, ModifyApprovedPayload, RefreshOffers, RefreshOffersPayload
from contracts.office_v1 import (
    ActionRules,
    AppointmentRecorded,
    AppointmentRecordedPayload,
    ApprovalDecided,
    ApprovalDecidedPayload,
    CapacityUpdated,
    CapacityUpdatedPayload,
    ConfirmationRule,
    Permission,
    PortalSettingsPayload,
    PortalSettingsUpdated,
    ProjectRecorded,
    ProjectRecordedPayload,
)
from contracts.office_v2 import (
    AppointmentRecordedV2,
    AppointmentRecordedV2Payload,
    PortalSettingsUpdatedV2,
    PortalSettingsV2Payload,
    SettingsLayer,
    SettingsScope,
)
from contracts.portal_v1 import (
    Cancel,
    ModifyChange,
    ModifyOutcome,
    ModifyOutcomePayload,
    ModifyRequested,
    ModifyRequestedPayload,
    Reschedule,
)
from contracts.reasons import FailureCode, PendingCode, RejectionCode, customer_text

TENANT = "acme"
APPOINTMENT_ID = "appt-1"
JOB_ID = "job-1"
CUSTOMER_ID = "cust-1"
REQUEST_ID = "req-1"
BUSINESS_UNIT = "hvac"
JOB_TYPE = "repair"


def now() -> datetime:
    return datetime.now(UTC)


def arrival_window(
    days_ahead: float = 7, *, hours: float = 2, start: datetime | None = None
) -> ArrivalWindow:
    """An arrival window of `hours` starting at `start`, or on the hour `days_ahead` days from now."""
    if start is None:
        start = now().replace(minute=0, second=0, microsecond=0) + timedelta(days=days_ahead)
    return ArrivalWindow(start=start, end=start + timedelta(hours=hours))


def reschedule(new_window: ArrivalWindow | None = None) -> Reschedule:
    """A reschedule change; by default to a window 10 days ahead (not the default appointment window)."""
    return Reschedule(new_window=new_window or arrival_window(10))


def cancel(reason: str | None = None) -> Cancel:
    return Cancel(reason=reason)


def project(project_id: str = "proj-1", contacts: dict[str, ContactRole] | None = None) -> Project:
    """A construction project with its named contacts, e.g. {"lead-1": ContactRole.PROJECT_LEAD}."""
    return Project(
        project_id=project_id,
        contacts=[ProjectContact(contact_id=cid, role=role) for cid, role in (contacts or {}).items()],
    )


def allow_all_rules() -> ActionRules:
    """Rules that let customers reschedule and cancel in either confirmation state."""
    allow = ConfirmationRule(confirmed=Permission.ALLOW, unconfirmed=Permission.ALLOW)
    return ActionRules(reschedule=allow, cancel=allow)


def _envelope(
    tenant: str, correlation_id: str, producer: str, occurred_at: datetime | None, causation_id: UUID | None
) -> dict:
    return {
        "message_id": uuid4(),
        "tenant_id": tenant,
        "correlation_id": correlation_id,
        "causation_id": causation_id,
        "occurred_at": occurred_at or now(),
        "producer": producer,
    }


# --- inputs: portal and office --------------------------------------------------------------------


def modify_requested(
    *,
    tenant: str = TENANT,
    appointment_id: str = APPOINTMENT_ID,
    requester_id: str = CUSTOMER_ID,
    change: ModifyChange | None = None,
    expected_version: int | None = None,
    request_id: str = REQUEST_ID,
    producer: str = "portal-web",
    occurred_at: datetime | None = None,
    reply_to: str | None = None,
) -> ModifyRequested:
    """A customer's request (correlation_id = the portal's request id); a reschedule by default."""
    return ModifyRequested(
        **_envelope(tenant, request_id, producer, occurred_at, None),
        payload=ModifyRequestedPayload(
            appointment_id=appointment_id,
            requester_id=requester_id,
            change=change or reschedule(),
            expected_version=expected_version,
            reply_to=reply_to,
        ),
    )


def appointment_recorded(
    *,
    tenant: str = TENANT,
    appointment_id: str = APPOINTMENT_ID,
    job_id: str = JOB_ID,
    customer_id: str = CUSTOMER_ID,
    business_unit: str = BUSINESS_UNIT,
    job_type: str = JOB_TYPE,
    project: Project | None = None,
    window: ArrivalWindow | None = None,
    status: AppointmentStatus = AppointmentStatus.SCHEDULED,
    confirmation: Confirmation = Confirmation.UNCONFIRMED,
    change_id: str = "office-change-1",
    occurred_at: datetime | None = None,
    zone: str | None = None,
    office_revision: int | None = None,
    based_on_version: int | None = None,
) -> AppointmentRecorded | AppointmentRecordedV2:
    """The office's full state of an appointment; a scheduled, unconfirmed one a week ahead by default.
    With an `office_revision`, a versioned (schema version 2) record built on `based_on_version`."""
    fields = dict(
        appointment_id=appointment_id,
        job_id=job_id,
        customer_id=customer_id,
        business_unit=business_unit,
        job_type=job_type,
        project=project,
        window=window or arrival_window(),
        status=status,
        confirmation=confirmation,
        zone=zone,
    )
    envelope = _envelope(tenant, change_id, "office", occurred_at, None)
    if office_revision is not None:
        return AppointmentRecordedV2(
            **envelope,
            payload=AppointmentRecordedV2Payload(
                **fields, office_revision=office_revision, based_on_version=based_on_version
            ),
        )
    return AppointmentRecorded(**envelope, payload=AppointmentRecordedPayload(**fields))


def office_outcome_event(cause: Envelope | None = None, code: str | None = None) -> OfficeOutcome:
    """modify_handler's answer to an office record (applied by default)."""
    cause = cause or appointment_recorded()
    return office_outcome(cause, now(), APPOINTMENT_ID, code, producer="modify_handler")


def capacity_updated(
    *,
    tenant: str = TENANT,
    business_unit: str = BUSINESS_UNIT,
    zone: str | None = None,
    timezone: str = "UTC",
    windows: list[dict] | None = None,
    capacity_version: int = 1,
    change_id: str = "capacity-1",
) -> CapacityUpdated:
    """Places of arrival windows in local time; by default one 2-hour window with one place, a week
    ahead at 09:00 (the default `arrival_window()`)."""
    default = arrival_window()
    windows = windows or [
        {"date": default.start.date(), "start": default.start.time(), "end": default.end.time(), "places": 1}
    ]
    return CapacityUpdated(
        **_envelope(tenant, change_id, "office", None, None),
        payload=CapacityUpdatedPayload(
            business_unit=business_unit,
            zone=zone,
            timezone=timezone,
            windows=windows,
            capacity_version=capacity_version,
            changed_by="dispatcher-1",
        ),
    )


def portal_settings_updated(
    *,
    tenant: str = TENANT,
    feature_enabled: bool = True,
    rules: ActionRules | None = None,
    settings_version: int = 1,
    changed_by: str = "admin-1",
    occurred_at: datetime | None = None,
) -> PortalSettingsUpdated:
    """Self-service settings; enabled and allowing everything by default (pass rules to restrict)."""
    return PortalSettingsUpdated(
        **_envelope(tenant, f"settings-{settings_version}", "office", occurred_at, None),
        payload=PortalSettingsPayload(
            feature_enabled=feature_enabled,
            rules=rules or allow_all_rules(),
            settings_version=settings_version,
            changed_by=changed_by,
        ),
    )


def settings_layer_updated(
    *,
    tenant: str = TENANT,
    level: str = "business",
    key: str | None = None,
    settings: SettingsLayer | None = None,
    settings_version: int = 1,
    changed_by: str = "admin-1",
) -> PortalSettingsUpdatedV2:
    """One layer of settings (v2); by default a business layer that turns self-service on."""
    return PortalSettingsUpdatedV2(
        **_envelope(tenant, f"settings-{level}-{settings_version}", "office", None, None),
        payload=PortalSettingsV2Payload(
            scope=SettingsScope(level=level, key=key),
            settings=settings or SettingsLayer(feature_enabled=True),
            settings_version=settings_version,
            changed_by=changed_by,
        ),
    )


def approval_decided(
    request_id: str = "req-1", *, tenant: str = TENANT, approved: bool = True, reason: str | None = None
) -> ApprovalDecided:
    """The office's answer to a request that waited for its approval."""
    return ApprovalDecided(
        **_envelope(tenant, f"approval-{request_id}", "office", None, None),
        payload=ApprovalDecidedPayload(
            request_id=request_id, approved=approved, reason=reason, decided_by="csr-1"
        ),
    )


# --- our own messages: each follows from a cause, as the workers build them -----------------------


def modify_awaiting_approval(cause: ModifyRequested | None = None) -> ModifyAwaitingApproval:
    """The gate parks `cause` until the office decides."""
    cause = cause or modify_requested()
    return ModifyAwaitingApproval.follow(
        cause,
        producer="policy_gate",
        occurred_at=now(),
        payload=ModifyAwaitingApprovalPayload(
            request_id=cause.correlation_id,
            appointment_id=cause.payload.appointment_id,
            action=cause.payload.change.action,
            reason_code=PendingCode.AWAITING_OFFICE_APPROVAL,
            reason=customer_text(PendingCode.AWAITING_OFFICE_APPROVAL),
        ),
    )


def modify_approved(
    cause: ModifyRequested | None = None,
    *,
    decided_on_version: int = 1,
    producer: str = "policy_gate",
    offer: AppointmentOfferChangedPayload | None = None,
) -> ModifyApproved:
    """The gate's approval of `cause` (a default request when None), with the offer it carries, if any."""
    cause = cause or modify_requested()
    return ModifyApproved.follow(
        cause,
        producer=producer,
        occurred_at=now(),
        payload=ModifyApprovedPayload(
            appointment_id=cause.payload.appointment_id,
            requester_id=cause.payload.requester_id,
            change=cause.payload.change,
            decided_on_version=decided_on_version,
            offer=offer,
        ),
    )


def refresh_offers(
    cause: Envelope | None = None, *, level: str = "business", key: str | None = None, after: str = "apt-1"
) -> RefreshOffers:
    """The gate's message to itself: the next chunk of a settings change's offers, after `after`."""
    cause = cause or settings_layer_updated()
    return RefreshOffers.follow(
        cause,
        producer="policy_gate",
        occurred_at=now(),
        payload=RefreshOffersPayload(scope=SettingsScope(level=level, key=key), after_appointment_id=after),
    )


def modify_rejected(
    cause: ModifyRequested | None = None, *, code: RejectionCode = RejectionCode.SAME_WINDOW
) -> ModifyRejected:
    """The gate's refusal of `cause` with `code` and its customer text."""
    cause = cause or modify_requested()
    action = cause.payload.change.action
    return ModifyRejected.follow(
        cause,
        producer="policy_gate",
        occurred_at=now(),
        payload=ModifyRejectedPayload(
            request_id=cause.correlation_id,
            appointment_id=cause.payload.appointment_id,
            action=action,
            reason_code=code,
            reason=customer_text(code, action=action),
        ),
    )


def modify_failed(
    cause: ModifyApproved | None = None, *, code: FailureCode = FailureCode.APPOINTMENT_CHANGED
) -> ModifyFailed:
    """The scheduling worker could not apply the approved `cause`."""
    cause = cause or modify_approved()
    action = cause.payload.change.action
    return ModifyFailed.follow(
        cause,
        producer="modify_handler",
        occurred_at=now(),
        payload=ModifyFailedPayload(
            request_id=cause.correlation_id,
            appointment_id=cause.payload.appointment_id,
            action=action,
            reason_code=code,
            reason=customer_text(code, action=action),
        ),
    )


def snapshot(
    *,
    appointment_id: str = APPOINTMENT_ID,
    job_id: str = JOB_ID,
    customer_id: str = CUSTOMER_ID,
    window: ArrivalWindow | None = None,
    status: AppointmentStatus = AppointmentStatus.SCHEDULED,
    confirmation: Confirmation = Confirmation.UNCONFIRMED,
    project_id: str | None = None,
    version: int = 2,
) -> AppointmentSnapshot:
    """An appointment's state as result events carry it."""
    return AppointmentSnapshot(
        appointment_id=appointment_id,
        job_id=job_id,
        customer_id=customer_id,
        business_unit=BUSINESS_UNIT,
        job_type=JOB_TYPE,
        project_id=project_id,
        window=window or arrival_window(),
        status=status,
        confirmation=confirmation,
        version=version,
    )


def appointment_rescheduled(
    cause: ModifyApproved | None = None,
    *,
    version: int = 2,
    previous_window: ArrivalWindow | None = None,
    offer: AppointmentOfferChangedPayload | None = None,
) -> AppointmentRescheduled:
    """The appointment moved to the approved `cause`'s new window (a default reschedule when None)."""
    cause = cause or modify_approved()
    change = cause.payload.change
    assert isinstance(change, Reschedule), "appointment_rescheduled needs an approved reschedule"
    return AppointmentRescheduled.follow(
        cause,
        producer="modify_handler",
        occurred_at=now(),
        payload=AppointmentRescheduledPayload(
            appointment=snapshot(
                appointment_id=cause.payload.appointment_id, window=change.new_window, version=version
            ),
            previous_window=previous_window or arrival_window(),
            initiated_by=Initiator.CUSTOMER,
            request_id=cause.correlation_id,
            offer=offer,
        ),
    )


def appointment_canceled(
    cause: ModifyApproved | None = None,
    *,
    version: int = 2,
    reason: str | None = None,
    offer: AppointmentOfferChangedPayload | None = None,
) -> AppointmentCanceled:
    """The appointment was canceled by the approved `cause` (a default cancel request when None)."""
    cause = cause or modify_approved(modify_requested(change=cancel(reason)))
    return AppointmentCanceled.follow(
        cause,
        producer="modify_handler",
        occurred_at=now(),
        payload=AppointmentCanceledPayload(
            appointment=snapshot(
                appointment_id=cause.payload.appointment_id,
                status=AppointmentStatus.CANCELED,
                version=version,
            ),
            reason=reason,
            initiated_by=Initiator.CUSTOMER,
            request_id=cause.correlation_id,
            offer=offer,
        ),
    )


def appointment_updated(cause: AppointmentRecorded | None = None, *, version: int = 1) -> AppointmentUpdated:
    """The office's recorded state (`cause`) as a result event."""
    cause = cause or appointment_recorded()
    p = cause.payload
    return AppointmentUpdated.follow(
        cause,
        producer="modify_handler",
        occurred_at=now(),
        payload=AppointmentUpdatedPayload(
            appointment=snapshot(
                appointment_id=p.appointment_id,
                job_id=p.job_id,
                customer_id=p.customer_id,
                window=p.window,
                status=p.status,
                confirmation=p.confirmation,
                project_id=p.project.project_id if p.project else None,
                version=version,
            ),
            initiated_by=Initiator.OFFICE,
        ),
    )


def job_status_changed(
    cause: Envelope | None = None,
    *,
    status: JobStatus = JobStatus.CANCELED,
    previous_status: JobStatus | None = JobStatus.SCHEDULED,
    active_appointments: int = 0,
    version: int = 2,
) -> JobStatusChanged:
    """A job's status change caused by `cause` (by default: canceled after its last appointment was)."""
    cause = cause or appointment_canceled()
    return JobStatusChanged.follow(
        cause,
        producer="modify_handler",
        occurred_at=now(),
        payload=JobStatusChangedPayload(
            job_id=JOB_ID,
            customer_id=CUSTOMER_ID,
            status=status,
            previous_status=previous_status,
            active_appointments=active_appointments,
            version=version,
        ),
    )


def appointment_offer_changed(
    cause: Envelope | None = None,
    *,
    offer_version: int = 1,
    appointment_version: int = 1,
    segments: list[OfferSegment] | None = None,
) -> AppointmentOfferChanged:
    """A new offer timeline: by default both actions offered until a day before, then neither."""
    cause = cause or appointment_updated()
    closes = now() + timedelta(days=2)
    notice = customer_text(RejectionCode.NOTICE_WINDOW_PASSED, hours=24)
    segments = segments or [
        OfferSegment(
            valid_until=closes,
            reschedule=OfferedAction(offered=True),
            cancel=OfferedAction(offered=True),
        ),
        OfferSegment(
            valid_from=closes,
            reschedule=OfferedAction(offered=False, reason_code="notice_window_passed", reason=notice),
            cancel=OfferedAction(offered=False, reason_code="notice_window_passed", reason=notice),
        ),
    ]
    return AppointmentOfferChanged.follow(
        cause,
        producer="policy_gate",
        occurred_at=now(),
        payload=AppointmentOfferChangedPayload(
            appointment_id=APPOINTMENT_ID,
            job_id=JOB_ID,
            customer_id=CUSTOMER_ID,
            offer_version=offer_version,
            appointment_version=appointment_version,
            segments=segments,
        ),
    )


def carried_offer(appointment_version: int = 2, *, offer_version: int = 2) -> AppointmentOfferChangedPayload:
    """The offer an approval carries, for the appointment version its change produces."""
    return appointment_offer_changed(
        offer_version=offer_version, appointment_version=appointment_version
    ).payload


def capacity_window_changed(cause: Envelope | None = None, *, free: int = 1, version: int = 1):
    cause = cause or capacity_updated()
    return CapacityWindowChanged.follow(
        cause,
        producer="modify_handler",
        occurred_at=now(),
        payload=CapacityWindowChangedPayload(
            business_unit=BUSINESS_UNIT,
            window=arrival_window(),
            places=1,
            booked=1 - free,
            free=free,
            version=version,
        ),
    )


def portal_view_changed(
    cause: Envelope | None = None, changes: list[ViewChange] | None = None, **fields
) -> PortalViewChangedV2:
    """A live-feed event: by default, the default appointment's view and its offer changed."""
    cause = cause or appointment_updated()
    changes = changes or [
        ViewChange(view=ViewKind.APPOINTMENT, appointment_id=APPOINTMENT_ID, status="scheduled", version=1),
        ViewChange(view=ViewKind.OFFER, appointment_id=APPOINTMENT_ID, version=1),
    ]
    payload = dict(customer_id=CUSTOMER_ID, job_id=JOB_ID, changes=changes)
    return PortalViewChangedV2.follow(
        cause,
        producer="portal_sync",
        occurred_at=now(),
        payload=PortalViewChangedV2Payload(**{**payload, **fields}),
    )


def project_recorded(
    project: Project | None = None, *, tenant: str = TENANT, change_id: str = "project-1"
) -> ProjectRecorded:
    """The office's full state of a project (by default one lead, unlocked, undated)."""
    project = project or Project(
        project_id="prj-1", contacts=[ProjectContact(contact_id="lead-1", role=ContactRole.PROJECT_LEAD)]
    )
    return ProjectRecorded(
        **_envelope(tenant, change_id, "office", None, None), payload=ProjectRecordedPayload(project=project)
    )


def project_updated(cause: ProjectRecorded | None = None) -> ProjectUpdated:
    cause = cause or project_recorded()
    project = cause.payload.project
    return ProjectUpdated.follow(
        cause,
        producer="modify_handler",
        occurred_at=now(),
        payload=ProjectUpdatedPayload(
            project_id=project.project_id,
            portal_locked=project.portal_locked,
            starts_at=project.starts_at,
            ends_at=project.ends_at,
            contacts=len(project.contacts),
        ),
    )


def modify_outcome(
    cause: ModifyRequested | None = None, *, reply_to: str = "portal-replies"
) -> ModifyOutcome:
    cause = cause or modify_requested()
    return ModifyOutcome.follow(
        cause,
        producer="portal_sync",
        occurred_at=now(),
        payload=ModifyOutcomePayload(
            request_id=cause.correlation_id,
            appointment_id=cause.payload.appointment_id,
            action=cause.payload.change.action,
            status="completed",
            reply_to=reply_to,
        ),
    )


def one_of_each() -> list[Envelope]:
    """One valid message of every registered type, in registry order."""
    from contracts.registry import MESSAGE_CLASSES

    built = [
        modify_requested(),
        appointment_recorded(),
        portal_settings_updated(),
        settings_layer_updated(),
        approval_decided(),
        modify_approved(offer=carried_offer()),
        refresh_offers(),
        modify_rejected(),
        modify_awaiting_approval(),
        modify_failed(),
        appointment_rescheduled(offer=carried_offer()),
        appointment_canceled(offer=carried_offer()),
        appointment_updated(),
        job_status_changed(),
        appointment_offer_changed(),
        capacity_updated(),
        capacity_window_changed(),
        portal_view_changed(),
        project_recorded(),
        project_updated(),
        modify_outcome(),
        appointment_recorded(office_revision=1, based_on_version=None),
        office_outcome_event(),
    ]
    by_class = {type(message): message for message in built}
    return [by_class[cls] for cls in MESSAGE_CLASSES]
