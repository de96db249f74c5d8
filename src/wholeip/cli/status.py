"""``wholeip status``: what this node does now, read from the kernel, and whether the cluster agrees.

In the manner of ``ipvsadm -Ln`` or ``cilium service list``: one line per external
IP, read back from our table in this network namespace (never from memory: this
is what packets meet), decoded by :func:`wholeip.core.decode.decode`, the inverse
of the element encoding. Then, when the API server can be reached (kubeconfig or
in-cluster, as ``run`` does), the table the agent would build now, computed by the
very same core (the informers' list, :func:`wholeip.core.index.load_unique`, the
ServiceCIDR objects), and the difference between the two: the drift.

Exit codes (for scripts; ``-o json`` prints the same facts as one object):

== ===========================================================================
0  the kernel's table is what the cluster says (or ``--no-api``: the kernel was read)
1  drift: the kernel differs from what the cluster says (listed)
2  error: the kernel could not be read, or bad arguments
3  the kernel was read, the API server could not be: drift unknown
== ===========================================================================

The agent repairs drift at its next full sync (``--max-sync-interval``); drift
that stays is what the operations guide's troubleshooting is about.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wholeip.cli import flags
from wholeip.cli.offline import reach_holders
from wholeip.core.decode import DecodedTable, TableMapping, decode
from wholeip.core.delegated import GENERATION_SETS
from wholeip.core.model import Mode, Problem
from wholeip.nft.doc import Elem, SetDecl, TableDoc, elements_equal
from wholeip.settings import IPNetwork, ModelSettings

if TYPE_CHECKING:
    from wholeip.core.index import ClusterIndex

EXIT_IN_SYNC = 0
EXIT_DRIFT = 1
EXIT_ERROR = 2
EXIT_API_UNREACHABLE = 3


def add_status_parser(p: flags.EnvDefaults) -> None:
    flags.add_node_flag(p, required=False)
    flags.add_model_flags(p)
    flags.add_egress_flags(p)
    p.env_option("--kubeconfig", env=("KUBECONFIG",), help="kubeconfig path (default: in-cluster configuration)")
    p.add_argument(
        "--no-api",
        action="store_true",
        help="read the kernel only; do not ask the API server (no drift check)",
    )
    p.add_argument(
        "--api-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="give up on the API server after this long (exit 3)",
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        metavar="FILE",
        help=(
            "compare the kernel with this cluster file ('kubectl get -o yaml' output, '-' for stdin;"
            " repeatable) instead of asking the API server"
        ),
    )
    p.add_argument("-o", "--output", choices=("text", "json"), default="text", help="output format")


# --------------------------------------------------------------------------- the cluster's view


@dataclass(frozen=True, slots=True)
class Desired:
    """What the cluster says this node's table must be."""

    doc: TableDoc
    problems: Sequence[Problem]
    service_networks: tuple[IPNetwork, ...]
    service_networks_from: str


