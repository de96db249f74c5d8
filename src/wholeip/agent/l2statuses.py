"""The agent's source of egress IP holders: discovery, then the ServiceL2Status informer.

Like the Service networks (:class:`~wholeip.agent.servicecidrs.ServiceCIDRSource`): the
agent asks whether the server serves MetalLB's ServiceL2Status objects
(:mod:`wholeip.kube.l2status`), then watches them where it does; where it does not, every
egress Service's holder comes from its ``networking.cozystack.io/egressNode`` annotation,
and it asks again every ``rediscover_interval`` (MetalLB installed later is picked up; one
uninstalled is let go).
The readiness gate waits for it: a table built before the holders are known would steer
nothing and then everything a moment later.
"""

from __future__ import annotations

from wholeip.agent.servicecidrs import DiscoveredSource
from wholeip.kube.l2status import GROUP_VERSION, RESOURCE, l2_status_informer


class L2StatusSource(DiscoveredSource):
    """Discovery, then the ServiceL2Status informer where MetalLB's API exists."""

    resource = RESOURCE
    group_version = GROUP_VERSION
    disabled_message = "ServiceL2Status objects not read"
    absent_message = (
        "the server has no ServiceL2Status API (MetalLB 0.14 or later in layer-2 mode);"
        " egress IP holders from the egressNode annotation"
    )
    present_message = "egress IP holders from MetalLB's ServiceL2Status objects"
    make_informer = staticmethod(l2_status_informer)
