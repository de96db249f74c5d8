"""ClusterIP and NodePort allocation for Services, as the real Service REST storage does it.

What a real server does on a Service write (pkg/registry/core/service/storage, alloc.go)
and what is modelled here:

* **IP families first.**  ``ipFamilyPolicy`` defaults to ``SingleStack`` (to
  ``RequireDualStack`` for a headless Service without a selector); ``ipFamilies``
  is inferred from given ``clusterIPs``, else the cluster's primary family, plus the
  other family for a dual-stack policy on a dual-stack cluster.  Asking for a family
  or for dual-stack the cluster does not have is a 422.
* **ClusterIPs** come from the ServiceCIDRs' ranges (the configured range on a server
  without the ServiceCIDR API).  A range never hands out its network address (nor,
  for IPv4, its broadcast address); dynamic allocation prefers the upper part of a
  range, leaving the lower band for static choices like the DNS Service's ``.10``.
  A given IP must lie in a range and be free, or the write is a 422 with the real
  message.  ``clusterIP: None`` (headless) allocates nothing, ExternalName neither.
* **NodePorts** from 30000-32767 for NodePort and LoadBalancer Services (not for a
  LoadBalancer with ``allocateLoadBalancerNodePorts: false``, unless given), shared
  by ports of one Service with the same port number; a given one must be in the
  range and free.  ``healthCheckNodePort`` for a LoadBalancer with
  ``externalTrafficPolicy: Local`` (the real ``NeedsHealthCheck``: not for NodePort).
* **Updates** keep what the old object had when the new one leaves it out (the real
  ``patchAllocatedValues``), ``spec.clusterIP`` may not change once set, and values
  a type change makes meaningless are dropped.  Whatever the stored Services no
  longer hold is free again: the owner index follows each committed write.

The index maps each allocated IP and port to its Service, so a write costs no scan
of all Services (the benchmarks hold 100,000).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import ApiError, field_value, invalid

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Key = tuple[str, str]
Obj = dict[str, Any]

NODE_PORTS = range(30000, 32768)
DEFAULT_SERVICE_CIDRS = ("10.96.0.0/12", "fd00:10:96::/112")
FAMILY = {4: "IPv4", 6: "IPv6"}


class InternalError(ApiError):
    """500, ``Internal error occurred: ...`` (what a real allocator failure is)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"Internal error occurred: {message}", details={"causes": [{"message": message}]})


def parse_cidrs(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """``["10.96.0.0/12", ...]`` -> networks; at most one per family, as a real server takes."""
    nets = tuple(ipaddress.ip_network(c.strip(), strict=True) for c in cidrs if c.strip())
    if len({n.version for n in nets}) != len(nets) or not 1 <= len(nets) <= 2:
        raise ValueError(f"want one or two Service CIDRs of different families, got {list(map(str, nets))}")
    return nets


def _usable(net: Network) -> tuple[int, int]:
    """First and last usable offsets of a range: no network address, no IPv4 broadcast."""
    last = net.num_addresses - (2 if net.version == 4 else 1)
    return 1, last


def in_range(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, net: Network) -> bool:
    if ip.version != net.version or ip not in net:
        return False
    first, last = _usable(net)
    return first <= int(ip) - int(net.network_address) <= last


def _node_ports(spec: Obj) -> list[int]:
    out = [int(p["nodePort"]) for p in spec.get("ports") or [] if p.get("nodePort")]
    if spec.get("healthCheckNodePort"):
        out.append(int(spec["healthCheckNodePort"]))
    return out


def _cluster_ips(spec: Obj) -> list[str]:
    out: list[str] = []
    for ip in spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []):
        try:
            out.append(str(ipaddress.ip_address(ip)))
        except ValueError:
            continue  # "None", or garbage a direct store write let in
    return out


def _needs_node_ports(spec: Obj) -> bool:
    return spec.get("type") in ("NodePort", "LoadBalancer")


def _needs_health_check(spec: Obj) -> bool:
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


