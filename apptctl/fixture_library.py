"""The fixture library (tests/fixtures) and generated load sets, built from the contract models.

They stay valid as the contracts evolve (`apptctl fixtures generate library|load`).

Everything is deterministic for a given anchor and seed: message ids are uuid5s of where the message sits,
so regenerating the library changes a file only when its content really changed.
"""

import base64
import gzip
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid5

import aio_pika

from apptctl.fixtures import FORMAT_VERSION, dump, fixture_of, iso
from apptctl.scenarios import build_world
from contracts.common import (
    AppointmentStatus,
    ArrivalWindow,
    Confirmation,
    ContactRole,
    Project,
    ProjectContact,
)
from contracts.decoding import encode
from contracts.envelope import Envelope
from contracts.office_v1 import (
    AppointmentRecorded,
    AppointmentRecordedPayload,
    ApprovalDecided,
    ApprovalDecidedPayload,
    PortalSettingsPayload,
    PortalSettingsUpdated,
)
from contracts.office_v2 import (
    CancelSettings,
    Permission,
    PortalSettingsUpdatedV2,
    PortalSettingsV2Payload,
    RateLimitSettings,
    RescheduleSettings,
    ScopeLevel,
    SettingsLayer,
    SettingsScope,
)
from contracts.portal_v1 import Cancel, ModifyRequested, ModifyRequestedPayload, Reschedule
from contracts.reasons import DeadLetterReason, RejectionCode
from workers.runtime.broker import to_amqp

# The 'now' the library's times are written for (a Monday morning); replay shifts them to the real now.
LIBRARY_ANCHOR = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
LIBRARY_SEED = "lib"
LIBRARY_LOAD_COUNT = 10
ID_NAMESPACE = UUID("0f6f2d4c-8a1e-4f7b-9c55-3d2b1a0e7c61")

Files = dict[str, str]  # path relative to the output folder -> file text


def _with_ids(messages: list[Envelope], where: str) -> list[Envelope]:
    """Stable message ids: the same fixture file and position always give the same id."""
    return [
        m.model_copy(update={"message_id": uuid5(ID_NAMESPACE, f"{where}#{i}")})
        for i, m in enumerate(messages, start=1)
    ]


def _file(where: str, messages: list[Envelope], anchor: datetime, describe: Callable, expect=None) -> str:
    fixtures = [
        fixture_of(m, anchor=anchor, description=describe(m), expect=expect(m) if expect else None)
        for m in _with_ids(messages, where)
    ]
    return dump(fixtures)


def _describe_setup(message: Envelope) -> str:
    if isinstance(message, AppointmentRecorded):
        p = message.payload
        project = f", project {p.project.project_id}" if p.project else ""
        return (
            f"office records {p.appointment_id} ({p.job_type}) for {p.customer_id}: "
            f"{p.status.value}, {p.confirmation.value}{project}"
        )
    if isinstance(message, PortalSettingsUpdatedV2):
        scope = message.payload.scope
        return f"self-service settings, {scope.level.value} layer" + (f" {scope.key}" if scope.key else "")
    if isinstance(message, PortalSettingsUpdated):
        return "self-service settings (schema v1: the business layer)"
    if isinstance(message, ApprovalDecided):
        verdict = "approves" if message.payload.approved else "declines"
        return f"the office {verdict} request {message.payload.request_id}"
    return message.type


# --- the industry stories (the demo's scenarios, one folder per business) ---------------------------

STORIES = (
    ("01-residential-plumbing", "sunny-plumbing"),
    ("02-commercial-hvac", "metro-hvac"),
    ("03-residential-construction", "oak-homes"),
    ("04-commercial-construction-electrical", "skyline-build"),
)


