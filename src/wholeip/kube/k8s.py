"""The kubernetes_asyncio modules the agent uses.

Import ``client`` and ``config`` from here rather than from kubernetes_asyncio in
modules outside this package: importing this module runs ``wholeip.kube``'s
``__init__`` first, which installs :mod:`wholeip.kube.lean`, whatever the order
of the importing module's imports.
"""

from kubernetes_asyncio import client, config

__all__ = ["client", "config"]
