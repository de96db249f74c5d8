"""manifests/monitoring/: the Prometheus rules and the Grafana dashboard.

* the rules pass ``promtool check rules`` and their unit tests
  (``promtool test rules``, tests/manifests/monitoring/rules_test.yaml), and the
  PrometheusRule carries exactly the groups of the rule file;
* the dashboard is valid JSON, every query in it is valid PromQL (promtool checks
  each as a recording rule), and every metric it names is one that a running agent
  (``wholeip run``, real kernel, in the sandbox) exports on ``/metrics``; the rules
  too; and every metric family the agent exports has a panel;
* ``kubectl kustomize manifests/monitoring/`` builds the PrometheusRule and the
  dashboard's ConfigMap, and the install (``manifests/``) does not include them.

promtool comes from Debian's ``prometheus`` package (hack/bootstrap.sh installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "manifests" / "monitoring"
RULES = MONITORING / "rules.yaml"
DASHBOARD = MONITORING / "dashboard.json"
RULES_TEST = Path(__file__).parent / "monitoring" / "rules_test.yaml"
BIN = next(
    (d for d in (Path(sys.executable).parent, ROOT / ".venv" / "bin") if (d / "kubectl").exists()),
    Path(sys.executable).parent,
)
KUBECTL = BIN / "kubectl"

METRIC = re.compile(r"\bwholeip_[a-z0-9_]+")


def _promtool() -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (hack/bootstrap.sh does)"
    return promtool


def _run(*argv: str | Path, cwd: Path | None = None) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, cwd=cwd, check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


def _dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text())
    assert isinstance(doc, dict)
    return doc


def _queries(dashboard: dict[str, Any], *, variables: bool = True) -> Iterator[str]:
    """The PromQL of every panel, and (``variables``) the variables' Grafana queries."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    if variables:
        for var in dashboard["templating"]["list"]:
            if var["type"] == "query":
                yield var["definition"]


def _rule_exprs() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


# --- rules -------------------------------------------------------------------------------


def test_rules_pass_promtool_check() -> None:
    out = _run(_promtool(), "check", "rules", RULES)
    assert f"SUCCESS: {len(_rule_exprs())} rules found" in out, out


def test_rules_pass_their_promtool_unit_tests() -> None:
    out = _run(_promtool(), "test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert "SUCCESS" in out, out
    # Every alert of the rule file has a unit test.
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    tested = {
        t["alertname"] for case in yaml.safe_load(RULES_TEST.read_text())["tests"] for t in case["alert_rule_test"]
    }
    assert alerts == tested
    assert alerts >= {
        "WholeipAgentNotReady",
        "WholeipSyncErrors",
        "WholeipDriftRepairsClimbing",
        "WholeipProblemsPresent",
        "WholeipChangeToCommitSlow",
    }


def test_a_broken_rule_fails_the_unit_tests(tmp_path: Path) -> None:
    # The unit tests can fail: with the sync-error alert's threshold raised past what the
    # test feeds it, promtool must report the missing alert.
    text = RULES.read_text()
    broken = text.replace(
        'rate(wholeip_syncs_total{result="error"}[5m]) > 0', 'rate(wholeip_syncs_total{result="error"}[5m]) > 1'
    )
    assert broken != text
    rules = tmp_path / "manifests" / "monitoring" / "rules.yaml"
    rules.parent.mkdir(parents=True)
    rules.write_text(broken)
    test_dir = tmp_path / "tests" / "manifests" / "monitoring"
    test_dir.mkdir(parents=True)
    shutil.copy(RULES_TEST, test_dir / RULES_TEST.name)
    proc = subprocess.run(
        [_promtool(), "test", "rules", RULES_TEST.name], capture_output=True, text=True, timeout=120, cwd=test_dir
    )
    assert proc.returncode != 0
    assert "WholeipSyncErrors" in proc.stdout + proc.stderr


def test_prometheusrule_carries_the_rule_file() -> None:
    (rule,) = [d for d in yaml.safe_load_all((MONITORING / "prometheusrule.yaml").read_text()) if d]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["namespace"] == "wholeip-system"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


# --- dashboard -----------------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard() -> None:
    dash = _dashboard()
    assert dash["uid"]
    assert dash["title"]
    assert isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "instance"} <= names
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert '{instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool has no query checker, but it parses the expression of every rule.
    # (label_values() in a variable is Grafana's, not PromQL.)
    queries = list(_queries(_dashboard(), variables=False))
    rules = [
        {"record": f"dashboard:query_{i}", "expr": q.replace("$__rate_interval", "5m").replace("$instance", ".*")}
        for i, q in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = _run(_promtool(), "check", "rules", path)
    assert f"SUCCESS: {len(rules)} rules found" in out, out


# --- the names against a running agent ---------------------------------------------------------


def _exported(metrics_text: str) -> tuple[set[str], set[str]]:
    """(families, sample names) of a /metrics page."""
    families: set[str] = set()
    samples: set[str] = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            # A family is exported even before it has a sample (a labelled counter with no
            # increments yet); a counter's TYPE line already names it ..._total.
            _, _, name, kind = line.split()
            if not name.endswith("_created"):
                families.add(name)
            suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}.get(kind, ())
            samples.update([name, *(name + s for s in suffixes)])
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return families, samples


