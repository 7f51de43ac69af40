"""The FastAPI application: who is calling (API key, tenant, customer), the routes, and start-up."""

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Literal

import structlog
from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import InterfaceError, OperationalError

from contracts.portal_v1 import Cancel, Reschedule
from infra.topology import Topology, build
from portal_api import commands, models, problems, reads, stream
from portal_api.keys import ApiKey, ApiKeyring
from portal_api.problems import ApiProblem, not_found, problem_responses
from portal_api.settings import ApiSettings
from workers.runtime.broker import Broker
from workers.runtime.database import create_engine

log = structlog.get_logger(__name__)

ENTITY_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
TENANT_ID = r"^[a-z0-9][a-z0-9-]{1,62}$"
IF_MATCH = r'^(W/)?"?[0-9]{1,18}"?$'
EVENT_ID = r"^[0-9]{1,19}$"
API_VERSION = "1.0.0"
DESCRIPTION = """The HTTP edge of appointment self-service, for portal servers and office boards.

**Who calls.** A portal server (or an office board) with an API key (`Authorization: Bearer <key>`)
bound to the tenants it serves. Each portal call acts for one customer of one tenant
(`X-Tenant-Id`, `X-Customer-Id`), whom the portal server has authenticated: the API trusts that
assertion exactly as the AMQP contract trusts a signed `modify.requested` (docs/security.md).
Another tenant's or another customer's things answer 404.

**Changes** are asynchronous: POST answers 202 with the request's URL; `GET /v1/requests/{id}?wait=20`
waits for the outcome, and `GET /v1/events` streams every change (Server-Sent Events, resumable with
`Last-Event-ID`): one `view_changed` event per change, its data the live feed's `portal.view_changed` v2
payload (`customer_id`, `job_id`, `changes`: every view the change touched, each with `view`, its ids,
`status` and `version`) plus `occurred_at`. Errors are RFC 9457 `application/problem+json` with a stable
`code`.
"""


@dataclass(frozen=True)
class Caller:
    key: ApiKey
    tenant_id: str


@dataclass(frozen=True)
class Customer:
    key: ApiKey
    tenant_id: str
    customer_id: str


