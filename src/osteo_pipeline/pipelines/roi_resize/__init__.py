"""roi_resize: crop each scan to its spine ROI, normalise and resize to the model input sizes."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
