"""Issue 11, silent losses and decode errors, through the real `kedro run` command line:
a symlinked class folder, an unreadable sub-folder, degenerate images, a DICOM without its
preamble, a PNG bomb and a corrupt file in ONE raw folder, ONE `kedro run --pipelines=ingest`;
plus the missing and unreadable raw folder messages. Node-level checks come first."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from osteo_pipeline.datasets.raw_bytes import RawReadError
from osteo_pipeline.pipelines.ingest.nodes import index_scans
from osteo_testkit import make_project

# As root, chmod 000 denies nothing; without the two DAC capabilities root is refused like
# any user, and still owns (reads, writes) the project copy it made.
UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
DEGENERATE = {  # file -> start of the detail
    "normal/dot.png": "too small: 1x1",
    "normal/sliver.png": "too elongated: 20x5000",
    "normal/black.png": "no dynamic range: values 0-0",
    "normal/white.png": "no dynamic range: values 255-255",
    "normal/flat.png": "no dynamic range: values 128-128",
}
BOMB_DETAIL = ("10000x10000 pixels (100000000) exceed ingest.max_pixels = 50000000; "
               "raise it in conf/base/parameters_ingest.yml if this scan is genuine")


def noise(seed: int, shape=(48, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def png(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    return buf.tobytes()


def png_bomb(side: int) -> bytes:
    """A PNG header claiming side x side pixels, no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def dicom_without_preamble(pixels: np.ndarray) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def write(root: Path, rel: str, data: bytes) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)


def hostile_raw(raw: Path, mount: Path) -> None:
    for i in range(3):
        write(raw, f"normal/ok{i}.png", png(noise(i)))
    write(mount, "osteopenia/p0.png", png(noise(10)))
    write(mount, "osteopenia/p1.png", png(noise(11)))
    (raw / "osteopenia").symlink_to(mount / "osteopenia", target_is_directory=True)
    write(raw, "osteoporosis/raw.dcm", dicom_without_preamble(noise(20)))
    write(raw, "normal/locked/hidden_scan.png", png(noise(30)))
    os.chmod(raw / "normal" / "locked", 0)
    write(raw, "normal/dot.png", png(np.zeros((1, 1), np.uint8)))
    write(raw, "normal/sliver.png", png(noise(40, (5000, 20))))
    write(raw, "normal/black.png", png(np.zeros((64, 64), np.uint8)))
    write(raw, "normal/white.png", png(np.full((64, 64), 255, np.uint8)))
    write(raw, "normal/flat.png", png(np.full((64, 64), 128, np.uint8)))
    write(raw, "normal/bomb.png", png_bomb(10_000))
    write(raw, "normal/broken.png", png(noise(50))[:60])


def kedro(project: Path, *args: str, unprivileged: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "400"}  # Rich wraps at the terminal width
    command = [*(UNPRIVILEGED if unprivileged else []), sys.executable, "-m", "kedro", "run", "--env", "test", *args]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=300, env=env)


def excluded_by_reason(report: dict, reason: str) -> list[dict]:
    return [e for e in report["excluded"] if e["reason"] == reason]


# ---------------------------------------------------------------------------- node level


def test_index_scans_lets_an_import_error_through(monkeypatch, ingest_params):
    def broken(*args, **kwargs):
        raise ImportError("cannot import name '_imaging' from 'PIL'")

    monkeypatch.setattr("osteo_pipeline.pipelines.ingest.nodes.decode_scan", broken)
    with pytest.raises(ImportError, match="_imaging"):
        index_scans({"normal/a.png": lambda: png(noise(1))}, ingest_params)


def test_index_scans_lets_a_memory_error_from_a_loader_through(ingest_params):
    def loader() -> bytes:
        raise MemoryError

    with pytest.raises(MemoryError):
        index_scans({"normal/a.png": loader}, ingest_params)


def test_unreadable_folder_and_degenerate_rows(ingest_params):
    def locked() -> bytes:
        raise RawReadError("/raw/normal/locked/", "folder cannot be listed: permission denied", "unreadable_folder")

    parts = {"normal/locked/": locked, "normal/ok.png": lambda: png(noise(1)),
             "normal/black.png": lambda: png(np.zeros((64, 64), np.uint8))}
    index = index_scans(parts, ingest_params).set_index("source")
    assert index.loc["normal/ok.png", "status"] == "scan"
    assert tuple(index.loc["normal/locked/", ["status", "reason", "detail"]]) == (
        "error", "unreadable_folder", "folder cannot be listed: permission denied")
    assert tuple(index.loc["normal/black.png", ["status", "reason"]]) == ("error", "degenerate")
    assert "/raw" not in index.loc["normal/locked/", "detail"]


