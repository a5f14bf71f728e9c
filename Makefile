# osteo_pipeline: the two commands a new user needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
RAW_DIR ?= data/01_raw
# Kedro telemetry must never prompt (CI has no stdin); .telemetry also records "consent: false".
export DO_NOT_TRACK := 1
export KEDRO_DISABLE_TELEMETRY := true
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: run install cohort test lock viz mlflow-ui bench clean-data

run: install cohort  ## set up, write the embedded cohort if data/01_raw has no scans, run every pipeline
	$(BIN)/kedro run

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

install: $(VENV)/.installed

cohort: install  ## the synthetic spine DXA cohort (paper 1, Table 2), only if the raw folder holds no scans
	@if [ -z "$$(find $(RAW_DIR) -type f \( -iname '*.png' -o -iname '*.jp*g' -o -iname '*.tif*' -o -iname '*.dcm' \) -print -quit)" ]; then \
		$(BIN)/python -m osteo_pipeline.cohort --out $(RAW_DIR) --seed 42; \
	else echo "cohort: $(RAW_DIR) already holds scans, leaving it as it is"; fi

test: install  ## the whole test suite (test-scale Kedro environment, real code paths)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

lock:  ## refresh constraints.txt from the current virtualenv
	{ sed -n '1,2p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -vi '^osteo'; } > constraints.new && mv constraints.new constraints.txt

viz: install
	$(BIN)/kedro viz run

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

bench: install
	$(BIN)/python bench/bench_cnn21.py
