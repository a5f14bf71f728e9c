"""Project pipelines."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# Run only when asked for by name, never by plain `kedro run`: external_validation evaluates
# registered models on a folder given at run time (`--params=external_dir=...`).
ON_DEMAND = ("external_validation",)


def register_pipelines() -> dict[str, Pipeline]:
    """Register every pipeline under ``pipelines/``; ``__default__`` runs them all in order
    (except the ``ON_DEMAND`` ones).

    Kedro orders nodes by datasets only, and evaluate reads the trained models through one
    collection dataset, so evaluate is made to wait for the final fit of every training
    pipeline loaded with it (all for ``kedro run``; those named in ``--pipelines=...,evaluate``).
    """
    pipelines = find_pipelines()
    stages = {name: p for name, p in pipelines.items() if name not in ON_DEMAND}
    if "evaluate" not in stages:  # `--pipelines=...` without evaluate: only those are found
        pipelines["__default__"] = sum(stages.values(), Pipeline([]))
        return pipelines
    from osteo_pipeline.pipelines import evaluate

    training = sum((p for name, p in stages.items() if name != "evaluate"), Pipeline([]))
    pipelines["evaluate"] = evaluate.create_pipeline(after=training)
    pipelines["__default__"] = training + pipelines["evaluate"]
    return pipelines
