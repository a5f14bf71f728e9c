"""Synthesis of one lumbar-spine DXA image (AP or lateral) from a patient's anatomy and a scan's acquisition.

Image formation, in order:
1. the bone layer is drawn in a straight, centred frame, together with the ground-truth mask
   of the L1-L4 bodies. AP view: vertebral bodies T12 (partial), L1-L4, L5 (partial) with
   cortical rim, trabecular texture, pedicles, spinous and transverse processes, iliac
   crests. Lateral view: the same bodies seen from the side (their depth instead of their
   width) on a lordotic curve, with the posterior elements (pedicles, articular masses,
   spinous processes) to one side and the iliac wing as a faint broad shadow over L5.
   Age-related degenerative change is part of the bone: end-plate sclerosis, osteophytes at
   the body corners and aortic calcification (over the left of the spine in AP, in front of
   the bodies in lateral), all of which raise the apparent density;
2. both are mirrored (lateral scans facing the other way), then rotated (tilt), shifted
   (off-centre) and, on fan-beam scanners, magnified across the fan, with one affine warp;
3. soft tissue (a broad body silhouette, thicker with BMI and in lateral views) is added;
4. the scanner family (`SCANNERS`) sets the look: its detector resolution blurs the signal,
   pencil beams raster in rows (scan lines), fan beams show detector-column banding, and
   its grey map (gamma) shapes the exported contrast;
5. the acquisition applies per-scan gain/offset, a heel-effect gradient, signal-dependent
   noise, then clips and quantises to 8 or 16 bit;
6. some exports carry burned-in annotations: the analysis box and intervertebral lines,
   the level labels L1-L4 and the scanner/view text (never BMD, T-score or identifiers).

All lengths are fractions of the vertebral pitch `p` (centre-to-centre distance), so a
`scale` < 1 renders the same anatomy on a proportionally smaller grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

# Vertebral levels drawn, top to bottom; indices 1..4 are L1-L4 (the ROI).
LEVELS: tuple[str, ...] = ("T12", "L1", "L2", "L3", "L4", "L5")
ROI_LEVELS: tuple[int, ...] = (1, 2, 3, 4)


@dataclass(frozen=True)
class Anatomy:
    """Patient-level parameters: identical for the repeat scans of one patient."""

    height: int  # image height at scale 1.0, px
    width: int  # image width at scale 1.0, px
    pitch_frac: float  # vertebral pitch / image height
    body_frac: float  # body height / pitch
    aspect: float  # L1 body width / body height
    growth: float  # relative size increase per level going down
    waist: float  # concavity of the lateral body walls
    level_jitter: tuple[float, ...]  # per-level relative size jitter
    trab_density: float  # trabecular projected density (attenuation units)
    cort_density: float  # extra density of the edge-on cortical rim
    cortex_frac: float  # cortical thickness / body height
    trab_scale: float  # trabecular feature size / body height
    trab_sparsity: float  # threshold on the texture field: higher = fewer struts
    trab_contrast: float  # how much the texture modulates the trabecular density
    fracture_level: int  # index into LEVELS of a wedge fracture, -1 for none
    fracture_loss: float  # relative height lost by the fractured body
    fracture_slope: float  # lateral wedge slope of its upper endplate
    tissue: float  # soft-tissue attenuation at mid-body (grows with BMI)
    silhouette_half_width: float  # body half-width / image width
    silhouette_offset: float  # body centre minus spine centre / image width
    iliac: bool  # iliac crests visible at the lower corners
    texture_seed: int
    degeneration: float = 0.0  # age-related degenerative change in [0, 1]
    calcified: bool = False  # aortic calcification visible
    lordosis: float = 0.3  # lateral view: anterior bow of the column / pitch
    depth_ratio: float = 0.87  # lateral view: body depth / AP body width
    scanner: str = "scanner_a"  # scanner family (repeat scans: same site, same scanner)


@dataclass(frozen=True)
class Acquisition:
    """Scan-level parameters: position, exposure, noise and file format."""

    tilt_deg: float
    shift_x: float  # spine centre offset / image width
    shift_y: float  # spine centre offset / pitch
    gain: float
    offset: float
    heel: float  # relative vertical exposure gradient
    noise: float  # noise SD at zero signal (fraction of full range)
    noise_slope: float  # extra noise SD per square root of signal (quantum noise)
    line_amp: float  # SD of the per-row scan-line offsets
    line_period: float  # period of the striping / pitch
    bits: int  # 8 or 16
    white: int  # value of full signal: 255, or 4095 / 16383 / 65535 in 16-bit files
    noise_seed: int
    view: str = "AP"  # "AP" or "lateral"
    scanner: str = "scanner_a"  # key of SCANNERS
    magnification: float = 1.0  # fan beam: horizontal magnification of the spine
    facing: int = 1  # lateral view: +1 anterior to the right, -1 mirrored
    annotate: bool = False  # burned-in annotations
    box_margin: float = 0.03  # annotated analysis box: margin around L1-L4 / box size


@dataclass(frozen=True)
class ScannerFamily:
    """The look of one family of densitometers (neutral names, no vendor)."""

    name: str
    geometry: str  # "pencil" (rectilinear raster) or "fan" (fan beam, magnifies)
    resolution_mm: float  # inherent limiting resolution (DICOM SpatialResolution)
    blur: float  # detector blur (Gaussian SD) / vertebral pitch
    gamma: float  # grey map of the export: exponent on the normalised signal
    line_gain: float  # factor on the per-row scan-line amplitude
    column_amp: float  # SD of the per-column detector gain offsets (fan beams)
    p_8bit: float  # share of 8-bit exports
    p_annotated: float  # share of exports with burned-in annotations
    font: int  # OpenCV Hershey font of the burned-in text


SCANNERS: dict[str, ScannerFamily] = {
    f.name: f
    for f in (
        # Older pencil-beam unit: coarse, linear grey map, strong raster lines, 8-bit exports.
        ScannerFamily("scanner_a", "pencil", 1.2, 0.003, 1.0, 2.0, 0.0, 0.8, 0.45, cv2.FONT_HERSHEY_PLAIN),
        # Fan beam, medium resolution, brighter soft tissue (gamma < 1).
        ScannerFamily("scanner_b", "fan", 0.6, 0.0015, 0.8, 0.6, 0.004, 0.4, 0.35, cv2.FONT_HERSHEY_SIMPLEX),
        # High-resolution fan beam, contrast-stretched grey map, mostly 16-bit exports.
        ScannerFamily("scanner_c", "fan", 0.35, 0.0, 1.3, 0.4, 0.003, 0.2, 0.3, cv2.FONT_HERSHEY_DUPLEX),
    )
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically safe logistic function (float32)."""
    return (0.5 * (1.0 + np.tanh(0.5 * np.clip(x, -30, 30)))).astype(np.float32)


