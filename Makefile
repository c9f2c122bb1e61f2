# mainspring: `make demo` and `make test` are the whole set-up.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON ?= python3.11
# uv from PATH, else the copy `make bootstrap` installs with pip (run as a module, wherever pip put it).
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN := $(UV) run --frozen --all-extras

.PHONY: help bootstrap sync lint format typecheck test unit integration demo bench clean

help:
	@echo "make demo   - run the demo on embedded defaults"
	@echo "make test   - lint, type-check and run every test"
	@echo "make lint   - ruff check + ruff format --check"
	@echo "make bench  - run the benchmarks (not part of make test)"

bootstrap:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || \
		python3 -m pip install --quiet uv

sync: bootstrap
	$(UV) sync --frozen --all-extras

lint: sync
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

format: sync
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

typecheck: sync
	$(UV) run --frozen mypy --strict src

test: lint typecheck
	$(RUN) pytest -q

unit: sync
	$(RUN) pytest -q tests/unit

integration: sync
	$(RUN) pytest -q tests/integration

demo: sync
	$(RUN) mainspring demo

bench: sync
	$(RUN) python benchmarks/logging_bench.py
	$(RUN) python benchmarks/db_bench.py
	$(RUN) python benchmarks/cache_bench.py
	$(RUN) python benchmarks/security_bench.py
	$(RUN) python benchmarks/messaging_bench.py
	$(RUN) python benchmarks/http_bench.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache dist build
