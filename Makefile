# The README's two commands: `make demo` (everything set up, the whole loop running locally)
# and `make test` (everything set up, lint + types + the test suite).

UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)

.PHONY: setup demo test chromium lint typecheck pytest bench clean

setup: $(UV)
	$(UV) sync --locked

# uv itself, installed in a private venv when the machine has none.
.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

demo: setup
	$(UV) run abiquo-workflow demo

test: setup chromium lint typecheck pytest

chromium:
	@command -v chromium >/dev/null 2>&1 || scripts/install-chromium

lint:
	$(UV) run ruff check src tests bench
	$(UV) run ruff format --check src tests bench

typecheck:
	$(UV) run mypy

pytest:
	$(UV) run pytest $(PYTEST_ARGS)

bench: setup
	$(UV) run python bench/loop.py

clean:
	rm -rf .venv .tools .mypy_cache .ruff_cache .pytest_cache .hypothesis demo-data
