"""Automatic ROI of the lumbar spine (L1-L4 vertebral bodies) in an AP spine DXA image.

Pipeline (all on a downscaled copy, ~256 px high):
1. robust normalisation (1st-99.5th percentile) and a light Gaussian blur;
2. a bone threshold: the upper cut of a three-class Otsu (background / soft tissue / bone),
   with plain Otsu and percentiles as fallbacks;
3. opening with a vertical line removes thin horizontal structures (scan lines, transverse
   processes, iliac crests), closing with a taller one bridges the intervertebral gaps;
4. the best plausible connected component: tall, narrow, well filled, near the centre;
5. the column is straightened by its principal axis, the disc gaps are found in its row
   profile, and vertebrae cut by the top or bottom image border (partial T12 / L5) are
   dropped; the box of the remaining bodies plus a margin is returned in input pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[int, int, int, int]

_WORK_HEIGHT = 256  # detection resolution: vertebrae stay ~40 px tall, disc gaps ~6 px


@dataclass(frozen=True)
class _Column:
    """A candidate spine column in the working image."""

    label_mask: np.ndarray  # bool, closed component
    bone: np.ndarray  # bool, opened (not closed) bone mask
    score: float


def _to_float(image: np.ndarray) -> np.ndarray:
    """2-D float32 copy of a grayscale (or single/three-channel) image."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] in (1, 3, 4):
        img = img[..., :3].mean(axis=2) if img.shape[2] > 1 else img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {img.shape}")
    return img.astype(np.float32, copy=False)


def _normalise(img: np.ndarray) -> np.ndarray | None:
    """Percentile-stretched image in [0, 1], or None when it has no contrast."""
    lo, hi = np.percentile(img, [1.0, 99.5])
    if not np.isfinite([lo, hi]).all() or hi - lo < 1e-6 * max(1.0, abs(hi)):
        return None
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def _multi_otsu(values: np.ndarray, bins: int = 128) -> tuple[float, float]:
    """Two thresholds maximising the between-class variance of three classes."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist / max(1, hist.sum())
    centres = 0.5 * (edges[:-1] + edges[1:])
    w = np.cumsum(p)
    s = np.cumsum(p * centres)
    i, j = np.triu_indices(bins - 1, k=1)  # class 0: bins <= i, class 1: i < bins <= j
    w0, w1, w2 = w[i], w[j] - w[i], 1.0 - w[j]
    s0, s1, s2 = s[i], s[j] - s[i], s[-1] - s[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        var = s0**2 / w0 + s1**2 / w1 + s2**2 / w2
    var[(w0 <= 0) | (w1 <= 0) | (w2 <= 0)] = -np.inf
    k = int(np.argmax(var))
    return float(edges[i[k] + 1]), float(edges[j[k] + 1])


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of values in [0, 1]."""
    u8 = np.clip(values * 255.0, 0, 255).astype(np.uint8).reshape(-1, 1)
    t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(t) / 255.0


def _thresholds(img: np.ndarray) -> list[float]:
    """Candidate bone thresholds, most specific first."""
    _, t_bone = _multi_otsu(img.ravel())
    body = img[img > _otsu(img.ravel())]
    cands = [t_bone]
    if body.size > 100:
        cands.append(_otsu(body))
    cands += [float(np.percentile(img, q)) for q in (70.0, 60.0, 80.0)]
    return cands


def _vertical_kernel(length: int) -> np.ndarray:
    """A 1-pixel-wide vertical line structuring element."""
    return cv2.getStructuringElement(cv2.MORPH_RECT, (1, max(1, length)))


