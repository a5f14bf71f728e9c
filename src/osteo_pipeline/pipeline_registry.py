"""Project pipelines."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    """Register every pipeline under ``pipelines/``; ``__default__`` runs them all in order.

    Kedro orders nodes by datasets only, and evaluate reads the trained models through one
    collection dataset, so evaluate is made to wait for the final fit of every training
    pipeline loaded with it (all for ``kedro run``; those named in ``--pipelines=...,evaluate``).
    """
    pipelines = find_pipelines()
    if "evaluate" not in pipelines:  # `--pipelines=...` without evaluate: only those are found
        pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
        return pipelines
    from osteo_pipeline.pipelines import evaluate

    training = sum((p for name, p in pipelines.items() if name != "evaluate"), Pipeline([]))
    pipelines["evaluate"] = evaluate.create_pipeline(after=training)
    pipelines["__default__"] = training + pipelines["evaluate"]
    return pipelines
