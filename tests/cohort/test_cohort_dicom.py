"""DICOM export: identifier-free header, read back by the project's decoder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pydicom
import pytest

from osteo_pipeline.cohort import generate_cohort
from osteo_pipeline.imaging.decode import decode_scan, dicom_safe_metadata


@pytest.fixture(scope="module")
def dicom_cohort(tmp_path_factory: pytest.TempPathFactory, tiny_params: dict[str, object]) -> tuple[Path, pd.DataFrame]:
    """The tiny cohort written as DICOM, with some lateral views."""
    out = tmp_path_factory.mktemp("dicom") / "raw"
    return out, generate_cohort(out, **{**tiny_params, "file_format": "dicom", "lateral_fraction": 0.3})


def test_tables_name_the_dcm_files(dicom_cohort: tuple[Path, pd.DataFrame]) -> None:
    out, table = dicom_cohort
    roi = pd.read_csv(out / "roi.csv")
    assert table["file"].str.endswith(".dcm").all()
    assert list(roi["file"]) == list(pd.read_csv(out / "clinical.csv")["file"])
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.dcm")) == sorted(table["file"])


def test_same_pixels_as_png(
    dicom_cohort: tuple[Path, pd.DataFrame], tiny_cohort: tuple[Path, pd.DataFrame]
) -> None:
    out, table = dicom_cohort
    png_out, _ = tiny_cohort
    ap = table[table["view"] == "AP"]["file"]
    for file in ap:
        dcm = decode_scan((out / file).read_bytes(), file)
        png = decode_scan((png_out / file.replace(".dcm", ".png")).read_bytes(), file)
        assert dcm.format == "dicom"
        assert (dcm.pixels == png.pixels).all()
        assert dcm.pixels.dtype == png.pixels.dtype


def test_header_is_realistic_and_identifies_nobody(dicom_cohort: tuple[Path, pd.DataFrame]) -> None:
    out, table = dicom_cohort
    row = table.iloc[0]
    ds = pydicom.dcmread(out / row["file"])
    assert ds.PatientID == row["patient_id"]
    assert ds.Modality == "OT" and ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert ds.ManufacturerModelName == row["scanner"]
    assert ds.BitsStored in (8, 12, 14, 16) and ds.HighBit == ds.BitsStored - 1
    assert 0.02 < float(ds.PixelSpacing[0]) < 1.0
    for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "InstitutionName", "ReferringPhysicianName", "OperatorsName"):
        assert not ds.get(keyword), keyword
    text = str(ds)
    for value in (row["bmd"], row["t_score"]):
        assert f"{value}" not in text
    meta = dicom_safe_metadata(ds)
    assert meta["BitsStored"] == ds.BitsStored and meta["Manufacturer"] == "synthetic"
