"""imaging.decode: every supported format, every error class, and the DICOM privacy guarantee."""

from __future__ import annotations

import io
import logging
import pickle
import struct
import zlib

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from osteo_pipeline.imaging import DecodedScan, ScanDecodeError, decode_scan, dicom_safe_metadata

PHI = {
    "PatientName": "DOE^JANE",
    "PatientID": "MRN-99887766",
    "PatientBirthDate": "19450203",
    "AccessionNumber": "ACC-5551234",
    "InstitutionName": "Saint Example Hospital",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "OtherPatientIDs": "ALT-424242",
    "PatientAddress": "12 Privet Drive",
}
PHI_STRINGS = [*PHI.values(), "DOE", "JANE", "19450203"]

RNG = np.random.default_rng(7)
GRAY8 = RNG.integers(0, 256, (24, 32), dtype=np.uint8)
GRAY12 = RNG.integers(0, 4096, (24, 32), dtype=np.uint16)
SMOOTH12 = cv2.resize(GRAY12, (80, 64))  # the JPEG 2000 encoder needs more than 32 px per side


def encode(arr: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, arr)
    assert ok
    return buf.tobytes()


def make_dicom(arr: np.ndarray, bits: int = 12, photometric: str = "MONOCHROME2", signed: bool = False,
               frames: int = 1) -> Dataset:
    """A secondary-capture DICOM carrying patient-identifying tags."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.Modality, ds.Manufacturer, ds.BodyPartExamined = "OT", "Acme DXA", "LSPINE"
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = arr.tobytes()
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, followed by IEND: no image data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IEND", b"")


# ------------------------------------------------------------------ raster formats


@pytest.mark.parametrize(
    ("arr", "ext", "fmt", "bits"),
    [
        (GRAY8, ".png", "png", 8),
        (GRAY12 * 16, ".png", "png", 16),
        (GRAY8, ".tiff", "tiff", 8),
        (GRAY12 * 16, ".tiff", "tiff", 16),
    ],
)
def test_lossless_rasters_round_trip(arr, ext, fmt, bits):
    scan = decode_scan(encode(arr, ext), "x")
    assert isinstance(scan, DecodedScan)
    assert (scan.format, scan.bit_depth, scan.width, scan.height) == (fmt, bits, 32, 24)
    assert scan.pixels.dtype == arr.dtype
    np.testing.assert_array_equal(scan.pixels, arr)


def test_jpeg_decodes_close_to_original():
    smooth = cv2.GaussianBlur(GRAY8, (5, 5), 2)
    scan = decode_scan(encode(smooth, ".jpg"), "x.jpg")
    assert (scan.format, scan.bit_depth, scan.pixels.shape) == ("jpeg", 8, (24, 32))
    assert np.abs(scan.pixels.astype(int) - smooth).mean() < 4


def test_colour_becomes_gray_and_16_bit_colour_keeps_depth():
    bgr = np.dstack([GRAY8, GRAY8, GRAY8])
    scan = decode_scan(encode(bgr, ".png"), "rgb.png")
    assert scan.pixels.ndim == 2
    np.testing.assert_array_equal(scan.pixels, GRAY8)
    scan16 = decode_scan(encode(np.dstack([GRAY12 * 16] * 3), ".png"), "rgb16.png")
    assert scan16.pixels.dtype == np.uint16 and scan16.bit_depth == 16 and scan16.pixels.ndim == 2


def test_format_comes_from_magic_bytes_not_extension():
    assert decode_scan(encode(GRAY8, ".png"), "scan.dcm").format == "png"
    with pytest.raises(ScanDecodeError) as err:
        decode_scan(b"just some text, not a scan", "scan.png")
    assert err.value.code == "not_an_image"


def test_tiff_with_thumbnail_page_is_one_scan_but_two_full_pages_are_refused():
    tifffile = pytest.importorskip("tifffile")
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tif:
        tif.write(GRAY8)
        tif.write(GRAY8[::4, ::4], subfiletype=1)  # reduced-resolution preview
    assert decode_scan(buf.getvalue(), "thumb.tif").pixels.shape == (24, 32)
    buf = io.BytesIO()
    Image.fromarray(GRAY8).save(buf, "TIFF", save_all=True, append_images=[Image.fromarray(GRAY8)])
    with pytest.raises(ScanDecodeError) as err:
        decode_scan(buf.getvalue(), "stack.tif")
    assert err.value.code == "multi_frame"


# ------------------------------------------------------------------ DICOM


def test_dicom_uncompressed_keeps_values_and_bits_stored():
    scan = decode_scan(dicom_bytes(make_dicom(GRAY12)), "a.dcm")
    assert (scan.format, scan.bit_depth, scan.width, scan.height) == ("dicom", 12, 32, 24)
    assert scan.pixels.dtype == np.uint16
    np.testing.assert_array_equal(scan.pixels, GRAY12)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_dicom_compressed_lossless(syntax):
    ds = make_dicom(SMOOTH12)
    try:
        ds.compress(syntax)
    except (RuntimeError, NotImplementedError) as err:  # encoder plugin not installed
        pytest.skip(f"no {syntax.name} encoder: {err}")
    scan = decode_scan(dicom_bytes(ds), "c.dcm")
    np.testing.assert_array_equal(scan.pixels, SMOOTH12)


def test_dicom_jpeg_baseline():
    smooth = cv2.GaussianBlur(GRAY8, (5, 5), 2)
    ds = make_dicom(smooth, bits=8)
    ds.PixelData = encapsulate([encode(smooth, ".jpg")])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    scan = decode_scan(dicom_bytes(ds), "j.dcm")
    assert (scan.bit_depth, scan.pixels.dtype, scan.pixels.shape) == (8, np.uint8, (24, 32))
    assert np.abs(scan.pixels.astype(int) - smooth).mean() < 4


def test_dicom_monochrome1_is_inverted():
    scan = decode_scan(dicom_bytes(make_dicom(GRAY12, photometric="MONOCHROME1")), "m1.dcm")
    np.testing.assert_array_equal(scan.pixels, 4095 - GRAY12)


def test_dicom_signed_values_shift_to_unsigned_and_negative_slope_inverts():
    signed = (GRAY12.astype(np.int16) - 2048)
    ds = make_dicom(signed, signed=True)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    np.testing.assert_array_equal(decode_scan(dicom_bytes(ds), "s.dcm").pixels, GRAY12)
    ds.RescaleSlope = -1
    np.testing.assert_array_equal(decode_scan(dicom_bytes(ds), "s.dcm").pixels, 4095 - GRAY12)


def test_dicom_safe_metadata_is_an_allow_list():
    meta = dicom_safe_metadata(make_dicom(GRAY12))
    assert meta == {"Modality": "OT", "Manufacturer": "Acme DXA", "BodyPartExamined": "LSPINE",
                    "PixelSpacing": [0.5, 0.5], "BitsStored": 12, "PhotometricInterpretation": "MONOCHROME2"}


# ------------------------------------------------------------------ errors


def _truncated_png() -> bytes:
    data = encode(GRAY8, ".png")
    return data[: len(data) // 2]


def _truncated_jpeg() -> bytes:
    data = encode(GRAY8, ".jpg")
    return data[: len(data) // 2]


def _truncated_tiff() -> bytes:
    data = encode(GRAY8, ".tiff")
    return data[: len(data) // 2]


def _truncated_dicom() -> bytes:
    data = dicom_bytes(make_dicom(GRAY12))
    return data[:-100]


def _bmp() -> bytes:
    return encode(GRAY8, ".bmp")


def _dicom_without_pixels() -> bytes:
    ds = make_dicom(GRAY12)
    for keyword in ("PixelData", "Rows", "Columns"):
        delattr(ds, keyword)
    return dicom_bytes(ds)


def _multiframe_dicom() -> bytes:
    return dicom_bytes(make_dicom(np.stack([GRAY12, GRAY12]), frames=2))


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda: b"", "empty_file"),
        (lambda: b"%PDF-1.7 not a scan", "not_an_image"),
        (lambda: b"\x89PNG\r\n\x1a\n", "corrupt"),
        (_bmp, "unsupported_format"),
        (lambda: b"GIF89a" + bytes(20), "unsupported_format"),
        (_truncated_png, "corrupt"),
        (_truncated_jpeg, "corrupt"),
        (_truncated_tiff, "corrupt"),
        (_truncated_dicom, "corrupt"),
        (lambda: bytes(128) + b"DICM" + b"\x02\x00garbage", "corrupt"),
        (_dicom_without_pixels, "not_an_image"),
        (_multiframe_dicom, "multi_frame"),
        (lambda: encode(np.zeros((8, 8), np.float32), ".tiff"), "unsupported_format"),
    ],
)
def test_bad_input_raises_scan_decode_error_naming_the_file(make, code):
    with pytest.raises(ScanDecodeError) as err:
        decode_scan(make(), "folder/bad_file.bin")
    assert err.value.code == code
    assert isinstance(err.value, ValueError)
    assert "folder/bad_file.bin" in str(err.value) and err.value.reason in str(err.value)


def test_size_limit_is_checked_from_the_header_before_decoding():
    # Headers with no data: "too large", not "corrupt", so nothing was decoded. 10k x 10k
    # trips our limit (50M); 60k x 60k also Pillow's own guard, reported the same way.
    for side in (10_000, 60_000):
        with pytest.raises(ScanDecodeError) as err:
            decode_scan(png_header_only(side, side), "bomb.png")
        assert err.value.code == "too_large"
    with pytest.raises(ScanDecodeError) as err:
        decode_scan(encode(GRAY8, ".jpg"), "small.jpg", max_pixels=100)
    assert err.value.code == "too_large" and "100" in str(err.value)
    ds = make_dicom(GRAY12)
    ds.Rows, ds.Columns = 30_000, 30_000  # pixel data far too short: the size check comes first
    with pytest.raises(ScanDecodeError) as err:
        decode_scan(dicom_bytes(ds), "bomb.dcm")
    assert err.value.code == "too_large"


def test_scan_decode_error_survives_pickling():
    err = pickle.loads(pickle.dumps(ScanDecodeError("a.png", "broken", "corrupt")))
    assert (err.name, err.reason, err.code, str(err)) == ("a.png", "broken", "corrupt", "Cannot decode a.png: broken")


# ------------------------------------------------------------------ privacy


def test_dicom_identifying_tags_never_leave_the_decoder(caplog, recwarn):
    caplog.set_level(logging.DEBUG)
    good = dicom_bytes(make_dicom(GRAY12))
    texts = [repr(decode_scan(good, "ok.dcm")), repr(dicom_safe_metadata(pydicom.dcmread(io.BytesIO(good))))]
    bad_inputs = [good[:-100], _multiframe_dicom(), good[:400], _dicom_without_pixels()]
    ds = make_dicom(GRAY12)
    ds.Rows = 30_000
    bad_inputs.append(dicom_bytes(ds))
    ds = make_dicom(GRAY12)
    ds.compress(RLELossless)
    rle = dicom_bytes(ds)
    bad_inputs.append(rle[:-40])
    for data in bad_inputs:
        with pytest.raises(ScanDecodeError) as err:
            decode_scan(data, "phi.dcm")
        texts += [str(err.value), repr(err.value), repr(err.value.args)]
        assert err.value.__context__ is None or err.value.__suppress_context__  # pydicom's text never shown
    texts += [caplog.text] + [str(w.message) for w in recwarn]
    for text in texts:
        for value in PHI_STRINGS:
            assert value not in text


# ------------------------------------------------------------------ issue 11: DICOM without preamble


def _dicom_without_preamble(implicit: bool) -> bytes:
    """A bare data set (no preamble, no "DICM", no file meta), as older scanners write."""
    ds = make_dicom(GRAY12)
    del ds.file_meta
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False, implicit_vr=implicit, little_endian=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    "make",
    [lambda: _dicom_without_preamble(True), lambda: _dicom_without_preamble(False),
     lambda: dicom_bytes(make_dicom(GRAY12))[132:]],  # preamble and "DICM" cut off, file meta kept
    ids=["implicit-vr", "explicit-vr", "stripped-132-bytes"],
)
def test_dicom_without_the_128_byte_preamble_is_read(make):
    data = make()
    assert data[128:132] != b"DICM" and data[:2] in (b"\x02\x00", b"\x08\x00")
    scan = decode_scan(data, "no_preamble.dcm")
    assert scan.format == "dicom" and scan.bit_depth == 12
    np.testing.assert_array_equal(scan.pixels, GRAY12)


def test_unreadable_dicom_without_preamble_is_named_as_such_not_not_an_image():
    data = _dicom_without_preamble(False)
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    cut = data[: data.index(b"\xe0\x7f\x10\x00")]  # everything before the pixel data element
    assert ds.Rows
    for bad in (cut, b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + bytes(7)):
        with pytest.raises(ScanDecodeError) as err:
            decode_scan(bad, "raw.dcm")
        assert err.value.code == "corrupt" and "DICOM without the 128-byte preamble" in err.value.reason
        assert "not an image" not in str(err.value)


# ------------------------------------------------------------------ issue 11: a broken install is not a bad file


@pytest.mark.parametrize(
    ("target", "data"),
    [
        ("osteo_pipeline.imaging.decode.cv2.imdecode", lambda: encode(GRAY8, ".png")),
        ("osteo_pipeline.imaging.decode.Image.open", lambda: encode(GRAY8, ".png")),
        ("osteo_pipeline.imaging.decode.pydicom.dcmread", lambda: dicom_bytes(make_dicom(GRAY12))),
    ],
    ids=["opencv", "pillow", "pydicom"],
)
def test_an_import_error_inside_decoding_propagates(monkeypatch, target, data):
    payload = data()

    def broken(*args, **kwargs):
        raise ImportError("libfoo.so.1: cannot open shared object file")

    monkeypatch.setattr(target, broken)
    with pytest.raises(ImportError, match="libfoo"):
        decode_scan(payload, "fine.png")


def test_a_missing_pixel_data_plugin_stops_with_the_install_problem(monkeypatch):
    ds = make_dicom(GRAY12)
    ds.compress(RLELossless)
    data = dicom_bytes(ds)
    assert decode_scan(data, "rle.dcm").width == GRAY12.shape[1]

    class Unavailable:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires numpy and pylibjpeg-rle"]

    monkeypatch.setattr("osteo_pipeline.imaging.decode.get_decoder", lambda syntax: Unavailable())
    with pytest.raises(RuntimeError, match="install is incomplete") as err:
        decode_scan(data, "rle.dcm")
    assert not isinstance(err.value, ScanDecodeError) and "RLE Lossless" in str(err.value)


# ------------------------------------------------------------------ issue 11: the bomb message


def test_bomb_rejection_names_the_size_and_the_parameter():
    for side, limit in ((10_000, 50_000_000), (60_000, 50_000_000), (300, 1000)):
        with pytest.raises(ScanDecodeError) as err:
            decode_scan(png_header_only(side, side), "bomb.png", max_pixels=limit)
        assert err.value.reason == (
            f"{side}x{side} pixels ({side * side}) exceed ingest.max_pixels = {limit}; "
            "raise it in conf/base/parameters_ingest.yml if this scan is genuine")
