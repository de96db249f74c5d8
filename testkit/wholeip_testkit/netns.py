"""Run Python code inside a network namespace, from one dedicated thread.

A thread's network namespace is its own (``setns(2)`` changes only the calling
thread), and a netlink socket belongs to the namespace it was opened in. So a
single-thread executor whose thread entered the namespace first, and that
creates the libnftables context itself, gives a backend that talks to that
namespace's nf_tables while the test process stays where it is.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import uuid
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from wholeip.nft.doc import Elem, JSONObj, TableDoc

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsThread:
    """One thread living in the network namespace at ``path``: :meth:`call` runs a function
    there (netlink sockets, libnftables contexts opened in it belong to that namespace)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, initializer=_setns, initargs=(path,))

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in the namespace's thread and return its result."""
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class Netns(NetnsThread):
    """A named network namespace (``ip netns add``), removed on close."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"wip-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        super().__init__(f"/var/run/netns/{self.name}")

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], check=False, **kwargs)

    def close(self) -> None:
        super().close()
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NetnsBackend:
    """A :class:`~wholeip.nft.libnft.LibnftBackend` living in ``netns``'s thread."""

    def __init__(self, netns: NetnsThread) -> None:
        from wholeip.nft.libnft import LibnftBackend

        self._ns = netns
        self._inner = netns.call(LibnftBackend)

    def list_table(self, family: str, name: str) -> list[JSONObj] | None:
        return self._ns.call(self._inner.list_table, family, name)

    def read_table(
        self, family: str, name: str, *, known: Mapping[str, AbstractSet[Elem]] | None = None
    ) -> TableDoc | None:
        return self._ns.call(self._inner.read_table, family, name, known=known)

    def transact(self, commands: Sequence[JSONObj]) -> None:
        self._ns.call(self._inner.transact, commands)

    def transact_text(self, text: str) -> None:
        self._ns.call(self._inner.transact_text, text)

    def check(self, commands: Sequence[JSONObj]) -> None:
        self._ns.call(self._inner.check, commands)

    def declare(self, script: str) -> None:
        self._ns.call(self._inner.declare, script)
