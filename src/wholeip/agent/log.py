"""Logging: structlog, one JSON object a line by default, a console renderer for humans.

Context variables are merged into every line, so binding ``sync_id`` at the
start of a sync (see :mod:`wholeip.agent.reconcile`) tags every line that sync writes,
including lines written from the worker thread that runs the commit
(``asyncio.to_thread`` copies the context).

Libraries that log through the standard library (aiohttp, kubernetes_asyncio)
are routed through the same renderer, at ``warning`` or above unless the agent
runs at ``debug``: their info lines are noise next to the agent's own.

Both paths write through :class:`LineWriter`: each record is one ``write`` of
the whole line, newline included, under one lock shared by the two paths.
Lines come from several threads (the sync's worker thread, the conntrack
cleaner), and structlog's ``PrintLogger`` writes the newline separately under a
lock of its own, so a library's line could land between a record and its
newline and glue the two into one line no JSON parser reads.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# Re-entrant: logging.Handler.handle() holds it around emit(), which writes.
_WRITE_LOCK = threading.RLock()


class LineWriter:
    """A structlog logger that writes each rendered record as one whole line."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def msg(self, message: str) -> None:
        with _WRITE_LOCK:
            self._file.write(message + "\n")
            self._file.flush()

    debug = info = warning = warn = error = critical = exception = fatal = msg


class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The standard library's stream handler, under the lock :class:`LineWriter` takes."""

    def createLock(self) -> None:
        self.lock = _WRITE_LOCK


def configure(*, format: str = "json", level: str = "info") -> None:
    """Configure structlog and the standard library's logging for the whole process."""
    numeric = LEVELS.get(level.lower(), logging.INFO)
    base: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if format == "console":
        tail: list[Any] = []
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        tail = [structlog.processors.dict_tracebacks]
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*base, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: LineWriter(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = _LineHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*base, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if numeric <= logging.DEBUG else max(numeric, logging.WARNING))
