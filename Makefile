# wbc: every target calls the installed CLI (.venv/bin/wbc), never a script path; the two
# developer harnesses (robustness, crashtest) are scripts that drive that CLI from outside.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WBC := $(BIN)/wbc
DATA ?= data
RAW ?=
CONFIG ?= configs/default.yaml
SUBSET ?= full
EPOCHS ?=
ARGS ?=
RUN := runs/$(shell date +%Y%m%d-%H%M%S)-$(SUBSET)

.DEFAULT_GOAL := help
.PHONY: help install test lint format prepare train plot cv tune fetch all bench robustness crashtest clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Every target that runs wbc depends on this stamp, so a fresh clone installs first (and again
# when pyproject.toml changes).
INSTALLED := $(VENV)/.installed

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/python ## Create .venv and install wbc with its dev extras
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(INSTALLED)
	@$(WBC) --version

# Two pytest workers, one test file each at a time (a file's shared fixtures are built once):
# much of the suite waits on one core (TensorFlow's import in each subprocess, the SVM, the
# Ray start), so two workers use both. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: $(INSTALLED) ## Run the whole test suite (WBC_RAW=path adds the real-data integration test)
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(ARGS)

lint: $(INSTALLED) ## Lint and check the formatting (ruff, settings in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED) ## Reformat the code and fix what ruff can fix
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

prepare: $(INSTALLED) ## Prepare the data: make prepare RAW=../shared/data/dataset-master
	$(WBC) prepare --config $(CONFIG) --data-dir $(DATA) $(if $(RAW),--raw $(RAW)) $(ARGS)

train: $(INSTALLED) ## Train on a subset: make train SUBSET=small EPOCHS=30
	$(WBC) train --config $(CONFIG) --data-dir $(DATA) --subset $(SUBSET) --run-dir $(RUN) $(if $(EPOCHS),--epochs $(EPOCHS)) $(ARGS)

plot: $(INSTALLED) ## Redraw a run's curves: make plot RUN=runs/<name>
	$(WBC) plot $(RUN)

cv: $(INSTALLED) ## Cross-validate: make cv FOLDS=5 EPOCHS=30 [ARGS='--per-class 600 --out runs/cv-x']
	$(WBC) cv --config $(CONFIG) --data-dir $(DATA) --folds $(or $(FOLDS),5) $(if $(EPOCHS),--epochs $(EPOCHS)) $(ARGS)

tune: $(INSTALLED) ## Rank a grid of settings (the study CNN's by default): make tune GRID=configs/grid.yaml SUBSET=small EPOCHS=10
	$(WBC) tune --config $(or $(TUNE_CONFIG),configs/study-crops.yaml) --data-dir $(DATA) --grid $(or $(GRID),configs/grid.yaml) --subset $(SUBSET) $(if $(EPOCHS),--epochs $(EPOCHS)) $(ARGS)

all: install ## Fresh machine to trained model and its test metrics: make all [RAW=path/to/dataset-master] [CONFIG=...]
	$(if $(RAW),,$(WBC) fetch --config $(CONFIG) --data-dir $(DATA))
	$(WBC) prepare --config $(CONFIG) --data-dir $(DATA) $(if $(RAW),--raw $(RAW))
	$(WBC) train --config $(CONFIG) --data-dir $(DATA) --subset $(SUBSET) --run-dir $(RUN) $(if $(EPOCHS),--epochs $(EPOCHS))
	$(WBC) plot $(RUN)
	@echo "run:     $(RUN) (model, config, metrics.json, plots)"
	@$(WBC) evaluate --model $(RUN) --data $(DATA)/processed/$(SUBSET)/test

fetch: $(INSTALLED) ## Download the public dataset into data/raw/dataset-master
	$(WBC) fetch --config $(CONFIG) --data-dir $(DATA) $(ARGS)

bench: $(INSTALLED) ## Measure training feed, augmentation, predict and CLI speed
	$(WBC) bench $(if $(RAW),--raw $(RAW)) $(ARGS)

robustness: $(INSTALLED) ## Feed every command bad inputs and kill prepare/train; print the figures
	$(BIN)/python scripts/robustness_report.py $(ARGS)

crashtest: $(INSTALLED) ## SIGKILL commands at random instants and writes, check each rerun: make crashtest ARGS='--kills 12'
	$(BIN)/python scripts/kill_anywhere.py $(ARGS)

clean: ## Remove generated data, runs and caches (keeps .venv and the raw data you gave)
	rm -rf $(DATA)/interim $(DATA)/processed runs .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
