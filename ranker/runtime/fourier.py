"""Fourier-space image operations with RELION's conventions.

Images are square float64 arrays ``a[y][x]`` (MRC order); the logical origin is at array
index ``N // 2``. RELION's forward FFT divides by the pixel count and its inverse does not,
so every function here keeps the pixel scale (a constant image keeps its value).
All functions accept a stack ``(..., N, N)`` and work on the last two axes.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from .ctf import ctf_phase

WORKERS = 1  # FFT threads; the job sets this from --j


def _rfft2(a):
    return scipy.fft.rfft2(a, workers=WORKERS)


def _irfft2(a, n):
    return scipy.fft.irfft2(a, s=(n, n), workers=WORKERS)


def relion_round(x: float) -> int:
    """RELION's ROUND: halves away from zero (numpy rounds halves to even)."""
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def _signed_rows(n: int) -> np.ndarray:
    """Signed ky of each row of an n-row half-complex spectrum (row n//2 is +n//2)."""
    r = np.arange(n)
    return np.where(r <= n // 2, r, r - n)


def resize_map(img: np.ndarray, n: int) -> np.ndarray:
    """RELION's ``resizeMap``: Fourier crop (n < N) or zero-pad (n > N) to n x n pixels.

    Crop copies every coefficient with ky in [-(n/2-1), n/2], kx in [0, n/2] unchanged
    (Nyquist row and column included, not symmetrised). Pad copies the input coefficients
    inside the circle ky^2 + kx^2 <= (N/2)^2 and leaves the rest zero.
    """
    big = img.shape[-1]
    if n == big:
        return _irfft2(_rfft2(img), n)
    spec = _rfft2(img) / (big * big)
    out = np.zeros(img.shape[:-2] + (n, n // 2 + 1), dtype=complex)
    if n < big:
        ky = _signed_rows(n)
        rows_in = np.where(ky >= 0, ky, big + ky)
        out[...] = spec[..., rows_in, : n // 2 + 1]
    else:
        ky = _signed_rows(big)[:, None]
        kx = np.arange(big // 2 + 1)[None, :]
        inside = ky * ky + kx * kx <= (big / 2) ** 2
        rows_out = np.where(ky[:, 0] >= 0, ky[:, 0], n + ky[:, 0])
        for r_in in range(big):
            cols = np.nonzero(inside[r_in])[0]
            out[..., rows_out[r_in], cols] = spec[..., r_in, cols]
    return _irfft2(out, n) * (n * n)


def lowpass(img: np.ndarray, lowpass_A: float, angpix: float, edge_width_px: float = 2) -> np.ndarray:
    """RELION's ``lowPassFilterMap`` with a raised-cosine edge ``edge_width_px`` wide.

    The filter shell is ``round(N * angpix / lowpass_A)`` Fourier pixels; the edge runs from
    ``(ires - w/2)/N`` to ``(ires + w/2)/N`` cycles/pixel.
    """
    n = img.shape[-1]
    ires = relion_round(n * angpix / lowpass_A)
    low = max(0.0, (ires - edge_width_px / 2) / n)
    high = (ires + edge_width_px / 2) / n
    ky = _signed_rows(n)[:, None]
    kx = np.arange(n // 2 + 1)[None, :]
    f = np.sqrt(ky * ky + kx * kx) / n
    gain = np.where(f < low, 1.0, np.where(f > high, 0.0,
                    0.5 + 0.5 * np.cos(np.pi * (f - low) / (high - low))))
    return _irfft2(_rfft2(img) * gain, n)


def first_peak_ctf_correction(img: np.ndarray, angpix: float, voltage_kV: float, cs_mm: float,
                              amplitude_contrast: float, defocus_u_A: float,
                              defocus_v_A: float) -> np.ndarray:
    """Undo the CTF up to its first peak, as RELION's ranker does for "ignore CTFs until
    first peak" jobs: divide each coefficient by max(ctf, 0.07), where ctf is 1 beyond the
    first peak (|gamma| > pi/2) and -sin(gamma) before it. Astigmatism angle and phase
    shift are taken as 0, as in RELION.
    """
    n = img.shape[-1]
    ky = _signed_rows(n)[:, None] / (n * angpix)
    kx = np.arange(n // 2 + 1)[None, :] / (n * angpix)
    gamma = ctf_phase(kx, ky, voltage_kV, cs_mm, amplitude_contrast, defocus_u_A, defocus_v_A)
    ctf = np.where(np.abs(gamma) > math.pi / 2, 1.0, -np.sin(gamma))
    ctf = np.maximum(ctf, 0.07)
    return _irfft2(_rfft2(img) / ctf, n)