def stories(anchor: datetime = LIBRARY_ANCHOR) -> Files:
    world = build_world(LIBRARY_SEED, anchor)
    files: Files = {}
    for folder, tenant in STORIES:
        base = f"stories/{folder}"
        scenarios = [s for s in world.scenarios if s.tenant_id == tenant]
        titles = {s.request.correlation_id: s.title for s in scenarios}
        expects = {s.request.correlation_id: s.expect for s in scenarios}

        def expect(message: Envelope, expects=expects) -> dict:
            e = expects[message.correlation_id]
            return {
                "request_status": e.request_status,
                **({"reason_code": e.reason_code} if e.reason_code else {}),
            }

        settings = [m for m in world.settings if m.tenant_id == tenant]
        bookings = [m for m in world.bookings if m.tenant_id == tenant]
        files[f"{base}/010-settings.json"] = _file(f"{base}/010", settings, anchor, _describe_setup)
        files[f"{base}/020-bookings.json"] = _file(f"{base}/020", bookings, anchor, _describe_setup)
        files[f"{base}/030-requests.json"] = _file(
            f"{base}/030",
            [s.request for s in scenarios],
            anchor,
            lambda m, titles=titles: titles[m.correlation_id],
            expect,
        )
        approvals = [
            _office_decision(s.request, anchor, approved=True) for s in scenarios if s.expect.office_approves
        ]
        if approvals:
            files[f"{base}/040-office-approval.json"] = _file(
                f"{base}/040", approvals, anchor, _describe_setup
            )
    return files


def _office_decision(
    request: ModifyRequested, anchor: datetime, *, approved: bool, reason=None
) -> ApprovalDecided:
    return ApprovalDecided(
        message_id=uuid5(ID_NAMESPACE, request.correlation_id),
        tenant_id=request.tenant_id,
        correlation_id=f"approval-{request.correlation_id}",
        occurred_at=anchor + timedelta(minutes=5),
        producer="office",
        payload=ApprovalDecidedPayload(
            request_id=request.correlation_id, approved=approved, reason=reason, decided_by="csr-office"
        ),
    )


# --- one fixture set per rejection code a portal request can reach ----------------------------------

ALLOW = Permission.ALLOW


def _window(anchor: datetime, days: float, hour: int = 9, hours: int = 2) -> ArrivalWindow:
    day = anchor + timedelta(days=days)
    start = datetime.combine(day.date(), time(hour), tzinfo=UTC)
    return ArrivalWindow(start=start, end=start + timedelta(hours=hours))


def _meta(tenant: str, correlation_id: str, producer: str, anchor: datetime) -> dict[str, Any]:
    return dict(
        message_id=uuid5(ID_NAMESPACE, f"{tenant}/{correlation_id}"),
        tenant_id=tenant,
        correlation_id=correlation_id,
        occurred_at=anchor,
        producer=producer,
    )


def settings_layer(
    tenant: str,
    anchor: datetime,
    *,
    feature_enabled: bool = True,
    reschedule: dict | None = None,
    cancel: dict | None = None,
    version: int = 1,
    rate_limits: dict | None = None,
) -> PortalSettingsUpdatedV2:
    """A business layer that turns self-service on and allows both actions, with overrides."""
    return PortalSettingsUpdatedV2(
        **_meta(tenant, f"settings-{version}", "office", anchor),
        payload=PortalSettingsV2Payload(
            scope=SettingsScope(level=ScopeLevel.BUSINESS),
            settings=SettingsLayer(
                feature_enabled=feature_enabled,
                reschedule=RescheduleSettings(
                    **{"confirmed": ALLOW, "unconfirmed": ALLOW, **(reschedule or {})}
                ),
                cancel=CancelSettings(**{"confirmed": ALLOW, "unconfirmed": ALLOW, **(cancel or {})}),
                rate_limits=RateLimitSettings(**rate_limits) if rate_limits else None,
            ),
            settings_version=version,
            changed_by="admin-1",
        ),
    )


