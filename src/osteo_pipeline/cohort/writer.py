"""Write a synthetic cohort: PNG or DICOM scans per class folder, clinical.csv and roi.csv.

Determinism: one root SeedSequence per seed is split into the clinical draw and one child per
patient; each patient's child is split again into its anatomy and one stream per scan. Every
scan is therefore fully specified before any rendering starts, so the worker count and the
order in which workers finish cannot change a single byte. The difficulty and the lateral
fraction do not change which random numbers are drawn, only how they are used.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from osteo_pipeline.cohort.clinical import CLINICAL_COLUMNS, LABELS, SCAN_COLUMNS, sample_cohort_patients
from osteo_pipeline.cohort.dicom import write_dicom
from osteo_pipeline.cohort.render import Acquisition, Anatomy, render_scan
from osteo_pipeline.cohort.specs import difficulty_of, sample_acquisition, sample_anatomy

ROI_COLUMNS: tuple[str, ...] = ("file", "x0", "y0", "x1", "y1")
FORMATS: dict[str, str] = {"png": ".png", "dicom": ".dcm"}  # --format -> file suffix


def _png_params() -> list[int]:
    """Fast PNG settings: scans are noisy, so string matching and filter search gain little."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    params += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11: one fixed filter, 2x faster
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    return params


_PNG_PARAMS = _png_params()


@dataclass(frozen=True)
class ScanJob:
    """Everything one worker needs to render and write one scan."""

    file: str  # posix path relative to the output folder
    anatomy: Anatomy
    acquisition: Acquisition


_SCAN_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm"})


def existing_scans(out_dir: Path) -> list[Path]:
    """Scan-like files and cohort tables already anywhere under `out_dir`."""
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.rglob("*") if p.is_file() and p.suffix.lower() in _SCAN_SUFFIXES]
    found += [p for p in (out_dir / "clinical.csv", out_dir / "roi.csv") if p.exists()]
    return sorted(found)


def _own_files(out_dir: Path) -> set[Path]:
    """Files a previous run of this generator may have written (class-folder PNGs, tables)."""
    own = {p for label in LABELS for suffix in FORMATS.values() for p in (out_dir / label).glob(f"*{suffix}")}
    return own | {out_dir / "clinical.csv", out_dir / "roi.csv"}


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless overwriting; then remove only our own files."""
    found = existing_scans(out_dir)
    if not found:
        return
    if not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds {len(found)} scans or cohort tables; "
            "pass overwrite=True (CLI: --overwrite) to replace them"
        )
    foreign = [p for p in found if p not in _own_files(out_dir)]
    if foreign:
        # Never delete scans this generator did not write, and never mix cohorts with them.
        raise FileExistsError(
            f"{out_dir} holds scans this generator did not write (e.g. {foreign[0]}); "
            "remove them or choose another folder"
        )
    for path in found:
        path.unlink()


def plan_cohort(
    seed: int,
    counts: dict[str, int],
    repeat_fraction: float,
    difficulty: str = "realistic",
    lateral_fraction: float = 0.0,
    suffix: str = ".png",
) -> tuple[pd.DataFrame, list[ScanJob]]:
    """Clinical rows (one per scan, in job order) and the render job of each scan; no I/O."""
    clinical_seq, patients_seq = np.random.SeedSequence(seed).spawn(2)
    patients = sample_cohort_patients(np.random.default_rng(clinical_seq), counts, repeat_fraction)
    rows: list[dict[str, object]] = []
    jobs: list[ScanJob] = []
    for pat, pseq in zip(patients.itertuples(index=False), patients_seq.spawn(len(patients))):
        anat_seq, scans_seq = pseq.spawn(2)
        anatomy = sample_anatomy(
            np.random.default_rng(anat_seq), pat.bmd, pat.bmi, pat.sex, bool(pat.vertebral_fracture),
            age=float(pat.age), difficulty=difficulty,
        )
        for k, sseq in enumerate(scans_seq.spawn(int(pat.n_scans)), start=1):
            file = f"{pat.label}/DXA_{pat.patient_id[1:]}_{k}{suffix}"
            acq = sample_acquisition(np.random.default_rng(sseq), anatomy.scanner, lateral_fraction)
            jobs.append(ScanJob(file, anatomy, acq))
            row = {c: getattr(pat, c) for c in CLINICAL_COLUMNS if c not in SCAN_COLUMNS}
            rows.append({"file": file, **row, "view": acq.view, "scanner": acq.scanner})
    return pd.DataFrame(rows, columns=list(CLINICAL_COLUMNS)), jobs


def _render_and_write(args: tuple[ScanJob, str, float]) -> tuple[str, tuple[int, int, int, int]]:
    """Worker: render one scan, write its PNG or DICOM file, return its ROI box."""
    job, out_dir, scale = args
    image, box = render_scan(job.anatomy, job.acquisition, scale)
    path = Path(out_dir) / job.file
    if path.suffix == ".dcm":
        write_dicom(path, image, job.anatomy, job.acquisition, scale)
    elif not cv2.imwrite(str(path), image, _PNG_PARAMS):
        raise OSError(f"could not write {path}")
    return job.file, box


def _worker_init() -> None:
    """One OpenCV thread per worker process: the pool already uses every core."""
    cv2.setNumThreads(1)


def _run_jobs(
    jobs: list[ScanJob], out_dir: Path, scale: float, workers: int
) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Render all jobs, in parallel when it pays off; results in job order."""
    args = [(job, str(out_dir), scale) for job in jobs]
    if workers <= 1 or len(jobs) < 8:
        return [_render_and_write(a) for a in args]
    # spawn, not fork: a forked child inherits OpenCV's thread-pool state from a parent that
    # already used OpenCV (pytest, Kedro, notebooks) and can deadlock. Like any spawn pool,
    # a calling script needs the `if __name__ == "__main__":` guard.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        return list(pool.map(_render_and_write, args, chunksize=4))


