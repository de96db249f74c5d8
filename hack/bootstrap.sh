#!/usr/bin/env bash
# Installs everything wholeip's tests and demo need on a fresh Debian machine:
# the kernel-side tools from apt and a virtualenv under the repository.
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(nftables libnftables1 iproute2 conntrack iputils-ping procps kmod ethtool)
# The image and its test (tests/image/): podman builds and runs it (runc: Debian's crun
# refuses hybrid cgroups), debootstrap makes the base where no Debian image is at hand.
# promtool (from prometheus; nothing starts it) checks manifests/monitoring/.
APT_PACKAGES+=(podman runc debootstrap prometheus)
# `hack/bootstrap.sh bench`: also what the benchmarks need and the tests do not
# (iperf3 for the packet path's throughput runs).
if [ "${1:-}" = bench ]; then
  APT_PACKAGES+=(iperf3)
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "bootstrap: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
stamp=.venv/.stamp-$(cat pyproject.toml testkit/pyproject.toml bench/pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "bootstrap: virtualenv .venv"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  # The product with its dev tools, and beside it the test kit and the benchmarks
  # (packages of their own, never in the product's wheel or the image).
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' -e ./testkit -e ./bench 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c 'import nftables, wholeip, wholeip_testkit, wholeip_bench'
  rm -f .venv/.stamp-*
  touch "$stamp"
fi