def booking(
    tenant: str,
    anchor: datetime,
    *,
    appointment_id: str = "apt-1",
    customer_id: str = "cust-1",
    window: ArrivalWindow | None = None,
    status: AppointmentStatus = AppointmentStatus.SCHEDULED,
    confirmation: Confirmation = Confirmation.UNCONFIRMED,
    project: Project | None = None,
    business_unit: str = "service",
    job_type: str = "repair",
) -> AppointmentRecorded:
    return AppointmentRecorded(
        **_meta(tenant, f"book-{appointment_id}", "office", anchor),
        payload=AppointmentRecordedPayload(
            appointment_id=appointment_id,
            job_id=f"job-{appointment_id.removeprefix('apt-')}",
            customer_id=customer_id,
            business_unit=business_unit,
            job_type=job_type,
            project=project,
            window=window or _window(anchor, 7),
            status=status,
            confirmation=confirmation,
        ),
    )


def request(
    tenant: str,
    anchor: datetime,
    request_id: str,
    change: Reschedule | Cancel,
    *,
    appointment_id: str = "apt-1",
    requester_id: str = "cust-1",
    expected_version: int | None = None,
) -> ModifyRequested:
    return ModifyRequested(
        **_meta(tenant, request_id, "portal-web", anchor),
        payload=ModifyRequestedPayload(
            appointment_id=appointment_id,
            requester_id=requester_id,
            change=change,
            expected_version=expected_version,
        ),
    )


@dataclass(frozen=True)
class RejectionSet:
    """What it takes to reach one rejection code: set-up, maybe an office change, the request, maybe the
    office's decision on it. Each is its own file, so replay lets one settle before the next."""

    title: str
    setup: list[Envelope]
    request: ModifyRequested
    office_change: list[Envelope] = field(default_factory=list)
    decision: ApprovalDecided | None = None
    # The customer's earlier requests, each with the code it is rejected with.
    earlier: list[tuple[ModifyRequested, RejectionCode]] = field(default_factory=list)


