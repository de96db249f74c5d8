"""The ``wholeip`` command: flags and their environment twins -> Settings -> a subcommand.

Subcommands:

* ``render``  cluster file -> the JSON document of our table (no kernel needed);
* ``diff``    what ``apply`` would change in this network namespace (exit 1 when
  something would change, 0 when nothing, 2 on errors, like diff(1));
* ``apply``   make the kernel match the cluster file, in one transaction;
* ``cleanup`` delete our table, and nothing else;
* ``run``     the agent (informers, reconcile loop, probes).

Every flag has an environment twin named ``WHOLEIP_<FLAG>`` (``--node-name`` is
``WHOLEIP_NODE_NAME``, and ``NODE_NAME`` as set by the downward API also
works). A flag given on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from wholeip import __version__
from wholeip.settings import IPNetwork, ModelSettings

EXIT_OK = 0
EXIT_CHANGES = 1
EXIT_ERROR = 2


class _EnvDefaults(argparse.ArgumentParser):
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
                value = convert(os.environ[name])
                break
        self.add_argument(*flags, dest=dest, default=value, help=f"{help} [env {' or '.join(names)}]", **kwargs)


def _bool(text: str) -> bool:
    if text.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if text.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def _cidrs(text: str) -> tuple[IPNetwork, ...]:
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


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _add_model_flags(p: _EnvDefaults) -> None:
    p.env_option(
        "--proxy-name",
        default="wholeip",
        help="value of the service-proxy-name label that selects a Service",
    )
    p.env_option(
        "--service-cidr",
        default=_cidrs("10.96.0.0/12"),
        convert=_cidrs,
        type=_cidrs,
        metavar="CIDR[,CIDR]",
        help="the cluster's Service networks (comma separated, one per family)",
    )
    p.env_option(
        "--cluster-cidr",
        default=(),
        convert=_cidrs,
        type=_cidrs,
        metavar="CIDR[,CIDR]",
        help="pod networks; replaces the Nodes' spec.podCIDRs when given",
    )
    p.env_option(
        "--allowed-external-cidrs",
        default=(),
        convert=_cidrs,
        type=_cidrs,
        metavar="CIDR[,CIDR]",
        help="refuse external IPs outside these networks (default: no such limit)",
    )
    p.env_option(
        "--allowed-namespaces",
        default=(),
        convert=_names,
        type=_names,
        metavar="NS[,NS]",
        help="manage Services of these namespaces only (default: all)",
    )
    p.env_option(
        "--allow-spec-external-ips",
        default=False,
        convert=_bool,
        type=_bool,
        metavar="BOOL",
        help="also use spec.externalIPs (off: CVE-2020-8554)",
    )
    p.env_option("--table", default="wholeip", help="name of our own inet table")


def _add_node_flag(p: _EnvDefaults, *, required: bool) -> None:
    p.env_option(
        "--node-name",
        env=("NODE_NAME",),
        help="this node's name" + (" (required)" if required else ""),
    )


def _add_file_flag(p: _EnvDefaults) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wholeip",
        description=(
            "Give a Kubernetes Service's external IP to one pod: every port in, the pod's egress out,"
            " with nftables maps."
        ),
    )
    parser.add_argument("--version", action="version", version=f"wholeip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_EnvDefaults)

    def add(name: str, help: str) -> _EnvDefaults:
        p: _EnvDefaults = sub.add_parser(name, help=help, description=help)
        return p

    for name, help_text in (
        ("render", "print the JSON document of the table a node must hold"),
        (
            "diff",
            "print what apply would change in this network namespace (exit 1 when something would)",
        ),
        ("apply", "make this network namespace's table match the cluster file, in one transaction"),
    ):
        p = add(name, help_text)
        _add_file_flag(p)
        _add_node_flag(p, required=True)
        _add_model_flags(p)
    p = add("cleanup", "delete wholeip's table from this network namespace (nothing else is touched)")
    p.env_option("--table", default="wholeip", help="name of our own inet table")

    from wholeip import runner

    runner.add_run_parser(add("run", "run the agent: watch the cluster and keep this node's table right"))
    return parser


def model_settings(args: argparse.Namespace) -> ModelSettings:
    return ModelSettings(
        proxy_name=args.proxy_name,
        service_cidrs=tuple(args.service_cidr),
        cluster_cidrs=tuple(args.cluster_cidr),
        allowed_external_cidrs=tuple(args.allowed_external_cidrs),
        allowed_namespaces=frozenset(args.allowed_namespaces),
        allow_spec_external_ips=bool(args.allow_spec_external_ips),
    )


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def _desired(args: argparse.Namespace) -> Any:
    from wholeip import clusterfile, compile, model

    objects, notes = clusterfile.load(args.filename)
    for note in notes:
        _say(f"note: {note}")
    state = model.build_state_from_objects(objects, node_name=args.node_name, settings=model_settings(args))
    for problem in state.problems:
        level = "warning" if problem.warning else "note"
        _say(f"{level}: {problem.ref}: {problem.reason}: {problem.message}")
    return compile.compile_table(state, node_name=args.node_name, table=args.table)


def _engine(args: argparse.Namespace) -> Any:
    from wholeip.engine import Engine
    from wholeip.nft.libnft import LibnftBackend

    return Engine(backend=LibnftBackend(), table=args.table)


def cmd_render(args: argparse.Namespace) -> int:
    from wholeip.nft.doc import render_table

    print(json.dumps(render_table(_desired(args)), indent=2))
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from wholeip.nft.diff import diff

    desired = _desired(args)
    plan = diff(desired, _engine(args).observe())
    if plan.empty:
        _say("no changes")
        return EXIT_OK
    print(json.dumps({"nftables": list(plan.commands)}, indent=2))
    _say(plan.summary())
    return EXIT_CHANGES


def cmd_apply(args: argparse.Namespace) -> int:
    desired = _desired(args)
    started = time.perf_counter()
    result = _engine(args).sync(desired, full=True)
    print(f"applied: {result.plan.summary()} in {time.perf_counter() - started:.3f}s")
    return EXIT_OK


def cmd_cleanup(args: argparse.Namespace) -> int:
    removed = _engine(args).cleanup()
    print(f"removed table inet {args.table}" if removed else f"no table inet {args.table}: nothing to do")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    from wholeip.clusterfile import InputError
    from wholeip.nft.backend import NftError

    args = build_parser().parse_args(argv)
    if getattr(args, "node_name", "") is None and args.command in (
        "render",
        "diff",
        "apply",
        "run",
    ):
        _say("error: --node-name (or NODE_NAME) is required")
        return EXIT_ERROR
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "render": cmd_render,
        "diff": cmd_diff,
        "apply": cmd_apply,
        "cleanup": cmd_cleanup,
    }
    try:
        if args.command == "run":
            from wholeip import runner

            return runner.cmd_run(args)
        return commands[args.command](args)
    except InputError as exc:
        _say(f"error: {exc}")
    except NftError as exc:
        _say(f"error: {exc}")
    except BrokenPipeError:
        return EXIT_OK
    return EXIT_ERROR
