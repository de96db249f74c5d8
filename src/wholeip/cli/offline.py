"""The offline subcommands: a cluster file in, our table out (no API server).

* ``render``  cluster file -> the JSON document of our table (no kernel needed);
* ``diff``    what ``apply`` would change in this network namespace (exit 1 when
  something would change, 0 when nothing, 2 on errors, like diff(1));
* ``apply``   make the kernel match the cluster file, in one transaction;
* ``cleanup`` delete our table and our egress steering rules and routes, and nothing else.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wholeip.cli import flags

if TYPE_CHECKING:
    from wholeip.cli.clusterfile import Parsed

EXIT_OK = 0
EXIT_CHANGES = 1
EXIT_ERROR = 2


def say(msg: str) -> None:
    print(msg, file=sys.stderr)


def desired_table(
    args: argparse.Namespace,
    *,
    route: bool = False,
    reach: bool = False,
    kernel: Callable[[], Any] | None = None,
) -> Any:
    """The table the cluster file says this node must hold. ``route`` (``apply``): program
    the egress steering's policy routing first, so that holders it cannot reach on-link
    are left out of the steering (as the agent does); ``reach`` (``diff``): look which
    holders are on-link, writing nothing. Neither (``render``): every holder is assumed
    on-link. ``kernel`` (``diff``, ``apply``): reads our table in the kernel, asked only
    when a delegated front-end has affinity: its generations are taken over as a restarted
    agent takes them (the recorded clients keep their endpoints; without it a hand-run
    ``apply`` would start every such front-end afresh, and ``diff`` would show the agent's
    generations as changes)."""
    from wholeip.cli import clusterfile
    from wholeip.core import index

    loaded = clusterfile.load(args.filename)
    for note in loaded.notes:
        say(f"note: {note}")
    check_not_empty(loaded, args)
    idx = index.load_objects(
        loaded.objects, node_name=args.node_name, settings=model_of(loaded, args), table=args.table
    )
    if kernel is not None and idx.delegated.has_affinity():
        current = kernel()
        adopted = idx.delegated.adopt(current.elements, {}) if current is not None else 0
        if adopted:
            say(f"note: affinity generations of {adopted} front-end(s) taken over from the table in the kernel")
    if route:
        steer(idx, args)
    elif reach:
        reach_holders(idx, args)
    for problem in sorted(idx.problems, key=lambda p: (p.ref, p.reason, p.message)):
        level = "warning" if problem.warning else "note"
        say(f"{level}: {problem.ref}: {problem.reason}: {problem.message}")
    return idx.doc()


def steer(idx: Any, args: argparse.Namespace) -> None:
    """The policy routing for the holders this node steers to (none: ours removed)."""
    from wholeip.agent.policyroute import PolicyRouter
    from wholeip.core.steering import SteeringConfig

    report = PolicyRouter(SteeringConfig.from_settings(flags.egress_settings(args))).apply(idx.egress.routes())
    for line in report.errors:
        say(f"warning: egress steering: {line}")
    idx.egress.set_routing(report.not_on_link, {}, steered=report.steered)
    if report.changed:
        say(
            f"note: egress steering: {report.rules_added} rule(s) and {report.routes_added} route(s) added,"
            f" {report.rules_removed} rule(s) and {report.routes_removed} route(s) removed"
        )


def reach_holders(idx: Any, args: argparse.Namespace) -> None:
    """Leave out of the steering the holders this node does not reach on-link (read-only)."""
    from wholeip.agent.policyroute import PolicyRouter
    from wholeip.core.steering import SteeringConfig

    routes = idx.egress.routes()
    if not routes:
        return
    try:
        report = PolicyRouter(SteeringConfig.from_settings(flags.egress_settings(args))).reach(routes)
    except Exception as exc:  # no netlink here: as render, every holder on-link
        say(f"warning: cannot tell which egress IP holders are on-link ({type(exc).__name__}: {exc})")
        return
    for line in report.errors:
        say(f"warning: egress steering: {line}")
    idx.egress.set_routing(report.not_on_link, {}, steered=report.steered)


def _warn_addresses(error: str) -> None:
    say(f"warning: cannot read this node's addresses (podnat's ifaceAuto uses ExternalIPs only): {error}")


def model_of(loaded: Parsed, args: argparse.Namespace) -> Any:
    """The model settings, with the Service networks of the file's ServiceCIDR objects (where
    it has none, the flag's fallback; an explicit flag wins): as the agent reads the API."""
    from wholeip.agent.hostaddr import read_host
    from wholeip.core.servicecidr import KIND, effective_model

    cidrs = [o for o in loaded.objects if o.get("kind") == KIND]
    # This namespace's own addresses, for the Pods' published ports (podnat's ifaceAuto).
    return effective_model(read_host(flags.model_settings(args), _warn_addresses), cidrs or None)


