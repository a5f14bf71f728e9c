"""Synthetic spine DXA cohort: the project's embedded default data.

`generate_cohort` writes AP (and optionally lateral) lumbar-spine DXA-like scans, PNG or
DICOM, per class folder plus `clinical.csv` (Table 2 statistics of the seed paper,
WHO-consistent T-scores, view and scanner family per scan) and `roi.csv` (ground-truth L1-L4
boxes). `difficulty` sets how strongly the label shows through the patients' biological
variation; `probe.run_probe` measures it. See `python -m osteo_pipeline.cohort --help`.
"""

from osteo_pipeline.cohort.clinical import CLASS_STATS, LABELS, ClassStats, who_label
from osteo_pipeline.cohort.specs import DIFFICULTIES
from osteo_pipeline.cohort.writer import FORMATS, ROI_COLUMNS, generate_cohort

__all__ = [
    "CLASS_STATS", "DIFFICULTIES", "FORMATS", "LABELS", "ROI_COLUMNS", "ClassStats", "generate_cohort", "who_label",
]
