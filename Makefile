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

.PHONY: run install cohort test lock viz mlflow-ui bench clean-data rerun airflow-venv airflow-dag

run: install cohort  ## set up, write the embedded cohort if data/01_raw has no scans, run every pipeline
	$(BIN)/kedro run $(if $(filter-out data/01_raw,$(RAW_DIR)),--params='raw_dir=$(RAW_DIR)')

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

test: install airflow-venv  ## the whole test suite (test-scale Kedro environment, real code paths)
	@# loadfile: a module's tests share one worker, so its module-scoped fixtures (a trained project,
	@# a server) are built once (xdist_group marks went unhonoured with pytest 9.2 + pytest-xdist 3.8).
	$(BIN)/python -m pytest -n 2 --dist loadfile -q --durations=30

lock:  ## refresh constraints.txt from the current virtualenv
	{ sed -n '1,2p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -vi '^osteo'; } > constraints.new && mv constraints.new constraints.txt

viz: install  ## browse the pipelines in kedro-viz at http://127.0.0.1:4141 (this machine only)
	$(BIN)/kedro viz run --host 127.0.0.1 --port 4141

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

bench: install
	$(BIN)/python bench/bench_cnn21.py

rerun: install  ## re-ingest data/01_raw; retrain and re-evaluate only if the scans changed (ENV=..., RERUN_ARGS=...)
	$(BIN)/python -m osteo_pipeline.rerun $(if $(ENV),--env $(ENV)) $(RERUN_ARGS)

# Airflow 3 in its own virtualenv: it pins fastapi<0.137 (the project has 0.165) and brings ~130
# packages; the DAG's tasks run in .venv anyway (ExternalPythonOperator), so this holds Airflow alone.
AIRFLOW_VENV := .venv-airflow

$(AIRFLOW_VENV)/.installed: airflow/constraints.txt
	rm -rf $(AIRFLOW_VENV)
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --quiet -c airflow/constraints.txt apache-airflow apache-airflow-providers-standard
	touch $@

airflow-venv: $(AIRFLOW_VENV)/.installed  ## Airflow 3 (scheduler, DAG parsing) in .venv-airflow

airflow-dag: install  ## regenerate airflow/dags/ from the registered pipelines (kedro-airflow)
	$(BIN)/kedro airflow create --group-by memory --jinja-file airflow/dag_template.j2 --target-dir airflow/dags
