"""Cohort writer: layout, tables, images, repeats, determinism, overwrite guard, CLI."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from osteo_pipeline.cohort import generate_cohort
from osteo_pipeline.cohort.__main__ import main
from osteo_pipeline.cohort.clinical import CLINICAL_COLUMNS, who_label
from osteo_pipeline.cohort.render import image_shape, render_scan
from osteo_pipeline.cohort.specs import HEIGHT_RANGE, WIDTH_RANGE
from osteo_pipeline.cohort.writer import ROI_COLUMNS, plan_cohort


def _read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def test_layout_and_tables(tiny_cohort: tuple[Path, pd.DataFrame]) -> None:
    out, table = tiny_cohort
    clinical = pd.read_csv(out / "clinical.csv")
    roi = pd.read_csv(out / "roi.csv")
    assert list(clinical.columns) == list(CLINICAL_COLUMNS)
    assert list(roi.columns) == list(ROI_COLUMNS)
    assert list(roi["file"]) == list(clinical["file"]) == list(table["file"])
    counts = clinical["label"].value_counts().to_dict()
    assert counts == {"osteoporosis": 8, "normal": 6, "osteopenia": 4}
    assert (clinical["t_score"].map(who_label) == clinical["label"]).all()
    assert set(clinical["sex"]) <= {"M", "F"}
    assert set(clinical["fracture_history"]) <= {0, 1}
    assert clinical["patient_id"].str.fullmatch(r"P\d{4}").all()
    for row in clinical.itertuples():
        assert row.file.startswith(f"{row.label}/DXA_{row.patient_id[1:]}_")
        assert (out / row.file).is_file()
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == sorted(clinical["file"])


def test_images_and_boxes(tiny_cohort: tuple[Path, pd.DataFrame]) -> None:
    out, _ = tiny_cohort
    roi = pd.read_csv(out / "roi.csv")
    dtypes = set()
    for r in roi.itertuples():
        img = _read(out / r.file)
        dtypes.add(img.dtype)
        h, w = img.shape  # grayscale
        assert h > w  # portrait scan
        assert 0 <= r.x0 < r.x1 <= w and 0 <= r.y0 < r.y1 <= h
        # L1-L4 are most of the height and are always framed by a partial T12 and L5.
        assert 0.55 * h < r.y1 - r.y0 < 0.9 * h and r.y0 > 0 and r.y1 < h
        inside = img[r.y0 : r.y1, r.x0 : r.x1].astype(float).mean()
        assert inside > img.astype(float).mean()  # bone is brighter than the rest
    assert dtypes == {np.dtype(np.uint8), np.dtype(np.uint16)}


def test_repeat_scans_share_patient_but_not_pixels(tiny_cohort: tuple[Path, pd.DataFrame]) -> None:
    out, table = tiny_cohort
    repeats = table.groupby("patient_id").filter(lambda g: len(g) == 2)
    assert len(repeats) >= 2
    pid, pair = next(iter(repeats.groupby("patient_id")))
    clinical_cols = [c for c in CLINICAL_COLUMNS if c != "file"]
    assert (pair[clinical_cols].nunique() == 1).all()
    a, b = (_read(out / f) for f in pair["file"])
    assert a.shape == b.shape  # same anatomy and field of view
    assert not np.array_equal(a, b)


def test_image_sizes_span_the_paper_range() -> None:
    _, jobs = plan_cohort(42, {"normal": 60, "osteopenia": 0, "osteoporosis": 114}, 0.1)
    hw = np.array([image_shape(j.anatomy, 1.0) for j in jobs])
    assert HEIGHT_RANGE[0] <= hw[:, 0].min() < 1500 and 2650 < hw[:, 0].max() <= HEIGHT_RANGE[1]
    assert WIDTH_RANGE[0] <= hw[:, 1].min() < 750 and 1250 < hw[:, 1].max() <= WIDTH_RANGE[1]
    assert (hw[:, 0] > hw[:, 1]).all()


def test_scale_keeps_anatomy_proportional() -> None:
    _, jobs = plan_cohort(3, {"normal": 1, "osteopenia": 0, "osteoporosis": 1}, 0.0)
    job = jobs[-1]
    big, box_big = render_scan(job.anatomy, job.acquisition, 0.5)
    small, box_small = render_scan(job.anatomy, job.acquisition, 0.125)
    assert big.shape[0] == pytest.approx(4 * small.shape[0], abs=4)
    rel_big = np.array(box_big) / np.array(big.shape[::-1] * 2)
    rel_small = np.array(box_small) / np.array(small.shape[::-1] * 2)
    np.testing.assert_allclose(rel_big, rel_small, atol=0.02)


def test_same_seed_same_bytes_for_any_worker_count(
    tmp_path: Path, tiny_cohort: tuple[Path, pd.DataFrame], tiny_params: dict[str, object]
) -> None:
    out, _ = tiny_cohort  # written with workers=1
    again = tmp_path / "again"
    generate_cohort(again, **{**tiny_params, "workers": 2})
    assert _tree_bytes(again) == _tree_bytes(out)


def test_other_seed_other_cohort(
    tmp_path: Path, tiny_cohort: tuple[Path, pd.DataFrame], tiny_params: dict[str, object]
) -> None:
    _, table = tiny_cohort
    other = generate_cohort(tmp_path / "other", **{**tiny_params, "seed": 8})
    assert not other["bmd"].equals(table["bmd"])


def test_refuses_to_overwrite_without_permission(tmp_path: Path, tiny_params: dict[str, object]) -> None:
    small = {**tiny_params, "n_normal": 2, "n_osteoporosis": 2, "n_osteopenia": 0}
    generate_cohort(tmp_path, **tiny_params)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_cohort(tmp_path, **small)
    table = generate_cohort(tmp_path, **small, overwrite=True)
    # The previous, larger cohort is gone: only the new scans remain.
    pngs = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert pngs == sorted(table["file"])


def test_never_touches_foreign_scans(tmp_path: Path, tiny_params: dict[str, object]) -> None:
    stray = tmp_path / "site_a" / "scan.jpg"
    stray.parent.mkdir()
    stray.write_bytes(b"not ours")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError):
            generate_cohort(tmp_path, **tiny_params, overwrite=overwrite)
    assert stray.read_bytes() == b"not ours"
    (tmp_path / ".gitkeep").write_text("")  # not a scan: an otherwise empty folder is fine
    stray.unlink()
    assert len(generate_cohort(tmp_path, **tiny_params)) == 18


def test_cli_summary_and_guard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--out", str(tmp_path), "--seed", "5", "--n-normal", "3", "--n-osteoporosis", "3",
            "--n-osteopenia", "2", "--scale", "0.1", "--repeat-patient-fraction", "0.2",
            "--workers", "1"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("wrote 8 scans (normal=3, osteopenia=2, osteoporosis=3)")
    assert line.endswith(" s")
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert len(pd.read_csv(tmp_path / "clinical.csv")) == 8


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_cohort(tmp_path, n_normal=-1)
    with pytest.raises(ValueError):
        generate_cohort(tmp_path, scale=0.0)
    with pytest.raises(ValueError):
        generate_cohort(tmp_path, n_normal=0, n_osteoporosis=0)