@pytest.mark.realdata
def test_no_real_or_synthetic_scan_is_degenerate(knee_dir, cohort_project, make_partitions, ingest_params):
    for folder, expected in ((knee_dir, 239), (cohort_project / "data" / "01_raw", 34)):
        index = index_scans(make_partitions(folder), ingest_params)
        assert (index["status"] == "scan").sum() == expected, index["reason"].value_counts()
        assert not (index["reason"] == "degenerate").any()


# ---------------------------------------------------------------------------- the real command line


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    if UNPRIVILEGED and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a folder unreadable")
    root = tmp_path_factory.mktemp("hostile")
    project = make_project(root / "proj")
    raw = project / "data" / "01_raw"
    hostile_raw(raw, root / "other_mount")
    probe = subprocess.run([*UNPRIVILEGED, "ls", str(raw / "normal" / "locked")], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("this system lets the test process read a mode-000 folder")
    done = kedro(project, "--pipelines=ingest", unprivileged=True)
    yield project, done
    os.chmod(raw / "normal" / "locked", 0o755)


@pytest.mark.slow
def test_hostile_raw_folder_nothing_is_lost(hostile_run):
    project, done = hostile_run
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-4000:]
    report = json.loads((project / "data" / "08_reporting" / "ingest_report.json").read_text())
    counts = report["counts"]
    # The symlinked class folder is followed: both its scans are in.
    assert counts["accepted_by_class"]["osteopenia"] == 2
    # The preamble-less DICOM is read (it is the only osteoporosis scan).
    assert counts["accepted_by_class"]["osteoporosis"] == 1
    assert counts["accepted_by_class"]["normal"] == 3
    assert counts["excluded_by_reason"] == {"corrupt": 1, "degenerate": 5, "too_large": 1, "unreadable_folder": 1}
    # Everything seen is accounted for (the locked folder counts as one).
    assert counts["files_seen"] == 3 + 2 + 1 + 1 + 5 + 1 + 1
    assert counts["files_seen"] == counts["accepted"] + counts["excluded"] + counts["files_skipped"]
    (folder,) = excluded_by_reason(report, "unreadable_folder")
    assert folder["detail"] == "folder cannot be listed: permission denied"
    details = sorted(e["detail"] for e in excluded_by_reason(report, "degenerate"))
    assert all(any(d.startswith(start) for d in details) for start in DEGENERATE.values()), details
    (bomb,) = excluded_by_reason(report, "too_large")
    assert bomb["detail"] == BOMB_DETAIL


@pytest.mark.slow
def test_hostile_raw_folder_console_shows_reason_codes(hostile_run):
    _, done = hostile_run
    said = " ".join((done.stdout + done.stderr).split())
    # Rich reads "[code]" as a markup tag and drops it: the codes must reach the console.
    for code in ("corrupt", "degenerate", "too_large", "unreadable_folder"):
        assert f"({code})" in said or f"[{code}]" in said, said[-3000:]
    assert BOMB_DETAIL in said
    assert "hidden_scan" not in said  # what is inside an unreadable folder is not made up


@pytest.mark.slow
def test_missing_raw_folder_says_it_does_not_exist(hostile_run, tmp_path):
    project, _ = hostile_run
    missing = tmp_path / "no_such_scans"
    done = kedro(project, "--pipelines=ingest", f"--params=raw_dir={missing}")
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0
    assert f"The raw folder '{missing}' does not exist" in said, said[-3000:]
    assert "holds no files" not in said


@pytest.mark.slow
def test_unreadable_raw_folder_says_permission_denied(hostile_run):
    project, _ = hostile_run
    locked = project / "data" / "01_raw" / "normal" / "locked"
    done = kedro(project, "--pipelines=ingest", f"--params=raw_dir={locked}", unprivileged=True)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0
    assert f"The raw folder '{locked}' cannot be read: permission denied" in said, said[-3000:]
