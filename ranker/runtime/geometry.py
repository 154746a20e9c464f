"""Real-space image geometry with RELION's conventions: circles and centred windows.

Images are arrays ``a[y][x]`` (MRC order) whose logical origin (the centre) is at array
index ``N // 2`` on both axes, as in :mod:`ranker.runtime.fourier`. Radii and sizes are in
pixels. Functions taking images accept a stack ``(..., N, N)`` and work on the last two axes.
"""

from __future__ import annotations

import numpy as np


def radius2_px(n: int) -> np.ndarray:
    """Squared distance (integer px^2) of each pixel of an n x n image from the centre n//2."""
    i = np.arange(n) - n // 2
    return i[:, None] ** 2 + i[None, :] ** 2


def circle_mask(n: int, radius_px: float) -> np.ndarray:
    """Boolean n x n mask: True where the distance from the centre is at most ``radius_px``."""
    return radius2_px(n) <= radius_px ** 2


def soft_circle_mask(n: int, radius_px: float, edge_px: float) -> np.ndarray:
    """n x n mask (float64): 1 within ``radius_px`` of the centre, falling to 0 at
    ``radius_px + edge_px`` along a raised cosine, 0 beyond."""
    r = np.sqrt(radius2_px(n))
    inside = np.clip((radius_px + edge_px - r) / edge_px, 0, 1)
    return 0.5 - 0.5 * np.cos(np.pi * inside)


def centre_window(img: np.ndarray, size_px: int) -> np.ndarray:
    """The ``size_px`` x ``size_px`` window around the centre of each image (same centre:
    index N//2 of the input is index size_px//2 of the window); parts of a window larger
    than the image are zero. Returns a new array in the input's dtype."""
    n = img.shape[-1]
    window = np.zeros(img.shape[:-2] + (size_px, size_px), dtype=img.dtype)
    lo = n // 2 - size_px // 2
    src = slice(max(lo, 0), min(lo + size_px, n))
    dst = slice(src.start - lo, src.stop - lo)
    window[..., dst, dst] = img[..., src, src]
    return window
