"""Raw API calls: responses read as plain JSON, errors as one small hierarchy.

kubernetes_asyncio's generated methods are used with ``_preload_content=False``:
they still build the URL, the query string and the authentication headers
(including in-cluster token refresh), but hand back the bare aiohttp response,
which we read ourselves. That keeps objects as dicts and puts the status check
in one place (the generated code only checks it when it deserialises).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import aiohttp

Obj = dict[str, Any]
"""A Kubernetes object as decoded JSON."""


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, message: str, *, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if reason else f"{status}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    """404: the object (or its namespace) does not exist."""


class Gone(ApiError):
    """410: the resourceVersion (or ``continue`` token) is older than the server's history."""


class TooLargeResourceVersion(ApiError):
    """504 ``Too large resource version``: the server has not reached the version asked for
    (and, if its store was restored from a backup, never will)."""


def _too_large(message: str, body: Any) -> bool:
    # How client-go recognises it: the cause ResourceVersionTooLarge, or (servers before
    # 1.18.6) the words in a cause's message or in the message.
    details = body.get("details") if isinstance(body, dict) else None
    causes = details.get("causes") if isinstance(details, dict) else None
    for cause in causes if isinstance(causes, list) else []:
        if isinstance(cause, dict) and (
            cause.get("reason") == "ResourceVersionTooLarge" or cause.get("message") == "Too large resource version"
        ):
            return True
    return "Too large resource version" in message


def error_from_status(status: int, body: Any) -> ApiError:
    """The error for an HTTP status and a ``Status`` body (or anything else)."""
    message, reason = "", ""
    if isinstance(body, dict):
        message = str(body.get("message", ""))
        reason = str(body.get("reason", ""))
    elif body:
        message = str(body)[:500]
    cls = {404: NotFound, 410: Gone}.get(status, ApiError)
    if status == 504 and _too_large(message, body):
        cls = TooLargeResourceVersion
    return cls(status, message, reason=reason)


async def read_json(response: Any) -> Obj:
    """Read an aiohttp response (from a ``_preload_content=False`` call) as a JSON object.

    Raises :class:`ApiError` for a non-2xx status; always releases the connection.
    """
    raw = await _read_ok(response)
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = raw.decode(errors="replace")
    if not isinstance(body, dict):
        raise ApiError(int(response.status), f"expected a JSON object, got {type(body).__name__}")
    return body


async def read_list(response: Any, top: dict[str, Any]) -> Iterator[Any]:
    """Read an aiohttp response holding a list (``{"metadata": ..., "items": [...]}``): its
    items, decoded one at a time as they are taken; the other members of the object go into
    ``top`` (complete once the items are). A server answers an informer's first list whole
    (``resourceVersion=0``, from its watch cache): 100,000 objects decoded at once took
    hundreds of MiB that the process kept. Raises as :func:`read_json`; a malformed body
    raises ``ValueError`` while its items are taken."""
    raw = await _read_ok(response)
    return list_items(raw.decode() if raw else "{}", top)


async def _read_ok(response: Any) -> bytes:
    """The body of a 2xx response; an error status raises (see :func:`error_from_status`)."""
    async with response:
        raw: bytes = await response.read()
        status = int(response.status)
    if not 200 <= status <= 299:
        try:
            body: Any = json.loads(raw) if raw else {}
        except ValueError:
            body = raw.decode(errors="replace")
        raise error_from_status(status, body)
    return raw


_DECODE = json.JSONDecoder().raw_decode
_SPACE = re.compile(r"[ \t\n\r]*")


def list_items(text: str, top: dict[str, Any]) -> Iterator[Any]:
    """The elements of the ``items`` array of the JSON object ``text``, one at a time (each
    decoded when it is reached); every other member of the object into ``top``. What
    ``json.loads(text)`` holds, without holding it all: a property test compares the two."""
    space = _SPACE.match

    def expect(i: int, chars: str) -> tuple[str, int]:
        c = text[i : i + 1]
        if not c or c not in chars:
            raise ValueError(f"malformed list: expected one of {chars!r} at {i}, found {c!r}")
        return c, space(text, i + 1).end()  # type: ignore[union-attr]

    _, i = expect(space(text, 0).end(), "{")  # type: ignore[union-attr]
    if text[i : i + 1] == "}":
        i = space(text, i + 1).end()  # type: ignore[union-attr]
    else:
        while True:
            key, i = _DECODE(text, i)
            if not isinstance(key, str):
                raise ValueError(f"malformed list: a member name at {i} is no string")
            _, i = expect(space(text, i).end(), ":")  # type: ignore[union-attr]
            if key == "items" and text[i : i + 1] == "[":
                top.setdefault("items", None)
                _, i = expect(i, "[")
                if text[i : i + 1] == "]":
                    i += 1
                else:
                    while True:
                        item, i = _DECODE(text, i)
                        yield item
                        c, i = expect(space(text, i).end(), ",]")  # type: ignore[union-attr]
                        if c == "]":
                            break
            else:
                top[key], i = _DECODE(text, i)
            c, i = expect(space(text, i).end(), ",}")  # type: ignore[union-attr]
            if c == "}":
                break
    if i != len(text):
        raise ValueError(f"malformed list: extra data at {i}")


async def serves_resource(api: Any, group_version: str, resource: str, *, request_timeout: float = 10.0) -> bool:
    """Whether the server serves ``resource`` in ``group_version`` (discovery, as kubectl asks).

    ``GET /apis/<group_version>`` (without the trailing slash the generated client
    adds: the path RBAC sees and grants); a 404 or a list without the resource means
    no. Any other error raises: the caller retries. ``api`` is a kubernetes_asyncio
    ``ApiClient``.
    """
    try:
        response = await api.call_api(
            f"/apis/{group_version}",
            "GET",
            {},
            [],
            {"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(total=request_timeout),
        )
        body = await read_json(response)
    except NotFound:
        return False
    resources = body.get("resources")
    return any(isinstance(r, dict) and r.get("name") == resource for r in resources or [])
