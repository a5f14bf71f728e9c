"""Decode one scan (PNG, JPEG, TIFF or DICOM) from its bytes into a grayscale array.

Works on bytes alone, so the ingest pipeline and the serving endpoint share it. Every
failure caused by the file is a ``ScanDecodeError`` naming the file and the problem; any
other exception (an ImportError or a missing pixel-data plugin from a broken install, a
MemoryError) propagates, so a broken environment stops the run instead of turning every
scan into a "corrupt" one. DICOM patient-identifying tags are never read, so they cannot
leak into results, errors or logs.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, get_decoder
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

# Reason codes carried by ScanDecodeError.code (the ingest report counts exclusions by them).
EMPTY = "empty_file"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED = "unsupported_format"
CORRUPT = "corrupt"
TOO_LARGE = "too_large"
MULTI_FRAME = "multi_frame"

_RASTER_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"II+\x00": "tiff",  # BigTIFF
    b"MM\x00+": "tiff",
}
# Recognised so the error can say "unsupported" rather than "not an image".
_OTHER_IMAGE_SIGNATURES = {
    b"BM": "BMP",
    b"GIF8": "GIF",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n": "JPEG 2000",
    b"\xffO\xffQ": "JPEG 2000 codestream",
    b"\x76\x2f\x31\x01": "OpenEXR",
}
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}
# What parsers raise on bad bytes. Anything else (ImportError, MemoryError, AttributeError
# from a broken install...) is not the file's fault and must stop the run.
_BAD_FILE_ERRORS = (ValueError, OSError, SyntaxError, struct.error, EOFError, LookupError, ArithmeticError,
                    TypeError, InvalidDicomError, cv2.error)
# A DICOM data set written without the 128-byte preamble and "DICM" (older scanners, raw
# dumps) starts with a group 0x0002 (file meta) or 0x0008 (identifying) element.
_RAW_DICOM_GROUPS = (b"\x02\x00", b"\x08\x00")

# Allow-list for dicom_safe_metadata: acquisition fields that identify nobody.
_SAFE_DICOM_FIELDS = (
    "Modality",
    "Manufacturer",
    "BodyPartExamined",
    "PixelSpacing",
    "BitsStored",
    "PhotometricInterpretation",
)


class ScanDecodeError(ValueError):
    """A scan that cannot be decoded; ``str()`` names the file and the problem."""

    def __init__(self, name: str, reason: str, code: str = CORRUPT):
        super().__init__(name, reason, code)
        self.name = name
        self.reason = reason
        self.code = code

    def __str__(self) -> str:
        return f"Cannot decode {self.name}: {self.reason}"

    def __reduce__(self):
        # Keep the exception picklable (e.g. across ParallelRunner processes).
        return type(self), (self.name, self.reason, self.code)


@dataclass(frozen=True)
class DecodedScan:
    """A decoded grayscale scan: ``pixels`` is 2-D uint8 or uint16."""

    pixels: np.ndarray
    bit_depth: int
    format: str
    width: int
    height: int


def sniff_format(data: bytes) -> str | None:
    """Return "png", "jpeg", "tiff" or "dicom" from the magic bytes, else None."""
    if data[128:132] == b"DICM" or _is_raw_dicom(data):
        return "dicom"
    for signature, fmt in _RASTER_SIGNATURES.items():
        if data.startswith(signature):
            return fmt
    return None


def _is_raw_dicom(data: bytes) -> bool:
    """A preamble-less DICOM data set: a first tag in group 0x0002/0x0008, explicit VR
    (two capital letters) or implicit VR (a 4-byte length that fits the file)."""
    if len(data) < 8 or data[:2] not in _RAW_DICOM_GROUPS:
        return False
    vr = data[4:6]
    return (vr.isalpha() and vr.isupper()) or struct.unpack("<I", data[4:8])[0] <= len(data)


def decode_scan(data: bytes, name: str = "<bytes>", max_pixels: int = 50_000_000) -> DecodedScan:
    """Decode a PNG/JPEG/TIFF/DICOM scan from bytes into a 2-D grayscale array.

    ``max_pixels`` is ``ingest.max_pixels`` (conf/base/parameters_ingest.yml), named in the
    rejection so a user with a genuine large scan knows what to raise.

    Raises:
        ScanDecodeError: empty, non-image, unsupported, corrupt/truncated, over
            ``max_pixels`` (checked from the header before decoding) or multi-frame input.
    """
    if not data:
        raise ScanDecodeError(name, "empty file (0 bytes)", EMPTY)
    fmt = sniff_format(data)
    if fmt is None:
        for signature, label in _OTHER_IMAGE_SIGNATURES.items():
            if data.startswith(signature):
                raise ScanDecodeError(name, f"unsupported image format {label}", UNSUPPORTED)
        raise ScanDecodeError(name, "not an image (no PNG/JPEG/TIFF/DICOM signature)", NOT_AN_IMAGE)
    if fmt == "dicom":
        return _decode_dicom(data, name, max_pixels)
    return _decode_raster(data, fmt, name, max_pixels)


def dicom_safe_metadata(ds: Dataset) -> dict[str, Any]:
    """Return only non-identifying acquisition fields of a DICOM dataset, as plain types."""
    meta: dict[str, Any] = {}
    for keyword in _SAFE_DICOM_FIELDS:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        if keyword == "PixelSpacing":
            meta[keyword] = [float(v) for v in value]
        elif keyword == "BitsStored":
            meta[keyword] = int(value)
        else:
            meta[keyword] = str(value)
    return meta


def _check_size(name: str, width: int, height: int, frames: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ScanDecodeError(name, f"invalid dimensions {width}x{height} in header", CORRUPT)
    if width * height * frames > max_pixels:
        raise _too_large(name, width, height, frames, max_pixels)


def _too_large(name: str, width: int, height: int, frames: int, max_pixels: int) -> ScanDecodeError:
    size = f"{width}x{height}" + (f"x{frames} frames" if frames > 1 else "")
    return ScanDecodeError(
        name,
        f"{size} pixels ({width * height * frames}) exceed ingest.max_pixels = {max_pixels}; "
        "raise it in conf/base/parameters_ingest.yml if this scan is genuine",
        TOO_LARGE,
    )


def _to_gray(pixels: np.ndarray, name: str) -> np.ndarray:
    if pixels.ndim == 2:
        return pixels
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2GRAY)
    raise ScanDecodeError(name, f"unsupported pixel layout {pixels.shape}", UNSUPPORTED)


def _decode_raster(data: bytes, fmt: str, name: str, max_pixels: int) -> DecodedScan:
    # Pillow opens lazily (header only), so size and frame count are known before decoding.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # our own size limit replaces Pillow's bomb warning
            with Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[fmt]]) as im:
                width, height = im.size
                frames = _full_resolution_frames(im) if fmt == "tiff" else 1
    except Image.DecompressionBombError:
        # Pillow's own guard (far above ours); the size is in its header, read it for the message.
        width, height = _png_size(data) if fmt == "png" else (0, 0)
        if width and height:
            raise _too_large(name, width, height, 1, max_pixels) from None
        raise ScanDecodeError(name, f"{fmt.upper()} dimensions exceed Pillow's safety limit and "
                                    f"ingest.max_pixels = {max_pixels}", TOO_LARGE) from None
    except _BAD_FILE_ERRORS:  # a header parse failure of untrusted bytes is a corrupt file
        raise ScanDecodeError(name, f"corrupt or truncated {fmt.upper()} header", CORRUPT) from None
    _check_size(name, width, height, 1, max_pixels)
    if frames != 1:
        raise ScanDecodeError(name, f"multi-page TIFF with {frames} full-size pages; expected one scan", MULTI_FRAME)

    # OpenCV decodes: it keeps 16-bit depth (also for colour) and rejects truncated data.
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error:
        pixels = None
    if pixels is None:
        raise ScanDecodeError(name, f"corrupt or truncated {fmt.upper()} data", CORRUPT)
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ScanDecodeError(name, f"unsupported {pixels.dtype} pixels; expected 8- or 16-bit integers", UNSUPPORTED)
    pixels = _to_gray(pixels, name)
    bit_depth = 16 if pixels.dtype == np.uint16 else 8
    return DecodedScan(pixels, bit_depth, fmt, int(pixels.shape[1]), int(pixels.shape[0]))


def _png_size(data: bytes) -> tuple[int, int]:
    return struct.unpack(">II", data[16:24]) if data[12:16] == b"IHDR" else (0, 0)


def _full_resolution_frames(im: Image.Image) -> int:
    # Pages flagged as reduced-resolution (NewSubfileType bit 0) are thumbnails, not scans.
    count = 0
    for index in range(getattr(im, "n_frames", 1)):
        im.seek(index)
        if not int(im.tag_v2.get(254, 0)) & 1:
            count += 1
    im.seek(0)
    return count


def _decode_dicom(data: bytes, name: str, max_pixels: int) -> DecodedScan:
    # Only pixel-module attributes are read: identifying tags are never touched, and
    # pydicom's own messages (which may quote element values) are never passed on.
    raw = data[128:132] != b"DICM"  # no preamble: pydicom reads it when forced
    kind = "DICOM without the 128-byte preamble" if raw else "DICOM"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=raw)
            if "TransferSyntaxUID" not in ds.file_meta:  # no file meta: the encoding pydicom detected
                ds.file_meta.TransferSyntaxUID = _syntax_of(ds)
            syntax = ds.file_meta.TransferSyntaxUID
            has_pixels = "PixelData" in ds
            rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            bits_stored = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or 0)
            signed = int(ds.get("PixelRepresentation", 0)) == 1
            photometric = str(ds.get("PhotometricInterpretation", "")).upper()
            slope = float(ds.get("RescaleSlope", 1) or 1)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
            bits_allocated = int(ds.get("BitsAllocated", 0) or 0)
            pixel_bytes = len(ds.PixelData) if has_pixels else 0
            empty = len(ds) == 0
    except _BAD_FILE_ERRORS as exc:
        raise ScanDecodeError(name, f"corrupt or truncated {kind} ({type(exc).__name__})", CORRUPT) from None
    if not has_pixels:
        if raw:  # forced parsing accepts anything: without pixels it is not a readable DICOM
            raise ScanDecodeError(name, f"{kind}: no readable pixel data", CORRUPT)
        if empty or (rows and cols):  # cut off before (or inside) the pixel element
            raise ScanDecodeError(name, "truncated DICOM: pixel data missing", CORRUPT)
        raise ScanDecodeError(name, "DICOM without pixel data (not an image object)", NOT_AN_IMAGE)
    _check_size(name, cols, rows, frames, max_pixels)
    if frames > 1:
        raise ScanDecodeError(name, f"multi-frame DICOM with {frames} frames; expected one scan", MULTI_FRAME)
    if not 1 <= bits_stored <= 16:
        raise ScanDecodeError(name, f"unsupported DICOM BitsStored {bits_stored}", UNSUPPORTED)
    expected = rows * cols * samples * frames * bits_allocated // 8
    if not syntax.is_compressed and pixel_bytes < expected:
        raise ScanDecodeError(name, f"truncated pixel data ({pixel_bytes} of {expected} bytes)", CORRUPT)
    _require_decoder(syntax, name)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
            if photometric == "PALETTE COLOR":
                pixels = apply_color_lut(pixels, ds)
                bits_stored, signed = pixels.dtype.itemsize * 8, False  # the LUT's output depth
    except (*_BAD_FILE_ERRORS, RuntimeError) as exc:  # RuntimeError: every (installed) plugin failed
        reason = f"pixel data could not be decoded ({syntax.name}, {type(exc).__name__})"
        raise ScanDecodeError(name, reason, CORRUPT) from None

    if pixels.ndim == 3:
        # pydicom returns colour as RGB (YBR is converted); scans are analysed in gray.
        pixels = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
        photometric = "MONOCHROME2"
    pixels = _rescale_dicom(pixels, bits_stored, signed, slope, photometric == "MONOCHROME1")
    return DecodedScan(pixels, bits_stored, "dicom", int(pixels.shape[1]), int(pixels.shape[0]))


def _syntax_of(ds: Dataset) -> str:
    implicit, little = ds.original_encoding
    if little:
        return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ExplicitVRBigEndian


def _require_decoder(syntax: Any, name: str) -> None:
    """An unknown transfer syntax is the file's problem; a known one whose plugin is not
    installed is the environment's (pyproject installs pylibjpeg[all]): stop the run."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ScanDecodeError(name, f"unsupported DICOM transfer syntax {syntax.name}", UNSUPPORTED) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise RuntimeError(f"pydicom cannot decode {syntax.name} pixel data: {missing}. The install is "
                           "incomplete: reinstall the project (pip install -e .), which brings pylibjpeg[all].")


def _rescale_dicom(pixels: np.ndarray, bits: int, signed: bool, slope: float, monochrome1: bool) -> np.ndarray:
    """Map stored values onto unsigned [0, 2**bits - 1] with "brighter = denser" polarity.

    Rescale slope/intercept is affine and every downstream model normalises intensities,
    so only what changes the image matters: signed values are shifted to unsigned (the
    intercept's job), and a negative slope or MONOCHROME1 inverts polarity. Physical units
    (floats, negatives) are not representable in uint16 and are not needed.
    """
    low = -(1 << (bits - 1)) if signed else 0
    top = (1 << bits) - 1
    values = np.clip(pixels.astype(np.int32) - low, 0, top)
    if (slope < 0) != monochrome1:
        values = top - values
    return values.astype(np.uint8 if bits <= 8 else np.uint16)
