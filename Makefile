# marveld: everything a fresh machine with Python 3.11 and make needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit proto proto-check lock bench reliability reliability-short clean \
	cluster cluster-down cluster-clean

run: $(STAMP)  ## start the daemon on its demo defaults, with the simulator as the upstream
	$(BIN)/marveld serve --demo

test: $(STAMP) lint typecheck unit  ## ruff, mypy, pytest with coverage

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check marveld tests bench reliability tools
	$(BIN)/ruff format --check marveld tests bench reliability tools

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest --cov --cov-branch --cov-report=term-missing:skip-covered -p no:cacheprovider

proto: $(STAMP)  ## regenerate marveld/proto from protos/
	rm -rf marveld/proto
	mkdir -p marveld/proto
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -I protos \
		--python_betterproto2_out=marveld/proto \
		--python_betterproto2_opt=client_generation=async,server_generation=async,google_protobuf_descriptors \
		$$(find protos -name '*.proto' | sort)

proto-check: $(STAMP)  ## fail when marveld/proto is not what protos/ generates
	@tmp=$$(mktemp -d) && PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -I protos \
		--python_betterproto2_out=$$tmp \
		--python_betterproto2_opt=client_generation=async,server_generation=async,google_protobuf_descriptors \
		$$(find protos -name '*.proto' | sort) >/dev/null && \
	diff -r -x __pycache__ $$tmp marveld/proto && echo "generated protobuf code is current"

lock:  ## re-pin every dependency (needs uv on PATH)
	uv pip compile pyproject.toml --extra dev --extra postgres --generate-hashes --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-header -o requirements.lock
	# pytest-cov asks for coverage[toml]; the pip that python3.11 -m venv brings (23.x) then
	# wants that extra pinned too in --require-hashes mode, once a newer coverage is published.
	sed -i 's/^coverage==/coverage[toml]==/' requirements.lock

bench: $(STAMP)  ## benchmarks: print figures and write them to bench/results/
	$(BIN)/python -m bench

reliability: $(STAMP)  ## every reliability suite, full size (docs/reliability.md)
	$(BIN)/python -m reliability

reliability-short: $(STAMP)  ## every reliability suite at its CI size
	$(BIN)/python -m reliability --short

cluster: $(STAMP)  ## PostgreSQL, marveld sim, 3 replicas and HAProxy on this machine (.cluster/)
	$(BIN)/python -m tools.cluster up

cluster-down:  ## stop `make cluster`, keeping its data (.cluster/) for the next one
	$(BIN)/python -m tools.cluster down

cluster-clean:  ## stop `make cluster` and remove .cluster/ with its data
	$(BIN)/python -m tools.cluster clean

clean:
	rm -rf $(VENV) .coverage .mypy_cache .ruff_cache
