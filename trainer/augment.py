"""Augmentation for a till camera and a noisy detector, on aligned RGB uint8 crops (numpy + OpenCV).

Each view is seeded by (seed, image index, view), so a cached feature view is reproducible."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TillAugment:
    """Probabilities and ranges; the defaults model a fixed till camera and YuNet's jitter."""

    max_rotation_deg: float = 8.0
    max_scale: float = 0.08  # +/- share of the crop's scale (landmark noise, another detector)
    max_shift: float = 0.05  # share of the crop side
    flip_p: float = 0.5
    grey_p: float = 0.1
    blur_p: float = 0.2
    low_res_p: float = 0.25
    jpeg_p: float = 0.3
    colour_p: float = 0.8

    def __call__(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import cv2

        size = rgb.shape[0]
        angle = rng.uniform(-self.max_rotation_deg, self.max_rotation_deg)
        scale = 1.0 + rng.uniform(-self.max_scale, self.max_scale)
        matrix = cv2.getRotationMatrix2D((size / 2.0, size / 2.0), angle, scale)
        matrix[:, 2] += rng.uniform(-self.max_shift, self.max_shift, size=2) * size
        out = cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if rng.random() < self.flip_p:
            out = out[:, ::-1]
        if rng.random() < self.low_res_p:
            small = int(rng.integers(max(16, size // 5), max(17, size // 2)))
            out = cv2.resize(cv2.resize(out, (small, small), interpolation=cv2.INTER_AREA), (size, size),
                             interpolation=cv2.INTER_LINEAR)
        if rng.random() < self.blur_p:
            out = cv2.GaussianBlur(out, (0, 0), sigmaX=float(rng.uniform(0.5, 1.6)))
        out = out.astype(np.float32)
        if rng.random() < self.colour_p:
            gain = 1.0 + rng.uniform(-0.1, 0.1, size=3)  # white balance
            contrast = 1.0 + rng.uniform(-0.25, 0.25)
            brightness = rng.uniform(-25, 25)
            mean = out.mean()
            out = (out - mean) * contrast + mean + brightness
            out *= gain
        if rng.random() < self.grey_p:
            grey = out @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            out = np.repeat(grey[..., None], 3, axis=2)
        out = np.clip(out, 0, 255).astype(np.uint8)
        if rng.random() < self.jpeg_p:
            quality = int(rng.integers(25, 90))
            ok, encoded = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                out = cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1]
        return np.ascontiguousarray(out)


def view_rng(seed: int, index: int, view: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, view])
