"""The industry stories as messages plus what the portal must show afterwards (shared by demo and e2e).

Ids carry a run id so the demo can run again and again against the same database.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from uuid import uuid4

from contracts.common import (
    AppointmentStatus,
    ArrivalWindow,
    Confirmation,
    ContactRole,
    Project,
    ProjectContact,
)
from contracts.envelope import Envelope
from contracts.office_v1 import (
    ActionRules,
    AppointmentRecorded,
    AppointmentRecordedPayload,
    ConfirmationRule,
    Permission,
    PortalSettingsPayload,
    PortalSettingsUpdated,
)
from contracts.office_v2 import (
    CancelSettings,
    PortalSettingsUpdatedV2,
    PortalSettingsV2Payload,
    RescheduleSettings,
    ScopeLevel,
    SettingsLayer,
    SettingsScope,
)
from contracts.office_v2 import Permission as PermissionV2
from contracts.portal_v1 import Cancel, ModifyRequested, ModifyRequestedPayload, Reschedule

ALLOW, DENY = Permission.ALLOW, Permission.DENY


@dataclass(frozen=True)
class Expectation:
    """What the read store must show for one scenario's request."""

    request_status: str
    reason_code: str | None = None
    appointment_status: str | None = None
    window: ArrivalWindow | None = None  # None: the window must be unchanged
    job_status: str | None = None
    unchanged_appointments: tuple[str, ...] = ()  # others that must keep their original version
    office_approves: bool = False  # the request waits for the office, which then approves it


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    tenant_id: str
    request: ModifyRequested
    expect: Expectation


@dataclass
class World:
    """Everything the demo publishes: office set-up first, then the portal requests."""

    run_id: str
    settings: list[PortalSettingsUpdated | PortalSettingsUpdatedV2] = field(default_factory=list)
    bookings: list[AppointmentRecorded] = field(default_factory=list)
    scenarios: list[Scenario] = field(default_factory=list)

    @property
    def setup_messages(self) -> list[Envelope]:
        return [*self.settings, *self.bookings]


def _meta(tenant: str, correlation_id: str, producer: str, now: datetime) -> dict:
    return dict(
        message_id=uuid4(),
        tenant_id=tenant,
        correlation_id=correlation_id,
        occurred_at=now,
        producer=producer,
    )


def window_on(day: datetime, start_hour: int, hours: int = 2) -> ArrivalWindow:
    start = datetime.combine(day.date(), time(start_hour), tzinfo=UTC)
    return ArrivalWindow(start=start, end=start + timedelta(hours=hours))


