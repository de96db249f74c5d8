"""The pure core: Kubernetes objects in, the table's content out, no I/O.

One station per module, each importing only the ones before it:

* :mod:`~wholeip.core.model`: the values (mappings, problems, ports) and the rules
  between objects (which address may be an external IP, which ports forward);
* :mod:`~wholeip.core.objects`: raw Kubernetes dicts -> those values, one object at a time;
* :mod:`~wholeip.core.ruleset`: the fixed skeleton (sets, maps, chains, rules);
* :mod:`~wholeip.core.elements`: the model -> set and map elements, and the table document;
* :mod:`~wholeip.core.compact` and :mod:`~wholeip.core.index`: the whole cluster kept
  current object by object, in little memory; a full build is the same index filled
  at once.

Nothing here does I/O (import-linter's purity contract and tests/unit/test_layers.py
hold it to that); the agent, the command line and the benchmarks drive it.
"""