_EMPTY_WOULD = {
    "apply": "applying it would remove every mapping",
    "diff": "it would show every mapping removed",
    "render": "it would render a table without mappings",
}


def check_not_empty(loaded: Parsed, args: argparse.Namespace) -> None:
    """Refuse input without a single Kubernetes object unless ``--allow-empty``.

    An empty file is what a failed ``kubectl get ... | wholeip apply -f -``
    sends; taken at its word it means "no Services", and apply would delete every
    mapping. A file of other kinds only is not empty: it gets a note.
    """
    from wholeip.cli.clusterfile import InputError

    if loaded.total == 0:
        what = "the cluster files" if len(args.filename) > 1 else args.filename[0]
        what = "standard input" if what == "-" else what
        if not args.allow_empty:
            raise InputError(
                f"{what}: no Kubernetes objects (empty input); refusing, {_EMPTY_WOULD[args.command]}"
                " (give --allow-empty if that is meant)"
            )
        say(f"note: {what}: no Kubernetes objects, accepted (--allow-empty): the table holds no mappings")
    elif not loaded.objects:
        say(f"note: {loaded.total} object(s) but no Service, EndpointSlice or Node: the table holds no mappings")


def engine(args: argparse.Namespace) -> Any:
    from wholeip.engine import Engine
    from wholeip.nft.libnft import LibnftBackend

    return Engine(backend=LibnftBackend(), table=args.table)


def cmd_render(args: argparse.Namespace) -> int:
    from wholeip.nft.render import render_table

    print(json.dumps(render_table(desired_table(args)), indent=2))
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from wholeip.nft.commands import as_json
    from wholeip.nft.diff import diff

    # (Read once: for the generations, when asked, and for the diff.)
    current: Callable[[], Any] = functools.cache(lambda: engine(args).observe())
    desired = desired_table(args, reach=True, kernel=current)
    plan = diff(desired, current())
    if plan.empty:
        say("no changes")
        return EXIT_OK
    print(json.dumps({"nftables": as_json(plan.commands)}, indent=2))
    say(plan.summary())
    return EXIT_CHANGES


def cmd_apply(args: argparse.Namespace) -> int:
    # (The kernel is reached only once the input is read and accepted.)
    desired = desired_table(args, route=True, kernel=lambda: engine(args).observe())
    started = time.perf_counter()
    result = engine(args).sync(desired, full=True)
    print(f"applied: {result.plan.summary()} in {time.perf_counter() - started:.3f}s")
    return EXIT_OK


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Our table, then our egress steering rules and routes (found by the egress flags'
    priority, mask and table range, and our route protocol): nothing else."""
    from wholeip.agent.policyroute import PolicyRouter
    from wholeip.core.steering import SteeringConfig

    removed = engine(args).cleanup()
    print(f"removed table inet {args.table}" if removed else f"no table inet {args.table}: nothing to do")
    try:
        router = PolicyRouter(SteeringConfig.from_settings(flags.egress_settings(args)))
        report = router.remove_all()
    except (ValueError, OSError, ImportError) as exc:
        say(f"error: egress steering rules and routes: {exc}")
        return EXIT_ERROR
    if report.errors:
        for line in report.errors:
            say(f"error: {line}")
        return EXIT_ERROR
    if report.changed:
        print(f"removed {report.rules_removed} egress steering rule(s) and {report.routes_removed} route(s)")
    else:
        print("no egress steering rules or routes: nothing to do")
    return EXIT_OK
