"""Serving: the registered image models take raw scan bytes and preprocess them with the
pipeline's own code and settings (``mlflow models serve``, ``osteo predict``)."""

from osteo_pipeline.serving.preprocessing import ScanPreprocessing, preprocessing_settings

__all__ = ["ScanPreprocessing", "preprocessing_settings"]
