"""ingest on real, messy data: the knee X-ray set has exact duplicates, some under two classes."""

from __future__ import annotations

import json
from collections import Counter

import pytest

pytestmark = pytest.mark.realdata

FOLDER_COUNTS = {"normal": 36, "osteopenia": 154, "osteoporosis": 49}


def test_knee_set_duplicates_and_conflicts_are_reported_and_counts_add_up(knee_dir, run_ingest):
    manifest, report = run_ingest(parts=knee_dir)
    counts = report["counts"]
    print("\nknee-xray-3class ingest:", json.dumps(counts))

    assert counts["files_seen"] == sum(FOLDER_COUNTS.values()) + 1  # + README.md
    index = manifest.attrs["file_index"].set_index("file_ref")["source"]
    assert counts["files_skipped"] == 1 and index[report["skipped"]].tolist() == ["README.md"]
    assert counts["files_seen"] == counts["accepted"] + counts["excluded"] + counts["duplicates_dropped"] + 1
    assert counts["accepted"] == len(manifest) == sum(counts["accepted_by_class"].values())
    assert manifest["scan_id"].is_unique
    assert report["duplicate_groups"] and report["conflict_groups"]

    # The report names files by file_ref; the local-only file index gives their paths back.
    path = manifest.attrs["file_index"].set_index("file_ref")["source"].to_dict()
    kept = set(manifest["file_ref"].map(path))
    excluded = {path[e["file_ref"]]: e["reason"] for e in report["excluded"]}
    for group in report["conflict_groups"] + report["duplicate_groups"]:
        group["files"] = [path[f] for f in group["file_refs"]]
        group["kept"] = path.get(group.get("kept"))
    # Conflicting copies: every one excluded, none kept.
    conflict_files = [f for g in report["conflict_groups"] for f in g["files"]]
    assert len(set(g["scan_id"] for g in report["conflict_groups"])) == len(report["conflict_groups"])
    assert all(len(set(g["labels"])) > 1 for g in report["conflict_groups"])
    assert all(excluded.get(f) == "duplicate_label_conflict" for f in conflict_files)
    assert not kept & set(conflict_files)
    assert sum(v == "duplicate_label_conflict" for v in excluded.values()) == len(conflict_files)
    # A normal/ file identical to an osteopenia/ one, as the dataset's README describes.
    assert any({"normal", "osteopenia"} <= set(g["labels"]) for g in report["conflict_groups"])
    # Same-label duplicates: exactly the kept copy in the manifest.
    for group in report["duplicate_groups"]:
        assert group["kept"] in kept and not kept & (set(group["files"]) - {group["kept"]})
    assert counts["duplicates_dropped"] == sum(len(g["files"]) - 1 for g in report["duplicate_groups"])
    # Per class: accepted never exceeds the folder, and what is missing is accounted for.
    for label, n in FOLDER_COUNTS.items():
        gone = Counter(f.split("/")[0] for f in conflict_files)[label] + sum(
            sum(f.split("/")[0] == label for f in g["files"]) - 1 for g in report["duplicate_groups"]
            if g["kept"].startswith(f"{label}/"))
        assert counts["accepted_by_class"][label] == n - gone
    # No patient ids in this set: every kept file is its own patient.
    assert counts["patients"] == counts["accepted"] == counts["patient_id_source"]["file"]