@pytest.fixture(scope="module")
def agent_metrics() -> str:
    """``/metrics`` of a ``wholeip run`` in the sandbox, after it mapped a Service."""
    from wholeip_testkit.sandbox import Sandbox, wait_for

    with Sandbox(nodes=("n1",)) as sb:
        sb.wait_ready(within=60)
        sb.apply([sb.service_manifest("vm"), *sb.slices_manifest("vm", "pod_a")])
        sb.set_load_balancer_ips("vm", ["203.0.113.10"])
        sb.kubectl("annotate", "service", "vm", "networking.cozystack.io/wholeIP=true")
        wait_for(lambda: sb.ingress("n1").get("203.0.113.10") == "10.244.1.10", within=30, what="the mapping")
        status, body = sb.probe("n1", "/metrics")
        assert status == 200, body
        return body


@pytest.mark.kernel
def test_dashboard_and_rules_name_only_exported_metrics(agent_metrics: str) -> None:
    families, samples = _exported(agent_metrics)
    assert "wholeip_syncs" in families or "wholeip_syncs_total" in families, sorted(families)
    in_dashboard = {m for q in _queries(_dashboard()) for m in METRIC.findall(q)}
    in_rules = {m for e in _rule_exprs() for m in METRIC.findall(e)}
    assert in_dashboard - samples == set(), f"the dashboard names metrics the agent does not export: {sorted(samples)}"
    assert in_rules - samples == set(), f"the rules name metrics the agent does not export: {sorted(samples)}"


@pytest.mark.kernel
def test_every_exported_family_has_a_panel(agent_metrics: str) -> None:
    families, _ = _exported(agent_metrics)
    shown = {m for q in _queries(_dashboard()) for m in METRIC.findall(q)}
    missing = {f for f in families if f.startswith("wholeip_") and not any(s.startswith(f) for s in shown)}
    assert missing == set(), f"add a panel to manifests/monitoring/dashboard.json for {sorted(missing)}"


@pytest.mark.kernel
def test_build_info_says_version_and_python(agent_metrics: str) -> None:
    from wholeip import __version__

    (line,) = [ln for ln in agent_metrics.splitlines() if ln.startswith("wholeip_build_info{")]
    labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
    assert labels["version"] == __version__
    assert re.fullmatch(r"3\.\d+\.\d+", labels["python_version"]), labels
    assert line.endswith(" 1.0")


# --- kustomize ---------------------------------------------------------------------------------


def test_kustomize_builds_the_rule_and_the_dashboard_configmap() -> None:
    built = [d for d in yaml.safe_load_all(_run(KUBECTL, "kustomize", MONITORING)) if d]
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in built)
    assert kinds == [("ConfigMap", "wholeip-dashboard"), ("PrometheusRule", "wholeip")]
    (cm,) = [o for o in built if o["kind"] == "ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["wholeip.json"]) == _dashboard()


def test_monitoring_is_not_part_of_the_install() -> None:
    kustomization = yaml.safe_load((ROOT / "manifests" / "Kustomization").read_text())
    assert not any(r.startswith("monitoring") for r in kustomization["resources"])
    installed = [d for d in yaml.safe_load_all(_run(KUBECTL, "kustomize", ROOT / "manifests")) if d]
    assert not any(o["kind"] in ("PrometheusRule", "ConfigMap") for o in installed)