def _rejection_sets(anchor: datetime) -> dict[RejectionCode, RejectionSet]:
    a = anchor
    move = Reschedule(new_window=_window(a, 10, 13))
    project = Project(
        project_id="prj-1",
        contacts=[ProjectContact(contact_id="lead-1", role=ContactRole.PROJECT_LEAD)],
    )
    C = RejectionCode
    sets: dict[C, RejectionSet] = {}

    def add(
        code: C,
        title: str,
        setup: Callable[[str], list[Envelope]],
        change,
        office_change: Callable[[str], list[Envelope]] | None = None,
        earlier: Callable[[str], list[tuple[ModifyRequested, RejectionCode]]] | None = None,
        **request_kwargs,
    ) -> None:
        tenant = f"rej-{code.value.replace('_', '-')}"
        req = request(tenant, a, f"req-{code.value.replace('_', '-')}", change, **request_kwargs)
        decision = (
            _office_decision(req, a, approved=False, reason="The crew is fully booked that week.")
            if code is C.OFFICE_DECLINED
            else None
        )
        changes = office_change(tenant) if office_change else []
        sets[code] = RejectionSet(
            title, setup(tenant), req, changes, decision, earlier(tenant) if earlier else []
        )

    add(
        C.APPOINTMENT_NOT_FOUND,
        "someone who is neither the customer nor a project contact asks to move the appointment",
        lambda t: [settings_layer(t, a), booking(t, a)],
        move,
        requester_id="stranger-1",
    )
    add(
        C.SELF_SERVICE_DISABLED,
        "the business turned self-service off (schema v1 settings)",
        lambda t: [
            PortalSettingsUpdated(
                **_meta(t, "settings-1", "office", a),
                payload=PortalSettingsPayload(
                    feature_enabled=False, settings_version=1, changed_by="admin-1"
                ),
            ),
            booking(t, a),
        ],
        move,
    )
    add(
        C.APPOINTMENT_NOT_MODIFIABLE,
        "the technician is already dispatched",
        lambda t: [settings_layer(t, a), booking(t, a, status=AppointmentStatus.DISPATCHED)],
        move,
    )
    add(
        C.CONFIRMED_CHANGE_BLOCKED,
        "confirmed appointments may not be rescheduled online",
        lambda t: [
            settings_layer(t, a, reschedule={"confirmed": Permission.DENY}),
            booking(t, a, confirmation=Confirmation.CONFIRMED),
        ],
        move,
    )
    add(
        C.UNCONFIRMED_CHANGE_BLOCKED,
        "unconfirmed appointments may not be canceled online",
        lambda t: [settings_layer(t, a, cancel={"unconfirmed": Permission.DENY}), booking(t, a)],
        Cancel(reason="No longer needed"),
    )
    add(
        C.NEW_WINDOW_IN_PAST,
        "the customer picked a time that has already passed",
        lambda t: [settings_layer(t, a), booking(t, a)],
        Reschedule(new_window=_window(a, -1, 13)),
    )
    add(
        C.SAME_WINDOW,
        "the customer picked the time the appointment already has",
        lambda t: [settings_layer(t, a), booking(t, a)],
        Reschedule(new_window=_window(a, 7)),
    )
    add(
        C.PROJECT_LOCKED,
        "the office froze portal changes on the appointment's project",
        lambda t: [
            settings_layer(t, a),
            booking(t, a, project=project.model_copy(update={"portal_locked": True})),
        ],
        move,
    )
    add(
        C.NOTICE_WINDOW_PASSED,
        "online changes close 24 hours before the appointment, which is 12 hours away",
        lambda t: [
            settings_layer(t, a, reschedule={"min_notice_hours": 24}),
            booking(t, a, window=ArrivalWindow(start=a + timedelta(hours=12), end=a + timedelta(hours=14))),
        ],
        move,
    )
    add(
        C.NEW_WINDOW_TOO_SOON,
        "new times must be at least 72 hours away; the customer picked one in 2 days",
        lambda t: [settings_layer(t, a, reschedule={"min_lead_hours": 72}), booking(t, a)],
        Reschedule(new_window=_window(a, 2, 13)),
    )
    add(
        C.NEW_WINDOW_TOO_FAR,
        "new times must be within 30 days; the customer picked one in 45 days",
        lambda t: [settings_layer(t, a, reschedule={"max_horizon_days": 30}), booking(t, a)],
        Reschedule(new_window=_window(a, 45, 13)),
    )
    add(
        C.OUTSIDE_PROJECT_DATES,
        "the project ends in 9 days; the project lead picked a time in 10 days",
        lambda t: [
            settings_layer(t, a),
            booking(t, a, project=project.model_copy(update={"ends_at": a + timedelta(days=9)})),
        ],
        move,
        requester_id="lead-1",
    )
    add(
        C.RESCHEDULE_LIMIT_REACHED,
        "the business allows no online reschedule at all (limit 0)",
        lambda t: [settings_layer(t, a, reschedule={"max_customer_reschedules": 0}), booking(t, a)],
        move,
    )
    add(
        C.CANCEL_REASON_REQUIRED,
        "a cancel needs a reason and the customer gave none",
        lambda t: [settings_layer(t, a, cancel={"reason_required": True}), booking(t, a)],
        Cancel(),
    )
    add(
        C.CANCEL_REASON_NOT_ALLOWED,
        "the customer's reason is not one of the business's reasons",
        lambda t: [
            settings_layer(t, a, cancel={"allowed_reasons": ["Schedule conflict", "No longer needed"]}),
            booking(t, a),
        ],
        Cancel(reason="Found someone cheaper"),
    )
    add(
        C.OFFICE_DECLINED,
        "reschedules wait for the office, which declines this one",
        lambda t: [
            settings_layer(t, a, reschedule={"unconfirmed": Permission.REQUIRE_APPROVAL}),
            booking(t, a),
        ],
        move,
    )
    add(
        C.APPOINTMENT_VERSION_STALE,
        "the customer saw version 1, but the office has moved the appointment since",
        lambda t: [settings_layer(t, a), booking(t, a)],
        move,
        office_change=lambda t: [
            booking(t, a, window=_window(a, 8)).model_copy(update={"correlation_id": "office-move-apt-1"})
        ],
        expected_version=1,
    )
    add(
        C.RATE_LIMITED,
        "the customer already sent one request (refused: no reason given) and the business allows one a "
        "minute",
        lambda t: [
            settings_layer(
                t,
                a,
                cancel={"reason_required": True},
                rate_limits={"requester_burst": 1, "requester_per_minute": 1},
            ),
            booking(t, a),
        ],
        move,
        earlier=lambda t: [(request(t, a, "req-rate-limited-first", Cancel()), C.CANCEL_REASON_REQUIRED)],
    )
    return sets


