# Mailplane — thin wrappers; `make help` lists them.
# Everything a fresh machine needs is set up here: uv (pinned) in .tools/, the
# environment from uv.lock in .venv/, and the Python generated from protos/.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
UV := .tools/bin/uv
VENV_PY := .venv/bin/python
PROTOS := $(shell find protos -name '*.proto')
PROTO_STAMP := protos/.generated
# apt-get needs root: sudo unless we are root already.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help setup proto run test lint format bench bench-tools ship-tools image clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

.venv/.synced: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --quiet
	touch $@

setup: .venv/.synced proto ## create .venv from uv.lock and generate the protos

$(PROTO_STAMP): $(PROTOS) .venv/.synced
	$(VENV_PY) -m deploy.protogen
	touch $@

proto: $(PROTO_STAMP) ## generate mailplane.<api>.v1.<api>_pb2 from protos/

run: setup ## start the whole suite (embedded PostgreSQL unless MAILPLANE_DATABASE_URL is set)
	$(VENV_PY) -m deploy.local

test: setup ship-tools ## run every test against real PostgreSQL and real servers
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

lint: setup ## buf lint + buf format, ruff check + ruff format --check, mypy
	cd protos && ../.venv/bin/buf lint && ../.venv/bin/buf format --diff --exit-code
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy services gateway deploy benchmarks

format: setup ## apply buf format and ruff format
	cd protos && ../.venv/bin/buf format -w
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

bench: setup bench-tools ## one run of the suite as `make run` starts it, then in-process hot paths
	$(VENV_PY) -m benchmarks.suite
	@# Its own --basetemp: pytest resets /tmp/pytest-of-$$USER to 0700 at start, which
	@# locks a concurrent session's embedded PostgreSQL (another user) out of its data.
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
		$(VENV_PY) -m pytest benchmarks -q -s -p no:randomly --basetemp="$$tmp/pytest"

bench-tools: ## install the load generators `make bench` drives (wrk, h2load, Postfix's smtp-sink) if missing
	@command -v wrk >/dev/null && command -v h2load >/dev/null && command -v smtp-sink >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends wrk nghttp2-client postfix; }

ship-tools: ## install what the deploy tests need (Docker engine, debootstrap, Patroni, etcd, PostgreSQL 15) if missing
	@command -v dockerd >/dev/null && command -v debootstrap >/dev/null && command -v patroni >/dev/null \
		&& command -v etcd >/dev/null && [ -x /usr/lib/postgresql/15/bin/postgres ] || \
		{ $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends docker.io debootstrap patroni etcd-server \
			postgresql-15 python3-psycopg2; }

image: setup ship-tools ## build the container image mailplane:dev (no registry needed; deploy/docker/)
	deploy/docker/build-image.sh mailplane:dev

clean: ## remove the environment and generated code (keeps .mailplane/ data)
	rm -rf .tools .venv $(PROTO_STAMP)
	find protos -name '*_pb2*.py*' -delete
