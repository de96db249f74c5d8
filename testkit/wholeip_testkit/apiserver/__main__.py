"""``python -m wholeip_testkit.apiserver``: run the API server double until signalled.

Prints the URL on stdout (one line, flushed, so a parent process can read the
port chosen with ``--port 0``), optionally writes a kubeconfig, then serves
until SIGTERM or SIGINT.  Fault knobs are reachable over HTTP under
``/_double/`` (see :class:`~wholeip_testkit.apiserver.server.ApiServer`);
SIGUSR1 ends an outage begun by ``POST /_double/stop`` early (nothing listens
for HTTP then).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from .allocation import DEFAULT_SERVICE_CIDRS
from .server import ApiServer


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wholeip_testkit.apiserver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--kubeconfig", help="write a kubeconfig for the server here")
    parser.add_argument("--namespace", default="default", help="the kubeconfig's namespace")
    parser.add_argument("--bookmark-interval", type=float, default=60.0)
    parser.add_argument("--history", type=int, default=1000, help="retained watch events")
    parser.add_argument(
        "--service-cidrs",
        default=",".join(DEFAULT_SERVICE_CIDRS),
        help="the Service range(s), primary family first (--service-cluster-ip-range); the default "
        "ServiceCIDR 'kubernetes' holds them and ClusterIPs come from them (default: %(default)s)",
    )
    parser.add_argument(
        "--no-service-cidr-api",
        dest="service_cidr_api",
        action="store_false",
        help="serve no networking.k8s.io/v1 ServiceCIDR API, like a server older than 1.33",
    )
    parser.add_argument(
        "--preload",
        help='a JSON file {"items": [...]} of objects to hold from the start (status kept, namespaces created)',
    )
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    api = ApiServer(
        host=args.host,
        port=args.port,
        bookmark_interval=args.bookmark_interval,
        history=args.history,
        service_cidrs=args.service_cidrs.split(","),
        service_cidr_api=args.service_cidr_api,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, api.resume)
    async with api:
        if args.preload:
            preload(api, args.preload)
        if args.kubeconfig:
            api.write_kubeconfig(args.kubeconfig, namespace=args.namespace)
        print(api.url, flush=True)
        await stop.wait()


def preload(api: ApiServer, path: str) -> int:
    """Store every object of the file directly (benchmarks: 100,000 Services in seconds)."""
    items = json.loads(Path(path).read_text())["items"]
    namespaces = {("", "default")}
    for obj in items:
        ns = (obj.get("metadata") or {}).get("namespace")
        if ns and ("", ns) not in namespaces:
            namespaces.add(("", ns))
            if ns != "default":
                api.store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        api.store.create(obj)
    return len(items)


def main(argv: list[str] | None = None) -> int:
    asyncio.run(_run(_parse(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
