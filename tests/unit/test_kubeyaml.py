"""kubeyaml, the fast reader of kubectl's YAML, never disagrees with PyYAML.

For any text it reads, it gives exactly what ``yaml.load_all(text, SafeLoader)`` gives;
everything else it refuses with Unsupported, and the cluster file goes to PyYAML. The
property feeds it PyYAML's own block-style dumps of arbitrary objects whose strings are
made of the characters that matter to YAML (and the words its resolver types), in both
sequence indentations, and hand-written texts that must be refused. One test shows the
fast path is taken for what kubectl prints, so its speed is not a silent fallback.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from wholeip.cli import kubeyaml
from wholeip.cli.clusterfile import parse_text

WORDS = (
    "", "~", "null", "Null", "true", "False", "yes", "No", "on", "OFF", "y", "n", "0", "-1", "+3", "012",
    "0x1F", "0o17", "0b101", "1_000", "1:30", "1.5", "-.5", "1e3", "1.0e+3", ".inf", "-.Inf", ".nan",
    "2026-01-01", "2026-01-01T00:00:00Z", "2026-01-01 00:00:00.5 +02:00", "<<", "=", "-", "- x", "? x",
    "a: b", "a #b", "#c", "x:", ":x", "a:b", "{}", "[]", "{a: 1}", "[1]", "'", '"', "'q'", '"q"', "\\",
    "\\n", "tab\there", "line\nbreak", "trailing ", " leading", "é", "\u2028", "\x85", "\ufeff", "%x", "@x",
    "`x", "!x", "&x", "*x", "|", ">", "10.96.0.1", "fd00::1", "::1", "::", "10.0.0.0/8", "v1", "TCP",
)  # fmt: skip

scalars = st.one_of(
    st.sampled_from(WORDS),
    st.text(alphabet=st.sampled_from("ab :#-'\"\\{}[],&*!|>%@`?.0129eE+_xT\u00e9"), max_size=8),
    st.integers(-(2**40), 2**40),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
)
keys = st.one_of(
    st.sampled_from(WORDS),
    st.text(alphabet=st.sampled_from("ab :#-'\"0129.x"), max_size=6),
    st.integers(0, 99),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=25,
)


class _Indented(yaml.SafeDumper):
    """Sequences indented under their key ("key:\\n  - x"), as some tools print them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _agrees(text: str) -> bool:
    """kubeyaml reads ``text`` as PyYAML does, or refuses it; True: it read it."""
    try:
        fast = kubeyaml.load_all(text)
    except kubeyaml.Unsupported:
        return False
    assert fast == list(yaml.load_all(text, Loader=yaml.SafeLoader)), text
    return True


@settings(max_examples=400, deadline=None)
@given(st.lists(values, min_size=1, max_size=3), st.booleans())
def test_reads_what_pyyaml_reads_or_refuses(docs: list[Any], indented: bool) -> None:
    dumper = _Indented if indented else yaml.SafeDumper
    text = yaml.dump_all(docs, Dumper=dumper, default_flow_style=False, allow_unicode=True, width=10_000)
    _agrees(text)
    _agrees(text.replace("\n", "\r\n"))


@pytest.mark.parametrize(
    "text",
    [
        "a: |\n  block\n",
        "a: >\n  folded\n",
        "a: plain\n  continued\n",
        'a: "quoted\n  continued"\n',
        "a: &x 1\nb: *x\n",
        "a: !!str 1\n",
        "a: {b: 1}\n",
        "a: [1, 2]\n",
        "? complex\n: key\n",
        "a: 1 # comment\n",
        "%YAML 1.1\n---\na: 1\n",
        "a:\n\tb: 1\n",
        "a:\n    b: 1\n  c: 2\n",
        "a: 1\n- b\n",
        "- a\nb: 1\n",
        "a: b: c\n",
        "a: x:\n",
        "<<: {a: 1}\n",
        "-\n  a: 1\n",
        "- - a\n",
        'a: "\\x41"\n',
        "a: \x07\n",
        "\ufeffa: 1\n",
    ],
)
def test_refuses_what_it_does_not_know(text: str) -> None:
    with pytest.raises(kubeyaml.Unsupported):
        kubeyaml.load_all(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "---\n",
        "--- \n---\n",
        "a: 1\n---\nb: 2\n",
        "plain\n",
        "a:\n",
        "a:\nb:\n- 1\n-   2\nc: {}\nd: []\n",
        "a:\n  - x: 1\n    y: 2\n  - z\n",
        "'a b': 'it''s'\n\"c\": \"\\u00e9\\\"\\n\"\n",
        "a : 1\n",
        "# comment\na: 1\n\n  # indented comment\nb: 2\n",
        "80: http\n1.5: x\ntrue: y\n",
        "t: 2026-01-01T00:00:00Z\nd: 2026-01-01\n",
    ],
)
def test_reads_the_subset_as_pyyaml_does(text: str) -> None:
    assert _agrees(text)


class _Repeated(_Indented):
    """The same object again is printed again (kubectl never prints anchors)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _read_keeping(text: str, kept: int) -> Any:
    """kubeyaml's documents of ``text`` with at most ``kept`` distinct lines' parts kept."""
    before = kubeyaml._LINES_KEPT
    kubeyaml._LINES_KEPT = kept
    try:
        return kubeyaml.load_all(text)
    except kubeyaml.Unsupported:
        return "unsupported"
    finally:
        kubeyaml._LINES_KEPT = before


@settings(max_examples=150, deadline=None)
@given(st.lists(values, min_size=1, max_size=4))
def test_repeated_lines_read_alike_kept_or_not(docs: list[Any]) -> None:
    """A line read before is taken as read then (its parts are kept, up to a bound): the
    same lines at several indentations read alike with every line kept, none, or two."""
    doc = {"items": docs * 2, "nested": {"deeper": docs}}
    text = yaml.dump(doc, Dumper=_Repeated, default_flow_style=False, allow_unicode=True, width=10_000)
    _agrees(text)
    assert _read_keeping(text, 1 << 20) == _read_keeping(text, 0) == _read_keeping(text, 2)


def test_kubectl_output_takes_the_fast_path() -> None:
    """A List as ``kubectl get -o yaml`` prints it (go-yaml: sequences at their key's
    indentation, quoted timestamps, ``{}``) is read by kubeyaml, not handed to PyYAML."""
    text = """apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    annotations:
      networking.cozystack.io/wholeIP: "true"
    creationTimestamp: "2026-01-01T00:00:00Z"
    name: a
    namespace: default
    resourceVersion: "123"
  spec:
    clusterIP: 10.96.0.10
    ports:
    - name: web
      port: 80
      protocol: TCP
      targetPort: 8080
    type: LoadBalancer
  status:
    loadBalancer:
      ingress:
      - ip: 203.0.113.10
        ipMode: VIP
- apiVersion: v1
  kind: Node
  metadata:
    labels: {}
    name: n1
  spec: {}
kind: List
metadata:
  resourceVersion: ""
"""
    assert _agrees(text)
    parsed = parse_text(text)
    assert [o["kind"] for o in parsed.objects] == ["Service", "Node"]
    assert parsed.objects[0]["metadata"]["creationTimestamp"] == "2026-01-01T00:00:00Z"
    assert parsed.objects[0]["spec"]["ports"][0]["port"] == 80
