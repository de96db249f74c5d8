"""Prometheus metrics of one agent, in a registry of its own.

A dedicated :class:`CollectorRegistry` (not prometheus_client's global one)
lets several agents live in one test process, and keeps library metrics that
nobody asked for out of ``/metrics``.

Informer counters are not pushed into metrics objects; a custom collector reads
them from the informers at scrape time, so the informer module stays free of
Prometheus and its counters are the single source of truth.

Names (all prefixed ``wholeip_``):

* ``sync_duration_seconds{kind="full|partial"}``      histogram, build + compile + commit
* ``change_to_commit_seconds``                        histogram, watch event -> committed transaction
* ``syncs_total{result="success|noop|error"}``        counter
* ``mappings{direction="ingress|egress",ip_family="ipv4|ipv6"}``  gauge, map elements on this node
* ``egress_services``                                 gauge, egress IP Services served (a holder and a member)
* ``egress_pods{role="steered|snat"}``                gauge, this node's members steered to another
  node's egress IP, and members (of any node) SNATed here because this node holds their IP
* ``last_successful_sync_timestamp_seconds``          gauge, Unix time
* ``drift_repairs_total``                             counter, full syncs that found our table changed behind our back
* ``conntrack_deleted_total``                         counter, conntrack entries of old mappings deleted
* ``problems{reason}``                                gauge, problems of the last model build
* ``events_total{result="created|updated|error"}``    counter, Kubernetes Events written
* ``watch_restarts_total{resource,reason}``           counter, from the informers
* ``informer_synced{resource}``, ``informer_objects{resource}``  gauges, from the informers
* ``build_info{version,python_version}``             gauge, always 1: what this agent is
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from wholeip import __version__
from wholeip.kube.informer import RESTART_REASONS
from wholeip.names import EGRESS, INGRESS

if TYPE_CHECKING:
    from wholeip.kube.informer import Informer

_SYNC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_MAPS = {
    maps[v]: (direction, f"ipv{v}") for direction, maps in (("ingress", INGRESS), ("egress", EGRESS)) for v in (4, 6)
}
"""Map name -> the ``mappings`` gauge's labels (direction, ip_family)."""


class _InformerCollector:
    def __init__(self, informers: Sequence[Informer]) -> None:
        self._informers = informers

    def collect(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "wholeip_watch_restarts",
            "Watch connections restarted, by resource and reason (" + ", ".join(RESTART_REASONS) + ").",
            labels=["resource", "reason"],
        )
        synced = GaugeMetricFamily(
            "wholeip_informer_synced", "1 once the resource's first list is cached.", labels=["resource"]
        )
        objects = GaugeMetricFamily("wholeip_informer_objects", "Objects in the cache.", labels=["resource"])
        for informer in self._informers:
            for reason in RESTART_REASONS:
                restarts.add_metric([informer.resource, reason], informer.restarts[reason])
            synced.add_metric([informer.resource], 1.0 if informer.synced.is_set() else 0.0)
            objects.add_metric([informer.resource], len(informer.cache))
        yield restarts
        yield synced
        yield objects


class Metrics:
    """Every metric the agent exports, registered in :attr:`registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.change_to_commit = Histogram(
            "wholeip_change_to_commit_seconds",
            "From the watch event of a change (the first one a sync takes) to its committed transaction.",
            buckets=_SYNC_BUCKETS,
            registry=r,
        )
        self.sync_duration = Histogram(
            "wholeip_sync_duration_seconds",
            "Duration of one sync: model, compile, and the kernel transaction.",
            ["kind"],
            buckets=_SYNC_BUCKETS,
            registry=r,
        )
        self.syncs = Counter("wholeip_syncs", "Syncs by result (success, noop, error).", ["result"], registry=r)
        for result in ("success", "noop", "error"):
            self.syncs.labels(result)
        self.mappings = Gauge(
            "wholeip_mappings", "Mappings in this node's maps.", ["direction", "ip_family"], registry=r
        )
        for direction, family in _MAPS.values():
            self.mappings.labels(direction, family)
        self.egress_services = Gauge(
            "wholeip_egress_services",
            "Egress IP Services served: a holder node is known and at least one member pod leaves with its IP.",
            registry=r,
        )
        self.egress_pods = Gauge(
            "wholeip_egress_pods",
            "Egress IP member pod addresses: steered (this node's members sent to the holder of their IP)"
            " and snat (members SNATed to an IP this node holds).",
            ["role"],
            registry=r,
        )
        for role in ("steered", "snat"):
            self.egress_pods.labels(role)
        self.last_success = Gauge(
            "wholeip_last_successful_sync_timestamp_seconds",
            "Unix time of the last sync that committed (or found nothing to commit).",
            registry=r,
        )
        self.drift_repairs = Counter(
            "wholeip_drift_repairs",
            "Full syncs that found the kernel's table different from what was committed, and repaired it.",
            registry=r,
        )
        self.conntrack_deleted = Counter(
            "wholeip_conntrack_deleted",
            "Conntrack entries of mappings that changed or went away, deleted after a commit.",
            registry=r,
        )
        self.problems = Gauge(
            "wholeip_problems", "Problems found in cluster objects by the last model build.", ["reason"], registry=r
        )
        self.build_info = Gauge(
            "wholeip_build_info",
            "Always 1; the labels say which wholeip and which Python this agent runs.",
            ["version", "python_version"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.events = Counter(
            "wholeip_events", "Kubernetes Events written, by result (created, updated, error).", ["result"], registry=r
        )

    def track_informers(self, informers: Sequence[Informer]) -> None:
        self.registry.register(_InformerCollector(informers))

    def count_event(self, result: str) -> None:
        """One Event write and how it ended (the recorder's ``on_result``)."""
        self.events.labels(result).inc()

    def set_mappings(self, counts: Mapping[str, int]) -> None:
        for name, (direction, family) in _MAPS.items():
            self.mappings.labels(direction, family).set(counts.get(name, 0))

    def set_egress(self, services: int, steered: int, snat: int) -> None:
        self.egress_services.set(services)
        self.egress_pods.labels("steered").set(steered)
        self.egress_pods.labels("snat").set(snat)

    def set_problems(self, reasons: Iterable[str]) -> None:
        counts: dict[str, int] = {}
        for reason in reasons:
            counts[reason] = counts.get(reason, 0) + 1
        # Reasons that went away must read 0, not keep their last value.
        self.problems.clear()
        for reason, count in counts.items():
            self.problems.labels(reason).set(count)
