"""The cluster's Service networks (pure): ServiceCIDR objects, the flag, and which one wins.

Since Kubernetes 1.33 the API server publishes its Service ranges as
``ServiceCIDR`` objects (``networking.k8s.io/v1``, cluster-scoped): the default
one, ``kubernetes``, holds ``--service-cluster-ip-range``, and an administrator
may add more at run time. A wrong Service network makes ClusterIP traffic look
external, so the agent reads them instead of asking the user to type them:

* the flag ``--service-cidr`` (or ``WHOLEIP_SERVICE_CIDR``), when given, wins: it is
  an explicit override (:attr:`~wholeip.settings.ModelSettings.service_cidrs_given`);
* else, where the API exists, the union of every ServiceCIDR's ``spec.cidrs``, those
  being deleted included (ClusterIPs may still be allocated from a range until its
  finalizer lets it go, and they stay east-west until then);
* else (a server older than 1.33, or a cluster file without ServiceCIDR objects) the
  flag's default, ``10.96.0.0/12``, as before.

An API that exists but lists no object at all (a real server always has
``kubernetes``) also falls back to the default: an empty Service network would
let ClusterIPs through as external IPs, the one mistake this guards against.

The result is a :class:`~wholeip.settings.ModelSettings` with the Service networks
filled in; the index takes it as it takes the flag, and a change of the ranges is
an update of the index, like a Node change (they decide the cluster networks and
the guard of every external IP; the index re-weighs only the addresses inside
ranges that changed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from wholeip.core.model import collapse
from wholeip.core.objects import RawObject, parse_network
from wholeip.settings import IPNetwork, ModelSettings

KIND = "ServiceCIDR"


def service_networks(objects: Iterable[RawObject]) -> tuple[IPNetwork, ...]:
    """The networks of ``spec.cidrs`` of these ServiceCIDR objects, collapsed (what does not
    parse is skipped: the API server validates them)."""
    nets: list[IPNetwork] = []
    for obj in objects:
        spec = obj.get("spec")
        cidrs = spec.get("cidrs") if isinstance(spec, dict) else None
        for raw in cidrs if isinstance(cidrs, list) else []:
            net = parse_network(raw)
            if net is not None:
                nets.append(net)
    return collapse(nets)


def effective_model(model: ModelSettings, objects: Iterable[RawObject] | None) -> ModelSettings:
    """``model`` with the Service networks the cluster says. ``objects``: the ServiceCIDR
    objects, or None where the API does not exist (then, and when the flag was given
    explicitly, ``model`` as it is)."""
    if model.service_cidrs_given or objects is None:
        return model
    nets = service_networks(objects)
    if not nets:
        return model
    return dataclasses.replace(model, service_cidrs=nets)


def source(model: ModelSettings, objects: Iterable[RawObject] | None) -> str:
    """Where the Service networks come from, for logs and ``wholeip status``: ``flag``,
    ``ServiceCIDR`` or ``default``."""
    if model.service_cidrs_given:
        return "flag"
    if objects is not None and service_networks(objects):
        return KIND
    return "default"
