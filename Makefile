# The two commands a newcomer needs (both set themselves up; run as root on Debian 12):
#   make demo   a two-node lab on this machine: controllers, metrics, a failover (Ctrl-C ends it)
#   make test   the whole test suite, as CI runs it
# and the quick loop, as any user on any machine with Python 3.9+ (no root, no apt):
#   make unit   every test that needs nothing but Python (markers: see pytest.ini)
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# What `make unit` leaves out: tests that need root, Debian packages, namespaces, VMs or PyPI.
UNIT_MARKERS := not root and not tools and not integration and not vm and not network

.PHONY: setup venv test unit vm-test demo demo-once lint typecheck docs docs-check bench bench-switch bench-hostile chaos chaos-ci clean \
	bench-rpm rpm repo

setup:
	scripts/setup-env.sh

venv:
	scripts/setup-env.sh --venv-only

test: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

unit: venv
	$(VENV)/bin/pytest -m "$(UNIT_MARKERS)" $(PYTEST_ARGS)

vm-test: setup
	$(VENV)/bin/pytest -m vm $(PYTEST_ARGS)

demo: setup
	$(PY) -m lab.demo

demo-once: setup
	$(PY) -m lab.demo --once

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# examples/iscsi-ha.yaml, README's config table and docs/metrics.md, from the declarations in
# controller/config.py and exporter/catalogue.py (tests/test_generated_docs.py fails on drift).
docs: venv
	$(PY) scripts/gen_docs.py

docs-check: venv
	$(PY) scripts/gen_docs.py --check

# mypy over controller/ and exporter/ as the iscsi_ha packages (mypy.ini; tests/test_style.py)
typecheck: venv
	$(PY) scripts/typecheck.py

bench: setup
	$(PY) bench/bench_scrape.py

# iscsi-ha side by side with keepalived, Pacemaker's agents, the original tool (root; ~4 min)
bench-switch: setup
	$(PY) bench/bench_switch.py

# the metrics endpoint under 1,000 idle connections and a wrong-password flood (root; ~5 min)
bench-hostile: setup
	$(PY) bench/bench_hostile_http.py

# seeded fault schedules in the namespace lab with invariant and data checkers (root)
# 500 schedules in CHAOS_SHARDS namespace labs side by side (lab/chaos_shards.py), then one total;
# CHAOS_ARGS go to every shard, e.g. CHAOS_ARGS="--write-timeout 8"; add --resume after a stop.
CHAOS_SHARDS ?= 4
chaos: setup
	$(PY) -m lab.chaos_shards --seed 1 --schedules 500 --shards $(CHAOS_SHARDS) -- $(CHAOS_ARGS)

chaos-ci: setup
	$(PY) -m lab.chaos --seed 1 --schedules 50

# The dom0 RPM, dist/iscsi-ha-VERSION-1.x86_64.rpm: a CPython for glibc 2.17 built here with zig
# (cached in $${ISCSI_HA_BUILD_CACHE:-.cache/build}), audited against the EL7 base before it lands.
rpm: setup
	PYTHON=$(abspath $(PY)) nice -n 19 Dockerfile-build/build.sh

# RPM size, build times, installed size, controller RSS/start-up bundled vs venv (README results).
bench-rpm: rpm
	$(PY) bench/bench_rpm.py

# yum metadata for dist/ plus dist/iscsi-ha.repo (REPO_URL: where dist/ will be served from).
repo: rpm
	Dockerfile-build/make_repo.sh dist $(REPO_URL)

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache
