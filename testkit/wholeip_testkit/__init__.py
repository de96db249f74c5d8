"""Public test doubles for wholeip: the Kubernetes API server double and friends.

Like ``structlog.testing``, these live in the shipped package so the project's
own tests, the demo and anyone embedding the agent can use the same doubles.
"""
