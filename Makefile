# Set-up and checks. `make test` and `make demo` work on a fresh clone with no manual step.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install kernel test test-suite test-interpreted test-floor lint format demo demo-check bench bench-full bench-linear clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[experiments,cluster,dev]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

# The fused CPU kernel, built once before the tests (cached per machine; a no-op when built), so
# that no test is charged with the build.
kernel: $(STAMP)
	$(PY) -c "import smoothtopk; smoothtopk.backends.cpu.load()"

# The suite on two pytest-xdist workers and, beside it, the Triton-interpreter tests in a session
# of their own (Triton's interpreter is chosen at process start; tests/conftest.py skips them in
# the other session). One intra-op thread per worker, so that three processes share two cores
# without oversubscription (tests of threading set their counts themselves). -O prints each
# session's output whole when it ends; both must pass. INTERPRETED lists every file with an
# `interpreted` test: the backend suites (the `triton` parameter of backend_suite.ALL_BACKENDS)
# and the Triton kernel's own tests.
INTERPRETED := tests/test_backend_contract.py tests/test_contract.py tests/test_exactness.py \
	tests/test_edge_cases.py tests/test_properties.py tests/test_margins.py tests/test_api.py \
	tests/test_errors.py tests/test_triton_kernel.py tests/test_soft_targets.py tests/test_linear.py \
	tests/test_linear_soft_targets.py tests/test_call_path.py
test: lint kernel
	$(MAKE) --no-print-directory -j2 -O test-suite test-interpreted

test-suite: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist worksteal --durations=15

test-interpreted: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -m interpreted -p no:cacheprovider --durations=5 \
		-W "ignore::RuntimeWarning" $(INTERPRETED)

# The floor of the supported torch range (pyproject: torch>=2.11, the GPU machine's torch): a
# second environment runs the backend contract, backend, API, call-path (the C++ autograd node:
# torch 2.11 owns nodes by std::shared_ptr, later torch by c10::intrusive_ptr) and
# probability-target tests (compile included) there.
# CI runs it after make test (.ci/run).
FLOOR_TORCH := 2.11.0
FLOOR_VENV := .venv-floor
FLOOR_STAMP := $(FLOOR_VENV)/.installed

$(FLOOR_STAMP): pyproject.toml
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet "torch==$(FLOOR_TORCH)" -e ".[dev]"
	touch $(FLOOR_STAMP)

test-floor: $(FLOOR_STAMP)
	$(FLOOR_VENV)/bin/python -c "import smoothtopk; smoothtopk.backends.cpu.load()"
	$(FLOOR_VENV)/bin/python -m pytest -p no:cacheprovider --durations=5 \
		-W 'ignore:`torch.jit.script:DeprecationWarning' \
		tests/test_backend_contract.py tests/test_backend.py tests/test_api.py tests/test_call_path.py \
		tests/test_soft_targets.py tests/test_triton_kernel.py

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

# The fused linear loss against the unfused one and F.linear_cross_entropy (issue #23; about
# 10 minutes on 2 cores): time and peak memory, docs/benchmarks.md.
bench-linear: $(STAMP)
	$(PY) -m benchmarks.linear $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(FLOOR_VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
