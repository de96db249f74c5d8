#!/usr/bin/env python3
"""Bring the two-node test topology up and down by hand, for debugging.

    hack/topology.py up [--prefix P] [--ext-mtu 1280]   # prints the namespace names
    hack/topology.py exec P ROLE -- nft list ruleset    # run a command inside a role
    hack/topology.py down P                             # delete every namespace of P
    hack/topology.py list                               # prefixes that exist now

``up`` leaves the namespaces behind on purpose (that is the point of a CLI);
``down`` removes them. Everything runs inside the topology's namespaces, never
in the host's. Roles: ext rtr n1 n2 pod_a pod_b.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("src", "testkit")]

from wholeip_testkit.topology import (  # noqa: E402 (after the path set-up)
    ADDRESSES,
    ALL_ROLES,
    EXTERNAL_IPS,
    Topology,
    list_namespaces,
    teardown_prefix,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/topology.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="create a topology and leave it running")
    up.add_argument("--prefix")
    up.add_argument("--ext-mtu", type=int)
    up.add_argument("--pod-c", action="store_true", help="add the third pod, pod_c on n1")
    down = sub.add_parser("down", help="delete a topology")
    down.add_argument("prefix")
    ex = sub.add_parser("exec", help="run a command inside a role's namespace")
    ex.add_argument("prefix")
    ex.add_argument("role", choices=ALL_ROLES)
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    sub.add_parser("list", help="prefixes of existing topologies")
    args = parser.parse_args(argv)

    if args.cmd == "up":
        topo = Topology.create(prefix=args.prefix, ext_mtu=args.ext_mtu, pod_c=args.pod_c)
        print(f"prefix {topo.prefix}")
        for role in topo.roles:
            addrs = ", ".join(ADDRESSES[role].values())
            print(f"  {role:6} {topo.ns(role):20} {addrs}")
        for node, ips in EXTERNAL_IPS.items():
            print(f"  external IPs routed to {node}: {', '.join(ips.values())}")
        print(f"down with: hack/topology.py down {topo.prefix}")
        return 0
    if args.cmd == "down":
        gone = teardown_prefix(args.prefix)
        print("\n".join(gone) or "nothing to delete")
        return 0
    if args.cmd == "list":
        prefixes = sorted({ns.split("-")[0] for ns in list_namespaces() if ns.endswith("-rtr")})
        print("\n".join(prefixes))
        return 0
    cmd = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not cmd:
        parser.error("exec needs a command after --")
    ns = f"{args.prefix}-{args.role}"
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
