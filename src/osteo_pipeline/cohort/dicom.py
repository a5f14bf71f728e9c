"""Write one synthetic scan as an identifier-free DICOM Secondary Capture file.

The header describes the image, never a person: the only patient attribute is the cohort's
own synthetic id (e.g. P0007); names, birth date, sex, dates, times, institution and
physicians are absent or empty (type-2 attributes present without a value). UIDs are derived
from the file name and the scan's seed, so the bytes are the same on every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from osteo_pipeline.cohort.render import SCANNERS, Acquisition, Anatomy

# Lumbar vertebral pitch (centre to centre) in mm: sets the physical pixel spacing.
PITCH_MM = 36.0
# Type-2 attributes a Secondary Capture object must carry, written empty on purpose.
_EMPTY_TYPE2 = (
    "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber", "PatientOrientation",
)


def bits_stored(acq: Acquisition) -> int:
    """Significant bits of the scan: 8, or 12 / 14 / 16 by the 16-bit file's white level."""
    return int(acq.white).bit_length()


def pixel_spacing_mm(an: Anatomy, scale: float) -> float:
    """Physical size of one exported pixel (square pixels)."""
    return PITCH_MM / (an.pitch_frac * round(an.height * scale))


def scan_dataset(image: np.ndarray, an: Anatomy, acq: Acquisition, scale: float, file: str) -> Dataset:
    """The DICOM data set of one scan (file meta included)."""
    patient_id = "P" + Path(file).stem.split("_")[1]  # DXA_0007_1 -> P0007, the cohort's id
    entropy = [file, str(acq.noise_seed)]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[*entropy, "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[*entropy, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[*entropy, "series"])
    ds.PatientID = patient_id
    for keyword in _EMPTY_TYPE2:
        setattr(ds, keyword, "")
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Manufacturer = "synthetic"
    ds.ManufacturerModelName = acq.scanner
    ds.BodyPartExamined = "LSPINE"
    ds.ViewPosition = "LL" if acq.view == "lateral" else "AP"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    spacing = round(pixel_spacing_mm(an, scale), 6)
    ds.PixelSpacing = [spacing, spacing]
    ds.SpatialResolution = SCANNERS[acq.scanner].resolution_mm
    ds.BurnedInAnnotation = "YES" if acq.annotate else "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated = image.dtype.itemsize * 8
    ds.BitsStored = bits_stored(acq)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(image).astype(image.dtype.newbyteorder("<")).tobytes()
    return ds


def write_dicom(path: Path, image: np.ndarray, an: Anatomy, acq: Acquisition, scale: float) -> None:
    """Write the scan as a DICOM Part-10 file (preamble, file meta, explicit VR little endian)."""
    file = f"{path.parent.name}/{path.name}"
    scan_dataset(image, an, acq, scale, file).save_as(path, enforce_file_format=True)
