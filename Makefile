# The README's two commands: `make demo` (everything set up, the whole loop running locally)
# and `make test` (everything set up, lint + types + the test suite).

UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)

# Python compiles every module from source at each start when bytecode may not be written (some
# machines set PYTHONDONTWRITEBYTECODE=1): 2-3 s of CPU per process, for each `serve` a test starts.
# The setup compiles the dependencies once; the commands below may write the project's own.
unexport PYTHONDONTWRITEBYTECODE

# uv trusts the system's certificate store (as pip does), not only its own roots: behind a proxy that
# intercepts TLS, whose CA the system trusts, package downloads then work too.
export UV_SYSTEM_CERTS ?= true

.PHONY: setup demo test test-fast test-tools lint typecheck pytest bench clean

setup: $(UV)
	$(UV) sync --locked --compile-bytecode

# uv itself, installed in a private venv when the machine has none.
.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

# Options for the demo, e.g. `make demo DEMO_ARGS="--port 9000"`: the demo's own options, run through
# whichever uv `setup` found or installed (it need not be on PATH).
demo: setup
	$(UV) run abiquo-workflow demo $(DEMO_ARGS)

test: setup test-tools lint typecheck pytest

# Chromium, nginx and wrk from Debian, when missing.
test-tools:
	@scripts/install-test-tools

lint:
	$(UV) run ruff check src tests bench
	$(UV) run ruff format --check src tests bench

typecheck:
	$(UV) run mypy

# Three test processes (pytest-xdist) on two cores: a test spends part of its time waiting (on a
# subprocess starting, a server answering, a timer), and a third process fills those gaps. Measured
# on a 2-core machine, three and two in turn: three took 0.81 of the time; four were slower than three.
TEST_PROCESSES ?= 3

pytest:
	$(UV) run pytest -n $(TEST_PROCESSES) --dist worksteal $(PYTEST_ARGS)

# For the edit-test loop: no subprocesses, no PostgreSQL, no Chromium, fewer property examples. Its
# tests wait on timers more than the full suite's do, so a fourth process pays here (0.90 of the time
# of three, three pairs) where it does not in the full suite (1.07 of the time of three, two pairs).
TEST_FAST_PROCESSES ?= 4

test-fast: setup
	AWF_TEST_FAST=1 $(UV) run pytest -n $(TEST_FAST_PROCESSES) --dist worksteal -m "not slow and not postgres and not browser" $(PYTEST_ARGS)

bench: setup
	$(UV) run python bench/loop.py $(BENCH_ARGS)

clean:
	rm -rf .venv .tools .mypy_cache .ruff_cache .pytest_cache .hypothesis demo-data