def build_world(run_id: str, now: datetime | None = None, tenant_suffix: str = "") -> World:
    now = now or datetime.now(UTC)
    day = now + timedelta(days=3)
    later = now + timedelta(days=5)
    world = World(run_id)

    def tenant(name: str) -> str:
        return f"{name}{tenant_suffix}"

    def rules(reschedule: tuple, cancel: tuple) -> ActionRules:
        return ActionRules(
            reschedule=ConfirmationRule(confirmed=reschedule[0], unconfirmed=reschedule[1]),
            cancel=ConfirmationRule(confirmed=cancel[0], unconfirmed=cancel[1]),
        )

    settings_version = int(now.timestamp() * 1000)
    for name, action_rules in (
        ("sunny-plumbing", rules((ALLOW, ALLOW), (ALLOW, ALLOW))),
        ("metro-hvac", rules((DENY, ALLOW), (DENY, ALLOW))),  # confirmed visits are locked
        ("oak-homes", rules((ALLOW, ALLOW), (ALLOW, ALLOW))),
        ("skyline-build", rules((ALLOW, ALLOW), (DENY, DENY))),
    ):
        world.settings.append(
            PortalSettingsUpdated(
                **_meta(tenant(name), f"settings-{run_id}", "office", now),
                payload=PortalSettingsPayload(
                    feature_enabled=True,
                    rules=action_rules,
                    settings_version=settings_version,
                    changed_by="admin-1",
                ),
            )
        )

    # Commercial service: the business keeps a list of cancel reasons (the portal offers them as a choice;
    # the gate refuses a reason off the list), set on its commercial HVAC unit (settings schema v2).
    world.settings.append(
        PortalSettingsUpdatedV2(
            **_meta(tenant("metro-hvac"), f"settings-{run_id}-cancel-reasons", "office", now),
            payload=PortalSettingsV2Payload(
                scope=SettingsScope(level=ScopeLevel.BUSINESS_UNIT, key="commercial-hvac"),
                settings=SettingsLayer(
                    cancel=CancelSettings(
                        reason_required=True,
                        allowed_reasons=[
                            "Tenant moved out",
                            "Work no longer needed",
                            "Chose another company",
                        ],
                    )
                ),
                settings_version=settings_version,
                changed_by="admin-1",
            ),
        )
    )

    def book(
        tenant_name: str,
        key: str,
        *,
        customer: str,
        job: str,
        business_unit: str,
        job_type: str,
        confirmation: Confirmation,
        window: ArrivalWindow,
        project: Project | None = None,
    ) -> str:
        appointment_id = f"apt-{run_id}-{key}"
        world.bookings.append(
            AppointmentRecorded(
                **_meta(tenant(tenant_name), f"book-{run_id}-{key}", "office", now),
                payload=AppointmentRecordedPayload(
                    appointment_id=appointment_id,
                    job_id=f"job-{run_id}-{job}",
                    customer_id=customer,
                    business_unit=business_unit,
                    job_type=job_type,
                    project=project,
                    window=window,
                    status=AppointmentStatus.SCHEDULED,
                    confirmation=confirmation,
                ),
            )
        )
        return appointment_id

    def request(tenant_name: str, key: str, appointment_id: str, requester: str, change) -> ModifyRequested:
        return ModifyRequested(
            **_meta(tenant(tenant_name), f"req-{run_id}-{key}", "portal-web", now),
            payload=ModifyRequestedPayload(
                appointment_id=appointment_id, requester_id=requester, change=change
            ),
        )

    def add(key: str, title: str, tenant_name: str, req: ModifyRequested, expect: Expectation) -> None:
        world.scenarios.append(Scenario(key, title, tenant(tenant_name), req, expect))

    # Residential service: a homeowner moves an unconfirmed water-heater service.
    heater = book(
        "sunny-plumbing",
        "heater",
        customer="home-ana",
        job="heater",
        business_unit="plumbing",
        job_type="water-heater-service",
        confirmation=Confirmation.UNCONFIRMED,
        window=window_on(day, 8),
    )
    heater_new = window_on(later, 13)
    add(
        "residential-reschedule",
        "Homeowner moves an unconfirmed water-heater service",
        "sunny-plumbing",
        request("sunny-plumbing", "heater-move", heater, "home-ana", Reschedule(new_window=heater_new)),
        Expectation("completed", appointment_status="scheduled", window=heater_new),
    )

    # Residential service: a homeowner cancels; the appointment goes and the job is canceled.
    drain = book(
        "sunny-plumbing",
        "drain",
        customer="home-ben",
        job="drain",
        business_unit="plumbing",
        job_type="drain-cleaning",
        confirmation=Confirmation.CONFIRMED,
        window=window_on(day, 10),
    )
    add(
        "residential-cancel",
        "Homeowner cancels a drain cleaning",
        "sunny-plumbing",
        request("sunny-plumbing", "drain-cancel", drain, "home-ben", Cancel(reason="Fixed it myself")),
        Expectation("completed", appointment_status="canceled", job_status="canceled"),
    )

    # Commercial service: a property manager cancels an unconfirmed rooftop-unit maintenance visit ...
    rtu_1 = book(
        "metro-hvac",
        "rtu-1",
        customer="pm-carla",
        job="rtu-1",
        business_unit="commercial-hvac",
        job_type="rtu-maintenance",
        confirmation=Confirmation.UNCONFIRMED,
        window=window_on(day, 7),
    )
    add(
        "commercial-cancel-unconfirmed",
        "Property manager cancels an unconfirmed rooftop-unit visit",
        "metro-hvac",
        request("metro-hvac", "rtu-1-cancel", rtu_1, "pm-carla", Cancel(reason="Tenant moved out")),
        Expectation("completed", appointment_status="canceled", job_status="canceled"),
    )
    # ... but confirmed visits are locked, so their reschedule of one is refused and nothing changes.
    rtu_2 = book(
        "metro-hvac",
        "rtu-2",
        customer="pm-carla",
        job="rtu-2",
        business_unit="commercial-hvac",
        job_type="rtu-maintenance",
        confirmation=Confirmation.CONFIRMED,
        window=window_on(day, 12),
    )
    add(
        "commercial-reschedule-confirmed",
        "Property manager tries to move a confirmed visit",
        "metro-hvac",
        request("metro-hvac", "rtu-2-move", rtu_2, "pm-carla", Reschedule(new_window=window_on(later, 9))),
        Expectation("rejected", reason_code="confirmed_change_blocked", appointment_status="scheduled"),
    )

    # Residential construction: the project lead moves an HVAC install time.
    oak_project = Project(
        project_id=f"prj-{run_id}-oak",
        contacts=[ProjectContact(contact_id="lead-dana", role=ContactRole.PROJECT_LEAD)],
    )
    install = book(
        "oak-homes",
        "hvac-install",
        customer="home-eli",
        job="hvac-install",
        business_unit="construction",
        job_type="hvac-install",
        confirmation=Confirmation.CONFIRMED,
        window=window_on(day, 9, 4),
        project=oak_project,
    )
    install_new = window_on(later, 8, 4)
    add(
        "residential-construction",
        "Project lead moves an HVAC install",
        "oak-homes",
        request("oak-homes", "install-move", install, "lead-dana", Reschedule(new_window=install_new)),
        Expectation("completed", appointment_status="scheduled", window=install_new),
    )

    # Commercial construction: a subcontractor with several jobs moves one install date; only it changes.
    sky_project = Project(
        project_id=f"prj-{run_id}-tower",
        contacts=[
            ProjectContact(contact_id="lead-fay", role=ContactRole.PROJECT_LEAD),
            ProjectContact(contact_id="sub-gus", role=ContactRole.SUBCONTRACTOR),
        ],
    )
    floors = [
        book(
            "skyline-build",
            f"floor-{n}",
            customer="dev-corp",
            job=f"floor-{n}",
            business_unit="commercial-build",
            job_type="ductwork-install",
            confirmation=Confirmation.CONFIRMED,
            window=window_on(day, 6 + 2 * n),
            project=sky_project,
        )
        for n in (1, 2, 3)
    ]
    # The same developer's annex, another project with its own lead: neither project's contacts may act
    # on the other's installs (the portal's isolation between projects; no request of its own).
    book(
        "skyline-build",
        "annex-1",
        customer="dev-corp",
        job="annex-1",
        business_unit="commercial-build",
        job_type="ductwork-install",
        confirmation=Confirmation.CONFIRMED,
        window=window_on(day + timedelta(days=1), 8),
        project=Project(
            project_id=f"prj-{run_id}-annex",
            contacts=[ProjectContact(contact_id="lead-hal", role=ContactRole.PROJECT_LEAD)],
        ),
    )
    floor_new = window_on(later + timedelta(days=1), 7)
    add(
        "commercial-construction",
        "Subcontractor moves one of several install dates",
        "skyline-build",
        request("skyline-build", "floor-2-move", floors[1], "sub-gus", Reschedule(new_window=floor_new)),
        Expectation(
            "completed",
            appointment_status="scheduled",
            window=floor_new,
            unchanged_appointments=(floors[0], floors[2]),
        ),
    )

    # Residential construction: the office froze portal changes on another of the homeowner's projects.
    garage_project = Project(
        project_id=f"prj-{run_id}-garage",
        contacts=[ProjectContact(contact_id="lead-dana", role=ContactRole.PROJECT_LEAD)],
        portal_locked=True,
    )
    slab = book(
        "oak-homes",
        "garage-slab",
        customer="home-eli",
        job="garage-slab",
        business_unit="construction",
        job_type="concrete-pour",
        confirmation=Confirmation.UNCONFIRMED,
        window=window_on(day, 7, 4),
        project=garage_project,
    )
    add(
        "project-locked",
        "Project lead tries to cancel on a project the office locked",
        "oak-homes",
        request("oak-homes", "slab-cancel", slab, "lead-dana", Cancel(reason="Weather")),
        Expectation("rejected", reason_code="project_locked", appointment_status="scheduled"),
    )

    # Commercial construction: electrical rough-ins need the office's approval (a job-type override,
    # settings schema v2); the subcontractor's move waits, the office grants it, then it is applied.
    world.settings.append(
        PortalSettingsUpdatedV2(
            **_meta(tenant("skyline-build"), f"settings-{run_id}-electrical", "office", now),
            payload=PortalSettingsV2Payload(
                scope=SettingsScope(level=ScopeLevel.JOB_TYPE, key="electrical-rough-in"),
                settings=SettingsLayer(
                    reschedule=RescheduleSettings(
                        confirmed=PermissionV2.REQUIRE_APPROVAL, unconfirmed=PermissionV2.REQUIRE_APPROVAL
                    )
                ),
                settings_version=settings_version,
                changed_by="admin-1",
            ),
        )
    )
    panel = book(
        "skyline-build",
        "panel",
        customer="dev-corp",
        job="panel",
        business_unit="commercial-build",
        job_type="electrical-rough-in",
        confirmation=Confirmation.CONFIRMED,
        window=window_on(day, 13),
        project=sky_project,
    )
    panel_new = window_on(later + timedelta(days=2), 10)
    add(
        "office-approval",
        "Subcontractor's move waits for the office, which approves it",
        "skyline-build",
        request("skyline-build", "panel-move", panel, "sub-gus", Reschedule(new_window=panel_new)),
        Expectation("completed", appointment_status="scheduled", window=panel_new, office_approves=True),
    )

    # Someone else's appointment: refused as "not found", nothing changes.
    faucet = book(
        "sunny-plumbing",
        "faucet",
        customer="home-ana",
        job="faucet",
        business_unit="plumbing",
        job_type="faucet-repair",
        confirmation=Confirmation.UNCONFIRMED,
        window=window_on(day, 15),
    )
    add(
        "someone-elses-appointment",
        "A customer tries to cancel another customer's appointment",
        "sunny-plumbing",
        request("sunny-plumbing", "stranger-cancel", faucet, "home-zed", Cancel(reason="not mine")),
        Expectation("rejected", reason_code="appointment_not_found", appointment_status="scheduled"),
    )
    return world
