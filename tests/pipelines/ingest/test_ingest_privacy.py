"""Issue 11 in the ingest nodes: the column allow-list, patient id spellings, file_refs, the secret
key, labels CSVs as spreadsheets write them, and a class that ends with no scan."""

from __future__ import annotations

import json
import os
import stat

import pytest

from osteo_pipeline.datasets.pseudonym_key import PseudonymKeyDataset
from osteo_pipeline.pipelines.ingest.nodes import EmptyClassError, TableError, pseudonymise
from osteo_pipeline.pipelines.ingest.privacy import PUBLIC_KEY, normalise_header, redact_paths

HOSPITAL_CSV = (
    "FileName,Label,PatientID,PatientName,PatientBirthDate,AccessionNumber,InstitutionName,Comments,"
    "Age,Sex,BMI,T-score,Z Score,BMD (g/cm2),FractureHistory\n"
    "normal/a.png,normal,MRN-004711,DOE^JANE,19450203,ACC-1234567,Saint Example Hospital,"
    "\"seen by Dr Who, follow-up\",79,F,22.5,-0.4,0.1,0.95,0\n"
    "osteoporosis/b.png,osteoporosis,MRN-004711,DOE^JANE,19450203,ACC-7654321,Saint Example Hospital,"
    "fell at home,79,F,22.5,-2.9,-1.8,0.61,1\n"
)


@pytest.mark.parametrize("header, expected", [
    ("PatientBirthDate", "patient_birth_date"), ("T-score", "t_score"), ("PatientID", "patient_id"),
    ("Patient ID", "patient_id"), ("patientid", "patientid"), ("MRN", "mrn"), ("BMD (g/cm2)", "bmd_g_cm2"),
    ("Z.Score", "z_score"), ("\ufeffFile", "file"), ("FractureHistory", "fracture_history"), ("BMDValue", "bmd_value"),
])
def test_header_spellings_are_normalised(header, expected):
    assert normalise_header(header) == expected


def test_only_allow_listed_columns_pass_and_dropped_names_are_reported(write_scan, write_file, run_ingest, caplog):
    write_scan("normal/a.png", 1)
    write_scan("osteoporosis/b.png", 2)
    write_file("labels.csv", HOSPITAL_CSV)
    caplog.set_level("INFO")
    manifest, report = run_ingest()
    clinical = ["age", "sex", "bmi", "t_score", "z_score", "bmd", "fracture_history"]
    assert sorted(set(manifest.columns) - {"scan_id", "file_ref", "patient_id", "label", "width", "height",
                                           "bit_depth", "format", "roi_x0", "roi_y0", "roi_x1", "roi_y1",
                                           "view", "view_source"}) == sorted(clinical)
    assert report["dropped_columns"] == ["PatientName", "PatientBirthDate", "AccessionNumber", "InstitutionName",
                                         "Comments"]
    assert report["patient_id_column"] == "PatientID" and report["counts"]["patient_id_source"]["table"] == 2
    assert manifest["patient_id"].nunique() == 1 and manifest["patient_id"][0] == pseudonymise("MRN-004711", "test-secret")
    assert report["clinical_columns"]["t_score"] == "T-score"
    text = json.dumps(report) + manifest.to_csv() + caplog.text
    for value in ("004711", "DOE", "1945", "ACC-", "Saint Example", "Dr Who", "fell at home"):
        assert value not in text


@pytest.mark.parametrize("column", ["patient_id", "PatientID", "Patient ID", "patientid", "MRN",
                                    "medical_record_number", "subject_id"])
def test_patient_id_column_spellings(column, write_scan, write_file, run_ingest):
    write_scan("normal/a.png", 1)
    write_scan("normal/b.png", 2)
    write_file("labels.csv", f"file,label,{column}\nnormal/a.png,normal,77\nnormal/b.png,normal,77\n")
    manifest, report = run_ingest()
    assert manifest["patient_id"].nunique() == 1  # one patient: same side of any split
    assert report["patient_id_column"] == column


