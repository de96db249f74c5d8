"""``make bench``: a cluster file as ``kubectl get -o yaml`` prints it against the same objects as JSON.

For N whole-IP Services (``wholeip_testkit.synth``, dual-stack, with their slices
and Nodes) one ``kind: List`` is written twice: as ``kubectl get -o json`` prints
it (indented JSON) and as ``kubectl get -o yaml`` prints it (block style, one
document). Measured in the same run, each the best of ``--repeat``:

* **parse**: ``clusterfile.parse_text`` of each text, in this process (CPU
  seconds): JSON (the json module), YAML through kubeyaml (the fast path), and
  YAML through PyYAML alone (libyaml's C loader where installed), for reference;
* **render**: the whole ``wholeip render -f FILE`` process, CPU seconds of the
  child (parse, model, compile, the table document), JSON against YAML: the
  number the issue's target (YAML within 1.5x of JSON) is about.

Prints a table and writes JSON. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from wholeip.cli import clusterfile, kubeyaml
from wholeip_bench import write_results
from wholeip_testkit import synth

_PYYAML_ONLY = (
    "import sys, wholeip.cli.kubeyaml as k\n"
    "def refuse(text):\n"
    "    raise k.Unsupported('benchmark: PyYAML only')\n"
    "k.load_all = refuse\n"
    "from wholeip.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _cpu(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def _child_cpu(argv: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best = min(best, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return best


def measure(n: int, repeat: int, workdir: Path) -> dict[str, Any]:
    doc = {"apiVersion": "v1", "kind": "List", "items": synth.cluster(n, dual_stack=True), "metadata": {}}
    json_text = json.dumps(doc, indent=4)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    yaml_text = yaml.dump(doc, Dumper=dumper, default_flow_style=False, sort_keys=False, width=10_000)
    assert kubeyaml.load_all(yaml_text) == [json.loads(json_text)]  # the fast path takes it, and agrees
    json_path, yaml_path = workdir / "cluster.json", workdir / "cluster.yaml"
    json_path.write_text(json_text)
    yaml_path.write_text(yaml_text)

    def pyyaml_only() -> object:
        return list(yaml.load_all(yaml_text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))

    row: dict[str, Any] = {
        "services": n,
        "objects": len(doc["items"]),
        "json_bytes": len(json_text),
        "yaml_bytes": len(yaml_text),
        "libyaml": bool(getattr(yaml, "__with_libyaml__", False)),
        "parse_json_s": _cpu(lambda: clusterfile.parse_text(json_text), repeat),
        "parse_yaml_s": _cpu(lambda: clusterfile.parse_text(yaml_text), repeat),
        "parse_pyyaml_s": _cpu(pyyaml_only, 1),
    }
    render = ["render", "--node-name", "n1", "-f"]
    row["render_json_s"] = _child_cpu([sys.executable, "-m", "wholeip", *render, str(json_path)], repeat)
    row["render_yaml_s"] = _child_cpu([sys.executable, "-m", "wholeip", *render, str(yaml_path)], repeat)
    row["render_pyyaml_s"] = _child_cpu([sys.executable, "-c", _PYYAML_ONLY, *render, str(yaml_path)], 1)
    row["parse_ratio"] = row["parse_yaml_s"] / row["parse_json_s"]
    row["render_ratio"] = row["render_yaml_s"] / row["render_json_s"]
    row["render_ratio_pyyaml"] = row["render_pyyaml_s"] / row["render_json_s"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wholeip_bench.clusterfile", description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, nargs="+", default=[10_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench-results/clusterfile.json", help="where the JSON table goes")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="wholeip-bench-") as tmp:
        for n in args.services:
            rows.append(measure(n, args.repeat, Path(tmp)))
    print(
        f"{'services':>9} {'parse json':>11} {'yaml':>7} {'pyyaml':>7} {'ratio':>6}"
        f" {'render json':>12} {'yaml':>7} {'pyyaml':>7} {'ratio':>6} {'pyyaml':>7}   (CPU s; ratio yaml/json)"
    )
    for r in rows:
        print(
            f"{r['services']:>9} {r['parse_json_s']:>11.2f} {r['parse_yaml_s']:>7.2f} {r['parse_pyyaml_s']:>7.2f}"
            f" {r['parse_ratio']:>6.2f} {r['render_json_s']:>12.2f} {r['render_yaml_s']:>7.2f}"
            f" {r['render_pyyaml_s']:>7.2f} {r['render_ratio']:>6.2f} {r['render_ratio_pyyaml']:>7.2f}"
        )
    write_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