def rejections(anchor: datetime = LIBRARY_ANCHOR) -> Files:
    files: Files = {}
    for code, item in _rejection_sets(anchor).items():
        base = f"rejections/{code.value}"
        files[f"{base}/010-setup.json"] = _file(f"{base}/010", item.setup, anchor, _describe_setup)
        if item.office_change:
            files[f"{base}/015-office-change.json"] = _file(
                f"{base}/015", item.office_change, anchor, _describe_setup
            )
        if item.earlier:
            codes = {m.correlation_id: c for m, c in item.earlier}
            files[f"{base}/016-earlier-requests.json"] = _file(
                f"{base}/016",
                [m for m, _ in item.earlier],
                anchor,
                lambda m: "the customer's earlier request",
                lambda m, codes=codes: {
                    "request_status": "rejected",
                    "reason_code": codes[m.correlation_id].value,
                },
            )
        files[f"{base}/020-request.json"] = _file(
            f"{base}/020",
            [item.request],
            anchor,
            lambda m, title=item.title: title,
            lambda m, code=code: {"request_status": "rejected", "reason_code": code.value},
        )
        if item.decision is not None:
            files[f"{base}/030-office-decision.json"] = _file(
                f"{base}/030", [item.decision], anchor, _describe_setup
            )
    return files


# --- malformed messages: each one is dead-lettered with its reason ----------------------------------


def _properties(message: aio_pika.Message) -> dict[str, Any]:
    """The AMQP properties our runtime sets, as a fixture writes them."""
    return {
        "content_type": message.content_type,
        "delivery_mode": int(message.delivery_mode),
        "message_id": message.message_id,
        "correlation_id": message.correlation_id,
        "type": message.type,
        "app_id": message.app_id,
        "timestamp": iso(message.timestamp) if message.timestamp else None,
        "headers": dict(message.headers or {}),
    }


