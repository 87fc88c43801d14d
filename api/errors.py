"""Every refusal leaves the service as RFC 9457 problem details with a stable ``code``.

This is the one place where domain errors meet HTTP statuses. A handler never builds an
error response itself: it raises (or lets through) a domain error, and this maps it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException, ValidationException
from sqlalchemy.exc import DBAPIError

from ledger import errors as domain

log = structlog.get_logger("api")

PROBLEM_MEDIA_TYPE = "application/problem+json"

STATUS_BY_CODE: dict[str, int] = {
    "not_found": 404,
    "account_not_found": 404,
    "hold_not_found": 404,
    "invalid_input": 422,
    "invalid_transfer": 422,
    "unbalanced_transfer": 422,
    "amount_exceeds_hold": 422,
    "insufficient_funds": 409,
    "idempotency_conflict": 409,
    "hold_not_pending": 409,
    "hold_expired": 409,
    "already_reversed": 409,
    "not_reversible": 409,
    "append_only": 409,
}
DOMAIN_STATUS_DEFAULT = 422


class ApiError(HTTPException):
    """An HTTP-level refusal (authentication, missing header…) with its own stable code."""

    def __init__(self, status_code: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(status_code=status_code, detail=detail)
        self.code = code
        self.extra = extra


def problem(request: Request, status: int, code: str, detail: str, **extra: Any) -> Response:
    body = {
        "type": f"https://circuit.example/problems/{code}",
        "title": code.replace("_", " "),
        "status": status,
        "code": code,
        "detail": detail,
        "instance": request.url.path,
        "request_id": request.scope.get("state", {}).get("request_id"),
        **extra,
    }
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE)


@cache
def _status_by_code() -> dict[str, int]:
    """The foundation's codes and every capability's ``ERROR_STATUS`` (see api/features)."""
    from api.features import features

    statuses = dict(STATUS_BY_CODE)
    for module in features():
        for code, status in getattr(module, "ERROR_STATUS", {}).items():
            # One code, one meaning: a second capability may not give it another status.
            if statuses.setdefault(code, status) != status:
                raise RuntimeError(f"error code {code!r} mapped to {statuses[code]} and {status} ({module.__name__})")
    return statuses


def _domain(request: Request, error: domain.DomainError) -> Response:
    status = _status_by_code().get(error.code, DOMAIN_STATUS_DEFAULT)
    if error.message_fr:
        return problem(request, status, error.code, error.message, detail_fr=error.message_fr, **error.details)
    return problem(request, status, error.code, error.message, **error.details)


def _database(request: Request, error: DBAPIError) -> Response:
    refusal = domain.from_database(error)
    if refusal is not None:
        return _domain(request, refusal)
    return _unexpected(request, error)


def _http(request: Request, error: HTTPException) -> Response:
    if isinstance(error, ApiError):
        return problem(request, error.status_code, error.code, error.detail, **error.extra)
    if isinstance(error, ValidationException) or error.status_code == 400:
        errors = error.extra if isinstance(error.extra, list) else []
        return problem(request, 400, "invalid_request", "The request is malformed.", errors=errors)
    if isinstance(error, NotAuthorizedException):
        return problem(request, 401, "unauthenticated", "Sign in first: this needs a valid token.")
    if isinstance(error, PermissionDeniedException):
        return problem(request, 403, "forbidden", "Your role does not allow this.")
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
            429: "rate_limited"}.get(error.status_code, "http_error")
    return problem(request, error.status_code, code, error.detail)


def _unexpected(request: Request, error: Exception) -> Response:
    log.exception("unexpected_error", path=request.url.path)
    return problem(request, 500, "internal_error", "Something went wrong on our side; nothing was changed.")


EXCEPTION_HANDLERS = {
    domain.DomainError: _domain,
    DBAPIError: _database,
    HTTPException: _http,
    Exception: _unexpected,
}
