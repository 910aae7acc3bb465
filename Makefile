PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.yaml

.PHONY: install serve test test-fast typecheck lint format loadtest clean

# torch first, pinned: a loose torch requirement would pull a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

serve: install
	$(BIN)/ecad serve --config $(CONFIG)

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	OMP_NUM_THREADS=1 $(BIN)/pytest -q

# The in-process unit lane (seconds): planner, admission, protocol, tiers, CLI.
test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/pytest -q tests/unit

typecheck: install
	$(BIN)/mypy

# Bounded (45 s of load) run against config.yaml's default model on loopback; rewrites docs/load.md.
loadtest: install
	$(BIN)/pip install --quiet -e '.[load]'
	$(BIN)/python -m loadtests.run --config $(CONFIG) --duration 45 --users 6 --output docs/load.md

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
