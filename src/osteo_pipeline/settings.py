"""Project settings: config loader and hooks (kedro-mlflow registers its own hooks)."""

from kedro.config import OmegaConfigLoader
from omegaconf.resolvers import oc

from osteo_pipeline.hooks import CheckInputsHook

# A run whose inputs have not been made yet stops at once, naming the pipelines to run first.
HOOKS = (CheckInputsHook(),)

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