def malformed(anchor: datetime = LIBRARY_ANCHOR) -> Files:
    tenant = "malformed-demo"
    base_request = request(tenant, anchor, "req-malformed", Reschedule(new_window=_window(anchor, 10, 13)))
    files: Files = {}

    def add(
        name: str,
        description: str,
        reason: DeadLetterReason,
        body: dict[str, Any],
        *,
        message: Envelope = base_request,
        exchange: str = "requests",
        routing_key: str = "modify.requested",
        signed: bool = True,
        **property_overrides: Any,
    ) -> None:
        message = message.model_copy(update={"message_id": uuid5(ID_NAMESPACE, f"malformed/{name}")})
        properties = {**_properties(to_amqp(message)), **property_overrides}
        if isinstance(body.get("message"), dict) and "message_id" in body["message"]:
            body = {"message": {**body["message"], "message_id": str(message.message_id)}}
        fixture = {
            "fixture_format": FORMAT_VERSION,
            "description": description,
            "anchor": iso(anchor),
            "exchange": exchange,
            "routing_key": routing_key,
            "properties": properties,
            **body,
            **({} if signed else {"signed": False}),
            "expect": {"dead_letter": reason.value},
        }
        files[f"malformed/{name}.json"] = dump(fixture)

    def envelope(change: Callable[[dict], None] | None = None) -> dict[str, Any]:
        data = json.loads(encode(base_request))
        if change:
            change(data)
        return {"message": data}

    def drop(path: str) -> Callable[[dict], None]:
        def change(data: dict) -> None:
            *parents, last = path.split(".")
            target = data
            for key in parents:
                target = target[key]
            del target[last]

        return change

    def put(**values: Any) -> Callable[[dict], None]:
        def change(data: dict) -> None:
            for path, value in values.items():
                *parents, last = path.split("__")
                target = data
                for key in parents:
                    target = target[key]
                target[last] = value

        return change

    M = DeadLetterReason
    add(
        "bad-json",
        "the body is cut off mid-object",
        M.MALFORMED_JSON,
        {"body": '{"type": "modify.requested", "payload": '},
    )
    add(
        "not-an-object", "the body is JSON, but an array", M.MALFORMED_JSON, {"message": ["modify.requested"]}
    )
    add(
        "invalid-utf8",
        "the body is not UTF-8 (latin-1 bytes)",
        M.MALFORMED_JSON,
        {"body_base64": _b64('{"type": "modify.requested", "tenant_id": "caf\xe9"}'.encode("latin-1"))},
    )
    add(
        "wrong-types",
        "a number where an id belongs and a string where a number belongs",
        M.SCHEMA_VIOLATION,
        envelope(put(payload__requester_id=42, payload__expected_version="3")),
    )
    add(
        "missing-field",
        "the request says nothing about who asks",
        M.SCHEMA_VIOLATION,
        envelope(drop("payload.requester_id")),
    )
    add(
        "extra-field",
        "a field the contract does not know",
        M.SCHEMA_VIOLATION,
        envelope(put(payload__priority="urgent")),
    )
    add(
        "naive-datetime",
        "times without a timezone",
        M.SCHEMA_VIOLATION,
        envelope(
            put(
                occurred_at=anchor.replace(tzinfo=None).isoformat(),
                payload__change__new_window__start=(anchor + timedelta(days=10))
                .replace(tzinfo=None)
                .isoformat(),
            )
        ),
    )
    add(
        "oversize",
        "a 70 KB message (the limit is 64 KiB); stored gzip-compressed",
        M.MESSAGE_TOO_LARGE,
        {
            "body_gzip_base64": _gzip_b64(
                json.dumps({**json.loads(encode(base_request)), "padding": "x" * 70_000})
            )
        },
    )
    add(
        "wrong-content-type",
        "a valid request published as text/plain",
        M.WRONG_CONTENT_TYPE,
        envelope(),
        content_type="text/plain",
    )
    add(
        "unknown-type",
        "a message type no consumer knows",
        M.UNKNOWN_MESSAGE_TYPE,
        envelope(put(type="modify.postponed")),
        type="modify.postponed",
    )
    add(
        "unsupported-version",
        "modify.requested schema version 2 does not exist",
        M.UNSUPPORTED_SCHEMA_VERSION,
        envelope(put(schema_version=2)),
    )
    add(
        "properties-mismatch",
        "the AMQP type says office.approval.decided, the body says modify.requested",
        M.PROPERTIES_MISMATCH,
        envelope(),
        type="office.approval.decided",
    )
    add(
        "unsigned",
        "a valid request published without the portal's signature headers",
        M.SIGNATURE_MISSING,
        envelope(),
        signed=False,
    )
    booked = booking(tenant, anchor)
    add(
        "misrouted",
        "a valid office booking published where portals publish requests",
        M.ROUTE_TYPE_MISMATCH,
        {"message": json.loads(encode(booked))},
        message=booked,
    )
    layer = settings_layer(tenant, anchor)
    add(
        "invalid-settings-layer",
        "a settings layer whose lead time is longer than its booking horizon",
        M.SCHEMA_VIOLATION,
        {"message": _invalid_layer(layer)},
        message=layer,
        exchange="office",
        routing_key="office.portal_settings.updated",
    )
    return files