def test_user_declared_extra_column_passes(write_scan, write_file, run_ingest):
    write_scan("normal/a.png", 1)
    write_file("labels.csv", "file,label,Tube Voltage,Scanner Model,Operator\nnormal/a.png,normal,76,Lunar,J. Smith\n")
    manifest, report = run_ingest(extra_clinical_columns=["tube-voltage"])
    assert manifest.loc[0, "tube_voltage"] == 76 and report["dropped_columns"] == ["Operator"]
    assert manifest.loc[0, "scanner"] == "Lunar"  # a declared spelling of the allow-listed `scanner`


def test_semicolon_cp1252_and_nfd_names_are_read_and_reported(write_scan, write_file, run_ingest, ref):
    write_scan("normal/Müller_1.png", 1)  # NFC on disk
    write_scan("osteoporosis/b.png", 2)
    nfd = "normal/Mu\u0308ller_1.png"
    write_file("labels.csv", f"file;label;T-score\n{nfd};normal;-0,5\nosteoporosis/b.png;osteoporosis;-2,9\n"
               .encode("utf-8"))
    manifest, report = run_ingest()
    assert set(manifest["file_ref"]) == {ref("normal/Müller_1.png"), ref("osteoporosis/b.png")}
    assert report["label_table_read"] == ["delimiter ';'"] and not report["table_issues"]

    write_file("labels.csv", "file;label;comment\nnormal/Müller_1.png;normal;ok é\nosteoporosis/b.png;osteoporosis;\n"
               .encode("cp1252"))
    manifest, report = run_ingest()
    assert len(manifest) == 2 and report["dropped_columns"] == ["comment"]
    assert report["label_table_read"][0].startswith("encoding cp1252 (not UTF-8: byte 0xfc at offset 27)")


@pytest.mark.parametrize("content, message", [
    (b"file,diagnosis\nnormal/a.png,normal\n",
     r"labels.csv has no 'label' column: columns found: file, 1 undeclared \(names not shown: the first line may be data\); expected columns file, label"),
    (b"image;diagnosis\nnormal/a.png;normal\n", r"no 'file' or 'label' column \(delimiter ';' detected\)"),
    (b"file,label\nnormal/a.png,normal\x81\x8d\n", r"labels.csv is not UTF-8 \(byte 0x81 at offset 30\) and not cp1252"),
    (b"", r"labels.csv is empty"),
])
def test_a_labels_csv_that_cannot_be_used_says_why(content, message, write_scan, write_file, run_ingest):
    write_scan("normal/a.png", 1)
    write_file("labels.csv", content)
    with pytest.raises(TableError, match=message):
        run_ingest()


def test_a_class_that_ends_with_no_scan_stops_ingest(write_scan, write_file, run_ingest):
    write_scan("normal/a.png", 1)
    write_file("osteoporosis/b.png", b"")
    write_file("osteoporosis/c.png", b"not a png")
    with pytest.raises(EmptyClassError) as caught:
        run_ingest()
    said = str(caught.value)
    assert "class 'osteoporosis' (named by class folder) has 0 accepted scans out of 2 file(s)" in said
    assert "1 empty_file, 1 not_an_image" in said
    assert caught.value.report["counts"]["accepted_by_class"]["osteoporosis"] == 0  # for the failed report


def test_a_class_only_the_csv_names_counts_its_missing_files(write_scan, write_file, run_ingest):
    write_scan("scans/a.png", 1)
    write_file("labels.csv", "file,label\nscans/a.png,normal\nscans/gone.png,osteopenia\n")
    with pytest.raises(EmptyClassError, match=r"class 'osteopenia' \(named by labels.csv\) .* 1 missing_file"):
        run_ingest()


