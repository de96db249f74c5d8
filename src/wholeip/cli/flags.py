"""The flags shared by the subcommands, each with its ``WHOLEIP_*`` environment twin.

Every flag has an environment twin named ``WHOLEIP_<FLAG>`` (``--node-name`` is
``WHOLEIP_NODE_NAME``, and ``NODE_NAME`` as set by the downward API also
works). A flag given on the command line wins over the environment. The
exceptions are per-invocation choices: ``-f`` and ``--allow-empty`` (an
exported variable must not quietly turn that safety off).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Callable, Sequence
from typing import Any

from wholeip.settings import EgressSettings, IPNetwork, ModelSettings, PodNatSettings


class EnvDefaults(argparse.ArgumentParser):
    """An ArgumentParser whose options take their defaults from ``WHOLEIP_*`` variables."""

    def env_option(
        self,
        *flags: str,
        env: Sequence[str] = (),
        default: Any = None,
        convert: Callable[[str], Any] = str,
        help: str,
        **kwargs: Any,
    ) -> None:
        dest = flags[0].lstrip("-").replace("-", "_")
        names = ["WHOLEIP_" + dest.upper(), *env]
        value = default
        for name in names:
            if os.environ.get(name):
                try:
                    value = convert(os.environ[name])
                except (argparse.ArgumentTypeError, ValueError) as exc:
                    self.error(f"{name}={os.environ[name]!r}: {exc}")  # exits 2, with the usage
                break
        self.add_argument(*flags, dest=dest, default=value, help=f"{help} [env {' or '.join(names)}]", **kwargs)


def parse_bool(text: str) -> bool:
    if text.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if text.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def parse_cidrs(text: str) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a CIDR: {part!r}") from exc
    return tuple(out)


def parse_ips(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_address(part))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not an IP address: {part!r}") from exc
    return tuple(out)


def parse_names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_model_flags(p: EnvDefaults) -> None:
    p.env_option(
        "--proxy-name",
        default="wholeip",
        help="value of the service-proxy-name label that selects a Service",
    )
    p.env_option(
        "--service-cidr",
        default=None,
        convert=parse_cidrs,
        type=parse_cidrs,
        metavar="CIDR[,CIDR]",
        help=(
            "the cluster's Service networks (comma separated, one per family). Read from the"
            " cluster's ServiceCIDR objects (networking.k8s.io/v1) where it has them; this flag is"
            " the fallback where it has not (default 10.96.0.0/12), and wins when given"
        ),
    )
    p.env_option(
        "--cluster-cidr",
        default=(),
        convert=parse_cidrs,
        type=parse_cidrs,
        metavar="CIDR[,CIDR]",
        help="pod networks; replaces the Nodes' spec.podCIDRs when given",
    )
    p.env_option(
        "--allowed-external-cidrs",
        default=(),
        convert=parse_cidrs,
        type=parse_cidrs,
        metavar="CIDR[,CIDR]",
        help="refuse external IPs outside these networks (default: no such limit)",
    )
    p.env_option(
        "--allowed-namespaces",
        default=(),
        convert=parse_names,
        type=parse_names,
        metavar="NS[,NS]",
        help="manage Services of these namespaces only (default: all)",
    )
    p.env_option(
        "--allow-spec-external-ips",
        default=False,
        convert=parse_bool,
        type=parse_bool,
        metavar="BOOL",
        help="also use spec.externalIPs (off: CVE-2020-8554)",
    )
    p.env_option(
        "--control-plane-ips",
        default=(),
        convert=parse_ips,
        type=parse_ips,
        metavar="IP[,IP]",
        help=(
            "addresses this node reaches the API server at: never external IPs (run adds its"
            " kubeconfig's server; the default/kubernetes Service's endpoints are refused too)"
        ),
    )
    p.env_option(
        "--lb-to-clusterip",
        default=False,
        convert=parse_bool,
        type=parse_bool,
        metavar="BOOL",
        help=(
            "send this node's pods and processes to the ClusterIP of any LoadBalancer Service whose"
            " LoadBalancer IP they address (for kube-proxy IPVS mode; off by default)"
        ),
    )
    add_podnat_flags(p)
    p.env_option("--table", default="wholeip", help="name of our own inet table")


def parse_ports(text: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise argparse.ArgumentTypeError(f"not a port: {part!r}")
        out.add(int(part))
    return frozenset(out)


def add_podnat_flags(p: EnvDefaults) -> None:
    """Pod ports on the node's address (podnat-controller's annotation and flags)."""
    p.env_option(
        "--podnat-annotation",
        default=PodNatSettings().annotation,
        help="the Pod annotation that publishes pod ports on the node's address (podnat's -annotationkey)",
    )
    p.env_option(
        "--podnat-restricted-ports",
        default=PodNatSettings().restricted_ports,
        convert=parse_ports,
        type=parse_ports,
        metavar="PORT[,PORT]",
        help="ports never published on the node's address, besides the agent's own --port (podnat's -restrictedports)",
    )
    p.env_option(
        "--podnat-include-cidrs",
        default=(),
        convert=parse_cidrs,
        type=parse_cidrs,
        metavar="CIDR[,CIDR]",
        help="ifaceAuto chooses only addresses inside these networks (podnat's -inclfilternet)",
    )
    p.env_option(
        "--podnat-exclude-cidrs",
        default=(),
        convert=parse_cidrs,
        type=parse_cidrs,
        metavar="CIDR[,CIDR]",
        help="ifaceAuto never chooses addresses inside these networks (podnat's -exclfilternet)",
    )


def podnat_settings(args: argparse.Namespace) -> PodNatSettings:
    """The podnat flags; the agent's own port (``--port`` of ``run``) is always restricted."""
    own = getattr(args, "port", None)
    return PodNatSettings(
        annotation=args.podnat_annotation,
        restricted_ports=frozenset(args.podnat_restricted_ports) | ({own} if isinstance(own, int) else set()),
        include_cidrs=tuple(args.podnat_include_cidrs),
        exclude_cidrs=tuple(args.podnat_exclude_cidrs),
    )


