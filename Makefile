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

.PHONY: run demo install cohort test lock viz mlflow-ui bench clean-data rerun airflow-venv airflow-dag

run: install cohort  ## set up, write the embedded cohort if data/01_raw has no scans, run every pipeline
	@$(BIN)/python -m osteo_pipeline.estimate --raw-dir $(RAW_DIR)
	$(BIN)/kedro run $(if $(filter-out data/01_raw,$(RAW_DIR)),--params='raw_dir=$(RAW_DIR)')

# The demo: the whole study (every model, evaluate, report) at test scale (conf/test: 3 folds, 2
# epochs) on a small synthetic cohort, in demo/ with its own data folder, log and MLflow store.
# demo/ is a second root of this same project (links to its pyproject.toml and conf/; an empty
# src/, the package being installed): Kedro anchors the catalog's relative paths at the project
# root, so that root must be demo/. DEMO_ARGS: more `kedro run` options (e.g. --pipelines ingest).
DEMO_DIR := demo
DEMO_COHORT := --seed 42 --n-normal 20 --n-osteoporosis 30 --scale 0.5
DEMO_ARGS :=

demo: install  ## the whole study end to end at reduced scale in demo/ (own data, own MLflow store)
	@mkdir -p $(DEMO_DIR)/src && for f in pyproject.toml conf; do ln -sfn $(CURDIR)/$$f $(DEMO_DIR)/$$f; done
	@if [ -z "$$(find $(DEMO_DIR)/data/01_raw -type f -print -quit 2>/dev/null)" ]; then \
		$(BIN)/python -m osteo_pipeline.cohort --out $(DEMO_DIR)/data/01_raw $(DEMO_COHORT); fi
	cd $(DEMO_DIR) && MLFLOW_TRACKING_URI=sqlite:///mlflow.db $(CURDIR)/$(BIN)/kedro run --env test $(DEMO_ARGS)
	@echo ""
	@echo "Demo done. The report: $(DEMO_DIR)/data/08_reporting/report.html (and report.md beside it)."
	@echo "Browse it:  cd $(DEMO_DIR) && $(CURDIR)/$(BIN)/kedro viz run   # the pipelines, with this run's data"
	@echo "            $(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(DEMO_DIR))/mlflow.db   # every training run"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# uv installs exactly what uv.lock lists (one lock, resolved for every supported platform) and
# removes the rest, so a stale TensorFlow build never stays behind. uv comes from PyPI, pinned, in
# its own folder: `uv sync` removes whatever the lock does not list, uv included.
UV_VERSION := 0.13.9
UV := $(VENV)/uv/bin/uv
export UV_PROJECT_ENVIRONMENT := $(VENV)
# A machine with an NVIDIA driver gets the gpu extra (CUDA libraries), so a reinstall keeps them.
EXTRAS ?= test notebook dask $(if $(shell command -v nvidia-smi),gpu)

$(UV): | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --target $(VENV)/uv uv==$(UV_VERSION)

# --locked: stop, rather than re-resolve, when pyproject.toml changed without `make lock`.
# --compile-bytecode: .pyc files written once here. Where Python may not write them itself
# (PYTHONDONTWRITEBYTECODE, a read-only venv, a container) every start would otherwise compile
# TensorFlow from source: `import tensorflow` 31 s instead of 9.5 s on a 2-core AVX2 machine.
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --quiet --compile-bytecode $(addprefix --extra ,$(EXTRAS))
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

lock: | $(UV)  ## re-resolve uv.lock after editing pyproject.toml (LOCK_ARGS=--upgrade: newest allowed versions)
	$(UV) lock $(LOCK_ARGS)
	@# the same versions as pip constraints, for pip-based installs (the Dockerfile)
	{ sed -n '1,2p' constraints.txt; $(UV) export --frozen --quiet --all-extras --no-emit-project --no-hashes --no-header --no-annotate; } > constraints.new && mv constraints.new constraints.txt

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

.PHONY: viz-build jupyter screenshots

viz-build: install  ## kedro-viz as a static site in build/ (no dataset previews: no data leaves), with the last run's timings
	$(BIN)/kedro viz build
	@echo "Serve it: $(BIN)/python -m http.server --bind 127.0.0.1 --directory build 4142  (then http://127.0.0.1:4142)"

jupyter: install  ## JupyterLab on the project kernel (kedro_osteo_pipeline: catalog, context, pipelines loaded)
	$(BIN)/kedro jupyter lab --ServerApp.ip=127.0.0.1

# The README's pictures, taken by the browser tests themselves on the synthetic test cohort.
screenshots: install  ## docs/images/*.png: kedro-viz, the MLflow run comparison, the report
	OSTEO_SCREENSHOTS=docs/images $(BIN)/python -m pytest -p no:xdist -q \
		tests/ops/test_viz.py::test_chromium_selects_train_cnn21_and_shows_its_nodes \
		tests/ops/test_viz.py::test_chromium_draws_the_built_site_and_its_workflow_view_timings \
		tests/ops/test_tracking_server.py::test_mlflow_ui_compares_the_fold_runs_in_chromium \
		tests/pipelines/evaluate/test_evaluate_pipeline.py::test_report_html_renders_in_chromium

# Containers (README, "Containers"): the project image (Dockerfile, after kedro-docker) and a
# registered model's serving image (MLflow's generated Dockerfile). Without a reachable registry
# the base comes from Debian packages (docker/base-image.sh, needs root); where one is reachable:
#   make image BASE_IMAGE=python:3.11-slim-bookworm
BASE_IMAGE ?= localhost/osteo-base:bookworm
IMAGE ?= localhost/osteo-pipeline:latest
SERVE_IMAGE ?= localhost/osteo-serve:latest
MODEL ?= models:/osteo-cnn21@champion
# kedro-docker's convention: the container user has the host user's ids (files written to mounted
# data/ stay the user's), except root's: the image's user is never root.
KEDRO_UID ?= $(if $(filter 0,$(shell id -u)),999,$(shell id -u))
KEDRO_GID ?= $(if $(filter 0,$(shell id -u)),0,$(shell id -g))
# Hybrid cgroups (a VM or container sandbox, as CI's): runc and granted ulimits, docker/containers.conf.
PODMAN_CONF ?= $(if $(wildcard /sys/fs/cgroup/unified/cgroup.controllers),$(CURDIR)/docker/containers.conf)
PODMAN_ENV := $(if $(PODMAN_CONF),CONTAINERS_CONF=$(PODMAN_CONF))

.PHONY: base-image image serve-image

base-image:  ## the Debian-built stand-in for python:3.11-slim-bookworm (only when BASE_IMAGE is it)
	$(if $(filter localhost/osteo-base:%,$(BASE_IMAGE)),$(PODMAN_ENV) docker/base-image.sh $(BASE_IMAGE),@echo "base-image: $(BASE_IMAGE) comes from a registry")

image: base-image  ## the project image: the wheel, conf/, `kedro run` as a non-root user (data/ mounted at run time)
	$(PODMAN_ENV) podman build --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg KEDRO_UID=$(KEDRO_UID) \
		--build-arg KEDRO_GID=$(KEDRO_GID) -t $(IMAGE) .

serve-image: install base-image  ## a registered model's serving image (MODEL=models:/osteo-cnn21@champion)
	$(PODMAN_ENV) MLFLOW=$(BIN)/mlflow docker/serve-image.sh '$(MODEL)' $(SERVE_IMAGE) \
		$(if $(filter localhost/%,$(BASE_IMAGE)),$(BASE_IMAGE))
