"""wholeip: a whole public IP for one Kubernetes pod, programmed with nftables maps.

The package is split into a pure core (:mod:`wholeip.core.model`,
:mod:`wholeip.core.elements`, :mod:`wholeip.nft.diff`) that turns Kubernetes objects
into the nftables JSON document the node must hold, and thin I/O shells around
it (the libnftables backend, the Kubernetes informers, the HTTP probes).
"""

__version__ = "0.1.0"
