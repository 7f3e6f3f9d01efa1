"""Errors as RFC 9457 problem details: one JSON object with a one-line detail, never a traceback."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.db import database_unavailable
from pipeline.validation import InputError

log = structlog.get_logger("tocsin.api")

MEDIA_TYPE = "application/problem+json"
RETRY_AFTER = {"Retry-After": "10"}


class Problem(BaseModel):
    """An RFC 9457 problem: what went wrong, in one line."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Returns a problem+json response with the status's standard title."""
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=_one_line(detail))
    return JSONResponse(
        body.model_dump(), status_code=status, media_type=MEDIA_TYPE, headers=headers
    )


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:500] or HTTPStatus.INTERNAL_SERVER_ERROR.phrase


def _validation_detail(exc: RequestValidationError) -> str:
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        return "the body is not valid JSON"
    return f"{where}: {message}" if where else message


def install(api: FastAPI) -> None:
    """Makes every error of the app a problem+json response."""

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        status = getattr(exc, "status_code", 500)
        if status == 400:
            # FastAPI's answer to a body it cannot decode (not UTF-8, say): the same kind of
            # mistake as a JSON syntax error, so the same documented status.
            return problem(422, "the body is not valid JSON (UTF-8)")
        return problem(status, str(getattr(exc, "detail", "")), getattr(exc, "headers", None))

    async def invalid(_request: Request, exc: Exception) -> JSONResponse:
        detail = _validation_detail(exc) if isinstance(exc, RequestValidationError) else str(exc)
        return problem(422, detail)

    async def refused(_request: Request, exc: Exception) -> JSONResponse:
        return problem(422, str(exc))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the log (scrubbed), never to the client.
        log.error("api_internal_error", path=request.url.path, exc_info=exc)
        return problem(500, "internal error; the server log has the details")

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        if not database_unavailable(exc):
            return await unexpected(request, exc)
        # Any route, the token check included: a retry can succeed, so say when to try.
        log.warning("api_database_unavailable", path=request.url.path, error=type(exc).__name__)
        return problem(503, "the database is unavailable: try again", RETRY_AFTER)

    api.add_exception_handler(StarletteHTTPException, http_error)
    api.add_exception_handler(HTTPException, http_error)
    api.add_exception_handler(RequestValidationError, invalid)
    api.add_exception_handler(InputError, refused)
    # Handled here rather than by the catch-all, which Starlette re-raises to the server log.
    for kind in (DBAPIError, OSError, TimeoutError):
        api.add_exception_handler(kind, database_error)
    api.add_exception_handler(Exception, unexpected)


# For route declarations: the problem responses each operation may give, in OpenAPI.
def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Returns the OpenAPI `responses` entry documenting these problem statuses."""
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


# Answers any operation may give besides its own: from the auth dependency (secured ones, which
# read the database: 503 while it is unavailable), the body limits (ones with a body), and
# validation of parameters.
_SECURED = (401, 403, 503)
_WITH_BODY = (408, 413)


def document_common(api: FastAPI) -> None:
    """Adds the problems every operation can answer to the OpenAPI document, once."""
    build = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is not None:
            return api.openapi_schema
        document = build()
        problem_ref = {"$ref": "#/components/schemas/Problem"}
        document.setdefault("components", {}).setdefault("schemas", {}).setdefault(
            "Problem", Problem.model_json_schema()
        )
        for item in document.get("paths", {}).values():
            for operation in item.values():
                statuses = [422]
                if operation.get("security"):
                    statuses += _SECURED
                if "requestBody" in operation:
                    statuses += _WITH_BODY
                responses = operation.setdefault("responses", {})
                for status in statuses:
                    entry = {
                        "description": HTTPStatus(status).phrase,
                        "content": {MEDIA_TYPE: {"schema": problem_ref}},
                    }
                    # FastAPI documents its own 422 body; ours is a problem.
                    if status == 422:
                        responses[str(status)] = entry
                    else:
                        responses.setdefault(str(status), entry)
        api.openapi_schema = document
        return document

    api.openapi = openapi  # type: ignore[method-assign]
