# Two promises: `make demo` runs the main job, `make test` runs lint, type-check and tests.
# Both create and fill .venv themselves. TORCH_SPEC is installed first, before anything that depends on torch; it is
# split into words, so it may carry pip options: make TORCH_SPEC="torch==2.13.0 --index-url URL" test (README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
export TORCH_SPEC
# --no-compile: pip would byte-compile every module of torch, transformers, ray... (a cold .venv took 211 s, 78 s
# without); Python compiles what is imported, on first import, and keeps it: make's commands write bytecode
# even where PYTHONDONTWRITEBYTECODE is set, else every process would compile torch again.
PIP := python -m pip install --quiet --no-compile
unexport PYTHONDONTWRITEBYTECODE
STAMP := $(VENV)/.installed
# verl pins transformers < 5.11, below what TRL's tests use: its tests run in an environment of their own
VERL_VENV := .venv-verl
VERL_TORCH := $(VERL_VENV)/.torch
VERL_STAMP := $(VERL_VENV)/.installed
# `make test` runs its parts in parallel (the verl environment builds while lint, mypy and pytest run in .venv);
# TEST_JOBS=1 runs them one after another. Output is kept per part where this make can (GNU make >= 4).
TEST_JOBS ?= 3
SYNC := $(if $(filter output-sync,$(.FEATURES)),--output-sync=target)

.PHONY: demo test checks lint typecheck typecheck-verl unit unit-verl bench clean

# set -f: TORCH_SPEC is split into words but never globbed
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/$(PIP) --upgrade pip
	set -f; $(BIN)/$(PIP) $$TORCH_SPEC
	$(BIN)/$(PIP) -e ".[all]"
	touch $(STAMP)

$(VERL_TORCH): pyproject.toml Makefile
	$(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/$(PIP) --upgrade pip
	set -f; $(VERL_VENV)/bin/$(PIP) $$TORCH_SPEC
	touch $(VERL_TORCH)

# after .venv's editable install: both would write src/mtgrpo.egg-info. Ray's own modules are compiled ahead: its
# node processes import them all at once on the first ray.init, which fails after 30 s if they are slow to start.
$(VERL_STAMP): $(VERL_TORCH) | $(STAMP)
	$(VERL_VENV)/bin/$(PIP) -e ".[all,verl]"
	$(VERL_VENV)/bin/python -m compileall -q -j 0 \
	  "$$($(VERL_VENV)/bin/python -c 'import importlib.util as u; print(*u.find_spec("ray").submodule_search_locations)')"
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

# caches of their own: the two environments hold different transformers, and both run at once under `make test`
typecheck-verl: $(VERL_STAMP)
	$(VERL_VENV)/bin/mypy --cache-dir .mypy_cache/verl -p mtgrpo_backends.verl

unit-verl: $(VERL_STAMP)
	$(VERL_VENV)/bin/pytest -q -o cache_dir=.pytest_cache/verl tests/test_verl_*.py

# the longest chain (the verl environment, then its checks) first
checks: typecheck-verl unit-verl unit typecheck lint

test:
	@$(MAKE) --no-print-directory -j $(TEST_JOBS) $(SYNC) checks

clean:
	rm -rf $(VENV) $(VERL_VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
