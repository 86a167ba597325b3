# tradingd: `make run` starts the daemon, `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/tradingd.toml

.PHONY: run test lint fmt demo bench bench-quick clean help
.DEFAULT_GOAL := help

help:
	@echo "make run          create .venv, install, run the daemon on $(CONFIG)"
	@echo "make test         install with dev extras and run the whole test suite"
	@echo "make lint         ruff + mypy + import-linter contracts"
	@echo "make demo         a fake exchange on loopback and the daemon pointed at it"
	@echo "make bench        the benchmark suite (about 6 minutes); bench-quick under 1"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev]'
	touch $@ $(VENV)/.installed-run

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev,bench]'
	touch $@ $(VENV)/.installed-dev $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/tradingd --config $(CONFIG)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check tradingd tests deploy
	$(BIN)/ruff format --check tradingd tests deploy
	$(BIN)/mypy
	$(BIN)/mypy deploy/grafana/render_preview.py
	$(BIN)/lint-imports

fmt: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix tradingd tests deploy
	$(BIN)/ruff format tradingd tests deploy

demo: $(VENV)/.installed-run
	$(BIN)/python -m tradingd.testing.demo

bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench.run --full

bench-quick: $(VENV)/.installed-bench
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache
