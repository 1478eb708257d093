# Set-up and checks. `make test` and `make demo` work on a fresh clone with no manual step.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint format demo demo-check bench bench-full clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[experiments,dev]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

test: lint
	$(PY) -m pytest

# The demo sweep (docs/experiments.md): CE vs L_{5,1} on the embedded data at label noise
# 0, 0.2, ..., 0.8; prints the table, writes runs/demo/report/ (table, CSV, plots).
demo: $(STAMP)
	$(PY) -m smoothtopk demo --out runs/demo --overwrite

# CI: the demo again, and its table must equal the README's (between the demo-table markers).
demo-check: $(STAMP)
	$(PY) -m smoothtopk demo --out runs/demo-check --overwrite
	$(PY) tests/demo_table.py README.md runs/demo-check/report/results.md

# Benchmarks (docs/benchmarks.md): `make bench` runs the quick subset (~5 min on 2 cores),
# `make bench-full` the full grid; extra options via BENCH_ARGS, e.g. BENCH_ARGS="--device cuda".
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -e ".[experiments,dev,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.run --quick $(BENCH_ARGS)

bench-full: $(BENCH_STAMP)
	$(PY) -m benchmarks.run --full $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