def generate_cohort(
    out_dir: str | Path,
    seed: int = 42,
    n_normal: int = 60,
    n_osteoporosis: int = 114,
    n_osteopenia: int = 0,
    scale: float = 1.0,
    repeat_patient_fraction: float = 0.1,
    workers: int = 2,
    overwrite: bool = False,
    difficulty: str = "realistic",
    lateral_fraction: float = 0.0,
    file_format: str = "png",
) -> pd.DataFrame:
    """Write a synthetic spine DXA cohort to `out_dir` and return its clinical table.

    Counts are numbers of scans per class; about `repeat_patient_fraction` of the patients
    get a second scan (same anatomy and label, new exposure, noise and position). `scale`
    shrinks every image (and its anatomy) for fast tests. `difficulty` (easy, realistic,
    hard) sets how strongly the label shows through the patients' biological variation;
    `lateral_fraction` of the scans are lateral views; `file_format` is "png" or "dicom"
    (.dcm, identifier-free header). With `workers` > 1 the scans are
    rendered in spawned processes, so a calling script needs the usual __main__ guard.
    Raises FileExistsError if `out_dir` already holds scans and `overwrite` is False, or
    holds scans that a previous run of this generator did not write.
    """
    if scale <= 0:
        raise ValueError("scale must be positive")
    if min(n_normal, n_osteoporosis, n_osteopenia) < 0:
        raise ValueError("class counts must be >= 0")
    if not 0.0 <= lateral_fraction <= 1.0:
        raise ValueError("lateral_fraction must be in [0, 1]")
    if file_format not in FORMATS:
        raise ValueError(f"file_format must be one of {sorted(FORMATS)}, got {file_format!r}")
    difficulty_of(difficulty)  # fail before touching the folder
    counts = {"normal": n_normal, "osteopenia": n_osteopenia, "osteoporosis": n_osteoporosis}
    clinical, jobs = plan_cohort(
        seed, counts, repeat_patient_fraction, difficulty, lateral_fraction, FORMATS[file_format]
    )
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    for label in clinical["label"].unique():
        (out / label).mkdir(parents=True, exist_ok=True)
    boxes = dict(_run_jobs(jobs, out, scale, workers))
    clinical = clinical.sort_values("file", kind="stable").reset_index(drop=True)
    roi = pd.DataFrame([(f, *boxes[f]) for f in clinical["file"]], columns=list(ROI_COLUMNS))
    clinical.to_csv(out / "clinical.csv", index=False)
    roi.to_csv(out / "roi.csv", index=False)
    return clinical