def image_shape(anatomy: Anatomy, scale: float) -> tuple[int, int]:
    """(height, width) of the rendered image at `scale`."""
    return max(32, round(anatomy.height * scale)), max(16, round(anatomy.width * scale))


def _texture(shape: tuple[int, int], anatomy: Anatomy, body_px: float) -> np.ndarray:
    """Oriented band-passed noise, thresholded into struts; mean 1 over the field."""
    rng = np.random.default_rng(anatomy.texture_seed)
    sigma = max(0.6, anatomy.trab_scale * body_px)
    # Work at a coarser grid when features are large: same look, a fraction of the cost.
    step = max(1, int(sigma))
    small = (max(8, shape[0] // step + 1), max(8, shape[1] // step + 1))
    noise = rng.standard_normal(small, dtype=np.float32)
    s = sigma / step
    # Vertical struts dominate in vertebral bodies; weaker horizontal cross-struts.
    vert = cv2.GaussianBlur(noise, (0, 0), sigmaX=s, sigmaY=2.5 * s)
    horiz = cv2.GaussianBlur(noise[::-1].copy(), (0, 0), sigmaX=2.0 * s, sigmaY=s)
    band = vert + 0.5 * horiz
    k = max(3, int(8 * s) | 1)
    band -= cv2.blur(band, (k, k))  # remove the low frequencies (box filter: cheap)
    band /= float(band.std()) + 1e-6
    struts = _sigmoid((band - anatomy.trab_sparsity) / 0.6)
    field = cv2.resize(struts, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    c = anatomy.trab_contrast
    return (1.0 - c) + c * field / (float(field.mean()) + 1e-6)


def _ellipse(
    u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float
) -> np.ndarray:
    """Normalised elliptical radius around (cu, cv) with semi-axes (au, av)."""
    return np.sqrt(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2)


def _window(n: int, centre: float, half: float) -> slice:
    """Index range [centre - half, centre + half] clipped to [0, n)."""
    return slice(max(0, int(centre - half)), max(0, min(n, int(centre + half) + 2)))


def _add_blob(
    canvas: np.ndarray,
    centre: tuple[float, float],
    axes: tuple[float, float],
    amp: float,
    profile: Callable[[np.ndarray], np.ndarray],
) -> None:
    """Add amp * profile(rho) of an ellipse at canvas (x, y) = centre, only where it lives."""
    (cu, cv), (au, av) = centre, axes
    rows = _window(canvas.shape[0], cv, 2.0 * av)
    cols = _window(canvas.shape[1], cu, 2.0 * au)
    if rows.stop <= rows.start or cols.stop <= cols.start:
        return
    v = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]
    u = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :]
    canvas[rows, cols] += (amp * profile(_ellipse(u, v, cu, cv, au, av))).astype(np.float32)


def _ring(rho: np.ndarray) -> np.ndarray:
    """Bright elliptical outline with a faint fill: a tube of cortex seen end-on."""
    return np.exp(-(((rho - 1.0) / 0.3) ** 2)) + 0.2 * _sigmoid((1.0 - rho) / 0.1)


def _soft_fill(rho: np.ndarray) -> np.ndarray:
    """Filled ellipse with a soft edge."""
    return _sigmoid((1.0 - rho) / 0.15)


def _draw_body(
    bone: np.ndarray,
    tex: np.ndarray,
    tex_x0: int,
    centre: tuple[float, float],
    a0: float,
    b: float,
    an: Anatomy,
    edge_px: float,
    wedge: float | None,
    waist: float,
) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Add one vertebral body (rim + trabecular core) to `bone`; return its soft mask and window.

    `wedge` is the lateral slope of a collapsed upper endplate, None for an intact body.
    """
    cx, cy = centre
    rows = _window(bone.shape[0], cy, 1.1 * b * (1.0 + abs(wedge or 0.0)))
    cols = _window(bone.shape[1], cx, 1.1 * a0)
    v = (np.arange(rows.start, rows.stop, dtype=np.float32) - cy)[:, None]
    u = (np.arange(cols.start, cols.stop, dtype=np.float32) - cx)[None, :]
    b_top: np.ndarray | float = b if wedge is None else b * (1.0 + wedge * np.clip(u / a0, -1, 1))
    bv = np.where(v < 0, b_top, b)
    a = a0 * (1.0 - waist * (1.0 - np.minimum((v / bv) ** 2, 1.0)))  # concave walls
    # Superellipse of exponent 6: box-like body with rounded corners (cubes of squares are
    # far cheaper than float powers).
    su, sv = (u / a) ** 2, (v / bv) ** 2
    r = (su * su * su + sv * sv * sv) ** (1.0 / 6.0)
    e = edge_px / min(a0, b)
    inside = _sigmoid((1.0 - r) / e)
    core = _sigmoid((1.0 - an.cortex_frac * 4.0 * b / (a0 + b) - r) / e)
    t = tex[rows, cols.start - tex_x0 : cols.stop - tex_x0]
    dens = an.trab_density * t * inside + an.cort_density * (inside - core)
    if wedge is not None:
        # Compressed trabeculae under the collapsed endplate look sclerotic (denser band).
        dens += 0.6 * an.trab_density * np.exp(-(((v + b_top) / (0.18 * b)) ** 2)) * inside
    if an.degeneration > 0:
        # End-plate sclerosis: dense bands along both endplates, whatever the BMD.
        band = np.exp(-(((v + bv) / (0.1 * b)) ** 2)) + np.exp(-(((v - b) / (0.1 * b)) ** 2))
        dens += 0.3 * an.degeneration * band * inside
    bone[rows, cols] += dens
    return inside, (rows, cols)


def _draw_processes(
    bone: np.ndarray, centre: tuple[float, float], a0: float, b: float, an: Anatomy
) -> None:
    """AP view: pedicles (bright rings), transverse and spinous processes of one vertebra."""
    cx, cy = centre
    for side in (-1.0, 1.0):
        # Pedicles seen end-on: the "owl eyes" in the upper lateral body.
        ped = (cx + side * 0.55 * a0, cy - 0.35 * b)
        _add_blob(bone, ped, (0.15 * a0, 0.2 * b), 0.7 * an.cort_density, _ring)
        # Transverse processes: faint lateral wings attached to the body.
        tp = (cx + side * 1.2 * a0, cy - 0.3 * b)
        _add_blob(bone, tp, (0.45 * a0, 0.1 * b), 0.3 * an.trab_density, _soft_fill)
    _add_blob(bone, (cx, cy + 0.1 * b), (0.07 * a0, 0.45 * b), 0.3 * an.cort_density, _soft_fill)


def _draw_posterior_elements(
    bone: np.ndarray, centre: tuple[float, float], a0: float, b: float, an: Anatomy
) -> None:
    """Lateral view: pedicle, articular mass and spinous process behind one body (-x side)."""
    cx, cy = centre
    _add_blob(bone, (cx - 1.15 * a0, cy - 0.3 * b), (0.22 * a0, 0.22 * b), 0.8 * an.cort_density, _soft_fill)
    _add_blob(bone, (cx - 1.1 * a0, cy - 0.25 * b), (0.3 * a0, 0.12 * b), 0.3 * an.trab_density, _soft_fill)
    _add_blob(bone, (cx - 1.5 * a0, cy + 0.05 * b), (0.2 * a0, 0.6 * b), 0.9 * an.cort_density, _ring)
    _add_blob(bone, (cx - 1.95 * a0, cy + 0.25 * b), (0.35 * a0, 0.25 * b), 0.7 * an.cort_density, _soft_fill)


def _draw_osteophytes(
    bone: np.ndarray, rng: np.random.Generator, centre: tuple[float, float], a0: float, b: float, an: Anatomy
) -> None:
    """Bony spurs at the endplate corners, more and larger with degeneration (patient-level rng)."""
    cx, cy = centre
    draws = rng.random((4, 2))  # always drawn: the spurs of a patient do not depend on severity
    for (su, sv), (p, size) in zip(((-1, -1), (1, -1), (-1, 1), (1, 1)), draws):
        if p < an.degeneration:
            length = (0.08 + 0.15 * size) * an.degeneration * a0
            spur = (cx + su * (a0 + 0.5 * length), cy + sv * 0.9 * b)
            _add_blob(bone, spur, (max(1.0, length), 0.08 * b), 0.35, _soft_fill)


def _draw_calcification(
    bone: np.ndarray, rng: np.random.Generator, x: float, y0: float, y1: float, a0: float, b: float, an: Anatomy
) -> None:
    """Patchy plaques of a calcified aortic wall along the vertical line x (patient-level rng)."""
    n = 6 + int(20 * an.degeneration)
    ys = rng.uniform(y0, y1, 26)[:n]
    xs = rng.normal(0.0, 0.08 * a0, 26)[:n]
    amps = rng.uniform(0.1, 0.3, 26)[:n] * (0.5 + an.degeneration)
    for xx, yy, amp in zip(xs, ys, amps):
        _add_blob(bone, (x + xx, yy), (0.04 * a0, 0.15 * b), float(amp), _soft_fill)


def _column(an: Anatomy, scale: float, view: str) -> tuple[int, int, float, list[tuple[float, float, float, float]]]:
    """Canvas size, pitch and each level's (x centre, y centre, half-width, half-height)."""
    h, w = image_shape(an, scale)
    p = an.pitch_frac * h
    pad = int(round(0.6 * p))  # rows beyond the image so rotation brings in real bone
    canvas_h, canvas_w = h + 2 * pad, w
    cx, cy = canvas_w / 2.0, canvas_h / 2.0
    body_px = an.body_frac * p
    levels = []
    for k in range(len(LEVELS)):
        size = (1.0 + an.growth * (k - 1)) * (1.0 + an.level_jitter[k])
        b = 0.5 * body_px * np.sqrt(size)
        a0 = 0.5 * an.aspect * body_px * size
        x = cx
        if view == "lateral":
            a0 *= an.depth_ratio
            # Lordosis bows the column anteriorly (+x), most at L3-L4; the bodies sit in
            # front of the centre so the posterior elements fit behind them.
            x = cx + 0.6 * a0 + an.lordosis * p * (0.4 - ((k - 3.2) / 3.2) ** 2)
        levels.append((x, cy + (k - 2.5) * p, a0, b))
    return canvas_h, canvas_w, p, levels


def _bone_layer(
    an: Anatomy, scale: float, view: str = "AP"
) -> tuple[np.ndarray, np.ndarray, tuple[float, float], list[tuple[float, float, float, float]]]:
    """Bone density and L1-L4 mask in the straight frame; the spine centre and the levels."""
    canvas_h, canvas_w, p, levels = _column(an, scale, view)
    cx, cy = canvas_w / 2.0, canvas_h / 2.0
    bone = np.zeros((canvas_h, canvas_w), np.float32)
    mask = np.zeros((canvas_h, canvas_w), np.float32)
    body_px = an.body_frac * p
    # Texture only where bodies can be: a strip around the column (the widest body is L5).
    half = 1.15 * max(a0 for _, _, a0, _ in levels) * 1.1
    xs = [x for x, _, _, _ in levels]
    sx0, sx1 = max(0, int(min(xs) - half)), min(canvas_w, int(max(xs) + half) + 2)
    tex = _texture((canvas_h, sx1 - sx0), an, body_px)
    edge_px = max(0.7, 0.006 * p)
    rng = np.random.default_rng([an.texture_seed, 1])  # degenerative change: patient-level
    waist = an.waist if view == "AP" else 0.4 * an.waist  # lateral: only a faint anterior concavity
    drawn = []
    for k, (x, yc, a0, b) in enumerate(levels):
        wedge = None
        if k == an.fracture_level:
            # Collapse from the top: the lower endplate stays, the upper one drops.
            yc += an.fracture_loss * b
            b *= 1.0 - an.fracture_loss
            wedge = an.fracture_slope
        inside, win = _draw_body(bone, tex, sx0, (x, yc), a0, b, an, edge_px, wedge, waist)
        if view == "AP":
            _draw_processes(bone, (x, yc), a0, b, an)
        else:
            _draw_posterior_elements(bone, (x, yc), a0, b, an)
        _draw_osteophytes(bone, rng, (x, yc), a0, b, an)
        if k in ROI_LEVELS:
            np.maximum(mask[win], inside, out=mask[win])
        drawn.append((x, yc, a0, b))
    if an.calcified:
        _, y_top, a_top, b_top = drawn[ROI_LEVELS[0]]
        _, y_bot, _, _ = drawn[ROI_LEVELS[-1]]
        # AP: the aorta runs over the left side of the bodies; lateral: in front of them.
        ax = cx + 0.6 * a_top if view == "AP" else max(xs) + 1.3 * a_top
        _draw_calcification(bone, rng, ax, y_top, y_bot + 1.2 * b_top, a_top, b_top, an)
    if an.iliac:
        if view == "AP":
            _add_iliac_crests(bone, an, cx, cy, p)
        else:
            _add_iliac_wing_lateral(bone, an, cx, cy, p)
    return bone, mask, (cx, cy), drawn


def _add_iliac_crests(bone: np.ndarray, an: Anatomy, cx: float, cy: float, p: float) -> None:
    """Curved bright crests of the iliac wings at the lower corners (in place)."""
    h, w = bone.shape
    y0 = int(max(0, cy + 1.6 * p))
    if y0 >= h:
        return
    v = (np.arange(y0, h, dtype=np.float32) - (cy + 3.0 * p))[:, None]
    u = (np.arange(w, dtype=np.float32) - cx)[None, :]
    for side in (-1.0, 1.0):
        rho = _ellipse(u, v, side * 1.65 * p, 0.0, 0.8 * p, 1.0 * p)
        crest = np.exp(-(((rho - 1.0) / 0.06) ** 2)) * (v < 0)
        wing = _sigmoid((1.0 - rho) / 0.05) * 0.35
        bone[y0:, :] += (0.5 * an.cort_density * crest + an.trab_density * wing).astype(np.float32)


def _add_iliac_wing_lateral(bone: np.ndarray, an: Anatomy, cx: float, cy: float, p: float) -> None:
    """Lateral view: both iliac wings superimposed as one faint broad shadow with a crest arc."""
    centre = (cx - 0.1 * p, cy + 3.3 * p)
    _add_blob(bone, centre, (1.1 * p, 1.0 * p), 0.25 * an.trab_density, _soft_fill)
    _add_blob(bone, centre, (1.1 * p, 1.0 * p), 0.25 * an.cort_density, _ring)


def _warp_matrix(
    an: Anatomy, acq: Acquisition, scale: float, centre: tuple[float, float]
) -> np.ndarray:
    """Affine map from the straight canvas to the image: mirror, tilt, fan magnification, shift."""
    h, w = image_shape(an, scale)
    p = an.pitch_frac * h
    target = (w / 2.0 + acq.shift_x * w, h / 2.0 + acq.shift_y * p)
    m = np.vstack([cv2.getRotationMatrix2D(centre, acq.tilt_deg, 1.0), [0.0, 0.0, 1.0]])
    flip = -1.0 if acq.view == "lateral" and acq.facing < 0 else 1.0
    # Mirror and magnify about the centre, then rotate, then move the centre to the target.
    cx, cy = centre
    pre = np.array([[flip * acq.magnification, 0.0, cx * (1.0 - flip * acq.magnification)],
                    [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    m = m @ pre
    m[0, 2] += target[0] - cx
    m[1, 2] += target[1] - cy
    return m[:2]


def _soft_tissue(
    an: Anatomy, acq: Acquisition, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Body silhouette (elliptic thickness profile) with low-frequency tissue/gas variation."""
    h, w = image_shape(an, scale)
    f = 4  # tissue is smooth: compute on a coarse grid and interpolate
    hs, ws = -(-h // f), -(-w // f)
    lateral = acq.view == "lateral"
    # Seen from the side the abdomen is thicker and lies in front of the spine.
    offset = an.silhouette_offset + (0.25 * acq.facing if lateral else 0.0)
    tissue = an.tissue * (1.4 if lateral else 1.0)
    half_width = an.silhouette_half_width * (1.2 if lateral else 1.0)
    xs = (w / 2.0 + (acq.shift_x + offset) * w) / f
    ys = h / 2.0 / f
    slope = np.tan(np.deg2rad(acq.tilt_deg))
    x = np.arange(ws, dtype=np.float32)[None, :] + 0.5 * (1 - 1 / f)
    y = np.arange(hs, dtype=np.float32)[:, None]
    xr = (x - xs) + (y - ys) * slope
    prof = np.sqrt(np.clip(1.0 - (xr / (half_width * w / f)) ** 2, 0.0, 1.0))
    # Bowel gas and fat make the tissue patchy at a scale of a few centimetres.
    lf = rng.standard_normal((10, 5), dtype=np.float32)
    lf = cv2.resize(lf, (ws, hs), interpolation=cv2.INTER_CUBIC)
    small = (tissue * prof * (1.0 + 0.08 * lf)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _detector_blur(signal: np.ndarray, sigma: float) -> np.ndarray:
    """Resolution of the scanner: a Gaussian point spread of `sigma` pixels (in place)."""
    if sigma < 0.3:  # below a third of a pixel the blur is invisible
        return signal
    return cv2.GaussianBlur(signal, (0, 0), sigma, dst=signal)


def _acquire(
    signal: np.ndarray, an: Anatomy, acq: Acquisition, rng: np.random.Generator
) -> np.ndarray:
    """Exposure, noise, scan lines, grey map and quantisation to the bit depth (reuses `signal`)."""
    fam = SCANNERS[acq.scanner]
    h, w = signal.shape
    p = an.pitch_frac * h
    img = signal
    img *= acq.gain * (1.0 + acq.heel * np.linspace(-0.5, 0.5, h, dtype=np.float32))[:, None]
    img += acq.offset
    # Quantum noise grows with the square root of the signal; electronic noise does not.
    sd = np.sqrt(np.maximum(img, 0.0))
    sd *= acq.noise_slope
    sd += acq.noise
    noise = rng.standard_normal((h, w), dtype=np.float32)
    noise *= sd
    img += noise
    # Pencil beams raster row by row: per-row offsets plus a faint periodic striping.
    amp = acq.line_amp * fam.line_gain
    rows = amp * rng.standard_normal(h)
    rows += 0.5 * amp * np.sin(2 * np.pi * np.arange(h) / max(2.0, acq.line_period * p))
    img += rows.astype(np.float32)[:, None]
    if fam.column_amp > 0:
        # Fan beams sweep a detector array: each element's gain error becomes a column band.
        cols = cv2.GaussianBlur(rng.standard_normal((1, w)).astype(np.float32), (0, 0), 1.0 + 0.004 * p)
        img += (fam.column_amp / (float(cols.std()) + 1e-6)) * cols
    np.clip(img, 0.0, 1.0, out=img)
    if fam.gamma != 1.0:
        cv2.pow(img, fam.gamma, dst=img)
    img *= acq.white
    dtype = np.uint8 if acq.bits == 8 else np.uint16
    return np.rint(img, out=img).astype(dtype)


def _to_image(m: np.ndarray, x: float, y: float) -> tuple[int, int]:
    """Canvas point (x, y) mapped by the affine `m`, rounded to pixels."""
    u, v = m @ np.array([x, y, 1.0])
    return int(round(u)), int(round(v))


def annotate(
    image: np.ndarray,
    acq: Acquisition,
    box: tuple[int, int, int, int],
    levels: list[tuple[float, float, float, float]],
    m: np.ndarray,
) -> None:
    """Burn in the analysis box, intervertebral lines, level labels and scanner text (in place).

    Only what a densitometer's analysis screen shows and nothing identifying: no BMD,
    T-score, names, dates or ids.
    """
    fam = SCANNERS[acq.scanner]
    h, w = image.shape
    # OpenCV draws text on 8-bit images only: draw on an 8-bit overlay, then burn it in.
    overlay = np.zeros((h, w), np.uint8)
    colour = (255,)
    thick = max(1, round(0.001 * h))  # hairlines, as on an analysis screen
    x0, y0, x1, y1 = box
    mx, my = (round(acq.box_margin * (x1 - x0)), round(acq.box_margin * (y1 - y0) / 4))
    bx0, by0, bx1, by1 = max(0, x0 - mx), max(0, y0 - my), min(w - 1, x1 + mx), min(h - 1, y1 + my)
    cv2.rectangle(overlay, (bx0, by0), (bx1, by1), colour, thick)
    font_scale = max(0.3, w / 900.0) * (1.6 if fam.font == cv2.FONT_HERSHEY_PLAIN else 1.0)
    for k in range(ROI_LEVELS[0], ROI_LEVELS[-1] + 2):
        # The intervertebral line sits half-way between the endplates of levels k-1 and k.
        xu, yu, _, bu = levels[k - 1]
        xl, yl, _, bl = levels[k]
        xm, ym = 0.5 * (xu + xl), 0.5 * (yu + bu + yl - bl)
        _, y = _to_image(m, xm, ym)
        if by0 < y < by1 or k in (ROI_LEVELS[0], ROI_LEVELS[-1] + 1):
            cv2.line(overlay, (bx0, y), (bx1, y), colour, thick)
    for k in ROI_LEVELS:
        x, y = _to_image(m, *levels[k][:2])
        (tw, th), _ = cv2.getTextSize(LEVELS[k], fam.font, font_scale, thick)
        tx = bx0 - tw - 2 * thick if bx0 - tw - 2 * thick > 0 else min(w - tw, bx1 + 2 * thick)
        cv2.putText(overlay, LEVELS[k], (tx, y + th // 2), fam.font, font_scale, colour, thick, cv2.LINE_AA)
    text = f"{fam.name.upper()}  {'LATERAL' if acq.view == 'lateral' else 'AP'} L-SPINE"
    (tw, th), _ = cv2.getTextSize(text, fam.font, 0.8 * font_scale, thick)
    cv2.putText(overlay, text, (2 * thick, th + 4 * thick), fam.font, 0.8 * font_scale, colour, thick, cv2.LINE_AA)
    foot = f"{fam.geometry.upper()} BEAM  RES {fam.resolution_mm:.2f} MM"
    cv2.putText(overlay, foot, (2 * thick, h - 4 * thick), fam.font, 0.6 * font_scale, colour, thick, cv2.LINE_AA)
    burned = (0.9 * acq.white / 255.0) * overlay.astype(np.float32)
    np.maximum(image, np.rint(burned).astype(image.dtype), out=image)


def _warped_box(
    mask: np.ndarray, m: np.ndarray, shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Image-space box of the mask (> 0.5) after the affine `m`, x1/y1 exclusive.

    Only the first/last pixel of each row and column is transformed: the extreme points
    of the rotated shape are among them, so this equals warping the whole mask.
    """
    inside = mask > 0.5
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    r0, c0 = rows[0], cols[0]
    sub = inside[r0 : rows[-1] + 1, c0 : cols[-1] + 1]
    r = np.flatnonzero(sub.any(axis=1))
    c = np.flatnonzero(sub.any(axis=0))
    left = sub[r].argmax(axis=1)
    right = sub.shape[1] - 1 - sub[r, ::-1].argmax(axis=1)
    top = sub[:, c].argmax(axis=0)
    bottom = sub.shape[0] - 1 - sub[::-1, c].argmax(axis=0)
    xs = np.concatenate([left, right, c, c]) + c0
    ys = np.concatenate([r, r, top, bottom]) + r0
    pts = m @ np.stack([xs, ys, np.ones_like(xs)]).astype(np.float64)
    h, w = shape
    x0, x1 = np.clip(np.rint([pts[0].min(), pts[0].max() + 1]), 0, w).astype(int)
    y0, y1 = np.clip(np.rint([pts[1].min(), pts[1].max() + 1]), 0, h).astype(int)
    return int(x0), int(y0), int(x1), int(y1)


def render_scan(
    an: Anatomy, acq: Acquisition, scale: float = 1.0
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Render one scan: the quantised image and its L1-L4 box (x0, y0, x1, y1), x1/y1 exclusive."""
    h, w = image_shape(an, scale)
    rng = np.random.default_rng(acq.noise_seed)
    bone, mask, centre, levels = _bone_layer(an, scale, acq.view)
    m = _warp_matrix(an, acq, scale, centre)
    signal = cv2.warpAffine(bone, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
    signal += _soft_tissue(an, acq, scale, rng)
    signal = _detector_blur(signal, SCANNERS[acq.scanner].blur * an.pitch_frac * h)
    image = _acquire(signal, an, acq, rng)
    box = _warped_box(mask, m, (h, w))
    if acq.annotate:
        annotate(image, acq, box, levels, m)
    return image, box
