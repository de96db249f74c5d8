"""One-line traffic checks over a :class:`~wholeip_testkit.topology.Topology`.

Each helper starts the probes of :mod:`wholeip_testkit.probe` in the right
namespaces and returns a frozen result with *both* ends' view, so a test reads::

    r = exchange(topo, client="ext", server="pod_a", addr="203.0.113.10", proto="tcp")
    assert r.ok and r.server_peer == topo.addr("ext", 4) and r.client_reply_from == "203.0.113.10"

Servers are started first and the client only once the server has printed its
``ready`` line (read with a deadline, never a sleep). Ports are random so that
consecutive checks never meet a TIME_WAIT socket or a conntrack entry of an
earlier check with the same 5-tuple, unless a test asks for that on purpose
(``port``/``sport``, e.g. to prove that stale conntrack entries are flushed).
"""

from __future__ import annotations

import json
import random
import selectors
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Literal

from wholeip_testkit.topology import Role, Topology

Proto = Literal["tcp", "udp"]
PROBE = "wholeip_testkit.probe"


class ProbeError(RuntimeError):
    """A probe did not produce the JSON it promised (crashed, or never got ready)."""


@dataclass(frozen=True)
class Exchange:
    """One request/echo between a client and a server."""

    ok: bool
    """The client got its echo back and the server saw a peer."""
    server_peer: str | None
    """The source address the server saw (the real client, or a NAT)."""
    server_local: str | None
    """The destination address the packet had when it reached the server."""
    client_local: str | None
    """The client's own address for the flow."""
    client_reply_from: str | None
    """Where the reply came from (UDP: recvfrom; TCP: the connected peer)."""
    error: str | None
    server: dict[str, Any]
    client: dict[str, Any]


@dataclass(frozen=True)
class Ping:
    ok: bool
    reply_from: str | None
    output: list[str]


@dataclass(frozen=True)
class Bulk:
    """A bulk TCP transfer: ``ok`` when the receiver got every byte in time."""

    ok: bool
    received: int
    sender: dict[str, Any]
    receiver: dict[str, Any]


def random_port() -> int:
    return random.randint(20000, 60000)


def family_of(addr: str) -> Literal[4, 6]:
    return 6 if ":" in addr else 4


def _probe_argv(topo: Topology, role: Role, *args: str) -> list[str]:
    return topo.python(role, PROBE, args)


def _read_json_line(proc: subprocess.Popen[str], deadline: float) -> dict[str, Any]:
    """The next JSON line of a probe, or :class:`ProbeError` at the deadline."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProbeError("probe produced no output before its deadline")
            if sel.select(remaining):
                line = proc.stdout.readline()
                if not line:
                    err = proc.stderr.read() if proc.stderr else ""
                    raise ProbeError(f"probe exited without output: {err.strip()}")
                parsed: dict[str, Any] = json.loads(line)
                return parsed


def _await_ready(proc: subprocess.Popen[str], what: str) -> None:
    """Wait (10 s at most) for a probe's ``ready`` line; raise ProbeError, naming ``what``, otherwise."""
    ready = _read_json_line(proc, time.monotonic() + 10.0)
    if ready.get("event") != "ready":
        raise ProbeError(f"{what}: {ready}")


