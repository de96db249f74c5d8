# wholeip: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: bootstrap demo test lint typecheck unit kernel e2e bench clean image

bootstrap:
	@hack/bootstrap.sh

## The demo sandbox: API server double, two netns nodes, agents, real traffic.
demo: bootstrap
	$(PY) -m wholeip_testkit.demo

## The agent's image, with podman: `make image [IMAGE=name:tag] [BASE_IMAGE=debian:bookworm-slim]`
## (no base image at hand: a minimal bookworm made with debootstrap; see hack/image.sh).
image: bootstrap
	IMAGE="$(IMAGE)" BASE_IMAGE="$(BASE_IMAGE)" hack/image.sh

## The whole test suite (lint, types, layers, unit, real-kernel, end to end), on JOBS
## worker processes (pytest-xdist); a test file's tests stay together on one worker
## (module fixtures: a lab of namespaces is built once). JOBS=0: in this process.
JOBS ?= 2
XDIST = $(if $(filter 0,$(JOBS)),,-n $(JOBS) --dist loadfile)

test: bootstrap lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider $(XDIST) tests

## The index's property tests with 20 times the examples, random (not derandomized as in
## `make test`): test_properties alone takes 20 minutes of a core; a failure prints its seed.
PROPERTY_TESTS = $(addprefix tests/unit/test_,properties.py index.py fill.py egressip.py podnat.py earlyfill.py prefill.py)
.PHONY: test-long
test-long: bootstrap
	WHOLEIP_HYPOTHESIS=long $(PY) -m pytest -q -p no:cacheprovider --timeout=0 $(XDIST) $(PROPERTY_TESTS)

lint: bootstrap
	$(VENV)/bin/ruff check src testkit bench tests hack
	$(VENV)/bin/ruff format --check src testkit bench tests hack
	$(VENV)/bin/lint-imports

typecheck: bootstrap
	$(VENV)/bin/mypy

unit: bootstrap
	$(PY) -m pytest -q $(XDIST) tests/unit

kernel: bootstrap
	$(PY) -m pytest -q $(XDIST) tests/nft

e2e: bootstrap
	$(PY) -m pytest -q $(XDIST) tests/e2e

## Benchmarks live outside the suite: they print a table and write JSON.
bench: bootstrap
	@hack/bootstrap.sh bench
	$(PY) -m wholeip_bench.commit --out bench-results/bench.json
	$(PY) -m wholeip_bench.change --out bench-results/change.json
	$(PY) -m wholeip_bench.commit --delegated --sizes 10000,100000 --out bench-results/commit-delegated.json
	$(PY) -m wholeip_bench.change --delegated --out bench-results/change-delegated.json
	$(PY) -m wholeip_bench.change --sizes 10000 --lb-services 100000 --changes 20 --out bench-results/change-lb.json
	$(PY) -m wholeip_bench.delegated --out bench-results/delegated-slots.json
	$(PY) -m wholeip_bench.clusterfile --out bench-results/clusterfile.json
	$(PY) -m wholeip_bench.egressip --out bench-results/egressip.json
	$(PY) -m wholeip_bench.datapath --out bench-results/datapath.json

## Packet path and conntrack pressure through a node, in network namespaces (minutes).
.PHONY: bench-datapath
bench-datapath: bootstrap
	@hack/bootstrap.sh bench
	$(PY) -m wholeip_bench.datapath --out bench-results/datapath.json

## Churn and load soak: 10,000 Services through the API double against one agent (minutes).
.PHONY: soak
soak: bootstrap
	$(PY) -m wholeip_bench.soak --services 10000 --minutes 5 --out bench-results/soak.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist src/*.egg-info testkit/*.egg-info bench/*.egg-info
