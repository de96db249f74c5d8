"""Log output: one JSON object a line, with the sync id on every line of a sync.

Run in a subprocess: logging configuration is process-wide, and the test
process's own loggers must not be rebound to a captured stream.
"""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import asyncio, logging, structlog
from wholeip.agent import log
log.configure(format={fmt!r}, level="info")
logger = structlog.get_logger("t")
with structlog.contextvars.bound_contextvars(sync_id="abc123"):
    logger.info("synced", changes=2)
    logger.debug("hidden")
    logging.getLogger("aiohttp.access").info("library noise")
    logging.getLogger("kubernetes_asyncio").warning("library warning")
logger.info("outside")
"""


def run(fmt: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(fmt=fmt)], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stderr.strip().splitlines()


def test_json_lines_carry_the_sync_id() -> None:
    lines = [json.loads(line) for line in run("json")]
    assert [line["event"] for line in lines] == ["synced", "library warning", "outside"]
    synced, library, outside = lines
    assert synced["sync_id"] == "abc123"
    assert synced["level"] == "info"
    assert synced["changes"] == 2
    assert synced["timestamp"].endswith("Z")
    assert library["sync_id"] == "abc123"  # standard-library loggers get the context too
    assert library["logger"] == "kubernetes_asyncio"
    assert "sync_id" not in outside


def test_console_format_is_for_humans() -> None:
    lines = run("console")
    assert len(lines) == 3
    assert "synced" in lines[0]
    assert "sync_id=abc123" in lines[0]
    assert not lines[0].startswith("{")


THREADED = """
import logging, threading, structlog
from wholeip.agent import log
log.configure(format="json", level="debug")
ours = structlog.get_logger("t")
library = logging.getLogger("asyncio")
start = threading.Barrier(4)

def write(n):
    start.wait()
    for i in range(2000):
        if n % 2:
            ours.info("agent line", n=n, i=i)
        else:
            library.debug("library line %d %d", n, i)

threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_lines_from_threads_never_share_a_line() -> None:
    # The agent's own lines and a library's, written from several threads at once
    # (the sync's worker thread and the conntrack cleaner do): every line is one record.
    out = subprocess.run([sys.executable, "-c", THREADED], capture_output=True, text=True, check=True, timeout=120)
    lines = out.stderr.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 8000
    assert sum(1 for r in records if r["event"] == "agent line") == 4000
