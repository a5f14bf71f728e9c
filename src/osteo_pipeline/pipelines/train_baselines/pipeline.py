"""Wiring of train_baselines: each declared baseline is its family's template under its own namespace.

The baselines are the blocks of ``train_baselines`` (conf/base/parameters_train_baselines.yml)
that have a ``family``; ``kedro run --pipelines=train_baselines`` trains them all,
``--namespaces=vgg16`` one. Outputs are ``<model>.fold_metrics``, ``<model>.model``, ... (dataset
factories in conf/base/catalog_train_baselines.yml); inputs shared by every namespace keep their names.
"""

from kedro.pipeline import Pipeline

from osteo_pipeline.pipelines.declared_models import declared_models
from osteo_pipeline.pipelines.train_baselines import classical, fusion, transfer

TEMPLATES = {"transfer": transfer.create_pipeline, "classical": classical.create_pipeline, "fusion": fusion.create_pipeline}


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
    baselines = {name: family for name, family in declared_models().items() if family in TEMPLATES}
    return sum((_instance(TEMPLATES[family](), name) for name, family in baselines.items()), Pipeline([]))
