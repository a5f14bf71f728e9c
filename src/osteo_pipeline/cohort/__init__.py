"""Synthetic spine DXA cohort: the project's embedded default data.

`generate_cohort` writes AP lumbar-spine DXA-like PNG scans per class folder plus
`clinical.csv` (Table 2 statistics of the seed paper, WHO-consistent T-scores) and `roi.csv`
(ground-truth L1-L4 boxes). See `python -m osteo_pipeline.cohort --help`.
"""

from osteo_pipeline.cohort.clinical import CLASS_STATS, LABELS, ClassStats, who_label
from osteo_pipeline.cohort.writer import ROI_COLUMNS, generate_cohort

__all__ = ["CLASS_STATS", "LABELS", "ROI_COLUMNS", "ClassStats", "generate_cohort", "who_label"]
