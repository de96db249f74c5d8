"""Shared fixtures: network namespaces and the two nft backends."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from wholeip.nft.backend import Backend
from wholeip.nft.fake import FakeBackend


def _pin_hypothesis_constants() -> None:
    """Hypothesis (6.13x on) also draws constants it finds in the source of every local
    module loaded so far. Which modules that is depends on what pytest collected, so
    the same derandomized property generated other examples in a full run than alone
    (test_examples_reach_the_compiler_with_real_mappings saw no ExternalIPConflict in
    200 examples once wholeip_testkit.apiserver was imported). Our strategies carry
    their own pools of odd values; the mined constants are switched off so that a
    property's examples depend on its code only. (A private hook: if a Hypothesis
    version lacks it, nothing is changed.)"""
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # pragma: no cover - depends on the Hypothesis version
        return
    if hasattr(providers, "_get_local_constants") and hasattr(providers, "Constants"):
        empty = providers.Constants()
        providers._get_local_constants = lambda: empty


_pin_hypothesis_constants()


def kernel_available() -> str | None:
    """Why real-kernel tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if shutil.which("ip") is None or shutil.which("nft") is None:
        return "needs iproute2 and nftables"
    return None


@pytest.fixture(scope="session")
def kernel_ok() -> None:
    """Skips the tests that need root, network namespaces and nft where there are none."""
    why = kernel_available()
    if why:
        pytest.skip(why)


@pytest.fixture
def netns() -> Iterator[object]:
    """A fresh, empty network namespace (skips the test where there can be none)."""
    why = kernel_available()
    if why:
        pytest.skip(why)
    from wholeip_testkit.netns import Netns

    with Netns() as ns:
        yield ns


@pytest.fixture(params=["fake", "kernel"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Each contract test runs once on the fake and once on nf_tables in a fresh namespace."""
    if request.param == "fake":
        yield FakeBackend()
        return
    why = kernel_available()
    if why:
        pytest.skip(why)
    from wholeip_testkit.netns import Netns, NetnsBackend

    with Netns() as ns:
        yield NetnsBackend(ns)
