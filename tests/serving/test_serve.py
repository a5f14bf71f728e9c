"""`mlflow models serve` on the registered CNN21, as a user starts it: raw scans over HTTP get the
pipeline's own prediction; bad requests get a 400 that says why, and the server keeps serving."""

from __future__ import annotations

import io
import json
import struct
import urllib.error
import urllib.request
import zlib

import cv2
import numpy as np
import pytest

from osteo_pipeline.imaging.decode import decode_scan
from osteo_pipeline.serving.model import request_body

pytestmark = pytest.mark.slow

TOLERANCE = 1e-5


def call(url: str, body: bytes | dict | None = None) -> tuple[int, dict]:
    """GET (no body) or POST JSON; the status and the decoded JSON answer (error answers too)."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            text = response.read()
            return response.status, json.loads(text) if text.strip() else {}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def as_dicom(data: bytes) -> bytes:
    """The same pixels as a DICOM file (secondary capture, uncompressed, MONOCHROME2)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    scan = decode_scan(data)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = scan.pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = scan.bit_depth
    ds.HighBit, ds.PixelRepresentation = scan.bit_depth - 1, 0
    ds.PixelData = scan.pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def as_jpeg(data: bytes) -> bytes:
    pixels = decode_scan(data).pixels
    # scaled to its own range, as an export would: 12-bit data shifted by 8 bits keeps 16 grey levels,
    # which ingest (and so serving) rightly refuses as degenerate
    eight_bit = (pixels * (255.0 / pixels.max())).astype(np.uint8) if pixels.dtype == np.uint16 else pixels
    ok, encoded = cv2.imencode(".jpg", eight_bit, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return encoded.tobytes()


def png_bomb(width: int = 10_000, height: int = 10_000) -> bytes:
    """A valid 8-bit PNG of width x height black pixels (100 megapixels), ~100 kB compressed."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor, row = zlib.compressobj(9), bytes(width + 1)  # filter byte + one row of zeros
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def check_matches_pipeline(row: dict, scan: dict, class_names: list[str]) -> None:
    probabilities = [row[f"p_{c}"] for c in class_names]
    np.testing.assert_allclose(probabilities, scan["probabilities"], atol=TOLERANCE, rtol=0)
    assert row["label"] == class_names[int(np.argmax(scan["probabilities"]))]
    assert row["roi_source"] == scan["roi_source"]
    assert [row[c] for c in ("roi_x0", "roi_y0", "roi_x1", "roi_y1")] == scan["roi"]


def test_served_model_answers_a_raw_scan_with_the_pipelines_own_prediction(server: str, served_project: dict):
    normal, osteoporosis = served_project["scans"]
    png = normal["path"].read_bytes()
    scans = [png, osteoporosis["path"].read_bytes(), as_dicom(png), as_jpeg(png)]
    names = ["normal.png", "osteo.png", "normal.dcm", "normal.jpg"]
    status, answer = call(f"{server}/invocations", request_body(scans, names))
    assert status == 200, answer
    rows = answer["predictions"]
    assert len(rows) == 4
    check_matches_pipeline(rows[0], normal, served_project["class_names"])
    check_matches_pipeline(rows[1], osteoporosis, served_project["class_names"])
    check_matches_pipeline(rows[2], normal, served_project["class_names"])  # DICOM: the same pixels, the same answer
    jpeg = rows[3]  # lossy: a valid answer, not the PNG's numbers
    assert jpeg["label"] in served_project["class_names"]
    assert sum(jpeg[f"p_{c}"] for c in served_project["class_names"]) == pytest.approx(1.0, abs=1e-5)


def bad_requests() -> dict[str, tuple[bytes | dict, str]]:
    """Case -> (request body, what the 400 answer's message must say)."""
    return {
        "not an image": (request_body([b"%PDF-1.4 not a scan"], ["report.pdf"]),
                         "Cannot decode report.pdf: not an image"),
        "empty scan": (request_body([b""]), "Cannot decode scan 0: empty file"),
        "empty body": (b"", "valid JSON"),
        "missing image field": ({"dataframe_split": {"columns": ["name"], "data": [["a.png"]]}},
                                "missing inputs ['image']"),
        "no scans": ({"dataframe_split": {"columns": ["image"], "data": []}}, "holds no scans"),
        "not base64": ({"dataframe_split": {"columns": ["image"], "data": [["%%% not base64"]]}}, "base64"),
        "decompression bomb": (request_body([png_bomb()], ["bomb.png"]),
                               "Cannot decode bomb.png: 10000x10000 pixels (100000000) exceed ingest.max_pixels = 50000000"),
        # ingest excludes it as degenerate, so the served model must not classify it either
        "flat image": (request_body([cv2.imencode(".png", np.full((300, 200), 127, np.uint8))[1].tobytes()], ["flat.png"]),
                       "Cannot decode flat.png: degenerate image, not a radiograph: no dynamic range"),
    }


def test_bad_requests_get_a_400_that_says_why_and_the_server_keeps_serving(server: str, served_project: dict):
    for case, (body, expected) in bad_requests().items():
        status, answer = call(f"{server}/invocations", body)
        assert status == 400, (case, status, answer)
        assert expected in answer.get("message", ""), (case, answer)
        assert call(f"{server}/ping")[0] == 200, case
    normal = served_project["scans"][0]
    status, answer = call(f"{server}/invocations", request_body([normal["path"].read_bytes()]))
    assert status == 200, answer
    check_matches_pipeline(answer["predictions"][0], normal, served_project["class_names"])
