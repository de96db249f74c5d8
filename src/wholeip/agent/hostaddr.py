"""This node's own addresses, for the podnat annotation (I/O, so not in the core).

``ifaceAuto`` takes the Node object's ExternalIP, else the source address of the
default route, per family; an explicit ``srcIP`` must be one of the node's own
addresses. Not those of the dummy interfaces service proxies put every Service address
on (:data:`SERVICE_VIP_LINKS`: kube-proxy's IPVS mode, kube-router): a ClusterIP, an
external or LoadBalancer IP there is a Service's, not the node's, and a port published
on it would take that Service's port on this node. The Node object is the informers';
the rest is read here from the network namespace the process runs in (the host's:
the DaemonSet runs with ``hostNetwork``) and handed to the pure core inside
:class:`~wholeip.settings.PodNatSettings`, like the node name.

The default route's source: its ``prefsrc`` when it has one, else the source the
kernel picks for its gateway (``ip route get <gateway>``), else for a global address
through it. Read when the agent starts and when ``wholeip apply`` runs; a node whose
default route changes its source address needs the agent restarted.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any

from wholeip.settings import IPAddr, ModelSettings

SERVICE_VIP_LINKS = frozenset({"kube-ipvs0", "kube-dummy-if"})
"""Interfaces that hold Service addresses, not the node's (kube-proxy IPVS, kube-router)."""

_FAMILIES = ((4, 2, "192.0.2.1"), (6, 10, "2001:db8::1"))
"""(version, AF_*, an address any default route reaches, for ``route get``)."""


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def read_host(model: ModelSettings, warn: Callable[[str], None] = lambda _: None) -> ModelSettings:
    """``model`` with this namespace's addresses and default-route sources filled in (unless
    already given: tests and tools pass their own). Never raises: without netlink, no
    address is known (``warn`` is told why) and ``ifaceAuto`` uses the Node object's
    ExternalIP only. Prints nothing itself: ``wholeip render`` writes JSON to stdout."""
    podnat = model.podnat
    if podnat.default_sources or podnat.host_addresses:
        return model
    try:
        sources, addresses = _read()
    except Exception as exc:  # no netlink, no pyroute2: the Node object still says something
        warn(f"{type(exc).__name__}: {exc}")
        return model
    podnat = dataclasses.replace(podnat, default_sources=tuple(sources), host_addresses=frozenset(addresses))
    return dataclasses.replace(model, podnat=podnat)


def _read() -> tuple[list[IPAddr], set[IPAddr]]:
    from pyroute2 import IPRoute

    sources: list[IPAddr] = []
    addresses: set[IPAddr] = set()
    with IPRoute() as ipr:
        vips = {link["index"] for link in ipr.get_links() if _attr(link, "IFLA_IFNAME") in SERVICE_VIP_LINKS}
        for msg in ipr.get_addr():
            if msg["index"] in vips:
                continue
            ip = ipaddress.ip_address(str(_attr(msg, "IFA_ADDRESS")).split("%")[0])
            if not (ip.is_loopback or ip.is_link_local):
                addresses.add(ip)
        for version, family, probe in _FAMILIES:
            routes = [r for r in ipr.get_routes(family=family, table=254) if r["dst_len"] == 0]
            if not routes:
                continue
            route = routes[0]
            candidates = [_attr(route, "RTA_PREFSRC")]
            for dst in (_attr(route, "RTA_GATEWAY"), probe):
                if dst is None:
                    continue
                try:
                    found = ipr.route("get", dst=dst, family=family)
                except Exception:
                    continue
                candidates += [_attr(f, "RTA_PREFSRC") for f in found]
            for src in (ipaddress.ip_address(c) for c in candidates if c is not None):
                if src.version == version and not src.is_link_local:
                    sources.append(src)
                    break
    return sources, addresses
