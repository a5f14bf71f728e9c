"""Which registered model is the project's champion (evaluate sets it: ``evaluation.registry``).

MLflow aliases belong to one registered model each; evaluate gives ``champion`` to one registered
model of the project only (tagged ``project=osteo_pipeline``), so ``project_champion`` finds it
among them, and ``osteo predict`` (and ``osteo champion``, for ``mlflow models serve``) use it.
"""

from __future__ import annotations

from typing import Any

CHAMPION = "champion"
CHALLENGER = "challenger"
PROJECT_TAG = "project"  # a registered-model tag: the models evaluate manages
PROJECT_TAG_VALUE = "osteo_pipeline"


class NoChampionError(LookupError):
    """No registered model of the project carries the champion alias (or several do)."""


def project_champion(client: Any) -> str:
    """``models:/<name>@champion`` of the project's champion (``client``: an ``MlflowClient``)."""
    managed = client.search_registered_models(filter_string=f"tags.`{PROJECT_TAG}` = '{PROJECT_TAG_VALUE}'")
    names = sorted(m.name for m in managed if CHAMPION in dict(m.aliases or {}))
    if len(names) == 1:
        return f"models:/{names[0]}@{CHAMPION}"
    if not names:
        known = ", ".join(sorted(m.name for m in managed)) or "none yet"
        raise NoChampionError(
            f"no registered model of this project is {CHAMPION} (models evaluate manages here: {known}): run "
            "`kedro run --pipelines=evaluate` (its rule: evaluate.registry in conf/base/parameters_evaluate.yml), "
            "or name a model, e.g. models:/osteo-cnn21/3")
    raise NoChampionError(f"several registered models carry the {CHAMPION} alias ({', '.join(names)}): name one")
