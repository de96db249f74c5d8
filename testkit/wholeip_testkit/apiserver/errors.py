"""Errors of the API server double, one class per HTTP status, rendered as ``Status``.

The real kube-apiserver answers every failure with a ``meta.k8s.io/v1`` ``Status``
object whose ``reason`` and ``code`` clients branch on (``IsNotFound``,
``IsConflict``, ``IsGone`` ...).  The store raises these exceptions; the HTTP
layer and the watch stream only call :meth:`ApiError.status` to render them, so
the wording lives in one place and matches the real server's.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar


class ApiError(Exception):
    """A failed request, carrying exactly what goes into the ``Status`` object."""

    code: ClassVar[int] = 500
    reason: ClassVar[str] = "InternalError"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        """The ``Status`` object the real server would send for this error."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


class BadRequest(ApiError):
    code = 400
    reason = "BadRequest"


class Forbidden(ApiError):
    code = 403
    reason = "Forbidden"


class NotFound(ApiError):
    code = 404
    reason = "NotFound"


class MethodNotAllowed(ApiError):
    code = 405
    reason = "MethodNotAllowed"


class NotAcceptable(ApiError):
    code = 406
    reason = "NotAcceptable"


class Conflict(ApiError):
    code = 409
    reason = "Conflict"


class AlreadyExists(ApiError):
    code = 409
    reason = "AlreadyExists"


class Gone(ApiError):
    """410: the requested resourceVersion has been compacted away (``Expired``)."""

    code = 410
    reason = "Expired"


class UnsupportedMediaType(ApiError):
    code = 415
    reason = "UnsupportedMediaType"


class Timeout(ApiError):
    """504: the server could not answer in time (the message starts with ``Timeout: ``)."""

    code = 504
    reason = "Timeout"


def too_large_resource_version(requested: int, current: int) -> Timeout:
    """What a real server answers for a resourceVersion newer than any it has (after waiting
    a few seconds for its watch cache to catch up): client-go recognises it by the cause's
    reason ``ResourceVersionTooLarge`` and relists from scratch (``resourceVersion=""``)."""
    return Timeout(
        f"Timeout: Too large resource version: {requested}, current: {current}",
        details={
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        },
    )


class Invalid(ApiError):
    code = 422
    reason = "Invalid"


def details(kind: str, name: str, group: str = "") -> dict[str, Any]:
    """The ``details`` block the real server attaches to per-object errors."""
    out: dict[str, Any] = {"name": name, "kind": kind}
    if group:
        out["group"] = group
    return out


def field_value(value: Any) -> str:
    """A value as ``field.Invalid`` prints it: strings quoted, lists as JSON, numbers bare."""
    return json.dumps(value, separators=(",", ":"))


def invalid(kind: str, name: str, causes: list[tuple[str, str, str]], *, group: str = "") -> Invalid:
    """A 422 ``Invalid`` like ``errors.NewInvalid``: ``causes`` are (reason, field, detail),
    e.g. ``("FieldValueInvalid", "spec.clusterIPs", 'Invalid value: ["x"]: ...')``."""
    texts = [f"{field}: {detail}" for _, field, detail in causes]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    body = details(kind, name, group)
    body["causes"] = [{"reason": r, "message": m, "field": f} for r, f, m in causes]
    return Invalid(f'{kind}{"." + group if group else ""} "{name}" is invalid: {summary}', details=body)
