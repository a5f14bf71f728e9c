"""Reading the CSV tables of a raw folder (labels, ROI boxes) as spreadsheets export them.

Excel writes ``;`` where the decimal mark is a comma and cp1252 on Windows; both are accepted
when they can be told unambiguously, and said in the report. Anything else is an error that
names the table and the actual problem (columns found, encoding and byte offset).
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Mapping

import pandas as pd

from .privacy import normalise_header

_DELIMITERS = (",", ";", "\t", "|")
_DELIMITER_NAMES = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}


class TableError(ValueError):
    """A table in the raw folder exists but cannot be used; the message says why."""


def decode_table(data: bytes, name: str) -> tuple[str, str]:
    """The table's text and its encoding: UTF-8 (with or without BOM), UTF-16 with a BOM, else cp1252.

    Raises:
        TableError: bytes that are neither UTF-8 nor cp1252 (names the byte and its offset).
    """
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as err:
            raise TableError(f"{name} starts with a UTF-16 mark but is not valid UTF-16 "
                             f"(byte offset {err.start}): save it as CSV UTF-8") from None
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as err:
        where = f"byte 0x{data[err.start]:02x} at offset {err.start}"
    try:
        # cp1252 leaves 5 bytes undefined and Python refuses them; any text that decodes and has
        # no control characters is read as Excel wrote it.
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        text = None
    if text is None or any(ord(c) < 32 and c not in "\r\n\t" for c in text):
        raise TableError(f"{name} is not UTF-8 ({where}) and not cp1252 either: save it as CSV UTF-8")
    return text, f"cp1252 (not UTF-8: {where})"


def _header_fields(text: str, delimiter: str) -> list[str]:
    first = next(csv.reader(io.StringIO(text), delimiter=delimiter), [])
    return [f.strip() for f in first]


def read_table(data: bytes, name: str, required: Mapping[str, set[str]],
               declared: frozenset[str] = frozenset()) -> tuple[pd.DataFrame, list[str]]:
    """Parse a CSV table (every value as text) whose header has the ``required`` columns.

    ``required`` maps each required canonical column to its accepted normalised spellings; the
    header keeps its spelling (for the report), the required columns are renamed to canonical.
    An error names only header fields whose spelling is required or ``declared``: a file without
    a header line has a row of data there (a file name, an id, a patient's name).
    Returns the table (with ``line``, its 1-based CSV line) and notes on what was detected.

    Raises:
        TableError: empty, undecodable, ambiguous delimiter, missing columns, malformed rows.
    """
    text, encoding = decode_table(data, name)
    if not text.strip():
        raise TableError(f"{name} is empty; expected a header line with columns {', '.join(required)}")
    notes = [f"encoding {encoding}"] if encoding != "utf-8" else []
    fits = {}
    for delimiter in _DELIMITERS:
        header = _header_fields(text, delimiter)
        found = {normalise_header(h) for h in header}
        if all(found & spellings for spellings in required.values()):
            fits[delimiter] = header
    if len(fits) > 1 and "," in fits:
        fits = {",": fits[","]}  # the CSV default wins when it fits (a header with ';' inside a quoted name)
    if len(fits) > 1:
        names = ", ".join(_DELIMITER_NAMES[d] for d in fits)
        raise TableError(f"{name}: the delimiter is ambiguous (the header splits into the required columns "
                         f"with {names}); use ',' between columns")
    if not fits:
        delimiter = max(_DELIMITERS, key=lambda d: len(_header_fields(text, d)))
        header = _header_fields(text, delimiter)
        found = {normalise_header(h) for h in header}
        missing = [c for c, spellings in required.items() if not found & spellings]
        said = f" (delimiter {_DELIMITER_NAMES[delimiter]} detected)" if delimiter != "," else ""
        known = set(declared).union(*required.values())
        shown = [h for h in header if normalise_header(h) in known]
        if hidden := len(header) - len(shown):
            shown.append(f"{hidden} undeclared (names not shown: the first line may be data)")
        raise TableError(f"{name} has no {' or '.join(repr(m) for m in missing)} column{said}: "
                         f"columns found: {', '.join(shown) or 'none'}; expected columns {', '.join(required)}")
    ((delimiter, header),) = fits.items()
    if delimiter != ",":
        notes.append(f"delimiter {_DELIMITER_NAMES[delimiter]}")
    try:
        # Everything as text: ids such as 00123 must keep their leading zeros.
        table = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, skipinitialspace=True,
                            keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, ValueError) as err:
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise TableError(f"{name} is not a well-formed CSV: {detail}") from None
    table.columns = [str(c).strip() for c in table.columns]
    renames = {}
    for canonical, spellings in required.items():
        column = next(c for c in table.columns if normalise_header(c) in spellings)
        renames[column] = canonical
    table = table.rename(columns=renames)
    table["line"] = table.index + 2  # 1-based, after the header line
    return table, notes
