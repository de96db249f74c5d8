"""The ``wholeip`` command: flags and their environment twins -> Settings -> a subcommand.

Subcommands: ``render``, ``diff``, ``apply`` and ``cleanup`` work on a cluster
file without an API server (:mod:`wholeip.cli.offline`); ``run`` is the agent
(:mod:`wholeip.cli.run`: informers, reconcile loop, probes). The flags and their
``WHOLEIP_*`` environment twins are in :mod:`wholeip.cli.flags`.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable, Sequence

from wholeip import __version__
from wholeip.cli import flags, offline


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wholeip",
        description=(
            "Give a Kubernetes Service's external IP to one pod: every port in, the pod's egress out,"
            " with nftables maps."
        ),
    )
    parser.add_argument("--version", action="version", version=f"wholeip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=flags.EnvDefaults)

    def add(name: str, help: str) -> flags.EnvDefaults:
        p: flags.EnvDefaults = sub.add_parser(name, help=help, description=help)
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
        flags.add_file_flag(p)
        flags.add_node_flag(p, required=True)
        flags.add_model_flags(p)
        flags.add_egress_flags(p)
    p = add(
        "cleanup",
        "delete wholeip's table and its egress steering rules and routes from this network namespace"
        " (nothing else is touched)",
    )
    p.env_option("--table", default="wholeip", help="name of our own inet table")
    flags.add_egress_flags(p)

    from wholeip.cli import status

    status.add_status_parser(
        add(
            "status",
            "what this node does now, read from the kernel's table, and its drift from what the cluster"
            " says (exit 0 in sync, 1 drift, 2 error, 3 API unreachable)",
        )
    )

    from wholeip.cli import run as runner

    runner.add_run_parser(add("run", "run the agent: watch the cluster and keep this node's table right"))
    return parser


def entry() -> int:
    """The ``wholeip`` command as a process: :func:`main`, then what is left is the OS's.

    At 100,000 Services a one-shot command ends holding millions of objects (the index
    refers to itself, so only the collector would free it), and the interpreter's last
    collection at exit took 2.0 s of a 9 s ``wholeip apply`` to free memory the process
    gives back anyway. Frozen objects are left out of it. (``main`` itself is called in
    tests, which must not freeze what they hold.)
    """
    leave_out_unused()
    code = main()
    gc.freeze()
    return code


UNUSED = ("rich", "better_exceptions")
"""Packages structlog imports when they are installed, for its console renderer's
tracebacks: rich alone is 8 MiB in every agent (its ~50 modules and pygments), and
wholeip neither depends on them nor needs them (the agent logs JSON lines; the console
format prints plain tracebacks without them). The image does not have them; a
virtualenv that also holds other tools often does."""


def leave_out_unused() -> None:
    """Make :data:`UNUSED` unimportable in this process (before anything imports structlog),
    unless something imported them already. Only the command's own process does this:
    :func:`main` is also called in tests, which must not change what their process can import."""
    for name in UNUSED:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]  # (an import of it raises ImportError)


def main(argv: Sequence[str] | None = None) -> int:
    from wholeip.cli import status
    from wholeip.cli.clusterfile import InputError
    from wholeip.nft.backend import NftError

    args = build_parser().parse_args(argv)
    if getattr(args, "node_name", "") is None and args.command in (
        "render",
        "diff",
        "apply",
        "run",
    ):
        offline.say("error: --node-name (or NODE_NAME) is required")
        return offline.EXIT_ERROR
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "render": offline.cmd_render,
        "diff": offline.cmd_diff,
        "apply": offline.cmd_apply,
        "cleanup": offline.cmd_cleanup,
    }
    try:
        if args.command == "status":
            return status.cmd_status(args)
        if args.command == "run":
            from wholeip.cli import run as runner

            return runner.cmd_run(args)
        return commands[args.command](args)
    except InputError as exc:
        offline.say(f"error: {exc}")
    except NftError as exc:
        offline.say(f"error: {exc}")
    except BrokenPipeError:
        return offline.EXIT_OK
    return offline.EXIT_ERROR