def _best_column(norm: np.ndarray, bone: np.ndarray, min_contrast: float = 0.12) -> _Column | None:
    """Closest thing to a spine column among the connected components of a bone mask."""
    h, w = bone.shape
    opened = cv2.morphologyEx(bone.astype(np.uint8), cv2.MORPH_OPEN, _vertical_kernel(round(0.04 * h)))
    closed = cv2.morphologyEx(opened, cv2.MORPH_CLOSE, _vertical_kernel(round(0.10 * h)))
    n, labels, stats, cents = cv2.connectedComponentsWithStats(closed, connectivity=8)
    best: _Column | None = None
    for k in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[k])
        fill = area / float(bw * bh)
        off_centre = abs(cents[k][0] - w / 2.0) / w
        # A lumbar column spans much of the scan height, is taller than wide and solid.
        if bh < 0.35 * h or bh < 1.2 * bw or bw < 0.06 * w or bw > 0.75 * w:
            continue
        if fill < 0.35 or off_centre > 0.3:
            continue
        comp = labels == k
        if _flank_contrast(norm, comp, bw) < min_contrast:
            continue  # texture or noise that happens to line up, not bone on soft tissue
        score = area * fill * (1.0 - off_centre)
        if best is None or score > best.score:
            best = _Column(comp, opened.astype(bool), score)
    return best


def _flank_contrast(norm: np.ndarray, comp: np.ndarray, width: int) -> float:
    """Mean intensity inside a component minus that of the strips beside it."""
    grown = cv2.dilate(comp.astype(np.uint8), np.ones((1, max(3, width) | 1), np.uint8)).astype(bool)
    flank = grown & ~comp
    if not flank.any():
        return 0.0
    return float(norm[comp].mean() - norm[flank].mean())


def _axis_angle(mask: np.ndarray) -> float:
    """Tilt of the mask's long axis from vertical, degrees (positive: top leans right)."""
    m = cv2.moments(mask.astype(np.uint8), binaryImage=True)
    if m["m00"] <= 0:
        return 0.0
    theta = 0.5 * np.degrees(np.arctan2(2.0 * m["mu11"], m["mu20"] - m["mu02"]))
    # theta is the major-axis angle from +x; a vertical column gives +-90.
    tilt = theta - 90.0 if theta > 0 else theta + 90.0
    return float(np.clip(tilt, -15.0, 15.0))


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index pairs of the True runs of a 1-D boolean array."""
    d = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def _body_runs(bone: np.ndarray, column: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) rows of the vertebral bodies (between disc gaps) of a vertical column."""
    h = bone.shape[0]
    cols = np.flatnonzero(column.any(axis=0))
    if cols.size == 0:
        return []
    # Central half of the column: pedicles and processes do not blur the disc gaps there.
    c0, c1 = cols[0], cols[-1] + 1
    q = (c1 - c0) // 4
    band = (bone & column)[:, c0 + q : c1 - q]
    fill = band.mean(axis=1) if band.shape[1] else np.zeros(h)
    fill = np.convolve(fill, np.ones(3) / 3.0, mode="same")
    # Narrow discs (lower lumbar, blur) may not fall below half fill: also split the
    # column at clear local minima of the fill profile.
    d = max(2, round(0.05 * h))
    window_min = cv2.erode(fill.astype(np.float32)[:, None], np.ones((2 * d + 1, 1), np.uint8)).ravel()
    level = float(np.median(fill[fill > 0])) if (fill > 0).any() else 0.0
    split = (fill <= window_min) & (fill < 0.75 * level)
    return [(a, b) for a, b in _runs((fill >= 0.5) & ~split) if b - a >= 0.04 * h]