async def fetch_desired(
    *,
    node_name: str,
    model: ModelSettings,
    table: str,
    kubeconfig: str | None,
    reach: Callable[[ClusterIndex], None] | None = None,
) -> Desired:
    """List the cluster once and build the table the agent would build now (``reach``: leaves
    out of the steering the egress IP holders this node does not reach on-link)."""
    from wholeip import __version__
    from wholeip.agent.app import load_kube_config
    from wholeip.core.index import load_unique
    from wholeip.core.servicecidr import effective_model, source
    from wholeip.kube.informer import WatchOptions
    from wholeip.kube.k8s import client
    from wholeip.kube.l2status import has_api as has_l2_api
    from wholeip.kube.l2status import l2_status_informer
    from wholeip.kube.resources import build_informers
    from wholeip.kube.servicecidr import has_api, service_cidr_informer

    cfg = await load_kube_config(kubeconfig)
    api = client.ApiClient(cfg)
    api.user_agent = f"wholeip/{__version__}"
    try:
        options = WatchOptions(page_size=500)
        informers = build_informers(api, on_change=lambda: None, options=options)
        cidrs: list[dict[str, Any]] | None = None
        if not model.service_cidrs_given and await has_api(api):
            cidr_informer = service_cidr_informer(api, on_change=lambda: None, options=options)
            await cidr_informer.list_once()
            cidrs = cidr_informer.snapshot()
        l2: list[dict[str, Any]] = []
        if await has_l2_api(api):
            l2_informer = l2_status_informer(api, on_change=lambda: None, options=options)
            await l2_informer.list_once()
            l2 = list(l2_informer.snapshot())
        for informer in informers:
            await informer.list_once()
        services, slices, nodes = informers
        effective = effective_model(model, cidrs)
        index = load_unique(
            services=services.iterate(),
            endpoint_slices=slices.iterate(),
            nodes=nodes.snapshot(),
            node_name=node_name,
            settings=effective,
            table=table,
            l2_statuses=l2,
        )
        if reach is not None:
            await asyncio.to_thread(reach, index)
        return Desired(
            doc=index.doc(),
            problems=index.problems,
            service_networks=effective.service_cidrs,
            service_networks_from=source(model, cidrs),
        )
    finally:
        await api.close()


def file_desired(args: argparse.Namespace) -> Desired:
    """The table a cluster file says this node must hold, as ``wholeip diff`` builds it."""
    from wholeip.cli import clusterfile
    from wholeip.cli.offline import model_of
    from wholeip.core.index import load_objects
    from wholeip.core.servicecidr import KIND

    loaded = clusterfile.load(args.filename)
    model = model_of(loaded, args)
    index = load_objects(loaded.objects, node_name=args.node_name, settings=model, table=args.table)
    reach_holders(index, args)
    cidrs = [o for o in loaded.objects if o.get("kind") == KIND]
    return Desired(
        doc=index.doc(),
        problems=index.problems,
        service_networks=model.service_cidrs,
        service_networks_from="the cluster file's ServiceCIDR objects" if cidrs else "--service-cidr",
    )


# --------------------------------------------------------------------------- drift


@dataclass(frozen=True, slots=True)
class Drift:
    """How the kernel's table differs from the cluster's."""

    table_missing: bool = False
    skeleton: bool = False
    """Declarations, chains or rules differ (the agent rebuilds or refills them)."""
    missing: Mapping[str, frozenset[Elem]] = field(default_factory=dict)
    """Per set: elements the cluster says and the kernel lacks."""
    extra: Mapping[str, frozenset[Elem]] = field(default_factory=dict)
    """Per set: elements the kernel holds and the cluster does not say."""
    mappings_missing: tuple[TableMapping, ...] = ()
    mappings_extra: tuple[TableMapping, ...] = ()
    mappings_changed: tuple[tuple[TableMapping, TableMapping], ...] = ()
    """(the kernel's, the cluster's) for an external IP both have, differently."""

    @property
    def in_sync(self) -> bool:
        return not (self.table_missing or self.skeleton or self.missing or self.extra)


def compare(desired: TableDoc, current: TableDoc | None, *, node_name: str) -> Drift:
    """The drift between the cluster's table and the kernel's (None: no table)."""
    want = decode(desired.elements, node_name=node_name)
    if current is None:
        return Drift(table_missing=True, mappings_missing=want.mappings)
    from wholeip.nft.diff import skeleton_matches

    skeleton = not skeleton_matches(desired, current) or (desired.skeleton.rule_tags() != current.skeleton.rule_tags())
    missing: dict[str, frozenset[Elem]] = {}
    extra: dict[str, frozenset[Elem]] = {}
    for decl in desired.skeleton.sets:
        if decl.name in GENERATION_SETS:
            continue  # the agent's history of affinity front-ends, which a listing cannot know
        d: AbstractSet[Elem] = desired.elements.get(decl.name, frozenset())
        c: AbstractSet[Elem] = current.elements.get(decl.name, frozenset())
        if _differs(decl, d, c):
            if d - c:
                missing[decl.name] = frozenset(d - c)
            if c - d:
                extra[decl.name] = frozenset(c - d)
    have = decode(current.elements, node_name=node_name)
    want_by = {m.external_ip: m for m in want.mappings}
    have_by = {m.external_ip: m for m in have.mappings}
    return Drift(
        skeleton=skeleton,
        missing=missing,
        extra=extra,
        mappings_missing=tuple(m for ip, m in want_by.items() if ip not in have_by),
        mappings_extra=tuple(m for ip, m in have_by.items() if ip not in want_by),
        mappings_changed=tuple((have_by[ip], m) for ip, m in want_by.items() if ip in have_by and have_by[ip] != m),
    )