def parse_mark_mask(text: str) -> int:
    """A mark mask: an integer (``0x7f``, ``127``) whose set bits are one contiguous run."""
    from wholeip.core.steering import MaskError, parse_mask

    try:
        return parse_mask(text)
    except MaskError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_between(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}: not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be {low}-{high}, not {value}")
        return value

    return parse


parse_rule_priority = _int_between(1, 32765, "rule priority")
parse_table_base = _int_between(255, 0xFFFFFFFE, "table base")


def add_egress_flags(p: EnvDefaults) -> None:
    """Egress steering: the mark bits, ``ip rule`` priority and routing tables of ours
    (docs/operations.md, "Egress steering"). ``run`` and ``cleanup`` must agree on them:
    cleanup finds our rules and routes by these three values."""
    defaults = EgressSettings()
    p.env_option(
        "--egress-mark-mask",
        default=defaults.mark_mask,
        convert=parse_mark_mask,
        type=parse_mark_mask,
        metavar="MASK",
        help=(
            f"packet mark bits (contiguous) that carry the holder node of steered egress"
            f" (default {defaults.mark_mask:#x}: no bit kube-proxy, Calico's default mask or Cilium sets)"
        ),
    )
    p.env_option(
        "--egress-rule-priority",
        default=defaults.rule_priority,
        convert=parse_rule_priority,
        type=parse_rule_priority,
        metavar="N",
        help=f"ip rule priority of the egress steering rules, both families (default {defaults.rule_priority})",
    )
    p.env_option(
        "--egress-table-base",
        default=defaults.table_base,
        convert=parse_table_base,
        type=parse_table_base,
        metavar="N",
        help=(f"egress steering routes through tables BASE+1 .. BASE+2**maskbits-1 (default {defaults.table_base})"),
    )


def egress_settings(args: argparse.Namespace) -> EgressSettings:
    """The egress flags; :class:`~wholeip.cli.clusterfile.InputError` when they do not fit
    together (a table range past 2**32-2)."""
    from wholeip.cli.clusterfile import InputError
    from wholeip.core.steering import SteeringConfig

    settings = EgressSettings(
        mark_mask=args.egress_mark_mask,
        rule_priority=args.egress_rule_priority,
        table_base=args.egress_table_base,
    )
    try:
        SteeringConfig.from_settings(settings)
    except ValueError as exc:
        raise InputError(f"egress steering flags: {exc}") from None
    return settings


def add_node_flag(p: EnvDefaults, *, required: bool) -> None:
    p.env_option(
        "--node-name",
        env=("NODE_NAME",),
        help="this node's name" + (" (required)" if required else ""),
    )


def add_file_flag(p: EnvDefaults) -> None:
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help=(
            "cluster file: Services, EndpointSlices and Nodes as 'kubectl get -o yaml' prints them"
            " ('-' for stdin); repeatable"
        ),
    )
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help=(
            "accept input without any Kubernetes object (an empty file or stdin): apply then removes"
            " every mapping. Without it render, diff and apply refuse such input with exit 2, since"
            " it is what a failed 'kubectl get ... | wholeip apply -f -' sends"
            " (command line only, no environment twin)"
        ),
    )


def model_settings(args: argparse.Namespace) -> ModelSettings:
    return ModelSettings(
        proxy_name=args.proxy_name,
        # Not given: the fallback, used only where the cluster has no ServiceCIDR API.
        service_cidrs=ModelSettings().service_cidrs if args.service_cidr is None else tuple(args.service_cidr),
        service_cidrs_given=args.service_cidr is not None,
        cluster_cidrs=tuple(args.cluster_cidr),
        allowed_external_cidrs=tuple(args.allowed_external_cidrs),
        allowed_namespaces=frozenset(args.allowed_namespaces),
        allow_spec_external_ips=bool(args.allow_spec_external_ips),
        podnat=podnat_settings(args),
        control_plane_ips=tuple(args.control_plane_ips),
        lb_to_clusterip=bool(args.lb_to_clusterip),
        # The egress flags, where the command has them (not ``status``): the slot chains' bits.
        egress_mark_mask=getattr(args, "egress_mark_mask", EgressSettings().mark_mask),
    )