def test_file_index_maps_every_file_and_refs_are_stable(write_scan, write_file, run_ingest, ref):
    good = write_scan("normal/2144650_study1_1.png", 1)
    write_file("normal/2144650_copy.png", good.read_bytes())
    write_file("normal/bad.png", b"junk")
    write_file("README.md", "x")
    manifest, _ = run_ingest()
    index = manifest.attrs["file_index"].set_index("source")
    assert index["status"].to_dict() == {"README.md": "skipped", "normal/2144650_copy.png": "accepted",
                                         "normal/2144650_study1_1.png": "duplicate", "normal/bad.png": "excluded"}
    assert index.loc["normal/bad.png", "reason"] == "not_an_image"
    assert index["file_ref"].to_dict() == {s: ref(s) for s in index.index}
    assert ref("normal/x.PNG").endswith(".png") and ref("README.md").count(".") == 0 and ref("normal/").endswith("/")
    other, _ = run_ingest(key="another-key")
    assert set(other["file_ref"]).isdisjoint(manifest["file_ref"])  # keyed: not guessable from the name


def test_public_key_puts_a_warning_in_the_report(write_scan, run_ingest):
    write_scan("normal/a.png", 1)
    _, report = run_ingest(key=PUBLIC_KEY)
    assert report["parameters"]["pseudonym_key"] == "public default"
    assert any("public default key" in w for w in report["warnings"])


def test_raw_paths_in_details_are_replaced_by_file_refs():
    refs = {"normal/2144650_a.png": "f-000000000000.png"}
    said = "Permission denied: '/data/raw/normal/2144650_a.png'"
    assert redact_paths(said, refs) == "Permission denied: 'f-000000000000.png'"


def test_pseudonym_key_is_made_once_private_and_never_described(tmp_path, monkeypatch):
    monkeypatch.delenv("OSTEO_PSEUDONYM_KEY", raising=False)
    path = tmp_path / "conf" / "local" / "pseudonym_key.txt"
    dataset = PseudonymKeyDataset(filepath=str(path))
    assert dataset.exists() and not path.exists()  # never reported as a missing input: load makes it
    key = dataset.load()
    assert len(key) == 64 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert PseudonymKeyDataset(filepath=str(path)).load() == key  # same key, same pseudonyms, next run
    assert key not in str(dataset) and key not in repr(dataset._describe())
    monkeypatch.setenv("OSTEO_PSEUDONYM_KEY", "forced")
    assert dataset.load() == "forced"
    with pytest.raises(Exception, match="created on first use"):
        dataset.save("x")


def test_a_headerless_csv_or_an_unknown_folder_never_echoes_what_it_holds(write_scan, write_file, run_ingest, caplog):
    """A labels CSV without its header line has a row of data where the header should be, and an
    unknown folder may be named after a patient: neither reaches the error, the report or the log."""
    write_scan("normal/a.png", 1)
    write_scan("normal/b.png", 2)
    write_scan("osteoporosis/c.png", 3)
    write_scan("Smith_John/d.png", 4)
    write_file("labels.csv", "normal/a.png,normal,MRN-4711,DOE^JANE\n")
    with pytest.raises(TableError) as err:
        run_ingest()
    assert "4 undeclared (names not shown" in str(err.value)
    for secret in ("MRN-4711", "DOE", "a.png"):
        assert secret not in str(err.value)
    labels = write_file("labels.csv", "file,label,notes\nnormal/a.png,Mrs Doe said fine,\n")
    with caplog.at_level("INFO"):
        _, with_table = run_ingest()
        labels.unlink()
        _, with_folders = run_ingest()
    said = json.dumps([with_table, with_folders]) + caplog.text
    assert "Smith" not in said and "Mrs Doe" not in said
    (label_detail,) = [e["detail"] for e in with_table["excluded"] if e["reason"] == "unknown_label"]
    assert label_detail.startswith("its label in ") and label_detail.endswith(
        " is not a known class (known: normal, osteopenia, osteoporosis and their aliases in ingest.classes)")
    assert [e["detail"] for e in with_folders["excluded"]] == [
        "its top folder is not a known class (known: normal, osteopenia, osteoporosis and their aliases in "
        "ingest.classes)"]
