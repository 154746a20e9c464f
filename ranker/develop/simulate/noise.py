"""Coloured (not white) noise with the power spectrum measured on a real micrograph, and smooth
ice-thickness backgrounds; the simulator's noise when a spec asks for ``noise_model: "real"``.

The spectrum (``data/real_noise_spectrum.csv``, provenance and licence in ``data/README.md``) is the
radially averaged power of the junk-free background of the real contamination micrograph of
micrograph_cleaner_em (``python -m ranker.develop realism --write_noise_spectrum``), as a function of
spatial frequency in units of that micrograph's Nyquist frequency, normalised to mean 1. Its pixel
size is unknown, so the simulator applies it in units of each job's own Nyquist frequency, stretched
by ``noise_stretch`` (> 1 moves the spectrum's features to lower frequencies).
Units: frequencies in fractions of Nyquist (0..1); sizes in px."""
from __future__ import annotations

import csv
import os

import numpy as np

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
SPECTRUM_FILE = os.path.join(DATA_DIR, "real_noise_spectrum.csv")
PATCH_FILE = os.path.join(DATA_DIR, "real_junk_patches.npz")
PATCH_RANGE_SD = 4.0   # stored patches: sd units clipped to +-4 and quantised to uint8
_CACHE = {}


def shell_index(n: int) -> np.ndarray:
    """Integer radius (Fourier px, rounded) of each element of an n x n un-shifted FFT."""
    f = np.fft.fftfreq(n) * n
    return np.rint(np.hypot(*np.meshgrid(f, f))).astype(int)


def radial_power(img: np.ndarray, window: bool = True) -> np.ndarray:
    """Radially averaged power spectrum of an n x n image (mean removed, Hann-windowed unless
    ``window`` is False): values for shells 0..n//2 (shell k = k / (n/2) of Nyquist)."""
    n = img.shape[-1]
    a = np.asarray(img, float) - np.mean(img)
    if window:
        h = np.hanning(n)
        a = a * np.outer(h, h)
    p = np.abs(np.fft.fft2(a)) ** 2
    s = shell_index(n).ravel()
    keep = s <= n // 2
    return (np.bincount(s[keep], p.ravel()[keep], n // 2 + 1)
            / np.maximum(np.bincount(s[keep], None, n // 2 + 1), 1))


def write_spectrum(path: str, power: np.ndarray, header: str) -> None:
    """Write a radial spectrum (shells 0..m) as CSV ``freq_nyquist,power`` after ``# header`` lines."""
    m = len(power) - 1
    with open(path, "w", newline="") as fh:
        for line in header.splitlines():
            fh.write(f"# {line}\n")
        wr = csv.writer(fh)
        wr.writerow(["freq_nyquist", "power"])
        for k, v in enumerate(power):
            wr.writerow([f"{k / m:.5f}", f"{v:.5f}"])


def real_spectrum(path: str = SPECTRUM_FILE) -> tuple[np.ndarray, np.ndarray]:
    """(frequency in fractions of Nyquist, relative power) of the stored real background spectrum."""
    if path not in _CACHE:
        rows = [r for r in csv.reader(l for l in open(path) if not l.startswith("#"))][1:]
        arr = np.array(rows, float)
        _CACHE[path] = (arr[:, 0], arr[:, 1])
    return _CACHE[path]


def spectrum_filter(n: int, stretch: float = 1.0, colour: float = 1.0, path: str = SPECTRUM_FILE) -> np.ndarray:
    """Amplitude filter (n x n, un-shifted FFT layout) that gives white noise the real spectrum
    raised to ``colour`` (0: white, 1: as measured), scaled so that the filtered noise keeps the
    white noise's variance."""
    key = (n, round(float(stretch), 6), round(float(colour), 6), path)
    if key not in _CACHE:
        freq, power = real_spectrum(path)
        f = np.fft.fftfreq(n)
        r = np.hypot(*np.meshgrid(f, f)) / 0.5 * float(stretch)    # fraction of Nyquist, stretched
        r[0, 0] = r[0, 1]                                          # DC: as the first shell
        p = np.interp(np.minimum(r, 1.0), freq, power) ** float(colour)
        _CACHE[key] = np.sqrt(p / p.mean())
    return _CACHE[key]


def coloured_noise(rng, n: int, sigma: float, stretch: float = 1.0, colour: float = 1.0) -> np.ndarray:
    """n x n Gaussian noise of standard deviation ~``sigma`` with the real background spectrum
    (one n x n normal draw from ``rng``)."""
    white = rng.normal(0, sigma, (n, n))
    return np.real(np.fft.ifft2(np.fft.fft2(white) * spectrum_filter(n, stretch, colour)))


def write_patches(path: str, patches: np.ndarray, rows) -> None:
    """Store real junk patches (N, m, m; sd units) as uint8 in ``path`` (.npz) with their provenance
    (source image, x, y, cut size px) as a CSV beside it (same name, .csv)."""
    q = np.clip(np.rint((np.asarray(patches) + PATCH_RANGE_SD) / (2 * PATCH_RANGE_SD) * 255), 0, 255).astype(np.uint8)
    np.savez_compressed(path, patches=q)
    with open(os.path.splitext(path)[0] + ".csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["index", "source", "x_px", "y_px", "cut_px"])
        for i, r in enumerate(rows):
            wr.writerow([i, *r])


def real_patches(path: str = PATCH_FILE) -> np.ndarray:
    """The stored real junk patches (N, m, m) in sd units (float64)."""
    if path not in _CACHE:
        q = np.load(path)["patches"].astype(np.float64)
        _CACHE[path] = q / 255 * (2 * PATCH_RANGE_SD) - PATCH_RANGE_SD
    return _CACHE[path]


def micrograph_background(rng, amp: float, n_blobs: int = 3) -> dict:
    """Parameters of a smooth ice-thickness field over one micrograph (coordinates in
    micrograph fractions 0..1): a plane plus ``n_blobs`` broad Gaussian bumps; ``amp`` is the
    field's change over one micrograph width, in units of the caller's choice."""
    t = rng.uniform(0, 2 * np.pi)
    blobs = [(rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.4), rng.choice([-1, 1]) * rng.uniform(0.3, 1))
             for _ in range(n_blobs)]
    return dict(amp=float(amp), gx=float(np.cos(t)), gy=float(np.sin(t)), blobs=blobs)


def background_patch(field: dict, x0: float, y0: float, n: int, box_frac: float) -> np.ndarray:
    """The ice field of ``micrograph_background`` seen in an n x n box centred at (x0, y0)
    (micrograph fractions); ``box_frac`` is the box width as a fraction of the micrograph."""
    y, x = (np.indices((n, n)) - n // 2) / n * box_frac
    x, y = x + x0, y + y0
    v = field["gx"] * x + field["gy"] * y
    for bx, by, bs, ba in field["blobs"]:
        v = v + ba * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * bs ** 2))
    return field["amp"] * v
