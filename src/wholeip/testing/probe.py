"""Real-socket traffic probes, run inside a network namespace; every result is JSON.

Usage (one JSON object per line on stdout)::

    ip netns exec NS python -m wholeip.testing.probe serve  --proto tcp --family 4 --port 8080
    ip netns exec NS python -m wholeip.testing.probe client --proto udp --addr 203.0.113.10 --port 8080
    ip netns exec NS python -m wholeip.testing.probe ping   --addr 2001:db8:100::10
    ip netns exec NS python -m wholeip.testing.probe bulk   --listen --family 4 --port 9000 --recv 2000000
    ip netns exec NS python -m wholeip.testing.probe bulk   --connect 198.51.100.2 --port 9000 --send 2000000

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
* Exit status is 0 whenever a JSON result was printed (including failures to
  connect); non-zero only for usage errors or crashes.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
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


# -- command line --------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wholeip.testing.probe")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