class Services:
    """What the routes use; built at start-up (or handed in by tests)."""

    def __init__(self, settings: ApiSettings, keyring: ApiKeyring, topology: Topology) -> None:
        self.settings = settings
        self.keyring = keyring
        self.reader = create_engine(settings.reader_url, pool_size=settings.api_pool_size)
        self.writer = create_engine(settings.writer_url, pool_size=max(2, settings.api_pool_size // 2))
        self.broker = Broker(
            settings.amqp_url,
            topology,
            name="portal-api",
            publish_timeout_s=settings.publish_timeout_s,
            signer=settings.keyring(),
        )
        self.hub = stream.FeedHub(self.broker)
        self._connecting: asyncio.Task | None = None

    async def start(self) -> None:
        self._connecting = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        delay = 0.5
        while True:
            try:
                await self.broker.connect()
                await self.hub.start()
                log.info("api.broker_connected")
                return
            except Exception as exc:  # keep serving reads; publishes answer 503 meanwhile
                log.warning("api.broker_connect_retry", error=repr(exc)[:200], delay_s=delay)
                with contextlib.suppress(Exception):
                    await self.broker.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def stop(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connecting
        with contextlib.suppress(Exception):
            await self.hub.stop()
        with contextlib.suppress(Exception):
            await self.broker.close()
        await self.reader.dispose()
        await self.writer.dispose()


def services(request: Request) -> Services:
    return request.app.state.services


def _api_key(request: Request, authorization: str | None) -> ApiKey:
    svc = services(request)
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiProblem(
            401,
            "unauthenticated",
            "API key required",
            "Send the portal's API key as 'Authorization: Bearer <key>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = svc.keyring.find(token.strip())
    if key is None:
        raise ApiProblem(
            401,
            "unknown_api_key",
            "Unknown API key",
            "This API key is not known (revoked or mistyped).",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return key


AuthHeader = Annotated[
    str | None, Header(max_length=300, description="`Bearer <API key>`.", alias="Authorization")
]
TenantHeader = Annotated[
    str, Header(alias="X-Tenant-Id", pattern=TENANT_ID, description="The tenant (business) acted for.")
]
CustomerHeader = Annotated[
    str,
    Header(
        alias="X-Customer-Id",
        pattern=ENTITY_ID,
        description="The customer the portal server authenticated; every read and change is theirs.",
    ),
]


def caller(request: Request, tenant_id: TenantHeader, authorization: AuthHeader = None) -> Caller:
    key = _api_key(request, authorization)
    if not key.serves(tenant_id):
        raise ApiProblem(404, "not_found", "Not found", "No such tenant for this API key.")
    return Caller(key, tenant_id)


def customer(
    request: Request,
    tenant_id: TenantHeader,
    customer_id: CustomerHeader,
    authorization: AuthHeader = None,
) -> Customer:
    who = caller(request, tenant_id, authorization)
    if who.key.kind != "portal":
        raise ApiProblem(403, "portal_key_required", "Portal key required", "Use a portal API key here.")
    return Customer(who.key, tenant_id, customer_id)


def office(request: Request, tenant_id: TenantHeader, authorization: AuthHeader = None) -> Caller:
    who = caller(request, tenant_id, authorization)
    if who.key.kind != "office":
        raise ApiProblem(403, "office_key_required", "Office key required", "Use an office API key here.")
    return who


AppointmentId = Annotated[str, Path(pattern=ENTITY_ID, description="The appointment's id.")]
RequestId = Annotated[str, Path(pattern=ENTITY_ID, description="The request's id (its Idempotency-Key).")]
JobId = Annotated[str, Path(pattern=ENTITY_ID)]
IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        pattern=ENTITY_ID,
        description="The request id: the same key and body again give the same answer; another body 409.",
    ),
]
IfMatch = Annotated[
    str,
    Header(
        alias="If-Match", pattern=IF_MATCH, description='The appointment version the customer saw, e.g. "3".'
    ),
]
PortalOfRequest = Annotated[
    str | None,
    Query(
        pattern=ENTITY_ID,
        description="The portal whose request it is (`portal` in the approval list): needed only when "
        "requests of several portals have this id, since request ids are per portal.",
    ),
]
LastEventId = Annotated[
    str | None,
    Header(alias="Last-Event-ID", pattern=EVENT_ID, description="Resume after this event (SSE reconnect)."),
]
READ_ERRORS = problem_responses(400, 401, 403, 404, 422, 503)
WRITE_ERRORS = problem_responses(400, 401, 403, 404, 409, 412, 422, 503)


def version_of(if_match: str) -> int:
    return int(re.sub(r"[^0-9]", "", if_match))


def create_app(settings: ApiSettings | None = None, *, topology: Topology | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = Services(settings, settings.api_keyring(), topology or build(settings.namespace))
        app.state.services = svc
        await svc.start()
        try:
            yield
        finally:
            await svc.stop()

    app = FastAPI(
        title="Appointment self-service portal API",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    problems.install(app)
    app.add_exception_handler(OperationalError, _database_away)
    app.add_exception_handler(InterfaceError, _database_away)
    app.add_exception_handler(OSError, _database_away)
    _routes(app)
    from portal_api import web

    web.install(app)
    return app


async def _database_away(request: Request, exc: Exception):
    log.warning("api.database_unavailable", error=repr(exc)[:200])
    return problems.response(
        ApiProblem(
            503,
            "database_unavailable",
            "Service temporarily unavailable",
            "The read store cannot be reached. Try again shortly.",
            headers={"Retry-After": "5"},
        ),
        request,
    )


async def _appointment_row(svc: Services, who: Customer, appointment_id: str):
    async with reads.tenant_transaction(svc.reader, who.tenant_id) as conn:
        row = await reads.customer_appointment(conn, who.tenant_id, who.customer_id, appointment_id)
    if row is None:
        raise not_found("appointment")
    return row


def _routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["operations"], summary="Is the API connected to the broker and feed?")
    async def healthz(request: Request) -> dict[str, bool]:
        svc = services(request)
        return {"broker": svc.broker.is_connected, "feed": svc.hub.ready.is_set()}

    @app.get(
        "/v1/jobs",
        tags=["customer"],
        summary="The customer's jobs and their upcoming appointments",
        responses=READ_ERRORS,
    )
    async def list_jobs(request: Request, who: Annotated[Customer, Depends(customer)]) -> models.JobList:
        svc = services(request)
        async with reads.tenant_transaction(svc.reader, who.tenant_id) as conn:
            jobs = await reads.customer_jobs(conn, who.tenant_id, who.customer_id)
        return models.JobList(jobs=jobs)

    @app.get(
        "/v1/jobs/{job_id}", tags=["customer"], summary="One job of the customer's", responses=READ_ERRORS
    )
    async def get_job(
        request: Request, job_id: JobId, who: Annotated[Customer, Depends(customer)]
    ) -> models.Job:
        svc = services(request)
        async with reads.tenant_transaction(svc.reader, who.tenant_id) as conn:
            jobs = await reads.customer_jobs(conn, who.tenant_id, who.customer_id)
        for job in jobs:
            if job.job_id == job_id:
                return job
        raise not_found("job")

    @app.get(
        "/v1/appointments/{appointment_id}",
        tags=["customer"],
        summary="One appointment: window (UTC and local), status, version and what may be done now",
        responses=READ_ERRORS,
    )
    async def get_appointment(
        request: Request,
        response: Response,
        appointment_id: AppointmentId,
        who: Annotated[Customer, Depends(customer)],
    ) -> models.Appointment:
        row = await _appointment_row(services(request), who, appointment_id)
        response.headers["ETag"] = f'"{row.version}"'
        return reads.appointment(row)

    @app.get(
        "/v1/appointments/{appointment_id}/pickable-times",
        tags=["customer"],
        summary="The times the customer may pick for a reschedule, in the business unit's local time",
        responses=READ_ERRORS,
    )
    async def pickable_times(
        request: Request, appointment_id: AppointmentId, who: Annotated[Customer, Depends(customer)]
    ) -> models.PickableTimes:
        svc = services(request)
        async with reads.tenant_transaction(svc.reader, who.tenant_id) as conn:
            row = await reads.customer_appointment(conn, who.tenant_id, who.customer_id, appointment_id)
            if row is None:
                raise not_found("appointment")
            times = await reads.pickable(conn, who.tenant_id, who.customer_id, appointment_id, row.time_zone)
        return models.PickableTimes(
            appointment_id=appointment_id, time_zone=reads.zone_of(row.time_zone).key, times=times
        )

    async def _send(
        request: Request,
        response: Response,
        who: Customer,
        appointment_id: str,
        change: Reschedule | Cancel,
        idempotency_key: str,
        if_match: str,
    ) -> models.RequestAccepted:
        svc = services(request)
        row = await _appointment_row(svc, who, appointment_id)
        expected = version_of(if_match)
        assert who.key.producer is not None
        sent = await commands.send_modify(
            engine=svc.writer,
            broker=svc.broker,
            tenant_id=who.tenant_id,
            customer_id=who.customer_id,
            producer=who.key.producer,
            request_id=idempotency_key,
            appointment_id=appointment_id,
            change=change,
            expected_version=expected,
            current_version=row.version,
            retry_after_s=svc.settings.broker_retry_after_s,
        )
        url = f"/v1/requests/{sent.request_id}"
        response.headers["Location"] = url
        response.status_code = 202
        return models.RequestAccepted(
            request_id=sent.request_id, status_url=url, appointment_id=sent.appointment_id, action=sent.action
        )

    @app.post(
        "/v1/appointments/{appointment_id}/reschedule",
        tags=["customer"],
        status_code=202,
        summary="Ask to move the appointment to a new arrival window",
        responses=WRITE_ERRORS,
    )
    async def reschedule(
        request: Request,
        response: Response,
        appointment_id: AppointmentId,
        body: models.RescheduleBody,
        who: Annotated[Customer, Depends(customer)],
        idempotency_key: IdempotencyKey,
        if_match: IfMatch,
    ) -> models.RequestAccepted:
        return await _send(
            request,
            response,
            who,
            appointment_id,
            Reschedule(new_window=body.new_window),
            idempotency_key,
            if_match,
        )

    @app.post(
        "/v1/appointments/{appointment_id}/cancel",
        tags=["customer"],
        status_code=202,
        summary="Ask to cancel the appointment",
        responses=WRITE_ERRORS,
    )
    async def cancel(
        request: Request,
        response: Response,
        appointment_id: AppointmentId,
        body: models.CancelBody,
        who: Annotated[Customer, Depends(customer)],
        idempotency_key: IdempotencyKey,
        if_match: IfMatch,
    ) -> models.RequestAccepted:
        return await _send(
            request, response, who, appointment_id, Cancel(reason=body.reason), idempotency_key, if_match
        )

    @app.get(
        "/v1/requests/{request_id}",
        tags=["customer"],
        summary="A request's outcome; with ?wait=N, wait up to N seconds for it",
        responses=READ_ERRORS,
    )
    async def get_request(
        request: Request,
        request_id: RequestId,
        who: Annotated[Customer, Depends(customer)],
        wait: Annotated[float, Query(ge=0, le=30, description="Seconds to wait for the outcome.")] = 0,
        until: Annotated[
            Literal["settled", "final"],
            Query(
                description="What to wait for: `settled` (no longer pending: awaiting the office counts) "
                "or `final` (completed, rejected or failed)."
            ),
        ] = "settled",
    ) -> models.RequestState:
        svc = services(request)
        waiting = {"pending"} if until == "settled" else {"pending", "awaiting_approval"}
        waiter = svc.hub.request_waiter(who.tenant_id, request_id)
        try:
            deadline = asyncio.get_running_loop().time() + wait
            while True:
                waiter.clear()
                state = await _request_state(svc, who, request_id)
                remaining = deadline - asyncio.get_running_loop().time()
                if state.status not in waiting or remaining <= 0:
                    return state
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), remaining)
        finally:
            svc.hub.drop_waiter(who.tenant_id, request_id, waiter)

    @app.get(
        "/v1/events",
        tags=["customer"],
        summary="Server-Sent Events: every change of the customer's appointments, jobs, offers and requests",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "The event stream."},
            **READ_ERRORS,
        },
    )
    async def customer_events(
        request: Request, who: Annotated[Customer, Depends(customer)], last_event_id: LastEventId = None
    ) -> StreamingResponse:
        return _event_stream(services(request), who.tenant_id, who.customer_id, last_event_id)

    @app.get(
        "/v1/office/appointments",
        tags=["office"],
        summary="The business's upcoming appointments and its recent changes (the office board)",
        responses=READ_ERRORS,
    )
    async def office_board(request: Request, who: Annotated[Caller, Depends(office)]) -> models.Board:
        svc = services(request)
        async with reads.tenant_transaction(svc.reader, who.tenant_id) as conn:
            return await reads.board(conn, who.tenant_id)

    @app.get(
        "/v1/office/approvals",
        tags=["office"],
        summary="Requests waiting for the office's approval",
        responses=READ_ERRORS,
    )
    async def approvals(request: Request, who: Annotated[Caller, Depends(office)]) -> models.ApprovalList:
        svc = services(request)
        async with reads.tenant_transaction(svc.reader, who.tenant_id) as conn:
            return models.ApprovalList(approvals=await reads.approvals(conn, who.tenant_id))

    @app.post(
        "/v1/office/approvals/{request_id}/decision",
        tags=["office"],
        status_code=202,
        summary="Approve or decline a request waiting for the office",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
    )
    async def decide(
        request: Request,
        response: Response,
        request_id: RequestId,
        body: models.DecisionBody,
        who: Annotated[Caller, Depends(office)],
        portal: PortalOfRequest = None,
    ) -> models.DecisionAccepted:
        svc = services(request)
        async with reads.tenant_transaction(svc.reader, who.tenant_id) as conn:
            state = await _office_request_state(conn, who.tenant_id, request_id, portal)
        if state is None or state.status != "awaiting_approval":
            raise not_found("request waiting for approval")
        await commands.send_decision(
            broker=svc.broker,
            tenant_id=who.tenant_id,
            request_id=request_id,
            approved=body.approved,
            reason=body.reason,
            decided_by=body.decided_by,
            retry_after_s=svc.settings.broker_retry_after_s,
            request_producer=state.producer,
        )
        url = f"/v1/office/requests/{request_id}"
        response.headers["Location"] = url
        return models.DecisionAccepted(request_id=request_id, approved=body.approved, status_url=url)

    @app.get(
        "/v1/office/requests/{request_id}",
        tags=["office"],
        summary="Any request's outcome in the business",
        responses=READ_ERRORS,
    )
    async def office_request(
        request: Request,
        request_id: RequestId,
        who: Annotated[Caller, Depends(office)],
        portal: PortalOfRequest = None,
    ) -> models.RequestState:
        svc = services(request)
        async with reads.tenant_transaction(svc.reader, who.tenant_id) as conn:
            state = await _office_request_state(conn, who.tenant_id, request_id, portal)
        if state is None:
            raise not_found("request")
        return _state(state)

    @app.get(
        "/v1/office/events",
        tags=["office"],
        summary="Server-Sent Events: every change in the business",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "The event stream."},
            **READ_ERRORS,
        },
    )
    async def office_events(
        request: Request, who: Annotated[Caller, Depends(office)], last_event_id: LastEventId = None
    ) -> StreamingResponse:
        return _event_stream(services(request), who.tenant_id, None, last_event_id)