def _parse_last(stdout: str, what: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ProbeError(f"{what} printed nothing")
    parsed: dict[str, Any] = json.loads(lines[-1])
    return parsed


def start_server(
    topo: Topology,
    role: Role,
    *,
    proto: Proto,
    family: Literal[4, 6],
    port: int,
    timeout: float,
    count: int = 1,
) -> subprocess.Popen[str]:
    """Start an echo server and return once it listens."""
    proc = topo.popen(
        role,
        _probe_argv(
            topo,
            role,
            "serve",
            f"--proto={proto}",
            f"--family={family}",
            f"--port={port}",
            f"--count={count}",
            f"--timeout={timeout}",
        ),
    )
    try:
        _await_ready(proc, f"server in {role} not ready")
    except ProbeError:
        proc.kill()
        raise
    return proc


def exchange(
    topo: Topology,
    *,
    client: Role,
    server: Role,
    addr: str,
    proto: Proto = "tcp",
    port: int | None = None,
    sport: int = 0,
    timeout: float = 2.0,
    server_port: int | None = None,
) -> Exchange:
    """Client in ``client`` sends to ``addr`` (which should lead to ``server``); the server
    listens on ``server_port`` (default: the same port, for a NAT that translates ports)."""
    port = port or random_port()
    family = family_of(addr)
    srv = start_server(topo, server, proto=proto, family=family, port=server_port or port, timeout=timeout + 1.0)
    cli = topo.exec(
        client,
        _probe_argv(
            topo,
            client,
            "client",
            f"--proto={proto}",
            f"--addr={addr}",
            f"--port={port}",
            f"--sport={sport}",
            f"--timeout={timeout}",
        ),
        timeout=timeout + 10.0,
    )
    if cli.returncode != 0:
        srv.kill()
        raise ProbeError(f"client in {client} failed: {cli.stderr.strip()}")
    client_result = _parse_last(cli.stdout, "client")
    # The server exits after its one peer or at its own deadline.
    try:
        srv_out, _ = srv.communicate(timeout=timeout + 5.0)
    except subprocess.TimeoutExpired:
        srv.kill()
        srv_out, _ = srv.communicate()
    server_events = [json.loads(line) for line in srv_out.splitlines() if line.strip()]
    peers = [e for e in server_events if e.get("event") == "peer"]
    server_result: dict[str, Any] = peers[0] if peers else (server_events or [{}])[-1]
    return Exchange(
        ok=bool(client_result.get("ok")) and bool(peers),
        server_peer=server_result.get("peer"),
        server_local=server_result.get("local"),
        client_local=client_result.get("local"),
        client_reply_from=client_result.get("reply_from"),
        error=client_result.get("error"),
        server=server_result,
        client=client_result,
    )


def ping(topo: Topology, role: Role, addr: str, *, timeout: float = 1.0) -> Ping:
    """One ICMP echo from ``role`` to ``addr``."""
    proc = topo.exec(
        role,
        _probe_argv(topo, role, "ping", f"--addr={addr}", f"--timeout={timeout}"),
        timeout=timeout + 10.0,
    )
    result = _parse_last(proc.stdout, "ping")
    return Ping(ok=bool(result["ok"]), reply_from=result["reply_from"], output=result["output"])


def bulk(
    topo: Topology,
    *,
    sender: Role,
    receiver: Role,
    initiator: Literal["sender", "receiver"],
    addr: str,
    nbytes: int = 2_000_000,
    port: int | None = None,
    timeout: float = 10.0,
) -> Bulk:
    """Send ``nbytes`` over TCP from ``sender`` to ``receiver``.

    ``initiator`` says who connects: ``addr`` is the address the initiator
    connects to (the other side listens on the wildcard address).
    """
    port = port or random_port()
    family = family_of(addr)
    listener, connector = (receiver, sender) if initiator == "sender" else (sender, receiver)
    listen_role = "--send" if listener == sender else "--recv"
    connect_role = "--send" if connector == sender else "--recv"
    lproc = topo.popen(
        listener,
        _probe_argv(
            topo,
            listener,
            "bulk",
            "--listen",
            f"--family={family}",
            f"--port={port}",
            f"{listen_role}={nbytes}",
            f"--timeout={timeout}",
        ),
    )
    try:
        _await_ready(lproc, f"bulk listener in {listener} not ready")
    except ProbeError:
        lproc.kill()
        raise
    cproc = topo.exec(
        connector,
        _probe_argv(
            topo,
            connector,
            "bulk",
            f"--connect={addr}",
            f"--port={port}",
            f"{connect_role}={nbytes}",
            f"--timeout={timeout}",
        ),
        timeout=timeout + 10.0,
    )
    connector_result = _parse_last(cproc.stdout, "bulk connector")
    try:
        lout, _ = lproc.communicate(timeout=timeout + 5.0)
    except subprocess.TimeoutExpired:
        lproc.kill()
        lout, _ = lproc.communicate()
    listener_result = _parse_last(lout, "bulk listener")
    send_r, recv_r = (listener_result, connector_result) if listener == sender else (connector_result, listener_result)
    received = int(recv_r.get("bytes", 0))
    return Bulk(ok=received == nbytes, received=received, sender=send_r, receiver=recv_r)


# -- long-lived streams ----------------------------------------------------------


@dataclass(frozen=True)
class StreamResult:
    """What a :class:`Stream` saw, from both ends."""

    seconds: float
    udp_sent: int
    udp_lost: int
    """Sequence numbers the server never received."""
    udp_unechoed: int
    """Sequence numbers whose echo never came back to the client (lost either way)."""
    udp_lost_sample: list[int]
    """The first of the numbers lost (at most 50 from the server, then any tail)."""
    udp_duplicates: int
    udp_max_gap_ms: float
    """The longest silence between two UDP echoes while sending (the disruption a client notices)."""
    tcp_sent: int
    tcp_echoed: int
    tcp_error: str | None
    tcp_connections: int
    """Connections the server saw: 1 when the one connection lasted."""
    tcp_out_of_order: int
    tcp_max_gap_ms: float
    server_peers: list[str]
    """Source addresses the server saw (UDP and TCP)."""
    server_locals: list[str]
    """Destination addresses the server saw (UDP and TCP)."""
    client_reply_from: list[str]
    """Where the client's UDP echoes came from."""
    client: dict[str, Any]
    server: dict[str, Any]

    @property
    def tcp_intact(self) -> bool:
        """The one TCP connection carried every number, in order, and never broke."""
        return (
            self.tcp_error is None
            and self.tcp_connections == 1
            and self.tcp_out_of_order == 0
            and self.tcp_sent > 0
            and self.tcp_echoed == self.tcp_sent
        )

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing duplicated, the TCP connection intact."""
        return not self.udp_lost and not self.udp_unechoed and not self.udp_duplicates and self.tcp_intact

    def summary(self) -> str:
        return (
            f"{self.seconds:.1f}s: UDP {self.udp_sent} sent, {self.udp_lost} lost, "
            f"{self.udp_unechoed} unechoed, {self.udp_duplicates} duplicates, "
            f"longest gap {self.udp_max_gap_ms:.0f} ms; TCP {self.tcp_echoed}/{self.tcp_sent} echoed, "
            f"error {self.tcp_error}, longest gap {self.tcp_max_gap_ms:.0f} ms"
        )


class Stream:
    """A TCP connection and a UDP flow, a sequence number every ``interval``, until :meth:`stop`.

    ``client`` sends to ``addr`` (which should lead to ``server``); the server
    echoes. Use as a context manager, or call :meth:`stop` (which also ends
    both probes). :meth:`status` reads the client's counters while it runs, so
    a test can wait for "N more echoes" instead of sleeping.
    """

    def __init__(
        self,
        topo: Topology,
        *,
        client: Role,
        server: Role,
        addr: str,
        port: int | None = None,
        interval: float = 0.01,
        timeout: float = 120.0,
    ) -> None:
        self.topo = topo
        self.port = port or random_port()
        self.result: StreamResult | None = None
        self._server = topo.popen(
            server,
            _probe_argv(
                topo,
                server,
                "stream-serve",
                f"--family={family_of(addr)}",
                f"--port={self.port}",
                f"--timeout={timeout + 10.0}",
            ),
            stdin=subprocess.PIPE,
        )
        self._client: subprocess.Popen[str] | None = None
        try:
            _await_ready(self._server, f"stream server in {server} not ready")
            self._client = topo.popen(
                client,
                _probe_argv(
                    topo,
                    client,
                    "stream",
                    f"--addr={addr}",
                    f"--port={self.port}",
                    f"--interval={interval}",
                    f"--timeout={timeout}",
                ),
                stdin=subprocess.PIPE,
            )
            _await_ready(self._client, f"stream client in {client} did not start")
        except BaseException:
            self._kill()
            raise

    def _command(self, proc: subprocess.Popen[str], command: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(command + "\n")
        proc.stdin.flush()

    def status(self) -> dict[str, Any]:
        """The client's counters now: ``{"tcp": {"sent", "echoed", "error" ...}, "udp": {...}}``."""
        assert self._client is not None
        self._command(self._client, "status")
        line = _read_json_line(self._client, time.monotonic() + 5.0)
        if line.get("event") != "status":
            raise ProbeError(f"stream client answered {line}")
        return line

    def echoed(self) -> int:
        """UDP echoes received so far."""
        return int(self.status()["udp"]["echoed"])

    def stop(self) -> StreamResult:
        """End the stream (the client first, so the server sees every last number) and report."""
        if self.result is not None:
            return self.result
        assert self._client is not None
        try:
            self._command(self._client, "stop")
            client = self._last_report(self._client, "stream client")
            self._command(self._server, "stop")
            server = self._last_report(self._server, "stream server")
        finally:
            self._kill()
        sent = int(client.get("udp", {}).get("sent", 0))
        udp = server.get("udp", {})
        top = int(udp.get("max_seq", -1)) + 1
        tail = list(range(max(top, 0), sent))
        conns = server.get("tcp", [])
        tcp = client.get("tcp", {})
        cu = client.get("udp", {})
        self.result = StreamResult(
            seconds=float(client.get("seconds", 0.0)),
            udp_sent=sent,
            udp_lost=int(udp.get("missing_count", 0)) + len(tail),
            udp_unechoed=int(cu.get("unechoed_count", 0)),
            udp_lost_sample=[*udp.get("missing", []), *tail[:50]],
            udp_duplicates=int(udp.get("duplicates", 0)) + int(cu.get("duplicates", 0)),
            udp_max_gap_ms=float(cu.get("max_gap_ms", 0.0)),
            tcp_sent=int(tcp.get("sent", 0)),
            tcp_echoed=int(tcp.get("echoed", 0)),
            tcp_error=client.get("error") or tcp.get("error"),
            tcp_connections=len(conns),
            tcp_out_of_order=int(tcp.get("out_of_order", 0)) + sum(int(c.get("out_of_order", 0)) for c in conns),
            tcp_max_gap_ms=float(tcp.get("max_gap_ms", 0.0)),
            server_peers=sorted({*udp.get("peers", []), *(c["peer"] for c in conns)}),
            server_locals=sorted({*(a for a in udp.get("locals", []) if a), *(c["local"] for c in conns)}),
            client_reply_from=list(cu.get("reply_from", [])),
            client=client,
            server=server,
        )
        return self.result

    @staticmethod
    def _last_report(proc: subprocess.Popen[str], what: str) -> dict[str, Any]:
        try:
            out, err = proc.communicate(timeout=15.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        lines: list[dict[str, Any]] = [json.loads(x) for x in out.splitlines() if x.strip().startswith("{")]
        reports = [r for r in lines if r.get("event") == "report"]
        if not reports:
            raise ProbeError(f"{what} printed no report: {err.strip()}")
        return reports[-1]

    def _kill(self) -> None:
        for proc in (self._client, self._server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._kill()
