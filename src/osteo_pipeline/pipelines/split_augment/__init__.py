"""split_augment: patient-grouped train/test split, CV folds, class weights, augmentation policy."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
