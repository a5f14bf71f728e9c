"""Every accepted scan gets a view (AP | lateral): from the labels CSV's view column, else the image classifier."""

from __future__ import annotations

import json

import cv2
import pytest

from view_shapes import spine_scan


@pytest.fixture
def write_view(tmp_path):
    def write(rel: str, view: str, seed: int):
        path = tmp_path / "raw" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), spine_scan(view, seed=seed))

    return write


def test_view_from_the_table_in_any_spelling_else_from_the_image(write_view, write_file, run_ingest, ref):
    write_view("a.png", "AP", 1)
    write_view("b.png", "lateral", 2)
    write_view("c.png", "AP", 3)
    write_view("d.png", "lateral", 4)
    write_view("e.png", "lateral", 5)
    write_file("clinical.csv", "file,label,View Position\n"
                               "a.png,normal,PA\n"
                               "b.png,osteoporosis,Left-Lateral\n"
                               "c.png,normal,\n"                        # blank: the image says AP
                               "d.png,osteoporosis,DOE JANE said lat\n"  # free text: not echoed
                               "e.png,normal,LL\n")
    manifest, report = run_ingest()
    rows = manifest.set_index("file_ref")
    got = {f: (rows.loc[ref(f"{f}.png"), "view"], rows.loc[ref(f"{f}.png"), "view_source"]) for f in "abcde"}
    assert got == {"a": ("AP", "table"), "b": ("lateral", "table"), "c": ("AP", "auto"),
                   "d": ("lateral", "auto"), "e": ("lateral", "table")}
    assert report["counts"]["accepted_by_view"] == {"AP": 2, "lateral": 3}
    assert report["counts"]["view_source"] == {"table": 3, "auto": 2}
    (issue,) = [i for i in report["table_issues"] if i["reason"] == "unrecognised_view"]
    assert issue["file_ref"] == ref("d.png") and "unrecognised view value" in issue["detail"]
    assert "DOE" not in json.dumps(report) and "DOE" not in manifest.to_csv()


def test_without_a_view_column_the_classifier_labels_every_scan(write_view, run_ingest):
    write_view("normal/a.png", "AP", 1)
    write_view("osteoporosis/b.png", "lateral", 2)
    manifest, report = run_ingest()
    assert sorted(zip(manifest["label"], manifest["view"])) == [("normal", "AP"), ("osteoporosis", "lateral")]
    assert set(manifest["view_source"]) == {"auto"}
