"""Real-socket traffic probes, run inside a network namespace; every result is JSON.

Usage (one JSON object per line on stdout)::

    ip netns exec NS python -m wholeip_testkit.probe serve  --proto tcp --family 4 --port 8080
    ip netns exec NS python -m wholeip_testkit.probe client --proto udp --addr 203.0.113.10 --port 8080
    ip netns exec NS python -m wholeip_testkit.probe ping   --addr 2001:db8:100::10
    ip netns exec NS python -m wholeip_testkit.probe bulk   --listen --family 4 --port 9000 --recv 2000000
    ip netns exec NS python -m wholeip_testkit.probe bulk   --connect 198.51.100.2 --port 9000 --send 2000000
    ip netns exec NS python -m wholeip_testkit.probe stream-serve --family 4 --port 7000
    ip netns exec NS python -m wholeip_testkit.probe stream --addr 203.0.113.10 --port 7000 --interval 0.01

Why it is built this way:

* Both ends report what *they* saw, because NAT bugs are asymmetric: a
  connection can work while the server sees the wrong peer (a masquerade that
  should not be there) or the reply comes from the wrong address.
* Servers print ``{"event": "ready"}`` once the socket listens, so a caller
  waits for that line instead of sleeping; every socket operation has a
  timeout and every command an overall deadline, so a broken datapath ends in
  a JSON ``"error"`` and never in a hung test.
* UDP servers read the datagram's destination address with ``IP_PKTINFO`` /
  ``IPV6_RECVPKTINFO`` and send the echo from exactly that address, like a
  well-behaved UDP service would; the UDP client uses an *unconnected* socket
  and ``recvfrom`` so that a reply from an unexpected address is reported
  rather than silently dropped by the kernel.
* TCP's peer is fixed by the handshake, so the client reports the connected
  peer and the fact that the echo arrived; the server's view is the real check.
* Only the standard library is imported: the probe starts in tens of
  milliseconds, which keeps a traffic matrix of a hundred exchanges fast.
* ``stream``/``stream-serve`` are long-lived: one TCP connection and one UDP
  flow carrying a sequence number every ``--interval``, echoed back, for as
  long as the caller wants (an agent restart, an API server outage ...). They
  read commands on stdin, one a line: ``status`` prints the counters so far,
  ``stop`` (or end of input) ends the stream and prints the report: every
  sequence number missing on either side, duplicates, and the longest silence
  between two echoes.
* Exit status is 0 whenever a JSON result was printed (including failures to
  connect); non-zero only for usage errors or crashes.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import selectors
import socket
import struct
import subprocess
import sys
import time
from typing import Any, Final

# Linux values; older Pythons do not export all of them.
IP_PKTINFO: Final = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO: Final = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO: Final = getattr(socket, "IPV6_PKTINFO", 50)
_CHUNK: Final = 65536


def emit(obj: dict[str, Any]) -> None:
    """One JSON object per line, flushed at once (the caller waits for it)."""
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def _family(addr: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def _af(family: int) -> int:
    return socket.AF_INET6 if family == 6 else socket.AF_INET


def _wildcard(family: int) -> str:
    return "::" if family == 6 else "0.0.0.0"


def _listen_socket(kind: int, family: int, port: int, bind: str | None) -> socket.socket:
    sock = socket.socket(_af(family), kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == 6:
        # One family per probe: a v6 wildcard socket must not also take v4.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((bind or _wildcard(family), port))
    return sock


# -- serve ---------------------------------------------------------------------


def _pktinfo_dst(family: int, ancdata: list[tuple[int, int, bytes]]) -> str | None:
    """The datagram's destination address from ancillary data."""
    for level, ctype, data in ancdata:
        if family == 4 and level == socket.IPPROTO_IP and ctype == IP_PKTINFO:
            # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
            return socket.inet_ntop(socket.AF_INET, data[8:12])
        if family == 6 and level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO:
            # struct in6_pktinfo { in6_addr addr; int ifindex; }
            return socket.inet_ntop(socket.AF_INET6, data[:16])
    return None


