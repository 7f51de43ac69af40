"""The reference Customer Portal and office board: server-rendered pages over the API's reads and commands.

Jinja2 pages, kept current by a small EventSource script of our own (static/live.js).

Sign-in is a clearly marked demo: the visitor picks a seeded customer or a business's office and a
cookie remembers it, with no password. The pages exist only when APPT_DEMO_PAGES is on (`make portal`,
the browser tests); a real portal authenticates its customers itself and calls the API.
"""

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Form, Header, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError
from sqlalchemy import text

from contracts.common import ArrivalWindow
from contracts.portal_v1 import Cancel, Reschedule
from portal_api import commands, models, reads, stream
from portal_api.problems import ApiProblem

HERE = Path(__file__).parent
COOKIE = "appt_demo"
OFFICE = "@office"
ENTITY = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
CURSOR = r"^[0-9]{1,19}$"
templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))

CUSTOMERS = text(
    "SELECT DISTINCT customer_id FROM portal.appointments WHERE tenant_id = :tenant AND window_end > now() "
    "ORDER BY customer_id LIMIT 50"
)
# A construction project's named contacts (project lead, subcontractor) act on its appointments too.
CONTACTS = text(
    "SELECT DISTINCT c.contact_id FROM portal.appointment_offers o "
    "JOIN portal.appointments a ON a.tenant_id = o.tenant_id AND a.appointment_id = o.appointment_id "
    "CROSS JOIN LATERAL unnest(o.contact_ids) AS c(contact_id) "
    "WHERE o.tenant_id = :tenant AND a.window_end > now() ORDER BY c.contact_id LIMIT 50"
)


@dataclass(frozen=True)
class Visitor:
    tenant_id: str
    customer_id: str | None  # None: the office

    @property
    def label(self) -> str:
        return "Office" if self.customer_id is None else f"Customer {self.customer_id}"


def fmt(window: models.LocalWindow) -> str:
    start, end = window.start, window.end
    day = start.strftime("%a %d %b %Y")
    return f"{day}, {start:%H:%M} to {end:%H:%M} ({window.time_zone})"


def fmt_time(instant: datetime) -> str:
    return instant.strftime("%d %b %H:%M:%S UTC")


def describe(change: models.Change) -> str:
    when = f" ({change.window_start:%d %b %H:%M} UTC)" if change.window_start else ""
    return {
        "requested": f"asked to {change.action}{when if change.action == 'reschedule' else ''}",
        "rescheduled": f"rescheduled{when}",
        "canceled": "canceled" + (f": {change.reason}" if change.reason else ""),
        "awaiting_approval": f"{change.action} waits for approval",
        "rejected": f"{change.action} refused",
        "failed": f"{change.action} failed",
    }.get(change.entry, change.entry.replace("_", " "))


def render(request: Request, name: str, **context) -> HTMLResponse:
    template = templates.get_template(name)
    context = {"fmt": fmt, "fmt_time": fmt_time, "describe": describe, **context}
    if context.get("events_url"):
        # The stream starts from when the page was rendered, so a change between the render and the
        # EventSource's connection is replayed, not lost (on reconnects, Last-Event-ID takes over).
        context["events_url"] += f"?since={stream.cursor(datetime.now(UTC))}"
    if request.headers.get("x-fragment") == "1" and "live" in template.blocks:
        html = "".join(template.blocks["live"](template.new_context(context)))
    else:
        html = template.render(**context)
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


_PAGE_TEXT = {
    404: ("Not found", "There is nothing here for you. It may belong to someone else, or the link is wrong."),
    503: ("Please try again shortly", "We can't take changes right now. Nothing was changed."),
}


def error_page(request: Request, problem: ApiProblem) -> HTMLResponse:
    title, detail = _PAGE_TEXT.get(problem.status, (problem.title, problem.detail or ""))
    page = render(request, "error.html", title=title, detail=detail, who=None)
    page.status_code = problem.status
    for name, value in problem.headers.items():
        page.headers[name] = value
    return page


