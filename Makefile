# Two promises: `make demo` runs the main job, `make test` runs lint, type-check and tests.
# Both create and fill .venv themselves. The CPU torch wheel goes in first so that no CUDA build is pulled.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# verl pins transformers < 5.11, below what TRL's tests use: its tests run in an environment of their own
VERL_VENV := .venv-verl
VERL_STAMP := $(VERL_VENV)/.installed

.PHONY: demo test lint typecheck unit unit-verl bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[all]"
	touch $(STAMP)

$(VERL_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VERL_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(VERL_VENV)/bin/python -m pip install --quiet -e ".[all,verl]"
	touch $(VERL_STAMP)

demo: $(STAMP)
	$(BIN)/mtgrpo demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

unit-verl: $(VERL_STAMP)
	$(VERL_VENV)/bin/mypy -p mtgrpo_backends.verl
	$(VERL_VENV)/bin/pytest -q tests/test_verl_*.py

test: lint typecheck unit unit-verl

clean:
	rm -rf $(VENV) $(VERL_VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
