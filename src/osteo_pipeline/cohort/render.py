"""Synthesis of one AP lumbar-spine DXA image from a patient's anatomy and a scan's acquisition.

Image formation, in order:
1. the bone layer (vertebral bodies T12 partial, L1-L4, L5 partial, with cortical rim,
   trabecular texture, pedicles, spinous and transverse processes, iliac crests) is drawn in a
   straight, centred frame, together with the ground-truth mask of the L1-L4 bodies;
2. both are rotated (tilt) and shifted (off-centre) into the image with one affine warp;
3. soft tissue (a broad body silhouette, thicker with BMI) is added in image coordinates;
4. the acquisition applies per-scan gain/offset, a heel-effect gradient, signal-dependent
   noise and horizontal scan lines, then clips and quantises to 8 or 16 bit.

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
    a = a0 * (1.0 - an.waist * (1.0 - np.minimum((v / bv) ** 2, 1.0)))  # concave lateral walls
    n = 6.0  # superellipse exponent: box-like body with rounded corners
    r = (np.abs(u / a) ** n + np.abs(v / bv) ** n) ** (1.0 / n)
    e = edge_px / min(a0, b)
    inside = _sigmoid((1.0 - r) / e)
    core = _sigmoid((1.0 - an.cortex_frac * 4.0 * b / (a0 + b) - r) / e)
    t = tex[rows, cols.start - tex_x0 : cols.stop - tex_x0]
    dens = an.trab_density * t * inside + an.cort_density * (inside - core)
    if wedge is not None:
        # Compressed trabeculae under the collapsed endplate look sclerotic (denser band).
        dens += 0.6 * an.trab_density * np.exp(-(((v + b_top) / (0.18 * b)) ** 2)) * inside
    bone[rows, cols] += dens
    return inside, (rows, cols)


def _draw_processes(
    bone: np.ndarray, centre: tuple[float, float], a0: float, b: float, an: Anatomy
) -> None:
    """Pedicles (bright rings), transverse and spinous processes of one vertebra."""
    cx, cy = centre
    for side in (-1.0, 1.0):
        # Pedicles seen end-on: the "owl eyes" in the upper lateral body.
        ped = (cx + side * 0.55 * a0, cy - 0.35 * b)
        _add_blob(bone, ped, (0.15 * a0, 0.2 * b), 0.7 * an.cort_density, _ring)
        # Transverse processes: faint lateral wings attached to the body.
        tp = (cx + side * 1.2 * a0, cy - 0.3 * b)
        _add_blob(bone, tp, (0.45 * a0, 0.1 * b), 0.3 * an.trab_density, _soft_fill)
    _add_blob(bone, (cx, cy + 0.1 * b), (0.07 * a0, 0.45 * b), 0.3 * an.cort_density, _soft_fill)


def _bone_layer(
    an: Anatomy, scale: float
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Bone density and L1-L4 mask in the straight frame; returns them and the spine centre."""
    h, w = image_shape(an, scale)
    p = an.pitch_frac * h
    pad = int(round(0.6 * p))  # rows beyond the image so rotation brings in real bone
    canvas_h, canvas_w = h + 2 * pad, w
    cx, cy = canvas_w / 2.0, canvas_h / 2.0
    bone = np.zeros((canvas_h, canvas_w), np.float32)
    mask = np.zeros((canvas_h, canvas_w), np.float32)
    body_px = an.body_frac * p
    # Texture only where bodies can be: a strip around the column (the widest body is L5).
    half = 1.15 * 0.5 * an.aspect * body_px * (1.0 + an.growth * 5) * 1.1
    sx0, sx1 = max(0, int(cx - half)), min(canvas_w, int(cx + half) + 2)
    tex = _texture((canvas_h, sx1 - sx0), an, body_px)
    edge_px = max(0.7, 0.006 * p)
    for k in range(len(LEVELS)):
        size = (1.0 + an.growth * (k - 1)) * (1.0 + an.level_jitter[k])
        b = 0.5 * body_px * np.sqrt(size)
        a0 = 0.5 * an.aspect * body_px * size
        yc = cy + (k - 2.5) * p
        wedge = None
        if k == an.fracture_level:
            # Collapse from the top: the lower endplate stays, the upper one drops.
            yc += an.fracture_loss * b
            b *= 1.0 - an.fracture_loss
            wedge = an.fracture_slope
        inside, win = _draw_body(bone, tex, sx0, (cx, yc), a0, b, an, edge_px, wedge)
        _draw_processes(bone, (cx, yc), a0, b, an)
        if k in ROI_LEVELS:
            np.maximum(mask[win], inside, out=mask[win])
    if an.iliac:
        _add_iliac_crests(bone, an, cx, cy, p)
    return bone, mask, (cx, cy)


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


def _warp_matrix(
    an: Anatomy, acq: Acquisition, scale: float, centre: tuple[float, float]
) -> np.ndarray:
    """Affine map from the straight bone canvas to the image (tilt about the spine centre)."""
    h, w = image_shape(an, scale)
    p = an.pitch_frac * h
    target = (w / 2.0 + acq.shift_x * w, h / 2.0 + acq.shift_y * p)
    m = cv2.getRotationMatrix2D(centre, acq.tilt_deg, 1.0)
    m[0, 2] += target[0] - centre[0]
    m[1, 2] += target[1] - centre[1]
    return m


def _soft_tissue(
    an: Anatomy, acq: Acquisition, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Body silhouette (elliptic thickness profile) with low-frequency tissue/gas variation."""
    h, w = image_shape(an, scale)
    f = 4  # tissue is smooth: compute on a coarse grid and interpolate
    hs, ws = -(-h // f), -(-w // f)
    xs = (w / 2.0 + (acq.shift_x + an.silhouette_offset) * w) / f
    ys = h / 2.0 / f
    slope = np.tan(np.deg2rad(acq.tilt_deg))
    x = np.arange(ws, dtype=np.float32)[None, :] + 0.5 * (1 - 1 / f)
    y = np.arange(hs, dtype=np.float32)[:, None]
    xr = (x - xs) + (y - ys) * slope
    prof = np.sqrt(np.clip(1.0 - (xr / (an.silhouette_half_width * w / f)) ** 2, 0.0, 1.0))
    # Bowel gas and fat make the tissue patchy at a scale of a few centimetres.
    lf = rng.standard_normal((10, 5), dtype=np.float32)
    lf = cv2.resize(lf, (ws, hs), interpolation=cv2.INTER_CUBIC)
    small = (an.tissue * prof * (1.0 + 0.08 * lf)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _acquire(
    signal: np.ndarray, an: Anatomy, acq: Acquisition, rng: np.random.Generator
) -> np.ndarray:
    """Exposure, noise, scan lines and quantisation to the scan's bit depth (reuses `signal`)."""
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
    # Scan lines: per-row detector offsets plus a faint periodic striping.
    rows = acq.line_amp * rng.standard_normal(h)
    rows += 0.5 * acq.line_amp * np.sin(2 * np.pi * np.arange(h) / max(2.0, acq.line_period * p))
    img += rows.astype(np.float32)[:, None]
    np.clip(img, 0.0, 1.0, out=img)
    img *= acq.white
    dtype = np.uint8 if acq.bits == 8 else np.uint16
    return np.rint(img, out=img).astype(dtype)


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
    bone, mask, centre = _bone_layer(an, scale)
    m = _warp_matrix(an, acq, scale, centre)
    signal = cv2.warpAffine(bone, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
    signal += _soft_tissue(an, acq, scale, rng)
    image = _acquire(signal, an, acq, rng)
    return image, _warped_box(mask, m, (h, w))