def install(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def svc(request: Request):
        from portal_api.app import services

        s = services(request)
        if not s.settings.demo_pages:
            raise ApiProblem(404, "not_found", "Not found", "The demo pages are off (APPT_DEMO_PAGES).")
        return s

    def visitor(request: Request, *, office: bool = False) -> Visitor:
        raw = request.cookies.get(COOKIE, "")
        tenant, _, customer = raw.partition("|")
        s = svc(request)
        if tenant not in s.settings.demo_tenant_list or not customer:
            raise _SignIn()
        if office != (customer == OFFICE):
            raise _SignIn()
        return Visitor(tenant, None if customer == OFFICE else customer)

    app.add_exception_handler(_SignIn, lambda request, exc: RedirectResponse("/", status_code=303))

    def who(v: Visitor) -> dict:
        return {"who": v}

    @app.get("/", include_in_schema=False)
    async def signin_page(request: Request):
        s = svc(request)
        businesses = []
        for tenant in s.settings.demo_tenant_list:
            async with reads.tenant_transaction(s.reader, tenant) as conn:
                customers = [r.customer_id for r in await conn.execute(CUSTOMERS, {"tenant": tenant})]
                contacts = [r.contact_id for r in await conn.execute(CONTACTS, {"tenant": tenant})]
            businesses.append({"tenant_id": tenant, "customers": customers, "contacts": contacts})
        return render(request, "signin.html", businesses=businesses, who=None)

    @app.post("/signin", include_in_schema=False)
    async def signin(
        request: Request,
        tenant_id: Annotated[str, Form(max_length=64)],
        customer_id: Annotated[str, Form(max_length=64)],
    ):
        s = svc(request)
        if tenant_id not in s.settings.demo_tenant_list:
            raise ApiProblem(404, "not_found", "Not found", "No such demo business.")
        if customer_id != OFFICE:
            _check_id(customer_id)
        target = "/office" if customer_id == OFFICE else "/portal/jobs"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, f"{tenant_id}|{customer_id}", httponly=True, samesite="lax")
        return response

    @app.get("/signout", include_in_schema=False)
    async def signout():
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/portal/jobs", include_in_schema=False)
    async def jobs_page(request: Request):
        v, s = visitor(request), svc(request)
        async with reads.tenant_transaction(s.reader, v.tenant_id) as conn:
            jobs = await reads.customer_jobs(conn, v.tenant_id, v.customer_id)
        return render(
            request, "jobs.html", jobs=jobs, events_url="/portal/events", refresh_url="/portal/jobs", **who(v)
        )

    @app.get("/portal/jobs/{job_id}", include_in_schema=False)
    async def job_page(request: Request, job_id: str):
        v, s = visitor(request), svc(request)
        job = await _job(s, v, job_id)
        if job is None:
            raise ApiProblem(404, "not_found", "Not found", "No job with that id for this customer.")
        url = f"/portal/jobs/{job_id}"
        return render(request, "job.html", job=job, events_url="/portal/events", refresh_url=url, **who(v))

    @app.get("/portal/appointments/{appointment_id}/modify", include_in_schema=False)
    async def modify_page(request: Request, appointment_id: str):
        v, s = visitor(request), svc(request)
        async with reads.tenant_transaction(s.reader, v.tenant_id) as conn:
            row = await reads.customer_appointment(conn, v.tenant_id, v.customer_id, appointment_id)
            if row is None:
                raise ApiProblem(
                    404, "not_found", "Not found", "No appointment with that id for this customer."
                )
            times = await reads.pickable(conn, v.tenant_id, v.customer_id, appointment_id, row.time_zone)
        a = reads.appointment(row)
        if not a.offers.modify:
            return RedirectResponse(f"/portal/jobs/{a.job_id}", status_code=303)
        return render(
            request,
            "modify.html",
            a=a,
            times=models.PickableTimes(
                appointment_id=a.appointment_id, time_zone=a.local_window.time_zone, times=times
            ),
            request_id=f"web-{uuid.uuid4().hex[:16]}",
            cancel_id=f"web-{uuid.uuid4().hex[:16]}",
            **who(v),
        )

    async def _send(request: Request, appointment_id: str, request_id: str, version: int, change):
        v, s = visitor(request), svc(request)
        _check_id(appointment_id)
        _check_id(request_id)
        async with reads.tenant_transaction(s.reader, v.tenant_id) as conn:
            row = await reads.customer_appointment(conn, v.tenant_id, v.customer_id, appointment_id)
        if row is None:
            raise ApiProblem(404, "not_found", "Not found", "No appointment with that id for this customer.")
        await commands.send_modify(
            engine=s.writer,
            broker=s.broker,
            tenant_id=v.tenant_id,
            customer_id=v.customer_id,
            producer=s.settings.demo_producer,
            request_id=request_id,
            appointment_id=appointment_id,
            change=change,
            expected_version=version,
            current_version=row.version,
            retry_after_s=s.settings.broker_retry_after_s,
        )
        return RedirectResponse(f"/portal/requests/{request_id}", status_code=303)

    @app.post("/portal/appointments/{appointment_id}/reschedule", include_in_schema=False)
    async def reschedule_form(
        request: Request,
        appointment_id: str,
        request_id: Annotated[str, Form(max_length=64)],
        version: Annotated[int, Form(ge=0)],
        window: Annotated[str, Form(max_length=100)],
    ):
        start, _, end = window.partition("|")
        try:
            change = Reschedule(new_window=ArrivalWindow(start=start, end=end))
        except ValidationError:
            raise ApiProblem(422, "invalid_request", "Pick a time", "Pick one of the listed times.") from None
        return await _send(request, appointment_id, request_id, version, change)

    @app.post("/portal/appointments/{appointment_id}/cancel", include_in_schema=False)
    async def cancel_form(
        request: Request,
        appointment_id: str,
        request_id: Annotated[str, Form(max_length=64)],
        version: Annotated[int, Form(ge=0)],
        reason: Annotated[str, Form(max_length=200)] = "",
    ):
        return await _send(
            request, appointment_id, request_id, version, Cancel(reason=reason.strip() or None)
        )

    @app.get("/portal/requests/{request_id}", include_in_schema=False)
    async def request_page(request: Request, request_id: str):
        v, s = visitor(request), svc(request)
        _check_id(request_id)
        from portal_api.app import Customer, _request_state

        state = await _request_state(
            s,
            Customer(None, v.tenant_id, v.customer_id),  # type: ignore[arg-type]
            request_id,
            s.settings.demo_producer,
        )
        async with reads.tenant_transaction(s.reader, v.tenant_id) as conn:
            row = await reads.customer_appointment(conn, v.tenant_id, v.customer_id, state.appointment_id)
        appointment = reads.appointment(row) if row is not None else None
        job = await _job(s, v, appointment.job_id) if appointment else None
        return render(
            request,
            "request.html",
            state=state,
            appointment=appointment,
            job=job,
            job_id=appointment.job_id if appointment else "",
            events_url="/portal/events",
            refresh_url=f"/portal/requests/{request_id}",
            **who(v),
        )

    @app.get("/portal/events", include_in_schema=False)
    async def portal_events(
        request: Request,
        last_event_id: Annotated[str | None, Header(pattern=CURSOR)] = None,
        since: Annotated[str | None, Query(pattern=CURSOR)] = None,
    ):
        from portal_api.app import _event_stream

        v, s = visitor(request), svc(request)
        return _event_stream(s, v.tenant_id, v.customer_id, last_event_id or since)

    @app.get("/office", include_in_schema=False)
    async def office_page(request: Request):
        v, s = visitor(request, office=True), svc(request)
        async with reads.tenant_transaction(s.reader, v.tenant_id) as conn:
            board = await reads.board(conn, v.tenant_id)
            approvals = await reads.approvals(conn, v.tenant_id)
        return render(
            request,
            "office.html",
            board=board,
            approvals=approvals,
            last_change=_last_changes(board.recent_changes),
            events_url="/office/events",
            refresh_url="/office",
            **who(v),
        )

    @app.post("/office/approvals/{request_id}", include_in_schema=False)
    async def office_decide(
        request: Request,
        request_id: str,
        decision: Annotated[str, Form(pattern="^(approve|decline)$")],
        reason: Annotated[str, Form(max_length=200)] = "",
        portal: Annotated[str, Form(max_length=64)] = "",
    ):
        v, s = visitor(request, office=True), svc(request)
        _check_id(request_id)
        async with reads.tenant_transaction(s.reader, v.tenant_id) as conn:
            try:
                state = await reads.request_state(conn, v.tenant_id, request_id, portal or None)
            except reads.AmbiguousRequest:
                state = None  # the board's form names the portal
        if state is not None and state.status == "awaiting_approval":
            await commands.send_decision(
                broker=s.broker,
                tenant_id=v.tenant_id,
                request_id=request_id,
                approved=decision == "approve",
                reason=reason.strip() or None,
                decided_by="office-demo",
                retry_after_s=s.settings.broker_retry_after_s,
                request_producer=state.producer,
            )
        return RedirectResponse("/office", status_code=303)

    @app.get("/office/events", include_in_schema=False)
    async def office_events(
        request: Request,
        last_event_id: Annotated[str | None, Header(pattern=CURSOR)] = None,
        since: Annotated[str | None, Query(pattern=CURSOR)] = None,
    ):
        from portal_api.app import _event_stream

        v, s = visitor(request, office=True), svc(request)
        return _event_stream(s, v.tenant_id, None, last_event_id or since)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)


class _SignIn(Exception):
    """No (or another kind of) demo sign-in: back to the sign-in page."""


def _check_id(value: str) -> None:
    if not re.match(ENTITY, value):
        raise ApiProblem(404, "not_found", "Not found", "No such id.")


async def _job(s, v: Visitor, job_id: str) -> models.Job | None:
    async with reads.tenant_transaction(s.reader, v.tenant_id) as conn:
        jobs = await reads.customer_jobs(conn, v.tenant_id, v.customer_id)
    return next((j for j in jobs if j.job_id == job_id), None)


def _last_changes(changes: list[models.Change]) -> dict[str, models.Change]:
    """The newest change per appointment, with the requester's id as its actor where known."""
    requester = {c.request_id: c.actor for c in changes if c.entry == "requested" and c.request_id}
    newest: dict[str, models.Change] = {}
    for change in changes:  # newest first
        if change.appointment_id not in newest:
            actor = requester.get(change.request_id or "", change.actor)
            newest[change.appointment_id] = change.model_copy(update={"actor": actor})
    return newest