def _differs(decl: SetDecl, desired: AbstractSet[Elem], current: AbstractSet[Elem]) -> bool:
    return not elements_equal(decl, desired, current)


# --------------------------------------------------------------------------- presenting


def _sources(m: TableMapping) -> str:
    if not m.ranged:
        return "any"
    if not m.source_ranges:
        return "none outside the cluster"
    return ",".join(str(n) for n in m.source_ranges)


def _ports(m: TableMapping) -> str:
    if m.mode is Mode.WHOLE_IP:
        return "all"
    return ",".join(f"{p.protocol}/{p.port}" for p in m.ports) or "none"


def _icmp(m: TableMapping) -> str:
    if m.mode is Mode.WHOLE_IP or m.allow_icmp:
        return "yes"
    return "errors"


def _pod(m: TableMapping) -> str:
    if m.pod_here:
        return "here, egress" if m.egress else "here"
    return "elsewhere"


def mapping_json(m: TableMapping) -> dict[str, Any]:
    out: dict[str, Any] = {
        "externalIP": m.external_ip,
        "podIP": m.pod_ip,
        "mode": m.mode.value,
        "ports": [f"{p.protocol}/{p.port}" for p in m.ports] if m.mode is Mode.PER_PORT else None,
        "sourceRanges": [str(n) for n in m.source_ranges] if m.ranged else None,
        "icmp": m.mode is Mode.WHOLE_IP or m.allow_icmp,
        "podHere": m.pod_here,
        "egress": m.egress,
        "filteredAtPodNode": m.away,
    }
    if m.at_pod is not None:
        v = 6 if ":" in m.pod_ip else 4
        out["podFilter"] = {
            "mode": m.at_pod.mode.value,
            "ports": sorted(f"{p.protocol}/{p.port}" for p in m.at_pod.ports),
            "sourceRanges": sorted(str(n) for n in m.at_pod.ranges if n.version == v),
        }
    return out


def _elem_text(elem: Elem) -> str:
    if isinstance(elem, tuple) and len(elem) == 2 and isinstance(elem[0], tuple):
        return f"{' . '.join(map(str, elem[0]))} : {elem[1]}"
    if isinstance(elem, tuple):
        return " . ".join(map(str, elem))
    return str(elem)


def _elem_json(elem: Elem) -> Any:
    if isinstance(elem, tuple):
        return [_elem_json(e) for e in elem]
    return elem


def _sorted_elems(elems: AbstractSet[Elem]) -> list[Elem]:
    return sorted(elems, key=lambda e: json.dumps(_elem_json(e)))


def counts(doc: TableDoc) -> dict[str, int]:
    """Elements per set (the packet path's dynamic sets are not read, so not counted)."""
    dynamic = {s.name for s in doc.skeleton.sets if s.dynamic}
    return {name: len(elems) for name, elems in sorted(doc.elements.items()) if name not in dynamic}


