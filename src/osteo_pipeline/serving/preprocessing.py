"""Raw scan bytes -> model input, through the roi_resize pipeline's own functions and settings.

The served model must see exactly what the trained model saw: the same decoder, ROI choice,
intensity window and resize as ``pipelines.roi_resize.nodes.crop_and_resize`` (the functions
are imported, not copied), with the parameter values of the run that trained it (they travel
inside the logged model, see ``serving.model``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

import numpy as np

from osteo_pipeline.imaging.decode import ScanDecodeError, decode_scan
from osteo_pipeline.imaging.preprocess import FITS, RoiChoice, choose_roi, crop_resize
from osteo_pipeline.imaging.quality import degenerate_reason


@dataclass(frozen=True)
class ScanPreprocessing:
    """The settings that turn one raw scan into one model input.

    ``size``: the model's input side in pixels; ``margin``, ``low_percentile``,
    ``high_percentile``: the ``roi_resize`` parameters; ``max_pixels`` and ``degenerate``: ingest's
    decompression-bomb limit and degenerate-image limits (a scan ingest would refuse is refused here
    too; models logged before ``degenerate`` existed have none and skip that check). ``fit``: the
    ``roi_resize.fit`` the model was trained with (``stretch`` or ``pad``); models logged before it
    existed were all trained on stretched crops, so a config without it means ``stretch``.
    """

    size: int
    margin: float
    low_percentile: float
    high_percentile: float
    max_pixels: int
    degenerate: dict[str, float] | None = None
    fit: str = "stretch"

    @classmethod
    def from_params(cls, settings: Mapping[str, Any], size: int) -> ScanPreprocessing:
        """From ``preprocessing_settings(...)`` and the model's input size."""
        return cls.from_dict({**settings, "size": size})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ScanPreprocessing:
        """From ``to_dict()`` output (a logged model's config); names what is missing or unknown."""
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing, unknown = required - set(values), set(values) - names
        if missing or unknown:
            raise ValueError(
                f"scan preprocessing settings: missing {sorted(missing)}, unknown {sorted(unknown)}; "
                f"expected {sorted(names)}"
            )
        return cls(size=int(values["size"]), margin=float(values["margin"]),
                   low_percentile=float(values["low_percentile"]), high_percentile=float(values["high_percentile"]),
                   max_pixels=int(values["max_pixels"]),
                   degenerate={k: float(v) for k, v in values["degenerate"].items()} if values.get("degenerate") else None,
                   fit=_fit(values.get("fit", "stretch")))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def model_input(self, data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, RoiChoice]:
        """One scan's uint8 (size, size, 3) model input and the ROI used.

        No expert box exists at serving time, so the ROI is detected (or the whole image), as
        ``roi_resize`` does for a scan without a ``roi.csv`` row. Raises ``ScanDecodeError``.
        """
        pixels = decode_scan(data, name=name, max_pixels=self.max_pixels).pixels
        if self.degenerate and (why := degenerate_reason(pixels, int(self.degenerate["min_side"]),
                                                         self.degenerate["max_aspect"],
                                                         self.degenerate["min_dynamic_range"])):
            raise ScanDecodeError(name, f"degenerate image, not a radiograph: {why}", "degenerate")
        choice = choose_roi(pixels, None, self.margin)
        return crop_resize(pixels, choice.box, self.size, self.low_percentile, self.high_percentile, self.fit), choice


def preprocessing_settings(roi_resize: Mapping[str, Any], ingest: Mapping[str, Any]) -> dict[str, Any]:
    """The ``params:roi_resize`` values and ingest's limits (``max_pixels``, ``degenerate``) a served
    model needs (the input size comes from the model itself)."""
    return {"margin": float(roi_resize["margin"]), "low_percentile": float(roi_resize["low_percentile"]),
            "high_percentile": float(roi_resize["high_percentile"]), "max_pixels": int(ingest["max_pixels"]),
            "degenerate": {k: float(v) for k, v in ingest["degenerate"].items()},
            "fit": _fit(roi_resize.get("fit", "stretch"))}


def _fit(value: Any) -> str:
    """A valid ``fit`` or a ValueError naming the choices (a typo must not serve stretched crops)."""
    if value not in FITS:
        raise ValueError(f"scan preprocessing settings: fit must be one of {list(FITS)}, got {value!r}")
    return str(value)