def _complete_bodies(
    runs: list[tuple[int, int]], bone: np.ndarray, outside: np.ndarray
) -> list[tuple[int, int]]:
    """Drop bodies cut by the image border (partial T12 / L5); keep at most four."""
    edge = outside.copy()
    edge[[0, -1], :] = True  # the working image's own top and bottom rows are borders too
    near_edge = cv2.dilate(edge.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    kept = [(a, b) for a, b in runs if not (near_edge[a:b] & bone[a:b]).any()] or runs
    if len(kept) > 4:
        # Keep the four consecutive bodies with the largest total height.
        sizes = [sum(b - a for a, b in kept[i : i + 4]) for i in range(len(kept) - 3)]
        i = int(np.argmax(sizes))
        kept = kept[i : i + 4]
    return kept


def _straighten(mask: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Boolean mask warped by `rot` (nearest neighbour, zero outside)."""
    h, w = mask.shape
    out = cv2.warpAffine(mask.astype(np.uint8), rot, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    return out.astype(bool)


def _column_box(col: _Column) -> tuple[float, float, float, float] | None:
    """Box (x0, y0, x1, y1) of the L1-L4 bodies in working-image pixels."""
    tilt = _axis_angle(col.label_mask)
    ys, xs = np.nonzero(col.label_mask)
    rot = cv2.getRotationMatrix2D((float(xs.mean()), float(ys.mean())), -tilt, 1.0)  # column upright
    column = _straighten(col.label_mask, rot)
    bone = _straighten(col.bone, rot) & column
    outside = ~_straighten(np.ones_like(col.bone), rot)
    bodies = _complete_bodies(_body_runs(bone, column), bone, outside)
    if not bodies:
        return None
    sel = np.zeros_like(bone)
    top, bottom = bodies[0][0], bodies[-1][1]
    sel[top:bottom] = bone[top:bottom]
    py, px = np.nonzero(sel)
    if px.size == 0:
        return None
    # Map the selected pixels back to the input orientation and box them there.
    pts = cv2.invertAffineTransform(rot) @ np.stack([px, py, np.ones_like(px)]).astype(np.float64)
    return float(pts[0].min()), float(pts[1].min()), float(pts[0].max() + 1), float(pts[1].max() + 1)


def detect_spine_roi(
    image: np.ndarray, margin: float = 0.05, work_height: int = _WORK_HEIGHT
) -> Box | None:
    """Box (x0, y0, x1, y1) of the L1-L4 vertebral bodies, x1/y1 exclusive, or None.

    `margin` grows the detected box by that fraction of its width and height in total, half
    on each side (0.05: 2.5 % per side), then the box is clipped to the image. None means
    no plausible spine was found (blank, noise, other anatomy).
    """
    img = _to_float(image)
    h, w = img.shape
    if h < 16 or w < 16 or not np.isfinite(img).all():
        return None
    f = min(1.0, work_height / h)
    size = (max(8, round(w * f)), max(8, round(h * f)))
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)  # averaging also tames noise
    norm = _normalise(small)
    if norm is None:
        return None
    norm = cv2.GaussianBlur(norm, (0, 0), sigmaX=max(0.8, 0.006 * norm.shape[0]))
    for t in _thresholds(norm):
        col = _best_column(norm, norm > t)
        if col is None:
            continue
        box = _column_box(col)
        if box is not None:
            return _to_input_box(box, margin, (small.shape[1] / w, small.shape[0] / h), (h, w))
    return None


def _to_input_box(
    box: tuple[float, float, float, float], margin: float, f: tuple[float, float], shape: tuple[int, int]
) -> Box:
    """Scale a working-image box back to input pixels, add the margin and clip."""
    fx, fy = f
    x0, y0, x1, y1 = box[0] / fx, box[1] / fy, box[2] / fx, box[3] / fy
    mx, my = 0.5 * margin * (x1 - x0), 0.5 * margin * (y1 - y0)
    h, w = shape
    return (
        int(np.clip(np.floor(x0 - mx), 0, w)),
        int(np.clip(np.floor(y0 - my), 0, h)),
        int(np.clip(np.ceil(x1 + mx), 0, w)),
        int(np.clip(np.ceil(y1 + my), 0, h)),
    )


def crop(image: np.ndarray, box: Box | None) -> np.ndarray:
    """The part of `image` inside box (x0, y0, x1, y1); the whole image when box is None."""
    if box is None:
        return image
    x0, y0, x1, y1 = box
    return image[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)]
