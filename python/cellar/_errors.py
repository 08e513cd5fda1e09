"""What the server refused, as Python exceptions carrying its message."""

from __future__ import annotations

from typing import Any


class CellarError(Exception):
    """A request Cellar refused or could not answer.

    ``status`` is the HTTP status (0 when the server was not reached), ``kind`` the server's
    name for the problem (``not_found``, ``invalid_argument``, ...) and ``message`` its words.
    """

    def __init__(self, message: str, status: int = 0, kind: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind

    def __str__(self) -> str:
        if self.status:
            return f"{self.status} {self.kind or 'error'}: {self.message}"
        return self.message


class InvalidRequest(CellarError):
    """400: a bad key, value, window or request shape; the message names it."""


class Unauthenticated(CellarError):
    """401: no credentials, or credentials that do not pass."""


class PermissionDenied(CellarError):
    """403: the caller's roles do not grant the action."""


class NotFound(CellarError):
    """404: an unknown group, feature, service, ingestion or job."""


class Conflict(CellarError):
    """409: the request conflicts with the state of what it names."""


class TooLarge(CellarError):
    """413: too many entities, a read over the cost ceiling, or a body over its limit."""


class Unavailable(CellarError):
    """503 or 504 (after the client's retries), or the server could not be reached."""


class JobFailed(CellarError):
    """A job the client waited for ended failed or cancelled."""


_BY_STATUS: dict[int, type[CellarError]] = {
    400: InvalidRequest,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    503: Unavailable,
    504: Unavailable,
}


def error_for(status: int, body: bytes) -> CellarError:
    """The exception of a response with ``status`` and ``body``: Cellar's JSON error when the
    body holds one, else the body's text."""
    kind, message = "", body.decode("utf-8", "replace").strip()
    try:
        import json

        parsed: Any = json.loads(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            kind = str(error.get("kind", ""))
            message = str(error.get("message", message))
        elif isinstance(parsed, dict) and "detail" in parsed:
            message = str(parsed["detail"])
    except ValueError:
        pass
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = InvalidRequest if 400 <= status < 500 else Unavailable if status >= 500 else CellarError
    return cls(message or f"HTTP {status}", status=status, kind=kind)
