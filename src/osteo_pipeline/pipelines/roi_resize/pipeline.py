"""Wiring of the ``roi_resize`` pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import crop_and_resize, roi_contact_sheet, roi_review


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                crop_and_resize,
                inputs=["raw_scans", "scan_manifest", "file_index", "params:roi_resize", "params:ingest.max_pixels",
                        "params:workers", "params:dask_scheduler"],
                outputs=["roi_table", "model_input_150", "model_input_300"],
                name="crop_and_resize",
            ),
            Node(
                roi_contact_sheet,
                inputs=["model_input_150", "scan_manifest", "params:roi_resize.contact_sheet_per_class"],
                outputs="roi_contact_sheet",
                name="roi_contact_sheet",
            ),
            Node(
                roi_review,
                inputs=["roi_table", "scan_manifest", "raw_scans", "file_index", "params:roi_resize.review",
                        "params:ingest.max_pixels"],
                outputs=["roi_review", "roi_review_sheet"],
                name="roi_review",
            ),
        ]
    )