def _pktinfo_src(family: int, addr: str) -> list[tuple[int, int, bytes]]:
    """Ancillary data that makes ``sendmsg`` use ``addr`` as source."""
    if family == 4:
        return [
            (
                socket.IPPROTO_IP,
                IP_PKTINFO,
                struct.pack("=i4s4s", 0, socket.inet_pton(socket.AF_INET, addr), bytes(4)),
            )
        ]
    return [
        (
            socket.IPPROTO_IPV6,
            IPV6_PKTINFO,
            struct.pack("=16si", socket.inet_pton(socket.AF_INET6, addr), 0),
        )
    ]


def serve(args: argparse.Namespace) -> None:
    """Accept ``--count`` peers (TCP) or datagrams (UDP), report each and echo."""
    deadline = time.monotonic() + args.timeout
    kind = socket.SOCK_STREAM if args.proto == "tcp" else socket.SOCK_DGRAM
    sock = _listen_socket(kind, args.family, args.port, args.bind)
    if args.proto == "tcp":
        sock.listen(16)
    elif args.family == 4:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    emit({"event": "ready", "proto": args.proto, "family": args.family, "port": args.port})
    seen = 0
    while seen < args.count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            emit({"event": "timeout", "seen": seen})
            return
        sock.settimeout(remaining)
        try:
            if args.proto == "tcp":
                conn, peer = sock.accept()
                with conn:
                    conn.settimeout(max(0.1, deadline - time.monotonic()))
                    local = conn.getsockname()
                    data = conn.recv(_CHUNK)
                    conn.sendall(data)
                emit(
                    {
                        "event": "peer",
                        "peer": peer[0],
                        "peer_port": peer[1],
                        "local": local[0],
                        "data": data.decode(errors="replace"),
                    }
                )
            else:
                data, ancdata, _flags, peer = sock.recvmsg(_CHUNK, 256)
                dst = _pktinfo_dst(args.family, ancdata)
                anc = _pktinfo_src(args.family, dst) if dst else []
                sock.sendmsg([data], anc, 0, peer)
                emit(
                    {
                        "event": "peer",
                        "peer": peer[0],
                        "peer_port": peer[1],
                        "local": dst,
                        "data": data.decode(errors="replace"),
                    }
                )
        except TimeoutError:
            continue  # the loop head reports the timeout
        except OSError as exc:
            emit({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        seen += 1
    emit({"event": "done", "seen": seen})


# -- client --------------------------------------------------------------------


def _route_source(addr: str, port: int) -> str:
    """The source address the kernel picks for ``addr`` (a UDP connect sends nothing)."""
    with socket.socket(_family(addr), socket.SOCK_DGRAM) as probe:
        probe.connect((addr, port))
        return str(probe.getsockname()[0])


def client(args: argparse.Namespace) -> None:
    """Send one message and wait for its echo; report both local and reply address."""
    fam = _family(args.addr)
    message = args.message.encode()
    result: dict[str, Any] = {"ok": False, "proto": args.proto, "addr": args.addr}
    try:
        if args.proto == "tcp":
            with socket.socket(fam, socket.SOCK_STREAM) as sock:
                sock.settimeout(args.timeout)
                if args.bind or args.sport:
                    sock.bind((args.bind or _wildcard(6 if fam == socket.AF_INET6 else 4), args.sport))
                sock.connect((args.addr, args.port))
                result["local"], result["local_port"] = sock.getsockname()[:2]
                result["reply_from"] = sock.getpeername()[0]
                sock.sendall(message)
                echo = b""
                while len(echo) < len(message):
                    chunk = sock.recv(_CHUNK)
                    if not chunk:
                        break
                    echo += chunk
        else:
            with socket.socket(fam, socket.SOCK_DGRAM) as sock:
                sock.settimeout(args.timeout)
                local = args.bind or _route_source(args.addr, args.port)
                sock.bind((local, args.sport))
                result["local"], result["local_port"] = sock.getsockname()[:2]
                sock.sendto(message, (args.addr, args.port))
                echo, peer = sock.recvfrom(_CHUNK)
                result["reply_from"] = peer[0]
                result["reply_port"] = peer[1]
        result["echo"] = echo.decode(errors="replace")
        result["ok"] = echo == message
    except (TimeoutError, OSError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    emit(result)


# -- ping ----------------------------------------------------------------------

_PING_FROM = re.compile(r"bytes from ([0-9a-fA-F:.]+?)(?:%\S+)?: icmp_seq")


def ping(args: argparse.Namespace) -> None:
    """One ICMP echo with the system's ``ping``; reports the reply's source."""
    argv = ["ping", "-n", "-c1", f"-W{args.timeout:g}", args.addr]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    match = _PING_FROM.search(proc.stdout)
    emit(
        {
            "ok": proc.returncode == 0 and match is not None,
            "addr": args.addr,
            "reply_from": match.group(1) if match else None,
            "output": proc.stdout.strip().splitlines()[:3],
        }
    )


# -- bulk ----------------------------------------------------------------------


def _bulk_send(conn: socket.socket, nbytes: int, deadline: float) -> int:
    """Send ``nbytes``, close our side, wait for the receiver to close (= it has all)."""
    block = b"x" * _CHUNK
    sent = 0
    while sent < nbytes:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        sent += conn.send(block[: min(_CHUNK, nbytes - sent)])
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(max(0.01, deadline - time.monotonic()))
    while conn.recv(_CHUNK):
        pass
    return sent


def _bulk_recv(conn: socket.socket, nbytes: int, deadline: float) -> int:
    received = 0
    while received < nbytes:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = conn.recv(_CHUNK)
        if not chunk:
            break
        received += len(chunk)
    return received


def bulk(args: argparse.Namespace) -> None:
    """Move ``--send``/``--recv`` bytes over one TCP connection before a deadline."""
    deadline = time.monotonic() + args.timeout
    start = time.monotonic()
    result: dict[str, Any] = {"ok": False, "bytes": 0}
    nbytes = args.send if args.send is not None else args.recv
    try:
        if args.listen:
            lsock = _listen_socket(socket.SOCK_STREAM, args.family, args.port, args.bind)
            lsock.listen(1)
            emit({"event": "ready", "port": args.port})
            lsock.settimeout(args.timeout)
            conn, peer = lsock.accept()
            lsock.close()
        else:
            conn = socket.create_connection((args.connect, args.port), timeout=args.timeout)
            peer = conn.getpeername()
        with conn:
            result["peer"] = peer[0]
            result["local"] = conn.getsockname()[0]
            start = time.monotonic()
            if args.send is not None:
                result["bytes"] = _bulk_send(conn, nbytes, deadline)
            else:
                result["bytes"] = _bulk_recv(conn, nbytes, deadline)
            result["ok"] = result["bytes"] == nbytes
    except (TimeoutError, OSError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["seconds"] = round(time.monotonic() - start, 3)
    emit(result)


# -- stream --------------------------------------------------------------------


class _Commands:
    """Lines from stdin without blocking: the caller of a long-lived probe talks to it there."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self._buf = b""
        self.eof = False

    def read(self) -> list[str]:
        """Call when the fd is readable; returns the complete lines (EOF counts as ``stop``)."""
        chunk = os.read(self.fd, 4096)
        if not chunk:
            self.eof = True
            return ["stop"]
        self._buf += chunk
        *lines, rest = self._buf.split(b"\n")
        self._buf = rest
        return [line.decode().strip() for line in lines if line.strip()]


def _missing(seen: set[int], upto: int) -> list[int]:
    """Sequence numbers below ``upto`` not in ``seen``."""
    return [n for n in range(upto) if n not in seen]


def _parse_seqs(buf: bytearray) -> list[int]:
    """Complete ``N\\n`` lines taken out of ``buf``."""
    end = buf.rfind(b"\n")
    if end < 0:
        return []
    lines = bytes(buf[:end]).split(b"\n")
    del buf[: end + 1]
    return [int(line) for line in lines if line.strip()]


def stream_serve(args: argparse.Namespace) -> None:
    """Echo every TCP line and UDP datagram on ``--port``; at ``stop``, report what arrived.

    TCP lines and UDP datagrams carry a sequence number; the report says, per
    TCP connection, whether the numbers came in order without a gap and how the
    connection ended, and for UDP which numbers never arrived (below the highest
    one seen) and how many arrived twice.
    """
    deadline = time.monotonic() + args.timeout
    listener = _listen_socket(socket.SOCK_STREAM, args.family, args.port, args.bind)
    listener.listen(4)
    listener.setblocking(False)
    udp = _listen_socket(socket.SOCK_DGRAM, args.family, args.port, args.bind)
    if args.family == 4:
        udp.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    else:
        udp.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    udp.setblocking(False)
    commands = _Commands()
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(udp, selectors.EVENT_READ, "udp")
    sel.register(commands.fd, selectors.EVENT_READ, "stdin")
    conns: dict[socket.socket, dict[str, Any]] = {}
    buffers: dict[socket.socket, bytearray] = {}
    tcp_reports: list[dict[str, Any]] = []
    seen: set[int] = set()
    udp_info: dict[str, Any] = {"received": 0, "duplicates": 0, "peers": [], "locals": [], "bad": 0}
    emit({"event": "ready", "family": args.family, "port": args.port})

    def report_udp() -> dict[str, Any]:
        top = max(seen) + 1 if seen else 0
        missing = _missing(seen, top)
        return {**udp_info, "max_seq": top - 1, "missing_count": len(missing), "missing": missing[:50]}

    def close(conn: socket.socket, end: str) -> None:
        sel.unregister(conn)
        conn.close()
        info = conns.pop(conn)
        info["end"] = end
        tcp_reports.append(info)

    reason = "timeout"
    running = True
    while running:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for key, _ in sel.select(min(remaining, 1.0)):
            what = key.data
            if what == "stdin":
                for cmd in commands.read():
                    if cmd == "stop":
                        reason, running = "stopped", False
                    elif cmd == "status":
                        emit({"event": "status", "udp": report_udp(), "tcp": [*tcp_reports, *conns.values()]})
                if commands.eof:
                    sel.unregister(commands.fd)
            elif what == "accept":
                conn, peer = listener.accept()
                conn.settimeout(1.0)
                conns[conn] = {
                    "peer": peer[0],
                    "local": conn.getsockname()[0],
                    "lines": 0,
                    "next": 0,
                    "out_of_order": 0,
                    "end": "open",
                }
                buffers[conn] = bytearray()
                sel.register(conn, selectors.EVENT_READ, "tcp")
            elif what == "udp":
                try:
                    data, ancdata, _flags, peer = udp.recvmsg(_CHUNK, 256)
                except BlockingIOError:
                    continue
                dst = _pktinfo_dst(args.family, ancdata)
                try:
                    seq = int(data)
                except ValueError:
                    udp_info["bad"] += 1
                    continue
                udp_info["received"] += 1
                if seq in seen:
                    udp_info["duplicates"] += 1
                seen.add(seq)
                for field, value in (("peers", peer[0]), ("locals", dst)):
                    if value not in udp_info[field]:
                        udp_info[field].append(value)
                with contextlib.suppress(OSError):
                    udp.sendmsg([data], _pktinfo_src(args.family, dst) if dst else [], 0, peer)
            else:
                conn = key.fileobj  # type: ignore[assignment]
                assert isinstance(conn, socket.socket)
                info = conns[conn]
                try:
                    chunk = conn.recv(_CHUNK)
                except OSError as exc:
                    close(conn, f"{type(exc).__name__}: {exc}")
                    continue
                if not chunk:
                    close(conn, "eof")
                    continue
                buf = buffers[conn]
                buf += chunk
                for seq in _parse_seqs(buf):
                    info["lines"] += 1
                    if seq != info["next"]:
                        info["out_of_order"] += 1
                    info["next"] = seq + 1
                try:
                    conn.sendall(chunk)
                except OSError as exc:
                    close(conn, f"{type(exc).__name__}: {exc}")
    for conn in list(conns):
        close(conn, "open")
    emit({"event": "report", "reason": reason, "udp": report_udp(), "tcp": tcp_reports})


def stream(args: argparse.Namespace) -> None:
    """Send a sequence number every ``--interval`` over TCP and UDP until ``stop``; report.

    The report holds, per protocol, how many numbers were sent and echoed back,
    which were never echoed, where the echoes came from, and the longest
    silence between two echoes while sending (``max_gap_ms``, the disruption a
    client would notice). ``tcp.error`` is set when the connection broke.
    """
    deadline = time.monotonic() + args.timeout
    fam = _family(args.addr)
    result: dict[str, Any] = {"event": "report", "addr": args.addr, "port": args.port}
    try:
        tcp = socket.create_connection((args.addr, args.port), timeout=args.connect_timeout)
    except OSError as exc:
        result["error"] = f"connect: {type(exc).__name__}: {exc}"
        emit(result)
        return
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tcp.setblocking(False)
    udp = socket.socket(fam, socket.SOCK_DGRAM)
    udp.bind((_route_source(args.addr, args.port), 0))
    udp.setblocking(False)
    commands = _Commands()
    sel = selectors.DefaultSelector()
    sel.register(tcp, selectors.EVENT_READ, "tcp")
    sel.register(udp, selectors.EVENT_READ, "udp")
    sel.register(commands.fd, selectors.EVENT_READ, "stdin")
    started = time.monotonic()
    t: dict[str, Any] = {
        "local": tcp.getsockname()[0],
        "peer": tcp.getpeername()[0],
        "sent": 0,
        "echoed": 0,
        "out_of_order": 0,
        "error": None,
        "max_gap_ms": 0.0,
    }
    u: dict[str, Any] = {
        "local": udp.getsockname()[0],
        "sent": 0,
        "echoed": 0,
        "duplicates": 0,
        "reply_from": [],
        "max_gap_ms": 0.0,
    }
    emit({"event": "ready", "tcp_local": t["local"], "udp_local": u["local"]})
    echoed: set[int] = set()
    tcp_in = bytearray()
    tcp_out = bytearray()
    last_echo = {"tcp": started, "udp": started}
    next_send = started
    sending = True
    drain_until = 0.0

    def status() -> dict[str, Any]:
        return {"tcp": dict(t), "udp": dict(u)}

    def echo_seen(proto: str, now: float) -> None:
        if sending:
            gap = (now - last_echo[proto]) * 1000
            target = t if proto == "tcp" else u
            target["max_gap_ms"] = max(target["max_gap_ms"], round(gap, 1))
        last_echo[proto] = now

    def tcp_failed(exc: BaseException | str) -> None:
        if t["error"] is None:
            t["error"] = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(tcp)

    while True:
        now = time.monotonic()
        if now >= deadline:
            result["timeout"] = True
            break
        if sending and now >= next_send:
            seq = u["sent"]
            with contextlib.suppress(BlockingIOError):
                udp.sendto(str(seq).encode(), (args.addr, args.port))
            u["sent"] += 1
            if t["error"] is None:
                tcp_out += f"{seq}\n".encode()
                t["sent"] += 1
                try:
                    del tcp_out[: tcp.send(tcp_out)]
                except BlockingIOError:
                    pass
                except OSError as exc:
                    tcp_failed(exc)
            next_send += args.interval
            if next_send < now - 1.0:  # a long stall of this process: resume, do not burst
                next_send = now
        if not sending:
            done = len(echoed) >= u["sent"] and (t["error"] is not None or t["echoed"] >= t["sent"])
            if done or now >= drain_until:
                break
        wake = next_send if sending else drain_until
        for key, _ in sel.select(max(0.0, min(wake, deadline) - now)):
            now = time.monotonic()
            what = key.data
            if what == "stdin":
                for cmd in commands.read():
                    if cmd == "status":
                        emit({"event": "status", **status()})
                    elif cmd == "stop" and sending:
                        sending = False
                        drain_until = now + args.drain
                if commands.eof:
                    sel.unregister(commands.fd)
            elif what == "udp":
                try:
                    data, peer = udp.recvfrom(_CHUNK)
                except OSError:
                    continue
                try:
                    seq = int(data)
                except ValueError:
                    continue
                if seq in echoed:
                    u["duplicates"] += 1
                echoed.add(seq)
                u["echoed"] = len(echoed)
                if peer[0] not in u["reply_from"]:
                    u["reply_from"].append(peer[0])
                echo_seen("udp", now)
            else:
                try:
                    chunk = tcp.recv(_CHUNK)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    tcp_failed(exc)
                    continue
                if not chunk:
                    tcp_failed("closed by the peer")
                    continue
                tcp_in += chunk
                for seq in _parse_seqs(tcp_in):
                    if seq != t["echoed"]:
                        t["out_of_order"] += 1
                    t["echoed"] = seq + 1
                    echo_seen("tcp", now)
    tcp.close()
    udp.close()
    missing = _missing(echoed, u["sent"])
    u["unechoed_count"] = len(missing)
    u["unechoed"] = missing[:50]
    result.update(status())
    result["seconds"] = round(time.monotonic() - started, 3)
    emit(result)


# -- command line --------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wholeip_testkit.probe")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="echo server reporting every peer")
    p.add_argument("--proto", choices=("tcp", "udp"), required=True)
    p.add_argument("--family", type=int, choices=(4, 6), required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", help="address to bind (default: wildcard)")
    p.add_argument("--count", type=int, default=1, help="peers to serve before exiting")
    p.add_argument("--timeout", type=float, default=5.0, help="overall deadline, seconds")
    p.set_defaults(func=serve)

    p = sub.add_parser("client", help="send one message, wait for the echo")
    p.add_argument("--proto", choices=("tcp", "udp"), required=True)
    p.add_argument("--addr", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", help="source address (default: the kernel's choice)")
    p.add_argument("--sport", type=int, default=0, help="source port (default: any)")
    p.add_argument("--message", default="wholeip-probe")
    p.add_argument("--timeout", type=float, default=2.0)
    p.set_defaults(func=client)

    p = sub.add_parser("ping", help="one ICMP echo")
    p.add_argument("--addr", required=True)
    p.add_argument("--timeout", type=float, default=1.0)
    p.set_defaults(func=ping)

    p = sub.add_parser("bulk", help="bulk TCP transfer with a deadline")
    side = p.add_mutually_exclusive_group(required=True)
    side.add_argument("--listen", action="store_true")
    side.add_argument("--connect", metavar="ADDR")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--send", type=int, metavar="BYTES")
    what.add_argument("--recv", type=int, metavar="BYTES")
    p.add_argument("--family", type=int, choices=(4, 6), default=4, help="with --listen")
    p.add_argument("--bind")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=20.0)
    p.set_defaults(func=bulk)

    p = sub.add_parser("stream-serve", help="echo numbered TCP lines and UDP datagrams until stop; report gaps")
    p.add_argument("--family", type=int, choices=(4, 6), required=True)
    p.add_argument("--port", type=int, required=True, help="the TCP and the UDP port")
    p.add_argument("--bind", help="address to bind (default: wildcard)")
    p.add_argument("--timeout", type=float, default=120.0, help="overall deadline, seconds")
    p.set_defaults(func=stream_serve)

    p = sub.add_parser("stream", help="numbered TCP lines and UDP datagrams every --interval until stop")
    p.add_argument("--addr", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--interval", type=float, default=0.01, help="seconds between two sequence numbers")
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--drain", type=float, default=2.0, help="seconds to wait for the last echoes after stop")
    p.add_argument("--timeout", type=float, default=120.0, help="overall deadline, seconds")
    p.set_defaults(func=stream)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
