"""Everything that talks to the Kubernetes API: informers, Events, client set-up.

The rest of the agent sees plain dicts (the objects as the API serves them) and
never a kubernetes_asyncio model class: the pure model takes raw dicts, and
skipping the generated classes' deserialisation is also much cheaper for
caches of thousands of EndpointSlices.
"""

from wholeip.kube import lean

# Before any module of this package imports kubernetes_asyncio: see wholeip.kube.lean.
lean.install()
