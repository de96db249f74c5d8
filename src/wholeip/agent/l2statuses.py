"""The agent's source of egress IP holders: discovery, then the ServiceL2Status informer.

Like the Service networks (:class:`~wholeip.agent.servicecidrs.ServiceCIDRSource`): the
agent asks once, at start, whether the server serves MetalLB's ServiceL2Status objects
(:mod:`wholeip.kube.l2status`), then watches them where it does; where it does not, every
egress Service's holder comes from its ``networking.cozystack.io/egressNode`` annotation.
The readiness gate waits for it: a table built before the holders are known would steer
nothing and then everything a moment later.
"""

from __future__ import annotations

from collections.abc import Callable

from wholeip.agent.servicecidrs import DiscoveredSource
from wholeip.kube.informer import Informer, WatchOptions
from wholeip.kube.k8s import client
from wholeip.kube.l2status import GROUP_VERSION, RESOURCE, has_api, l2_status_informer


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

    async def _discover(self, request_timeout: float) -> bool:
        return await has_api(self._api, request_timeout=request_timeout)

    def _new_informer(
        self,
        api: client.ApiClient,
        on_change: Callable[[], None],
        on_key: Callable[[str, str | None], None] | None,
        options: WatchOptions,
    ) -> Informer:
        return l2_status_informer(api, on_change=on_change, on_key=on_key, options=options)