@dataclass
class Report:
    node: str | None
    table: str
    kernel: TableDoc | None
    decoded: DecodedTable | None
    api_asked: bool
    desired: Desired | None = None
    api_error: str | None = None
    drift: Drift | None = None

    @property
    def exit_code(self) -> int:
        if not self.api_asked:
            return EXIT_IN_SYNC
        if self.drift is None:
            return EXIT_API_UNREACHABLE
        return EXIT_IN_SYNC if self.drift.in_sync else EXIT_DRIFT

    def to_json(self) -> dict[str, Any]:
        kernel: dict[str, Any] = {"table": self.kernel is not None}
        if self.kernel is not None and self.decoded is not None:
            kernel.update(
                mappings=[mapping_json(m) for m in self.decoded.mappings],
                clusterNetworks=[str(n) for n in self.decoded.cluster_networks],
                elements=counts(self.kernel),
                stray={k: [_elem_json(e) for e in _sorted_elems(v)] for k, v in sorted(self.decoded.stray.items())},
            )
        out: dict[str, Any] = {"node": self.node, "table": f"inet {self.table}", "kernel": kernel}
        if self.api_asked:
            cluster: dict[str, Any] = {"reachable": self.desired is not None, "error": self.api_error}
            if self.desired is not None:
                cluster.update(
                    serviceNetworks=[str(n) for n in self.desired.service_networks],
                    serviceNetworksFrom=self.desired.service_networks_from,
                    problems=[
                        {"object": str(p.ref), "reason": p.reason, "message": p.message, "warning": p.warning}
                        for p in sorted(self.desired.problems, key=lambda p: (p.ref, p.reason, p.message))
                    ],
                )
            out["cluster"] = cluster
        else:
            out["cluster"] = None
        if self.drift is not None:
            d = self.drift
            out["drift"] = {
                "inSync": d.in_sync,
                "tableMissing": d.table_missing,
                "skeleton": d.skeleton,
                "missing": {k: [_elem_json(e) for e in _sorted_elems(v)] for k, v in sorted(d.missing.items())},
                "extra": {k: [_elem_json(e) for e in _sorted_elems(v)] for k, v in sorted(d.extra.items())},
                "mappings": {
                    "missing": [mapping_json(m) for m in d.mappings_missing],
                    "extra": [mapping_json(m) for m in d.mappings_extra],
                    "changed": [{"kernel": mapping_json(k), "cluster": mapping_json(c)} for k, c in d.mappings_changed],
                },
            }
        else:
            out["drift"] = None
        out["exitCode"] = self.exit_code
        return out

    def to_text(self) -> str:
        lines: list[str] = []
        where = f"node {self.node}" if self.node else "this node"
        if self.kernel is None or self.decoded is None:
            lines.append(f"{where}: no table inet {self.table} in this network namespace")
        else:
            ms = self.decoded.mappings
            v4 = sum(1 for m in ms if m.version == 4)
            lines.append(
                f"{where}: table inet {self.table}, {len(ms)} mapping(s) (IPv4 {v4}, IPv6 {len(ms) - v4}),"
                f" {sum(1 for m in ms if m.egress)} pod egress(es) here"
            )
            nets = ", ".join(str(n) for n in self.decoded.cluster_networks) or "none"
            lines.append(f"cluster networks: {nets}")
            if self.desired is not None:
                svc = ", ".join(str(n) for n in self.desired.service_networks)
                lines.append(f"service networks: {svc} (from {self.desired.service_networks_from})")
            lines.append("")
            rows = [("EXTERNAL IP", "", "POD IP", "MODE", "PORTS", "SOURCES", "ICMP", "POD")]
            rows += [
                (m.external_ip, "->", m.pod_ip, m.mode.value, _ports(m), _sources(m), _icmp(m), _pod(m)) for m in ms
            ]
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            for row in rows:
                lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
            lines.append("")
            lines.append("elements: " + ", ".join(f"{k} {n}" for k, n in counts(self.kernel).items() if n))
            for name, elems in sorted(self.decoded.stray.items()):
                for e in _sorted_elems(elems):
                    lines.append(f"stray (no mapping holds it): {name} {_elem_text(e)}")
        if not self.api_asked:
            lines.append("cluster: not asked (--no-api)")
        elif self.desired is None:
            lines.append(f"cluster: unreachable ({self.api_error}); drift unknown")
        else:
            problems = [p for p in self.desired.problems if p.warning]
            if problems:
                lines.append(f"cluster: {len(problems)} problem(s) (see the Services' Events):")
                for p in sorted(problems, key=lambda p: (p.ref, p.reason, p.message)):
                    lines.append(f"  {p.ref}: {p.reason}: {p.message}")
            d = self.drift
            assert d is not None
            if d.in_sync:
                lines.append("drift: none, the kernel holds what the cluster says")
            else:
                lines.append("drift: the kernel differs from what the cluster says")
                if d.table_missing:
                    lines.append("  the table is missing")
                if d.skeleton:
                    lines.append("  declarations, chains or rules differ")
                for m in d.mappings_missing:
                    lines.append(f"  missing mapping {m.external_ip} -> {m.pod_ip}")
                for m in d.mappings_extra:
                    lines.append(f"  extra mapping {m.external_ip} -> {m.pod_ip}")
                for k, c in d.mappings_changed:
                    lines.append(
                        f"  changed mapping {c.external_ip}: kernel -> {k.pod_ip} {k.mode.value} {_ports(k)},"
                        f" cluster -> {c.pod_ip} {c.mode.value} {_ports(c)}"
                    )
                for name, elems in sorted(d.missing.items()):
                    for e in _sorted_elems(elems):
                        lines.append(f"  missing {name} {_elem_text(e)}")
                for name, elems in sorted(d.extra.items()):
                    for e in _sorted_elems(elems):
                        lines.append(f"  extra   {name} {_elem_text(e)}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- the command


def cmd_status(args: argparse.Namespace) -> int:
    from wholeip.agent import log as logsetup
    from wholeip.engine import Engine
    from wholeip.nft.backend import NftError
    from wholeip.nft.libnft import LibnftBackend

    logsetup.configure(format="console", level="warning")  # logs to stderr, never into the output
    if args.node_name is None and (args.filename or not args.no_api):
        print("error: --node-name (or NODE_NAME) is required to ask the cluster (or give --no-api)", file=sys.stderr)
        return EXIT_ERROR
    if args.filename and args.no_api:
        print("error: -f compares with a cluster file; --no-api reads the kernel only: give one", file=sys.stderr)
        return EXIT_ERROR
    try:
        kernel = Engine(backend=LibnftBackend(), table=args.table).observe()
    except NftError as exc:
        print(f"error: reading table inet {args.table}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    report = Report(
        node=args.node_name,
        table=args.table,
        kernel=kernel,
        decoded=decode(kernel.elements, node_name=args.node_name or "") if kernel is not None else None,
        api_asked=not args.no_api,
    )
    if args.filename:
        from wholeip.cli.clusterfile import InputError

        try:
            report.desired = file_desired(args)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        report.drift = compare(report.desired.doc, kernel, node_name=args.node_name)
    elif not args.no_api:
        try:
            report.desired = asyncio.run(
                asyncio.wait_for(
                    fetch_desired(
                        node_name=args.node_name,
                        model=flags.model_settings(args),
                        table=args.table,
                        kubeconfig=args.kubeconfig,
                        reach=lambda index: reach_holders(index, args),
                    ),
                    args.api_timeout,
                )
            )
        except TimeoutError:
            report.api_error = f"no answer within {args.api_timeout:g}s"
        except Exception as exc:  # any failure to reach or read the API: the kernel part still stands
            report.api_error = f"{type(exc).__name__}: {exc}".strip()
        if report.desired is not None:
            report.drift = compare(report.desired.doc, kernel, node_name=args.node_name)
    if args.output == "json":
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.to_text())
    return report.exit_code
