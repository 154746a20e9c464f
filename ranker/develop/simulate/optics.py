"""Density map, CTF and views: what turns atoms into particle images. Lengths in Angstrom,
defocus in A, voltage in kV, Cs in mm, angles in degrees."""
from __future__ import annotations

import math

import numpy as np

from ranker.runtime.ctf import ctf_phase
from ranker.runtime.geometry import circle_mask


# ======================================================================================
# density map and CTF
# ======================================================================================
def make_map(xyz, w, box_px, pixel_size_A, blur_A, fine_max_A=1.6, normalise=True):
    """Density (box_px^3 voxels of pixel_size_A) of Gaussian atoms with B = 8 pi^2 blur_A^2.

    Atoms are splatted (trilinear) on a fine grid of spacing <= fine_max_A, Fourier-cropped
    to pixel_size_A (no aliasing) and blurred in Fourier space. The weighted centroid is at voxel
    box_px//2 (RELION's origin). Normalised to max 1 if ``normalise``."""
    from scipy import fft as sfft

    os_ = max(1, int(math.ceil(pixel_size_A / fine_max_A - 1e-6)))
    fb, fp = box_px * os_, pixel_size_A / os_
    c = xyz - np.average(xyz, axis=0, weights=w)
    g = c / fp + fb // 2
    vol = np.zeros((fb, fb, fb), np.float32)
    i0 = np.floor(g).astype(np.int64)
    f = g - i0
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                wt = w * (f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1]) * \
                    (f[:, 2] if dz else 1 - f[:, 2])
                ix, iy, iz = i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz
                ok = (ix >= 0) & (ix < fb) & (iy >= 0) & (iy < fb) & (iz >= 0) & (iz < fb)
                np.add.at(vol, (iz[ok], iy[ok], ix[ok]), wt[ok].astype(np.float32))
    F = sfft.rfftn(vol, workers=1)
    del vol
    h = box_px // 2
    idx = np.r_[0:h, fb - h:fb]
    F = F[idx][:, idx][:, :, :h + 1]
    kz = np.fft.fftfreq(box_px, d=pixel_size_A)
    kx = np.fft.rfftfreq(box_px, d=pixel_size_A)
    k2 = kz[:, None, None] ** 2 + kz[None, :, None] ** 2 + kx[None, None, :] ** 2
    F *= np.exp(-2 * math.pi ** 2 * blur_A ** 2 * k2).astype(np.float32)
    out = sfft.irfftn(F, s=(box_px, box_px, box_px), workers=1)
    if normalise:
        out /= out.max()
    return out.astype(np.float32)


def ctf2d(n_px, pixel_size_A, defocus_u_A, defocus_v_A, defocus_angle_deg, voltage_kV=300.0, cs_mm=2.7,
          amplitude_contrast=0.1):
    """RELION's CTF of an n_px x n_px image, in the un-shifted FFT layout (see ranker.runtime.ctf)."""
    f = np.fft.fftfreq(n_px, d=pixel_size_A)
    FX, FY = np.meshgrid(f, f)
    return -np.sin(ctf_phase(FX, FY, voltage_kV, cs_mm, amplitude_contrast, defocus_u_A, defocus_v_A,
                             defocus_angle_deg))


def apply_ctf(img, ctf2n):
    """Multiply an n x n image by a CTF given on the 2n x 2n grid (reflect-padded, no wrap-around)."""
    n = img.shape[0]
    p = n // 2
    big = np.pad(img, p, mode="reflect")
    return np.real(np.fft.ifft2(np.fft.fft2(big) * ctf2n))[p:p + n, p:p + n]


def relion_normalise(img, bg_radius_px):
    """Like relion_preprocess --norm: background (outside bg_radius_px) to mean 0, sd 1."""
    m = ~circle_mask(img.shape[0], bg_radius_px)
    bg = img[m]
    return (img - bg.mean()) / max(bg.std(), 1e-6)


# ======================================================================================
# orientations
# ======================================================================================
def pref_euler(rng, n, n_views, spread_deg, frac_uniform):
    """Euler angles (deg) with preferred views: n_views random directions with random weights
    and Gaussian spread, plus a uniform fraction; psi uniform. Returns rot, tilt, psi, view_id
    (-1 = uniform)."""
    rot = rng.uniform(-180, 180, n)
    tilt = np.rad2deg(np.arccos(rng.uniform(-1, 1, n)))
    psi = rng.uniform(-180, 180, n)
    if n_views <= 0:
        return rot, tilt, psi, np.full(n, -1)
    dirs = rng.normal(size=(n_views, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    wts = rng.uniform(0.5, 1.5, n_views)
    wts /= wts.sum()
    view = np.where(rng.uniform(size=n) < frac_uniform, -1, rng.choice(n_views, size=n, p=wts))
    for i in np.where(view >= 0)[0]:
        v = dirs[view[i]] + rng.normal(0, np.deg2rad(spread_deg), 3)
        v /= np.linalg.norm(v)
        tilt[i] = np.rad2deg(np.arccos(np.clip(v[2], -1, 1)))
        rot[i] = np.rad2deg(np.arctan2(v[1], v[0]))
    return rot, tilt, psi, view
