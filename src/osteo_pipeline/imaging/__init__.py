"""Image handling shared by the pipelines and the serving endpoint."""

from .decode import DecodedScan, ScanDecodeError, decode_scan, dicom_safe_metadata

__all__ = ["DecodedScan", "ScanDecodeError", "decode_scan", "dicom_safe_metadata"]
