"""Where this node reaches the API server: addresses that must never become external IPs.

An external IP equal to the API server's address would be mapped like any other: the
node's own traffic to it goes through the output hook to the pod (docs/datapath.md), so
the agent (and the kubelet, and everything else on the node that talks to the control
plane) loses the API server, for good: the agent cannot even see the Service that did it
go away (issue 15). The model refuses such addresses
(:func:`wholeip.core.model.refusal`); this module tells it which they are, once at
start-up:

* the host of the server URL the agent's client is configured with (the kubeconfig's
  ``server``, or the in-cluster ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``),
  resolved to its addresses when it is a name;
* ``KUBERNETES_SERVICE_HOST`` itself, when set (the in-cluster configuration);
* whatever ``--control-plane-ips`` adds.

The addresses of the ``default/kubernetes`` Service's EndpointSlices are followed by the
model itself, from the informers' cache: they may change while the agent runs. A name
that does not resolve at start-up is logged and skipped: the agent then connects by that
name or not at all, and refusing to start would help neither.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

import structlog

from wholeip.settings import ModelSettings

log = structlog.get_logger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str], Awaitable[list[str]]]


async def _resolve(host: str) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _literal(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


async def api_server_addresses(
    server: str, *, env: Mapping[str, str] = os.environ, resolve: Resolve = _resolve
) -> tuple[IPAddress, ...]:
    """The addresses of the API server URL ``server`` (its host, resolved when a name) and
    of ``KUBERNETES_SERVICE_HOST`` in ``env``; in the order found, without repeats."""
    found: list[IPAddress] = []
    hosts = [urlsplit(server if "//" in server else f"//{server}").hostname or ""]
    hosts.append(env.get("KUBERNETES_SERVICE_HOST", ""))
    for host in filter(None, hosts):
        literal = _literal(host)
        if literal is not None:
            candidates = [literal]
        else:
            try:
                candidates = [ip for ip in map(_literal, await resolve(host)) if ip is not None]
            except OSError as exc:
                log.warning("API server name not resolved; not guarded", host=host, error=str(exc))
                continue
        for ip in candidates:
            if ip not in found:
                found.append(ip)
    return tuple(found)


async def with_control_plane(
    model: ModelSettings, server: str, *, env: Mapping[str, str] = os.environ, resolve: Resolve = _resolve
) -> ModelSettings:
    """``model`` with the API server's addresses added to ``control_plane_ips``."""
    extra = await api_server_addresses(server, env=env, resolve=resolve)
    merged = (*model.control_plane_ips, *(ip for ip in extra if ip not in model.control_plane_ips))
    if merged != model.control_plane_ips:
        log.info("API server addresses are never external IPs", addresses=[str(ip) for ip in merged])
    return dataclasses.replace(model, control_plane_ips=merged)
