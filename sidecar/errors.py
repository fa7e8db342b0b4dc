"""The error model: each request-time error carries the HTTP status it maps to."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any, ClassVar


class SidecarError(Exception):
    """A request-time failure; `server` answers it with `status` and the message.

    A subclass names its status in its header: `class Gone(SidecarError, status=HTTPStatus.GONE)`."""

    status: ClassVar[HTTPStatus] = HTTPStatus.INTERNAL_SERVER_ERROR
    headers: dict[str, str] = {}

    def __init_subclass__(cls, status: HTTPStatus | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status

    def __init__(self, message: str = "", *, reason: str = "") -> None:
        super().__init__(message or self.status.phrase.lower())
        # `reason` is a short machine-readable cause for logs and metrics.
        self.reason = reason or re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()


class BadRequest(SidecarError, status=HTTPStatus.BAD_REQUEST):
    """The body or a header cannot be read as the sender's scheme says."""


class SignatureError(SidecarError, status=HTTPStatus.UNAUTHORIZED):
    """Signature missing, malformed, wrong, or outside its time tolerance."""


class RouteNotFound(SidecarError, status=HTTPStatus.NOT_FOUND):
    """No endpoint at this path."""


class LengthRequired(SidecarError, status=HTTPStatus.LENGTH_REQUIRED):
    """A POST without Content-Length."""


class RequestTimeout(SidecarError, status=HTTPStatus.REQUEST_TIMEOUT):
    """The request (line, headers and body) was not complete by its deadline."""


class PayloadTooLarge(SidecarError, status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE):
    """The body is larger than max_body_bytes."""


class MethodNotAllowed(SidecarError, status=HTTPStatus.METHOD_NOT_ALLOWED):
    def __init__(self, allow: str) -> None:
        super().__init__("method not allowed")
        self.headers = {"Allow": allow}


class Unavailable(SidecarError, status=HTTPStatus.SERVICE_UNAVAILABLE):
    """Queue full or shutting down: the sender should retry later."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class QueueFull(Unavailable):
    def __init__(self) -> None:
        super().__init__("queue full", retry_after=10)


class ConfigError(Exception):
    """A config file is invalid; `errors` lists every problem as 'file:line: key: message'."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors
