"""Run inside a fresh network namespace by test_process.py: the real ``wholeip run`` process.

The API server double runs in this process; the agent is a child process with
the real libnftables backend, so the table it writes lives in the private
namespace and nothing on the host is touched. Prints one JSON line of results.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from agentkit import cluster, endpoint_slice, service, set_lb_ip

from wholeip_testkit.apiserver import ApiServer

PORT = 19765


def ingress() -> str:
    out = subprocess.run(["nft", "-j", "list", "map", "inet", "wholeip", "ingress4"], capture_output=True, text=True)
    return out.stdout


def ready() -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


async def main() -> None:
    async with ApiServer(bookmark_interval=1) as api:
        workdir = Path(tempfile.mkdtemp())
        kubeconfig = api.write_kubeconfig(workdir / "kubeconfig")
        cluster(api)
        api.store.create(service("web"))
        set_lb_ip(api, "web", "198.51.100.10")
        api.store.create(endpoint_slice("web", "10.244.1.10", "n1"))
        argv = [sys.executable, "-m", "wholeip", "run", "--node-name", "n1", "--kubeconfig", str(kubeconfig)]
        argv += ["--port", str(PORT), "--log-format", "json"]
        with (workdir / "agent.log").open("w") as log:
            agent = await asyncio.create_subprocess_exec(*argv, stderr=log)
            deadline = time.monotonic() + 30
            while not await asyncio.to_thread(ready):
                if time.monotonic() > deadline or agent.returncode is not None:
                    break
                await asyncio.sleep(0.1)
            before = ingress()
            agent.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(agent.wait(), 30)
        after = ingress()
        lines = (workdir / "agent.log").read_text().splitlines()
        print(json.dumps({"before": before, "after": after, "exit": code, "log": lines}))


if __name__ == "__main__":
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)  # a new namespace's loopback starts down
    asyncio.run(main())