def _invalid_layer(layer: PortalSettingsUpdatedV2) -> dict[str, Any]:
    data = json.loads(encode(layer))
    data["payload"]["settings"]["reschedule"].update({"min_lead_hours": 48, "max_horizon_days": 1})
    return data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _gzip_b64(text: str) -> str:
    return _b64(gzip.compress(text.encode(), mtime=0))


# --- load: many appointments, each booked and then changed once --------------------------------------

APPOINTMENTS_PER_TENANT = 100


def _slug(seed: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", seed.lower()).strip("-")[:16]
    if not slug:
        raise ValueError(f"seed {seed!r} has no letters or digits")
    return slug


def load(count: int, seed: str, anchor: datetime, folder: str = "load") -> Files:
    """`count` appointments over one tenant per 100, each booked, then one portal request each: mostly
    reschedules and cancels that complete, and some that are refused (same window, a stranger, a past time).
    Three files: settings, bookings, requests (2 * count + tenants messages)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    slug = _slug(seed)
    tenants = [f"load-{slug}-{n:03d}" for n in range(math.ceil(count / APPOINTMENTS_PER_TENANT))]
    settings = [settings_layer(t, anchor) for t in tenants]
    bookings: list[Envelope] = []
    requests: list[Envelope] = []
    expected: dict[str, dict[str, str]] = {}
    for i in range(count):
        tenant = tenants[i % len(tenants)]
        apt = f"apt-{i:06d}"
        window = _window(anchor, 2 + i % 25, 7 + i % 10)
        confirmation = Confirmation.CONFIRMED if i % 2 else Confirmation.UNCONFIRMED
        bookings.append(
            booking(
                tenant,
                anchor,
                appointment_id=apt,
                customer_id=f"cust-{i:06d}",
                window=window,
                confirmation=confirmation,
            )
        )
        kind = i % 20
        requester = f"cust-{i:06d}"
        if kind < 12:
            change: Reschedule | Cancel = Reschedule(new_window=_window(anchor, 3 + i % 25, 7 + (i + 3) % 10))
            outcome = {"request_status": "completed"}
        elif kind < 17:
            change = Cancel(reason="Schedule conflict")
            outcome = {"request_status": "completed"}
        elif kind == 17:
            change = Reschedule(new_window=window)
            outcome = {"request_status": "rejected", "reason_code": RejectionCode.SAME_WINDOW.value}
        elif kind == 18:
            change = Cancel(reason="Not mine")
            requester = f"stranger-{i:06d}"
            outcome = {"request_status": "rejected", "reason_code": RejectionCode.APPOINTMENT_NOT_FOUND.value}
        else:
            change = Reschedule(new_window=_window(anchor, -1, 13))
            outcome = {"request_status": "rejected", "reason_code": RejectionCode.NEW_WINDOW_IN_PAST.value}
        req = request(tenant, anchor, f"req-{i:06d}", change, appointment_id=apt, requester_id=requester)
        requests.append(req)
        expected[req.correlation_id] = outcome

    def compact(where: str, messages: list[Envelope], expect=None) -> str:
        fixtures = [
            fixture_of(m, anchor=anchor, expect=expect(m) if expect else None)
            for m in _with_ids(messages, f"{slug}/{where}")
        ]
        return dump(fixtures, compact=True)

    return {
        f"{folder}/010-settings.json": compact("010", settings),
        f"{folder}/020-bookings.json": compact("020", bookings),
        f"{folder}/030-requests.json": compact("030", requests, lambda m: expected[m.correlation_id]),
    }


# --- the whole library -------------------------------------------------------------------------------


def library(anchor: datetime = LIBRARY_ANCHOR) -> Files:
    return {
        **stories(anchor),
        **rejections(anchor),
        **malformed(anchor),
        **load(LIBRARY_LOAD_COUNT, LIBRARY_SEED, anchor),
    }


def write(files: Files, out: Path) -> list[Path]:
    """Write every file under `out` (creating folders); other files there are left alone."""
    written = []
    for relative, text in sorted(files.items()):
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def now_anchor() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
