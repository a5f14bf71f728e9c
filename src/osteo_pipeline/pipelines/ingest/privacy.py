"""Patient privacy in ingest: keyed pseudonyms and file references, the column allow-list.

Nothing identifying may leave ingest: patient ids leave only as ``pt-`` + HMAC, raw file paths
(which may carry ids) only inside the local-only ``file_index``; everywhere else a file is its
``file_ref`` (``f-`` + HMAC of its raw-folder path). Both HMACs use the project's secret key
(``pseudonym_key`` in the catalog), so they are stable across runs of one project and cannot be
reversed by trying candidate ids.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath

# The key an old checkout used from conf/base: public, so its pseudonyms can be reversed.
PUBLIC_KEY = "osteo-pipeline-public-default-salt"
# Extensions kept visible in a file_ref (what kind of file it is says nothing about whose it is).
KNOWN_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".csv"})


def keyed_hex(value: str, key: str) -> str:
    return hmac.new(key.encode(), str(value).encode(), hashlib.sha256).hexdigest()


def pseudonymise(raw_id: str, salt: str, length: int = 12) -> str:
    """Keyed hash of a patient id: ``pt-`` + the first ``length`` hex chars of HMAC-SHA256."""
    return f"pt-{keyed_hex(str(raw_id).strip(), salt)[:length]}"


def file_ref(source: str, key: str) -> str:
    """``f-`` + 12 hex chars of HMAC-SHA256(key, raw-folder path) + known extension; folders end in ``/``."""
    is_folder = source.endswith("/")
    path = source.rstrip("/")
    suffix = PurePosixPath(path).suffix.lower()
    tail = "/" if is_folder else (suffix if suffix in KNOWN_EXTENSIONS else "")
    return f"f-{keyed_hex(path, key)[:12]}{tail}"


def redact_paths(text: str, refs: Mapping[str, str]) -> str:
    """Replace every raw path of ``refs`` (and any folder prefix before it) in ``text`` by its file_ref."""
    for source in sorted(refs, key=len, reverse=True):
        if source and source in text:
            text = re.sub(r"(?:[^\s'\"]*/)?" + re.escape(source), lambda _m, s=source: refs[s], text)
    return text


def normalise_header(name: str) -> str:
    """One spelling per column name: ``PatientBirthDate`` -> ``patient_birth_date``, ``T-score`` -> ``t_score``."""
    text = str(name).strip().lstrip("\ufeff")
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text)  # camelCase / PatientID
    text = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", text)  # BMDValue -> BMD_Value
    text = re.sub(r"[^0-9A-Za-z]+", "_", text)  # spaces, hyphens, dots, parentheses, slashes
    return text.strip("_").lower()


def spelling_map(spellings: Mapping[str, Iterable[str] | None], extra: Iterable[str] = (),
                 what: str = "column spelling") -> dict[str, str]:
    """Normalised spelling -> canonical name (a column or a class), for the declared names and the user's extra ones."""
    mapping: dict[str, str] = {}
    for canonical, names in spellings.items():
        for name in [canonical, *(names or [])]:
            key = normalise_header(name)
            if mapping.setdefault(key, canonical) != canonical:
                raise ValueError(f"ingest: {what} '{name}' is declared for both {mapping[key]} and {canonical}")
    for name in extra or ():
        mapping.setdefault(normalise_header(name), normalise_header(name))
    return mapping
