# wbc: every target calls the installed CLI (.venv/bin/wbc), never a script path.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WBC := $(BIN)/wbc
DATA ?= data
RAW ?=
CONFIG ?= configs/default.yaml
SUBSET ?= small
EPOCHS ?=
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test prepare train plot fetch all bench clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python ## Create .venv and install wbc with its dev extras
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@$(WBC) --version

test: ## Run the whole test suite (WBC_RAW=path adds the real-data integration test)
	$(BIN)/python -m pytest -q $(ARGS)

prepare: ## Prepare the data: make prepare RAW=../shared/data/dataset-master
	$(WBC) prepare --config $(CONFIG) --data-dir $(DATA) $(if $(RAW),--raw $(RAW)) $(ARGS)

train: ## Train on a subset: make train SUBSET=small EPOCHS=30
	$(WBC) train --config $(CONFIG) --data-dir $(DATA) --subset $(SUBSET) $(if $(EPOCHS),--epochs $(EPOCHS)) $(ARGS)

clean: ## Remove generated data, runs and caches (keeps .venv and the raw data you gave)
	rm -rf $(DATA)/interim $(DATA)/processed runs .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
