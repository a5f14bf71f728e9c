"""Schematic spine scans for the view classifier's tests: AP (mirror-symmetric) and lateral."""

from __future__ import annotations

import cv2
import numpy as np


def spine_scan(view: str, height: int = 240, width: int = 160, shift: int = 0, seed: int = 0,
               tilt_deg: float = 0.0) -> np.ndarray:
    """uint8 scan: soft-tissue background, vertebral bodies down the middle (shifted by ``shift``
    px, tilted by ``tilt_deg``) and, AP, transverse processes on both sides; lateral, the
    posterior arch and spinous processes on one side only, past the spinal canal."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width), 60.0)
    cx, pitch = width // 2 + shift, height // 5
    for k in range(5):
        top = k * pitch + pitch // 6
        img[top:top + 2 * pitch // 3, cx - width // 7:cx + width // 7] = 170
        mid = top + pitch // 3
        if view == "AP":
            wings = img[mid - 4:mid + 4, cx - width // 3:cx + width // 3]
            np.maximum(wings, 120, out=wings)
        else:  # behind the body (right), past the spinal canal: pedicle ring, arch, spinous process
            ring_x = cx + width // 7 + width // 10
            cv2.circle(img, (ring_x, mid), pitch // 4, 200, thickness=6)
            img[mid - 5:mid + 6, ring_x:cx + 2 * width // 5] = 170
    img = cv2.GaussianBlur(img, (0, 0), 3.0)  # edges are ramps in a radiograph, not steps
    if tilt_deg:
        turn = cv2.getRotationMatrix2D((cx, height / 2), tilt_deg, 1.0)
        img = cv2.warpAffine(img, turn, (width, height), borderMode=cv2.BORDER_REPLICATE)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
