"""``wholeip run``: the agent's flags -> Settings -> :func:`wholeip.agent.app.run`.

Kept apart from :mod:`wholeip.cli.offline` so that the offline subcommands never import
the agent's dependencies (kubernetes_asyncio, aiohttp).
"""

from __future__ import annotations

import argparse

from wholeip.cli import flags
from wholeip.settings import Settings


def add_run_parser(p: flags.EnvDefaults) -> None:
    flags.add_node_flag(p, required=True)
    flags.add_model_flags(p)
    flags.add_egress_flags(p)
    defaults = Settings(node_name="")
    p.env_option(
        "--kubeconfig",
        env=("KUBECONFIG",),
        help="kubeconfig path (default: in-cluster configuration)",
    )
    p.env_option(
        "--min-sync-interval",
        default=defaults.min_sync_interval,
        convert=float,
        type=float,
        metavar="SECONDS",
        help="least time between two syncs after the burst",
    )
    p.env_option(
        "--sync-burst",
        default=defaults.sync_burst,
        convert=int,
        type=int,
        metavar="N",
        help="syncs allowed back to back",
    )
    p.env_option(
        "--max-sync-interval",
        default=defaults.max_sync_interval,
        convert=float,
        type=float,
        metavar="SECONDS",
        help="full resync (compares with the kernel, repairs drift) at least this often",
    )
    p.env_option(
        "--health-timeout",
        default=defaults.health_timeout,
        convert=float,
        type=float,
        metavar="SECONDS",
        help="/healthz fails when a change waited longer than this",
    )
    p.env_option(
        "--api-liveness-timeout",
        default=defaults.api_liveness_timeout,
        convert=float,
        type=float,
        metavar="SECONDS",
        help="/healthz fails when the API server has been unreachable longer than this (0: never)",
    )
    p.env_option(
        "--bind-address",
        default=defaults.bind_address,
        help="address of the probes and metrics server",
    )
    p.env_option(
        "--port",
        default=defaults.port,
        convert=int,
        type=int,
        help="port of the probes and metrics server",
    )
    p.env_option("--log-format", default=defaults.log_format, choices=("json", "console"), help="log format")
    p.env_option(
        "--log-level",
        default=defaults.log_level,
        choices=("debug", "info", "warning", "error"),
        help="log level",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        node_name=args.node_name,
        model=flags.model_settings(args),
        table=args.table,
        kubeconfig=args.kubeconfig,
        min_sync_interval=args.min_sync_interval,
        sync_burst=args.sync_burst,
        max_sync_interval=args.max_sync_interval,
        health_timeout=args.health_timeout,
        api_liveness_timeout=args.api_liveness_timeout,
        bind_address=args.bind_address,
        port=args.port,
        log_format=args.log_format,
        log_level=args.log_level,
        egress=flags.egress_settings(args),
    )


def cmd_run(args: argparse.Namespace) -> int:
    from wholeip.agent import app

    return app.run(settings_from_args(args))
