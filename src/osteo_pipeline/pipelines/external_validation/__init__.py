"""External validation: registered models on a separate labelled folder, no training.

``kedro run --pipelines=external_validation --params=external_dir=/path/to/scans``
"""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
