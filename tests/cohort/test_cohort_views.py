"""Lateral views, scanner families and difficulty levels of the cohort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osteo_pipeline.cohort import generate_cohort
from osteo_pipeline.cohort.render import SCANNERS
from osteo_pipeline.cohort.specs import DIFFICULTIES
from osteo_pipeline.cohort.writer import plan_cohort
from osteo_pipeline.imaging.decode import decode_scan

COUNTS = {"normal": 60, "osteopenia": 0, "osteoporosis": 114}


@pytest.fixture(scope="module")
def lateral_cohort(
    tmp_path_factory: pytest.TempPathFactory, tiny_params: dict[str, object]
) -> tuple[Path, pd.DataFrame]:
    """The tiny cohort with half of its scans lateral."""
    out = tmp_path_factory.mktemp("lateral") / "raw"
    return out, generate_cohort(out, **{**tiny_params, "lateral_fraction": 0.5})


def test_views_and_scanners_are_columns(lateral_cohort: tuple[Path, pd.DataFrame]) -> None:
    out, table = lateral_cohort
    clinical = pd.read_csv(out / "clinical.csv")
    assert set(clinical["view"]) == {"AP", "lateral"}
    assert set(clinical["scanner"]) <= set(SCANNERS)
    # Repeat scans are made on the patient's own scanner.
    assert (clinical.groupby("patient_id")["scanner"].nunique() == 1).all()


def test_lateral_boxes_frame_the_bodies(lateral_cohort: tuple[Path, pd.DataFrame]) -> None:
    out, table = lateral_cohort
    roi = pd.read_csv(out / "roi.csv").merge(table[["file", "view"]], on="file")
    for r in roi[roi["view"] == "lateral"].itertuples():
        img = decode_scan((out / r.file).read_bytes(), r.file).pixels.astype(float)
        h, w = img.shape
        assert 0 <= r.x0 < r.x1 <= w and 0 < r.y0 < r.y1 < h
        assert 0.55 * h < r.y1 - r.y0 < 0.9 * h
        inside = img[r.y0 : r.y1, r.x0 : r.x1].mean()
        # The bodies are the densest part of a row; the posterior elements sit beside them.
        assert inside > img[r.y0 : r.y1].mean()


def test_lateral_fraction_only_changes_views() -> None:
    ap, jobs_ap = plan_cohort(42, COUNTS, 0.1, lateral_fraction=0.0)
    mixed, jobs_mixed = plan_cohort(42, COUNTS, 0.1, lateral_fraction=0.3)
    assert set(ap["view"]) == {"AP"}
    assert 0.2 < (mixed["view"] == "lateral").mean() < 0.4
    assert ap.drop(columns="view").equals(mixed.drop(columns="view"))
    assert [j.anatomy for j in jobs_ap] == [j.anatomy for j in jobs_mixed]


def _trait_auc(difficulty: str) -> float:
    """ROC-AUC of the trabecular strut size alone for normal vs osteoporosis (no images)."""
    from sklearn.metrics import roc_auc_score

    table, jobs = plan_cohort(3, {"normal": 300, "osteopenia": 0, "osteoporosis": 300}, 0.0, difficulty=difficulty)
    scale = np.array([j.anatomy.trab_scale for j in jobs])
    return roc_auc_score(table["label"] == "osteoporosis", scale)


def test_difficulty_changes_appearance_not_patients() -> None:
    tables = {d: plan_cohort(42, COUNTS, 0.1, difficulty=d) for d in DIFFICULTIES}
    easy, easy_jobs = tables["easy"]
    for d, (table, jobs) in tables.items():
        assert table.equals(easy), d  # same patients, views and scanners
        assert [j.acquisition for j in jobs] == [j.acquisition for j in easy_jobs], d
    # The label shows through the texture less and less: not at all at hard.
    aucs = [_trait_auc(d) for d in ("easy", "realistic", "hard")]
    assert aucs[0] > 0.97 and aucs[0] > aucs[1] > 0.55 and aucs[1] > aucs[2], aucs
    assert abs(aucs[2] - 0.5) < 0.1, aucs


def test_rejects_bad_view_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="difficulty"):
        generate_cohort(tmp_path, difficulty="trivial")
    with pytest.raises(ValueError, match="lateral_fraction"):
        generate_cohort(tmp_path, lateral_fraction=1.5)
    with pytest.raises(ValueError, match="file_format"):
        generate_cohort(tmp_path, file_format="jpeg")
    assert not any(tmp_path.iterdir())


def test_cli_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from osteo_pipeline.cohort.__main__ import main

    args = ["--out", str(tmp_path), "--seed", "5", "--n-normal", "2", "--n-osteoporosis", "2",
            "--scale", "0.1", "--workers", "1", "--difficulty", "hard", "--lateral-fraction", "1",
            "--format", "dicom"]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("wrote 4 scans")
    clinical = pd.read_csv(tmp_path / "clinical.csv")
    assert set(clinical["view"]) == {"lateral"} and clinical["file"].str.endswith(".dcm").all()
    # A DICOM cohort is this generator's own: --overwrite may replace it.
    assert main([*args[:-1], "png", "--overwrite"]) == 0
    assert not list(tmp_path.rglob("*.dcm"))
