"""Project settings: config loader and hooks (kedro-mlflow registers its own hooks)."""

import logging
import warnings

from kedro.config import OmegaConfigLoader
from omegaconf.resolvers import oc

from osteo_pipeline.hooks import CheckInputsHook, RedactRunParamsHook, RunGuardHook
from osteo_pipeline.ingest_hooks import IngestReportHook

# A warning nobody running this project can act on, printed four times on every command:
# OmegaConf's register_new_resolver deprecation, raised inside Kedro and kedro-mlflow.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)
# MLflow asks for type hints on kedro-mlflow's own model class when kedro-mlflow's CLI plugin loads
# (every command, even `kedro --version`). MLflow raises it under its own "once" filter, which
# overrides any warnings filter, so it is dropped where Kedro logs warnings: the py.warnings logger.
logging.getLogger("py.warnings").addFilter(
    lambda record: "Add type hints to the `predict` method" not in record.getMessage()
)
# Kedro validates `params:` inputs typed as dataclasses or pydantic models; this project's
# parameters are plain dicts, so its hints are never used, yet Kedro warns about every node whose
# hints name TensorFlow or matplotlib types imported only for type checking (kept lazy on purpose).
logging.getLogger("kedro.validation.type_extractor").addFilter(
    lambda record: not record.getMessage().startswith(("Could not extract type hints", "Union type hint"))
)

# A run whose inputs have not been made yet stops at once, naming the pipelines to run first;
# a run that stops in ingest leaves a failed ingest_report.json, not the previous one.
# RunGuardHook: one whole `kedro run` per project at a time (a second is refused, naming the
# first); SIGTERM / Ctrl-C end its MLflow runs KILLED and remove half-written outputs. It and
# CheckInputsHook run before kedro-mlflow opens its run (tryfirst; CheckInputsHook, listed after, first).
# RedactRunParamsHook: only plain run-time parameters reach the MLflow run's tags (no folder paths).
HOOKS = (RunGuardHook(), CheckInputsHook(), IngestReportHook(), RedactRunParamsHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # parameters_<pipeline>.yml files are picked up by the default "parameters*" pattern;
    # mlflow.yml is read by kedro-mlflow.
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"]},
    # conf/test overrides single keys of a parameter block (e.g. split.n_folds) instead of
    # replacing the whole block.
    "merge_strategy": {"parameters": "soft"},
    # ${oc.env:VAR,default} outside credentials: mlflow.yml reads MLFLOW_TRACKING_URI with it.
    "custom_resolvers": {"oc.env": oc.env},
}
