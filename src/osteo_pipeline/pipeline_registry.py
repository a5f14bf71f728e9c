"""Project pipelines."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# Run only when asked for by name, never by plain `kedro run`: external_validation evaluates
# registered models on a folder given at run time (`--params=external_dir=...`).
ON_DEMAND = ("external_validation",)


def register_pipelines() -> dict[str, Pipeline]:
    """Register every pipeline under ``pipelines/``; ``__default__`` runs them all (except the
    ``ON_DEMAND`` ones), in the order their datasets give: evaluate reads every trained model."""
    pipelines = find_pipelines()
    pipelines["__default__"] = sum((p for name, p in pipelines.items() if name not in ON_DEMAND), Pipeline([]))
    return pipelines
