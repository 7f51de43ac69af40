"""RFC 9457 problem documents: one exception type with a stable `code` per kind of refusal."""

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://appt.example/problems/"


class InvalidParam(BaseModel):
    name: str = Field(description="Where: e.g. body.new_window.start, header.If-Match.")
    reason: str


class Problem(BaseModel):
    type: str = Field(description="A URI naming the kind of problem.")
    title: str
    status: int
    code: str = Field(description="Stable machine code of the kind of problem.")
    detail: str | None = None
    instance: str | None = None
    invalid_params: list[InvalidParam] | None = None


class ApiProblem(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        invalid_params: list[InvalidParam] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.headers = headers or {}
        self.invalid_params = invalid_params


def not_found(what: str) -> ApiProblem:
    return ApiProblem(404, "not_found", "Not found", f"No {what} with that id for this customer.")


PAGE_PREFIXES = ("/portal/", "/office", "/signin")  # the reference pages answer a person, in HTML


def response(problem: ApiProblem, request: Request):
    if request.url.path.startswith(PAGE_PREFIXES) and "text/html" in request.headers.get("accept", ""):
        from portal_api.web import error_page

        return error_page(request, problem)
    body = Problem(
        type=TYPE_BASE + problem.code,
        title=problem.title,
        status=problem.status,
        code=problem.code,
        detail=problem.detail,
        instance=request.url.path,
        invalid_params=problem.invalid_params,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )


async def on_problem(request: Request, exc: ApiProblem) -> JSONResponse:
    return response(exc, request)


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    params = [
        InvalidParam(name=_where(error.get("loc", ())), reason=str(error.get("msg", "invalid"))[:300])
        for error in exc.errors()[:20]
    ]
    return response(
        ApiProblem(
            422,
            "invalid_request",
            "The request is not valid",
            "Fix the fields listed in invalid_params and send it again.",
            invalid_params=params,
        ),
        request,
    )


_HTTP_CODES = {
    400: ("malformed_request", "Malformed request"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "Request refused"))
    return response(
        ApiProblem(exc.status_code, code, title, str(exc.detail)[:300], headers=dict(exc.headers or {})),
        request,
    )


def install(app) -> None:
    app.add_exception_handler(ApiProblem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)


def problem_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI entries for the problem answers an operation may give."""
    return {
        status: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }


_DESCRIPTIONS = {
    400: "The request could not be parsed (e.g. a body that is not JSON).",
    401: "No API key, or an unknown one.",
    403: "The key's kind may not do this (a portal key on an office operation or the other way).",
    404: "Not found for this tenant and customer (another tenant's or customer's things look the same).",
    409: "The Idempotency-Key was used with another body.",
    412: "If-Match names another version than the appointment's current one.",
    422: "A parameter, header or body field is invalid.",
    428: "If-Match is required.",
    503: "The broker or database is away; retry after Retry-After seconds. Nothing was done.",
}
