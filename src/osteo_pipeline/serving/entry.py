"""MLflow "models from code" entry of the registered image models (see ``serving.model``).

MLflow copies this file into each logged model and runs it on load; it names the model class,
so no pickled object is stored. The class comes from the model's own ``code/`` folder (a minimal
``osteo_pipeline``, ``serving.packaging``), or from the installed package where it is already imported.
"""

import mlflow

from osteo_pipeline.serving.model import ScanClassifier

mlflow.models.set_model(ScanClassifier())