def _state(row) -> models.RequestState:
    return models.RequestState(
        request_id=row.request_id,
        appointment_id=row.appointment_id,
        action=row.action,
        status=row.status,
        reason_code=row.reason_code,
        reason=row.reason_text,
        updated_at=row.updated_at,
    )


async def _office_request_state(conn, tenant_id: str, request_id: str, portal: str | None):
    try:
        return await reads.request_state(conn, tenant_id, request_id, portal)
    except reads.AmbiguousRequest:
        raise ApiProblem(
            409,
            "request_id_ambiguous",
            "Requests of several portals have this id",
            "Request ids are per portal, and more than one portal used this one: name the portal with "
            "`?portal=` (the `portal` of the approval list).",
        ) from None


async def _request_state(
    svc: Services, who: Customer, request_id: str, producer: str | None = None
) -> models.RequestState:
    """The caller's portal's request with this id (request ids are per portal: its key's producer, or
    `producer` for the demo pages, which have no key)."""
    producer = producer or who.key.producer
    assert producer is not None
    async with reads.tenant_transaction(svc.reader, who.tenant_id) as conn:
        own = await reads.own_request(conn, who.tenant_id, who.customer_id, producer, request_id)
        if own is None:
            raise not_found("request")
        state = await reads.request_state(conn, who.tenant_id, request_id, producer)
    if state is None:  # sent, not yet in the read store
        return models.RequestState(
            request_id=request_id, appointment_id=own.appointment_id, action=own.action, status="pending"
        )
    return _state(state)


def _event_stream(svc: Services, tenant_id: str, customer_id: str | None, last_event_id: str | None):
    if not svc.hub.ready.is_set():
        raise ApiProblem(
            503,
            "feed_unavailable",
            "Service temporarily unavailable",
            "The live feed is not connected yet. Try again shortly.",
            headers={"Retry-After": str(svc.settings.broker_retry_after_s)},
        )
    return StreamingResponse(
        stream.sse(
            svc.hub,
            svc.reader,
            tenant_id,
            customer_id,
            int(last_event_id) if last_event_id else None,
            heartbeat_s=svc.settings.sse_heartbeat_s,
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