class Allocator:
    """The owners of ClusterIPs and NodePorts, and the allocation of new ones."""

    def __init__(self, service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS) -> None:
        self.configured = parse_cidrs(service_cidrs)
        """The server's own Service range(s) (``--service-cluster-ip-range``); the first
        is the primary family."""
        self.ip_owner: dict[str, Key] = {}
        self.port_owner: dict[int, Key] = {}
        self.cursors: dict[str, int] = {}
        self.port_cursor = 0

    @property
    def primary(self) -> str:
        return FAMILY[self.configured[0].version]

    # --- the owner index ---------------------------------------------------------

    def track(self, key: Key, old: Obj | None, new: Obj | None) -> None:
        """Follow one committed write of a Service (``new=None``: deleted)."""
        if old is not None:
            spec = old.get("spec") or {}
            for ip in _cluster_ips(spec):
                if self.ip_owner.get(ip) == key:
                    del self.ip_owner[ip]
            for port in _node_ports(spec):
                if self.port_owner.get(port) == key:
                    del self.port_owner[port]
        if new is not None:
            spec = new.get("spec") or {}
            for ip in _cluster_ips(spec):
                self.ip_owner[ip] = key
            for port in _node_ports(spec):
                self.port_owner[port] = key

    def rebuild(self, services: Iterable[tuple[Key, Obj]]) -> None:
        self.ip_owner.clear()
        self.port_owner.clear()
        for key, svc in services:
            self.track(key, None, svc)

    def state(self) -> tuple[dict[str, int], int]:
        return dict(self.cursors), self.port_cursor

    def set_state(self, state: tuple[dict[str, int], int] | None) -> None:
        self.cursors, self.port_cursor = ({}, 0) if state is None else (dict(state[0]), state[1])

    # --- allocation --------------------------------------------------------------

    def allocate(self, svc: Obj, old: Obj | None, key: Key, ranges: Sequence[Network]) -> None:
        """Default, check and allocate ``svc``'s IPs and ports in place (before the write);
        :class:`~.errors.Invalid` (422) or an internal error (500) as a real server answers."""
        spec = svc.setdefault("spec", {})
        old_spec = (old or {}).get("spec") or {}
        name = key[1]
        if spec.get("type") == "ExternalName":
            for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                if field in spec and spec[field] == old_spec.get(field):
                    del spec[field]
        else:
            self._cluster_ips(spec, old_spec, key, name, ranges)
        self._node_ports(spec, old_spec, key, name)

    def _cluster_ips(self, spec: Obj, old_spec: Obj, key: Key, name: str, ranges: Sequence[Network]) -> None:
        def fail(field: str, value: Any, detail: str, reason: str = "FieldValueInvalid") -> ApiError:
            return invalid("Service", name, [(reason, field, f"Invalid value: {field_value(value)}: {detail}")])

        kept = old_spec and old_spec.get("type") != "ExternalName"
        if kept:
            if not spec.get("clusterIP") and not spec.get("clusterIPs"):
                for field in ("clusterIP", "clusterIPs"):
                    if field in old_spec:
                        spec[field] = list(old_spec[field]) if field == "clusterIPs" else old_spec[field]
            for field in ("ipFamilies", "ipFamilyPolicy"):
                if field not in spec and field in old_spec:
                    spec[field] = list(old_spec[field]) if field == "ipFamilies" else old_spec[field]
        ips = list(spec.get("clusterIPs") or [])
        if spec.get("clusterIP") and not ips:
            ips = [spec["clusterIP"]]
        elif ips and not spec.get("clusterIP"):
            spec["clusterIP"] = ips[0]
        elif ips and spec["clusterIP"] != ips[0]:
            raise fail("spec.clusterIPs", ips, "first value must match `clusterIP`")
        if kept and old_spec.get("clusterIP") and spec.get("clusterIP") != old_spec["clusterIP"]:
            raise fail("spec.clusterIPs[0]", ips, "may not change once set")
        headless = bool(ips) and ips[0] == "None"
        families: list[str] = []
        for i, ip in enumerate(ips):
            if headless:
                break
            try:
                families.append(FAMILY[ipaddress.ip_address(ip).version])
            except ValueError:
                example = "(e.g. 10.9.8.7 or 2001:db8::ffff)"
                raise fail(f"spec.clusterIPs[{i}]", ip, f"must be a valid IP address, {example}") from None
        configured = list(dict.fromkeys(FAMILY[n.version] for n in ranges)) or [self.primary]
        given = list(spec.get("ipFamilies") or [])
        for i, family in enumerate(families):
            if i < len(given) and given[i] != family:
                raise fail(f"spec.ipFamilies[{i}]", given[i], f"does not match IP family of spec.clusterIPs[{i}]")
        policy = spec.get("ipFamilyPolicy")
        if policy is None:
            policy = "RequireDualStack" if headless and not spec.get("selector") else "SingleStack"
            spec["ipFamilyPolicy"] = policy
        if policy == "SingleStack" and (len(ips) > 1 or len(given) > 1):
            many = "cluster IPs" if len(ips) > 1 else "IP families"
            raise fail(
                "spec.ipFamilyPolicy",
                policy,
                f"must be 'RequireDualStack' or 'PreferDualStack' when multiple {many} are specified",
            )
        other = {"IPv4": "IPv6", "IPv6": "IPv4"}
        if headless and not spec.get("selector"):
            fams = given or [self.primary]
            if policy != "SingleStack" and len(fams) < 2:
                fams.append(other[fams[0]])
            spec["ipFamilies"] = fams
            spec["clusterIP"], spec["clusterIPs"] = "None", ["None"]
            return
        if policy == "RequireDualStack" and len(configured) < 2:
            raise fail("spec.ipFamilyPolicy", policy, "this cluster is not configured for dual-stack services")
        fams = given or families[:]
        for i, family in enumerate(fams):
            if family not in configured:
                raise fail(f"spec.ipFamilies[{i}]", family, "not configured on this cluster")
        if not fams:
            fams = [self.primary if self.primary in configured else configured[0]]
        if policy != "SingleStack" and len(fams) == 1 and len(configured) == 2:
            fams.append(other[fams[0]])
        spec["ipFamilies"] = fams
        if headless:
            spec["clusterIP"], spec["clusterIPs"] = "None", ["None"]
            return
        old_ips = set(_cluster_ips(old_spec)) if kept else set()
        out: list[str] = []
        for i, family in enumerate(fams):
            if i < len(ips):
                ip = ipaddress.ip_address(ips[i])
                text = str(ip)
                owner = self.ip_owner.get(text)
                if text not in old_ips:
                    if owner is not None and owner != key:
                        raise fail(
                            "spec.clusterIPs", ips, f"failed to allocate IP {ips[i]}: provided IP is already allocated"
                        )
                    if not any(in_range(ip, n) for n in ranges):
                        raise fail(
                            "spec.clusterIPs",
                            ips,
                            f"failed to allocate IP {ips[i]}: the provided network does not match the current range",
                        )
                out.append(text)
            else:
                out.append(self._next_ip([n for n in ranges if FAMILY[n.version] == family]))
        spec["clusterIPs"] = out
        spec["clusterIP"] = out[0]

    def _next_ip(self, ranges: Sequence[Network]) -> str:
        for net in ranges:
            first, last = _usable(net)
            count = last - first + 1
            if count <= 0:
                continue
            band = min(max(16, count // 16), 256) if count > 16 else 0
            cursor = self.cursors.get(str(net), band)
            base = int(net.network_address)
            for step in range(count):
                offset = first + (cursor + step) % count
                text = str(ipaddress.ip_address(base + offset))
                if text not in self.ip_owner:
                    self.cursors[str(net)] = (cursor + step + 1) % count
                    return text
        raise InternalError("failed to allocate a serviceIP: range is full")

    def _node_ports(self, spec: Obj, old_spec: Obj, key: Key, name: str) -> None:
        def fail(field: str, value: Any, detail: str) -> ApiError:
            return invalid(
                "Service", name, [("FieldValueInvalid", field, f"Invalid value: {field_value(value)}: {detail}")]
            )

        ports = spec.get("ports") or []
        old_ports = {int(p["nodePort"]) for p in old_spec.get("ports") or [] if p.get("nodePort")}
        if not _needs_node_ports(spec):
            old_by_name = {p.get("name", ""): p.get("nodePort") for p in old_spec.get("ports") or []}
            for i, port in enumerate(ports):
                if port.get("nodePort") and port["nodePort"] == old_by_name.get(port.get("name", "")):
                    del port["nodePort"]  # dropTypeDependentFields: unchanged from the old type
                elif port.get("nodePort"):
                    raise invalid(
                        "Service",
                        name,
                        [("FieldValueForbidden", f"spec.ports[{i}].nodePort",
                          f"Forbidden: may not be used when `type` is '{spec.get('type', 'ClusterIP')}'")],
                    )  # fmt: skip
        else:
            allocate_new = spec.get("type") == "NodePort" or spec.get("allocateLoadBalancerNodePorts") is not False
            if _needs_node_ports(old_spec):
                used = {p.get("nodePort") for p in ports}
                by_name = {p.get("name", ""): p.get("nodePort") for p in old_spec.get("ports") or []}
                for port in ports:
                    previous = by_name.get(port.get("name", ""))
                    if not port.get("nodePort") and previous and previous not in used:
                        port["nodePort"] = previous
                        used.add(previous)
            pending: set[int] = set()
            by_number: dict[Any, int] = {}
            for i, port in enumerate(ports):
                wanted = port.get("nodePort")
                if wanted:
                    self._check_port(wanted, key, old_ports, pending, fail, f"spec.ports[{i}].nodePort")
                elif allocate_new:
                    port["nodePort"] = by_number.get(port.get("port")) or self._next_port(pending)
                else:
                    continue
                pending.add(int(port["nodePort"]))
                by_number.setdefault(port.get("port"), int(port["nodePort"]))
        old_hc = old_spec.get("healthCheckNodePort")
        if _needs_health_check(spec):
            if not spec.get("healthCheckNodePort") and old_hc and _needs_health_check(old_spec):
                spec["healthCheckNodePort"] = old_hc
            wanted = spec.get("healthCheckNodePort")
            taken = {p.get("nodePort") for p in ports}
            if wanted and wanted != old_hc:
                owner = self.port_owner.get(int(wanted))
                if (owner is not None and owner != key) or wanted in taken:
                    raise InternalError(
                        f"failed to allocate requested HealthCheck NodePort {wanted}: "
                        "provided port is already allocated"
                    )
            elif not wanted:
                spec["healthCheckNodePort"] = self._next_port({int(p) for p in taken if p})
        elif spec.get("healthCheckNodePort"):
            if spec["healthCheckNodePort"] == old_hc:
                del spec["healthCheckNodePort"]
            else:
                raise fail(
                    "spec.healthCheckNodePort",
                    spec["healthCheckNodePort"],
                    "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
                )

    def _check_port(self, port: Any, key: Key, old: set[int], pending: set[int], fail: Any, field: str) -> None:
        try:
            number = int(port)
        except (TypeError, ValueError):
            raise fail(field, port, "must be a valid port number") from None
        if number in old or number in pending:
            return
        if number not in NODE_PORTS:
            raise fail(
                field,
                number,
                "provided port is not in the valid range. "
                f"The range of valid ports is {NODE_PORTS.start}-{NODE_PORTS.stop - 1}",
            )
        owner = self.port_owner.get(number)
        if owner is not None and owner != key:
            raise fail(field, number, "provided port is already allocated")

    def _next_port(self, pending: set[int]) -> int:
        size = len(NODE_PORTS)
        for step in range(size):
            port = NODE_PORTS.start + (self.port_cursor + step) % size
            if port not in self.port_owner and port not in pending:
                self.port_cursor = (self.port_cursor + step + 1) % size
                return port
        raise InternalError("failed to allocate a nodePort: range is full")


def check_service_cidr(obj: Obj, old: Obj | None) -> None:
    """A ServiceCIDR's ``spec.cidrs``: one or two valid prefixes of different families;
    on update only a single-stack one may gain its second family (the 1.33 rule)."""
    name = (obj.get("metadata") or {}).get("name", "")
    cidrs = (obj.get("spec") or {}).get("cidrs") or []

    def fail(field: str, detail: str, reason: str = "FieldValueInvalid") -> ApiError:
        return invalid("ServiceCIDR", name, [(reason, field, detail)], group="networking.k8s.io")

    if not cidrs:
        raise fail("spec.cidrs", "Required value", "FieldValueRequired")
    if len(cidrs) > 2:
        raise fail("spec.cidrs", f"Too many: {len(cidrs)}: must have at most 2 items", "FieldValueTooMany")
    families = []
    for i, cidr in enumerate(cidrs):
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except (TypeError, ValueError):
            raise fail(
                f"spec.cidrs[{i}]",
                f"Invalid value: {field_value(cidr)}: must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            ) from None
        families.append(net.version)
    if len(set(families)) != len(families):
        raise fail(
            "spec.cidrs[1]", f"Invalid value: {field_value(cidrs[1])}: may not be the same IP family as spec.cidrs[0]"
        )
    before = ((old or {}).get("spec") or {}).get("cidrs") or []
    if old is not None and cidrs != before and not (len(before) == 1 and cidrs[:1] == before):
        raise fail("spec.cidrs", f"Invalid value: {field_value(cidrs)}: field is immutable")
