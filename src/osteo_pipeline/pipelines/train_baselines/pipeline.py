"""Wiring of train_baselines: each family's template, once per model namespace.

``kedro run --pipelines=train_baselines`` runs all seven; ``--namespaces=vgg16`` one of them.
Outputs are ``<model>.fold_metrics``, ``<model>.model``, ... (dataset factories in
conf/base/catalog_train_baselines.yml); inputs shared by every namespace keep their names.
"""

from kedro.pipeline import Pipeline

from osteo_pipeline.pipelines.train_baselines import classical, fusion, transfer

TRANSFER_MODELS = ("vgg16", "vgg19", "resnet50", "inceptionv3")
CLASSICAL_MODELS = ("svm", "random_forest")


def _instance(template: Pipeline, model: str) -> Pipeline:
    """``template`` under namespace ``model``: its own datasets get the prefix; shared inputs and
    parameters keep their names, except ``params:model``, which becomes the model's own block."""
    inputs = template.inputs()
    return Pipeline(
        template,
        namespace=model,
        inputs={name for name in inputs if not name.startswith("params:")},
        parameters={
            name: f"params:train_baselines.{model}" if name == "params:model" else name
            for name in inputs if name.startswith("params:")
        },
    )


def create_pipeline(**kwargs) -> Pipeline:
    return sum(
        [
            *(_instance(transfer.create_pipeline(), m) for m in TRANSFER_MODELS),
            *(_instance(classical.create_pipeline(), m) for m in CLASSICAL_MODELS),
            _instance(fusion.create_pipeline(), "fusion"),
        ],
        Pipeline([]),
    )
