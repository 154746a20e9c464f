"""One labelled RELION project: simulate particles and junk, run relion_refine Class2D
(RELION 3.1) from the project root, write truth.csv / class_truth.csv / corpus_job.json.

:func:`build_project` runs the stages in order, each a function named after what it does:
:func:`make_maps`, :func:`draw_micrographs`, :func:`draw_orientations`,
:func:`project_with_relion`, :func:`make_images` (:func:`good_particles` and one function per
junk kind: :func:`empty_ice`, :func:`ice_contamination`, :func:`carbon_edge`,
:func:`aggregate_junk`, :func:`offcentre_junk`, :func:`partial_junk`, :func:`blob_junk`, :func:`real_patch_junk`; then
:func:`ice_fields`), :func:`write_particles`,
:func:`classify` and :func:`analyse_and_clean`. They draw from one random generator in that
order, so a spec and seed always give the same particles; the realism options (REALISM_KEYS) draw
nothing when off, so specs written before them give the same particles as before.
Units: lengths in A unless a name ends in ``_px``; the spec keys keep their corpus names
(``box`` is in px, ``angpix`` in A/px, ``kv``, ``cs``, ``q0``)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from ranker.develop.simulate.files import json_default, relion_version
from ranker.develop.simulate.noise import background_patch, coloured_noise, micrograph_background, real_patches
from ranker.develop.simulate.optics import (
    apply_ctf,
    ctf2d,
    make_map,
    pref_euler,
    relion_normalise,
)
from ranker.develop.simulate.quickclass import quick_class2d
from ranker.develop.simulate.structures import (
    pseudo_model,
    read_structure_atoms,
    structure_radius,
)
from ranker.develop.simulate.truth import (
    analyse_class2d,
    cleanup,
    montage,
    strip_progress,
)
from ranker.develop.truth import JUNK_KINDS, class_summary, write_particle_truth
from ranker.runtime.fourier import resize_map
from ranker.runtime.geometry import centre_window, circle_mask
from ranker.runtime.mrc import read_stack, write_mrc
from ranker.runtime.star import format_block, write_star

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
    mask_diameter_A=None, pool=30, threads=1, seed=1, split="train", classifier="relion",
    # realism options (defaults: the earlier simulator, particle for particle; see REALISM_KEYS)
    noise_model="white", noise_colour=1.0, noise_stretch=1.0, ice_gradient=0.0, crowd_frac=0.0, ctf_correct=True,
    ctf_intact_first_peak=False,
)
# What the realism options do (measured against real data by ``python -m ranker.develop realism``):
REALISM_KEYS = dict(
    noise_model='"white": relion_project\'s white noise; "real": coloured noise with the power spectrum of a real '
                'micrograph\'s background (ranker.develop.simulate.noise), added in numpy to clean projections',
    noise_colour="exponent on the real spectrum (0 white, 1 as measured)",
    noise_stretch="frequency stretch of the real spectrum (> 1 moves its features to lower frequencies)",
    ice_gradient="smooth ice-thickness field per micrograph (plane + broad bumps): median ramp across a box, "
                 "in noise sd (0: none)",
    crowd_frac="fraction of good particles with 1-3 neighbouring particles entering the box",
    ctf_correct="false: 2D classification without CTF correction (relion_refine without --ctf)",
    ctf_intact_first_peak="true (with ctf_correct): relion_refine --ctf --ctf_intact_first_peak, CTF taken as 1 "
                          "up to its first peak (without it, most CTF-corrected simulated jobs end in "
                          "one class: MODEL_CARD, 'Why CTF-corrected jobs collapse')",
)


class JobError(RuntimeError):
    pass


def _run(cmd, log, cwd, timeout=None):
    with open(log, "w") as lf:
        r = subprocess.run(cmd, cwd=cwd, stdout=lf, stderr=subprocess.STDOUT, timeout=timeout)
    if r.returncode != 0:
        tail = open(log).read()[-2000:]
        raise JobError(f"{' '.join(map(str, cmd))} failed (rc {r.returncode}):\n{tail}")


def optics_block(box_px, pixel_size_A, voltage_kV, cs_mm, amplitude_contrast):
    """``data_optics`` of one optics group, as RELION 3.1 writes it."""
    cols = ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize", "rlnVoltage",
            "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize",
            "rlnImageDimensionality"]
    return format_block("optics", cols, [["opticsGroup1", 1, f"{pixel_size_A:.6f}", f"{voltage_kV:.6f}",
                                          f"{cs_mm:.6f}", f"{amplitude_contrast:.6f}", f"{pixel_size_A:.6f}",
                                          box_px, 2]])


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


# ======================================================================================
# the stages of one job, in order (build_project runs them)
# ======================================================================================
@dataclass
class Optics:
    """The one optics group of a simulated job."""

    box_px: int
    pixel_size_A: float
    voltage_kV: float
    cs_mm: float
    amplitude_contrast: float

    @classmethod
    def from_spec(cls, s):
        box_px = int(s["box"])
        if box_px % 2:
            raise ValueError("box must be even")
        return cls(box_px, float(s["angpix"]), float(s["kv"]), float(s["cs"]), float(s["q0"]))

    def block(self, box_px=None):
        """``data_optics`` of the STAR files (``box_px`` for projections in a bigger box)."""
        return optics_block(box_px or self.box_px, self.pixel_size_A, self.voltage_kV, self.cs_mm,
                            self.amplitude_contrast)


@dataclass
class Maps:
    """What make_maps drew: the atoms, the protein and mask diameters (A) and the density scale."""

    xyz: np.ndarray
    w: np.ndarray
    protein_diameter_A: float
    mask_diameter_A: float
    info: dict


@dataclass
class Orientations:
    """The projection directions drawn for good particles, junk in the 2N box (4 per aggregate,
    then one per off-centre particle) and fragments; rows as in the ``*_ang.star`` files."""

    good_rows: list
    good_mic: np.ndarray
    good_view: np.ndarray
    junk_rows: list
    junk_mic: np.ndarray
    part_mic: np.ndarray | None
    # crowded fields (spec crowd_frac > 0): the good particles with neighbours, how many each, and the
    # neighbours' projections (2N box, the good particle's micrograph), in that order
    crowd_idx: np.ndarray | None = None
    crowd_n: np.ndarray | None = None
    crowd_rows: list | None = None


@dataclass
class Noise:
    """The white noise that gives the spec's SNR, from relion_project's clean projections."""

    sigma: float
    signal_var: float
    seconds: float


def resolve_spec(spec):
    """DEFAULT_SPEC updated with ``spec``; junk counts as ints, kinds checked."""
    s = dict(DEFAULT_SPEC)
    s.update(spec)
    s["junk"] = {k: int(v) for k, v in s["junk"].items() if int(v) > 0}
    for k in s["junk"]:
        if k not in JUNK_KINDS:
            raise ValueError(f"unknown junk kind {k}")
    if s["noise_model"] not in ("white", "real"):
        raise ValueError(f"noise_model {s['noise_model']!r}: white or real")
    if s["ctf_intact_first_peak"] and not s["ctf_correct"]:
        raise ValueError("ctf_intact_first_peak needs ctf_correct (relion_refine --ctf)")
    if s["ctf_intact_first_peak"] and s["classifier"] == "quick":
        raise ValueError("ctf_intact_first_peak: the quick classifier does not model it (use relion)")
    return s


def make_maps(s, optics, rng, P, log):
    """The structure, its density map (box and 2 x box, for off-centre junk) and two fragment
    maps when the spec asks for partial particles, written to Simulated/."""
    t0 = time.time()
    box_px, pixel_size_A = optics.box_px, optics.pixel_size_A
    xyz, w = _load_atoms(s["protein"], rng)
    max_radius_A, r99_A = structure_radius(xyz, w)
    protein_diameter_A = 2 * r99_A
    mask_diameter_A = s["mask_diameter_A"] or min(0.95 * box_px * pixel_size_A,
                                                  1.15 * protein_diameter_A + 4 * pixel_size_A)
    if mask_diameter_A >= box_px * pixel_size_A:
        raise ValueError(f"mask diameter {mask_diameter_A:.0f} A does not fit the box {box_px * pixel_size_A:.0f} A")
    vol = make_map(xyz, w, box_px, pixel_size_A, float(s["blur_A"]), normalise=False)
    peak = float(vol.max())
    vol /= peak
    write_mrc(P("Simulated", f"ref_box{box_px}.mrc"), vol, pixel_size_A)
    big = np.zeros((2 * box_px,) * 3, np.float32)
    q = box_px // 2
    big[q:q + box_px, q:q + box_px, q:q + box_px] = vol
    write_mrc(P("Simulated", f"ref_box{2 * box_px}.mrc"), big, pixel_size_A)
    del big
    frag_info = []
    if s["junk"].get("partial", 0):
        for fi in range(2):
            fx, fw = fragment_atoms(xyz, w, rng)
            # re-centred on the fragment's own centroid, same density scale as the whole complex
            fvol = make_map(fx, fw, box_px, pixel_size_A, float(s["blur_A"]), normalise=False) / peak
            write_mrc(P("Simulated", f"frag{fi + 1}_box{box_px}.mrc"), fvol, pixel_size_A)
            frag_info.append(dict(n_atoms=int(len(fx)), mass_frac=round(float(fw.sum() / w.sum()), 3)))
    info = dict(protein=s["protein"], n_atoms=int(len(xyz)), approx_mass_kDa=round(float(w.sum()) / 7.0 * 14 / 1000, 1),
                max_radius_A=round(max_radius_A, 1), r99_A=round(r99_A, 1),
                protein_diameter_A=round(protein_diameter_A, 1), mask_diameter_A=round(mask_diameter_A, 1),
                fragments=frag_info, seconds=round(time.time() - t0, 1))
    log(f"  map: {info['n_atoms']} atoms, diameter {protein_diameter_A:.0f} A, mask {mask_diameter_A:.0f} A, "
        f"box {box_px} x {pixel_size_A:.2f} A = {box_px * pixel_size_A:.0f} A ({time.time() - t0:.1f} s)")
    return Maps(xyz, w, protein_diameter_A, mask_diameter_A, info)


def draw_micrographs(s, rng):
    """(name, defocus U, defocus V (A), astigmatism angle (deg)) of each micrograph."""
    d0_um, d1_um = s["defocus_um"]
    mics = []
    for m in range(int(s["n_mics"])):
        defocus_A = rng.uniform(d0_um, d1_um) * 1e4
        astig_A = rng.uniform(*s["astig_A"])
        mics.append((f"Simulated/Micrographs/mic{m + 1:03d}.mrc", defocus_A + astig_A / 2, defocus_A - astig_A / 2,
                     float(rng.uniform(-180, 180))))
    return mics


def draw_orientations(s, optics, mics, rng, P):
    """Views, shifts and micrographs of the projections relion_project will make, written to
    Simulated/{good_ang,good_sub,junk_ang,frag1_ang,frag2_ang}.star."""
    n_mics, pixel_size_A = len(mics), optics.pixel_size_A

    def ang_rows(n, shift_sd_px, mic_idx=None):
        rot, tilt, psi, view = pref_euler(rng, n, int(s["n_views"]), float(s["view_spread_deg"]),
                                          float(s["frac_uniform"]))
        if mic_idx is None:
            mic_idx = rng.integers(0, n_mics, n)
        ox = rng.normal(0, shift_sd_px, n) * pixel_size_A
        oy = rng.normal(0, shift_sd_px, n) * pixel_size_A
        rows = []
        for i in range(n):
            m = mics[mic_idx[i]]
            rows.append([m[0], f"{rot[i]:.4f}", f"{tilt[i]:.4f}", f"{psi[i]:.4f}", f"{ox[i]:.4f}", f"{oy[i]:.4f}",
                         f"{m[1]:.2f}", f"{m[2]:.2f}", f"{m[3]:.2f}", "0.0", "1.0", "0.0", 1])
        return rows, np.asarray(mic_idx), view

    def write(name, rows, box_px=None):
        write_star(P("Simulated", name), [optics.block(box_px), format_block("particles", ANG_COLS, rows)])

    n_good = int(s["n_good"])
    good_rows, good_mic, good_view = ang_rows(n_good, float(s["shift_sd_px"]))
    write("good_ang.star", good_rows)
    write("good_sub.star", good_rows[:min(n_good, 300)])
    # aggregates: up to 4 members sharing a micrograph; off-centre: 1 projection; all in box 2N
    n_aggregate, n_offcentre = s["junk"].get("aggregate", 0), s["junk"].get("offcentre", 0)
    aggregate_mic = rng.integers(0, n_mics, n_aggregate)
    jm = np.concatenate([np.repeat(aggregate_mic, 4), rng.integers(0, n_mics, n_offcentre)]).astype(int)
    junk_rows, junk_mic, _ = ang_rows(4 * n_aggregate + n_offcentre, 0.0, jm)
    if len(junk_rows):
        write("junk_ang.star", junk_rows, 2 * optics.box_px)
    n_partial = s["junk"].get("partial", 0)
    part_mic = None
    if n_partial:
        part_rows, part_mic, _ = ang_rows(n_partial, float(s["shift_sd_px"]) * 1.5)
        half = (n_partial + 1) // 2
        write("frag1_ang.star", part_rows[:half])
        if n_partial > half:
            write("frag2_ang.star", part_rows[half:])
    crowd_idx = crowd_n = crowd_rows = None
    n_crowd = int(round(float(s["crowd_frac"]) * n_good))
    if n_crowd:  # drawn last, so that specs without crowding keep their earlier draws
        crowd_idx = np.sort(rng.choice(n_good, n_crowd, replace=False))
        crowd_n = rng.integers(1, 4, n_crowd)
        crowd_rows, _, _ = ang_rows(int(crowd_n.sum()), 0.0, np.repeat(good_mic[crowd_idx], crowd_n))
        write("crowd_ang.star", crowd_rows, 2 * optics.box_px)
    return Orientations(good_rows, good_mic, good_view, junk_rows, junk_mic, part_mic, crowd_idx, crowd_n, crowd_rows)


def project_with_relion(s, optics, maps, views, P, log):
    """relion_project: clean projections of a subset to set the noise for the SNR, then the
    noisy good particles and the clean junk and fragment projections (Simulated/*.mrcs)."""
    t0 = time.time()
    box_px, pixel_size_A = optics.box_px, optics.pixel_size_A
    sim = P("Simulated")
    _run(["relion_project", "--i", f"ref_box{box_px}.mrc", "--ang", "good_sub.star", "--o", "good_sub_clean",
          "--ctf"], P("Simulated", "project_sub.log"), sim)
    clean = read_stack(P("Simulated", "good_sub_clean.mrcs")).astype(np.float64)
    inside = circle_mask(box_px, min(maps.protein_diameter_A, box_px * pixel_size_A) / 2 / pixel_size_A)
    signal_var = float(np.mean([im[inside].var() for im in clean]))
    sigma = math.sqrt(signal_var / float(s["snr"]))
    del clean
    if s["noise_model"] == "white":
        _run(["relion_project", "--i", f"ref_box{box_px}.mrc", "--ang", "good_ang.star", "--o", "good_noisy", "--ctf",
              "--add_noise", "--white_noise", f"{sigma:.6g}"], P("Simulated", "project_noisy.log"), sim)
    else:  # noise added in numpy (make_images), with the same sd
        _run(["relion_project", "--i", f"ref_box{box_px}.mrc", "--ang", "good_ang.star", "--o", "good_clean", "--ctf"],
             P("Simulated", "project_good.log"), sim)
    if views.crowd_rows:
        _run(["relion_project", "--i", f"ref_box{2 * box_px}.mrc", "--ang", "crowd_ang.star", "--o", "crowd_clean",
              "--ctf"], P("Simulated", "project_crowd.log"), sim)
    if len(views.junk_rows):
        _run(["relion_project", "--i", f"ref_box{2 * box_px}.mrc", "--ang", "junk_ang.star", "--o", "junk_clean",
              "--ctf"], P("Simulated", "project_junk.log"), sim)
    for fi in (1, 2):
        if os.path.exists(P("Simulated", f"frag{fi}_ang.star")):
            _run(["relion_project", "--i", f"frag{fi}_box{box_px}.mrc", "--ang", f"frag{fi}_ang.star", "--o",
                  f"frag{fi}_clean", "--ctf"], P("Simulated", f"project_frag{fi}.log"), sim)
    seconds = time.time() - t0
    log(f"  relion_project: noise sd {sigma:.4g} for SNR {s['snr']} ({seconds:.1f} s)")
    return Noise(sigma, signal_var, seconds)


class _Canvas:
    """What every particle image shares: the box, pixel coordinates about the centre, the
    noise, the signal scale, the junk contrast, the CTF of each micrograph (on the 2N grid)
    and the generator."""

    def __init__(self, optics, mics, noise, junk_contrast, rng, s=None, maps=None):
        self.n = n = optics.box_px
        self.optics, self.mics, self.rng = optics, mics, rng
        self.sigma = noise.sigma
        self.signal_sd = math.sqrt(noise.signal_var)
        self.junk_contrast = junk_contrast
        self.y, self.x = (np.indices((n, n)) - n // 2).astype(float)
        self._ctf = {}
        s = s or DEFAULT_SPEC
        self.noise_model = s["noise_model"]
        self.noise_colour, self.noise_stretch = float(s["noise_colour"]), float(s["noise_stretch"])
        self.maps = maps
        self.diameter_px = maps.protein_diameter_A / optics.pixel_size_A if maps is not None else 0.5 * n
        self._views = None

    def white_noise(self):
        return self.rng.normal(0, self.sigma, (self.n, self.n))

    def noise(self):
        """The job's noise for one image: white (as relion_project adds it; the same draws as before
        the realism options), or coloured with the real background spectrum, same sd."""
        if self.noise_model == "white":
            return self.white_noise()
        return coloured_noise(self.rng, self.n, self.sigma, self.noise_stretch, self.noise_colour)

    def projection(self, blur_A):
        """A CTF-free projection of the structure (numpy: one of 6 random views drawn once, random
        in-plane angle), on the 2N grid, Gaussian-blurred by ``blur_A`` (sigma, A); max 1."""
        n2, apix, rng = 2 * self.n, self.optics.pixel_size_A, self.rng
        if self._views is None:
            xyz = self.maps.xyz - np.average(self.maps.xyz, axis=0, weights=self.maps.w)
            self._views = []
            for _ in range(6):
                q = rng.normal(size=4)
                q /= np.linalg.norm(q)
                a, b, cq, d = q
                R = np.array([[a * a + b * b - cq * cq - d * d, 2 * (b * cq - a * d), 2 * (b * d + a * cq)],
                              [2 * (b * cq + a * d), a * a - b * b + cq * cq - d * d, 2 * (cq * d - a * b)],
                              [2 * (b * d - a * cq), 2 * (cq * d + a * b), a * a - b * b - cq * cq + d * d]])
                self._views.append((xyz @ R.T)[:, :2])
        xy = self._views[int(rng.integers(len(self._views)))]
        t = rng.uniform(0, 2 * np.pi)
        xy = xy @ np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        edges = (np.arange(n2 + 1) - n2 // 2 - 0.5) * apix
        img, _, _ = np.histogram2d(xy[:, 1], xy[:, 0], bins=[edges, edges], weights=self.maps.w)
        img = gaussian_filter(img, blur_A / apix)
        return img / max(img.max(), 1e-12)

    def scaled(self, sig, rel_var):
        """``sig`` scaled so that its variance inside the particle circle is ``rel_var`` x the
        good particles' signal variance (the SNR's numerator)."""
        inside = circle_mask(self.n, min(self.diameter_px, self.n) / 2)
        v = float(sig[inside].var())
        return sig * math.sqrt(rel_var) * self.signal_sd / math.sqrt(max(v, 1e-30))

    def gradient(self, amp):
        """An ice-thickness ramp of amplitude ``amp`` x signal sd across the box, random direction."""
        t = self.rng.uniform(0, 2 * np.pi)
        return amp * self.signal_sd * (np.cos(t) * self.x + np.sin(t) * self.y) / self.n

    def ctf(self, mic_index):
        if mic_index not in self._ctf:
            m, o = self.mics[mic_index], self.optics
            self._ctf[mic_index] = ctf2d(2 * self.n, o.pixel_size_A, m[1], m[2], m[3], o.voltage_kV, o.cs_mm,
                                         o.amplitude_contrast)
        return self._ctf[mic_index]

    def crop_shift(self, img_2n, dx_px, dy_px):
        """The N x N centre of a 2N x 2N projection moved by (dx, dy) px (rounded)."""
        return centre_window(np.roll(np.roll(img_2n, int(round(dy_px)), axis=0), int(round(dx_px)), axis=1), self.n)


def good_particles(c, s, good, views, crowd=None):
    """(image, "good", micrograph, truth) of the noisy projections, some with an ice gradient.
    With the real noise model ``good`` holds clean projections and the noise is added here; with
    crowding, ``crowd`` holds the neighbours' clean projections (2N box, see draw_orientations)."""
    items = []
    real_noise = c.noise_model != "white"
    neighbours = {}
    if crowd is not None:
        first = np.concatenate([[0], np.cumsum(views.crowd_n)[:-1]])
        neighbours = {int(i): (int(f), int(k)) for i, f, k in zip(views.crowd_idx, first, views.crowd_n)}
    for i in range(int(s["n_good"])):
        r = dict(zip(ANG_COLS, views.good_rows[i]))
        img = good[i].astype(np.float64)
        if i in neighbours:
            img = img + crowd_neighbours(c, crowd, *neighbours[i])
        if real_noise:
            img = img + c.noise()
        if c.rng.uniform() < float(s["grad_frac"]):
            img = img + c.gradient(c.rng.uniform(0.1, 0.5))
        items.append((img, "good", int(views.good_mic[i]), dict(
            view=int(views.good_view[i]), rot=r["rlnAngleRot"], tilt=r["rlnAngleTilt"], psi=r["rlnAnglePsi"],
            ox=r["rlnOriginXAngst"], oy=r["rlnOriginYAngst"])))
    return items


def crowd_neighbours(c, crowd, first, count):
    """The density of ``count`` neighbouring particles (clean projections ``first``... of the 2N
    box) whose centres lie 0.8-1.3 particle diameters away, so that they enter the box edges."""
    out = np.zeros((c.n, c.n))
    for j in range(first, first + count):
        d = c.rng.uniform(0.8, 1.3) * c.diameter_px
        t = c.rng.uniform(0, 2 * np.pi)
        out += c.crop_shift(crowd[j], d * np.cos(t), d * np.sin(t))
    return out


def on_random_micrographs(c, kind, count, make_one):
    """``count`` junk particles of ``kind``, each on a random micrograph, drawn by
    ``make_one(c, mic)`` -> (image, truth extras)."""
    items = []
    for _ in range(count):
        mi = int(c.rng.integers(len(c.mics)))
        img, extra = make_one(c, mi)
        items.append((img, kind, mi, extra))
    return items


def empty_ice(c, mi):
    """Empty ice: noise, some with a gradient or a faint low-frequency thickness texture."""
    n, rng = c.n, c.rng
    img = c.noise()
    if rng.uniform() < 0.4:
        img += c.gradient(rng.uniform(0.2, 0.8))
    if rng.uniform() < 0.3:  # faint low-frequency ice-thickness texture
        tex = gaussian_filter(rng.normal(0, 1, (n, n)), n / 8)
        img += 0.5 * c.signal_sd * tex / max(tex.std(), 1e-9)
    return img, {}


def ice_contamination(c, mi):
    """Contamination: 1-3 dense blobs (ellipses, some small spheres), half CTF-modulated."""
    n, rng, x, y = c.n, c.rng, c.x, c.y
    sig = np.zeros((n, n))
    n_blobs = int(rng.integers(1, 4))
    for _b in range(n_blobs):
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
        sig += sign * c.junk_contrast * rng.uniform(1.5, 4) * c.signal_sd * blob
    sig = 0.5 * sig + 0.5 * apply_ctf(sig, c.ctf(mi))
    return sig + c.noise(), dict(n_members=n_blobs)


def carbon_edge(c, mi):
    """Carbon or hole edges: a straight or curved textured step, CTF-modulated."""
    n, rng, x, y = c.n, c.rng, c.x, c.y
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
    sig = c.junk_contrast * rng.uniform(2, 5) * c.signal_sd * step * (1 + 0.3 * texture)
    sig = apply_ctf(sig, c.ctf(mi)) + 0.5 * sig
    return sig + c.noise(), {}


def aggregate_junk(c, count, junk_proj, junk_mic, protein_diameter_px):
    """2-4 overlapping projections (from the 2N box), 0.35-0.75 diameters apart."""
    items = []
    rng = c.rng
    for k in range(count):
        mi = int(junk_mic[4 * k])
        m = int(rng.choice([2, 2, 3, 3, 4]))
        cx, cy = rng.normal(0, 2, 2)
        sig = c.crop_shift(junk_proj[4 * k], cx, cy)
        for j in range(1, m):
            r = rng.uniform(0.35, 0.75) * protein_diameter_px
            t = rng.uniform(0, 2 * np.pi)
            sig = sig + c.crop_shift(junk_proj[4 * k + j], cx + r * np.cos(t), cy + r * np.sin(t))
        items.append((sig + c.noise(), "aggregate", mi, dict(n_members=m)))
    return items


def offcentre_junk(c, count, first, junk_proj, junk_mic):
    """One projection shifted by 0.25-0.5 box (projections ``first``... of the 2N box)."""
    items = []
    n, rng = c.n, c.rng
    for k in range(count):
        idx = first + k
        mi = int(junk_mic[idx])
        shift_px = rng.uniform(0.25, 0.5) * n
        t = rng.uniform(0, 2 * np.pi)
        sig = c.crop_shift(junk_proj[idx], shift_px * np.cos(t), shift_px * np.sin(t))
        items.append((sig + c.noise(), "offcentre", mi, dict(shift_px=round(float(shift_px), 2))))
    return items


def partial_junk(c, count, frag_proj, part_mic):
    """Projections of the two fragments (the first half of fragment 1)."""
    return [(frag_proj[k] + c.noise(), "partial", int(part_mic[k]),
             dict(fragment=1 if k < (count + 1) // 2 else 2)) for k in range(count)]


BLOB_VARIANTS = ("smooth", "lumpy", "blurred")


def blob_junk(c, mi):
    """Blurry junk blobs, which real Class2D jobs are full of and which average to featureless,
    centred discs: ``smooth`` (1-3 overlapping Gaussian lobes of particle size: a blurry
    aggregate or ice ball), ``lumpy`` (low-pass random density in a soft particle-sized ellipse:
    denatured protein), ``blurred`` (a projection of the structure blurred to 12-30 A sigma,
    faint and 0.05-0.3 box off-centre: a mis-centred particle at low SNR). CTF-modulated like
    the particles; signal variance 0.5-6 x theirs (log-uniform: ice balls and aggregates are often
    denser than protein), 0.3-1 x for the faint blurred particles; no detail finer than the blur."""
    n, rng, x, y = c.n, c.rng, c.x, c.y
    variant = BLOB_VARIANTS[int(rng.integers(len(BLOB_VARIANTS)))]
    dpx = c.diameter_px
    if variant == "smooth":
        sig = np.zeros((n, n))
        cx, cy = rng.normal(0, 0.03 * n, 2)
        for lobe in range(int(rng.integers(1, 4))):
            ox, oy = (0.0, 0.0) if lobe == 0 else rng.normal(0, 0.25 * dpx, 2)
            sx, sy = rng.uniform(0.12, 0.3, 2) * dpx
            th = rng.uniform(0, np.pi)
            xr = (x - cx - ox) * np.cos(th) + (y - cy - oy) * np.sin(th)
            yr = -(x - cx - ox) * np.sin(th) + (y - cy - oy) * np.cos(th)
            sig += rng.uniform(0.5, 1.0) * np.exp(-0.5 * ((xr / sx) ** 2 + (yr / sy) ** 2))
        rel = math.exp(rng.uniform(math.log(0.5), math.log(6.0)))
    elif variant == "lumpy":
        rx, ry = rng.uniform(0.3, 0.6, 2) * dpx
        th = rng.uniform(0, np.pi)
        cx, cy = rng.normal(0, 0.03 * n, 2)
        xr = (x - cx) * np.cos(th) + (y - cy) * np.sin(th)
        yr = -(x - cx) * np.sin(th) + (y - cy) * np.cos(th)
        env = 1 / (1 + np.exp((np.sqrt((xr / rx) ** 2 + (yr / ry) ** 2) - 1) * 6))
        tex = gaussian_filter(rng.normal(0, 1, (n, n)), rng.uniform(0.08, 0.15) * dpx)
        sig = env * (1 + 0.6 * tex / max(tex.std(), 1e-9))
        sig = gaussian_filter(sig, 0.05 * dpx)
        rel = math.exp(rng.uniform(math.log(0.5), math.log(6.0)))
    else:
        proj = c.projection(rng.uniform(12.0, 30.0))
        shift = rng.uniform(0.05, 0.3) * n
        t = rng.uniform(0, 2 * np.pi)
        sig = c.crop_shift(proj, shift * np.cos(t), shift * np.sin(t))
        rel = rng.uniform(0.3, 1.0)
    sig = c.scaled(apply_ctf(sig, c.ctf(mi)), rel)
    return sig + c.noise(), dict(variant=variant)


def real_patch_junk(c, mi):
    """Real junk: a patch cut from real micrographs (ice balls, aggregates, crystalline ice, cracks,
    contamination edges; ``data/real_junk_patches.csv`` says where each comes from), randomly
    rotated by 90 deg steps and mirrored, Fourier-resized to the box (so it spans the box whatever
    the job's pixel size), at 1-3 x the particles' signal sd x junk_contrast. Already imaged
    through a real CTF: no CTF applied."""
    rng, n = c.rng, c.n
    patches = real_patches()
    k = int(rng.integers(len(patches)))
    p = np.rot90(patches[k], int(rng.integers(4)))
    if rng.uniform() < 0.5:
        p = p[:, ::-1]
    if p.shape[-1] != n:
        p = resize_map(np.ascontiguousarray(p), n)
    p = p - p[~circle_mask(n, 0.75 * n / 2)].mean()
    p = p / max(p.std(), 1e-9)
    amp = c.junk_contrast * rng.uniform(1.0, 3.0) * c.signal_sd
    return amp * p + c.noise(), dict(variant=f"patch{k}")


FIELD_RAMP = 3.06  # median ramp over a box of micrograph_background(amp=1) / box fraction (measured, 2000 boxes)


def ice_fields(c, s, items):
    """Add each micrograph's smooth ice-thickness field (spec ``ice_gradient``: the median ramp
    across a box, as ``python -m ranker.develop realism`` measures it, in noise sd) to its particles,
    each seen at a random position of the micrograph (a box spans box_A / 4000 A of it)."""
    amp = float(s["ice_gradient"])
    box_frac = min(0.25, c.n * c.optics.pixel_size_A / 4000.0)
    fields = [micrograph_background(c.rng, amp * c.rng.uniform(0.3, 1.7)) for _ in c.mics]
    out = []
    for img, kind, mi, extra in items:
        f = fields[mi]
        x0, y0 = c.rng.uniform(0, 1, 2)
        # / FIELD_RAMP: ice_gradient is the median ramp over a box (realism's "ramp"), in noise sd
        img = img + c.sigma / box_frac / FIELD_RAMP * background_patch(f, x0, y0, c.n, box_frac)
        out.append((img, kind, mi, extra))
    return out


def make_images(s, optics, maps, mics, views, noise, rng, P):
    """Every particle image, good and junk, as (image, kind, micrograph index, truth extras),
    in the order of the spec's kinds; and the noise sd measured on the good particles."""
    real_noise = s["noise_model"] != "white"
    good = read_stack(P("Simulated", "good_clean.mrcs" if real_noise else "good_noisy.mrcs"))
    outside = ~circle_mask(optics.box_px, optics.box_px * 0.45)
    measured = float(np.mean([im[outside].std() for im in good[:200]]))
    junk_proj = read_stack(P("Simulated", "junk_clean.mrcs")) if len(views.junk_rows) else None
    frag_proj = [read_stack(P("Simulated", f"frag{fi}_clean.mrcs")) for fi in (1, 2)
                 if os.path.exists(P("Simulated", f"frag{fi}_clean.mrcs"))]
    frag_proj = np.concatenate(frag_proj) if frag_proj else None
    c = _Canvas(optics, mics, noise, float(s["junk_contrast"]), rng, s, maps)
    J = s["junk"]
    n_aggregate = J.get("aggregate", 0)
    crowd = read_stack(P("Simulated", "crowd_clean.mrcs")) if views.crowd_rows else None
    items = good_particles(c, s, good, views, crowd)
    del good, crowd
    if real_noise:
        measured = float(np.mean([it[0][outside].std() for it in items[:200]]))
    for kind, make_one in (("noise", empty_ice), ("ice", ice_contamination), ("edge", carbon_edge)):
        items += on_random_micrographs(c, kind, J.get(kind, 0), make_one)
    items += aggregate_junk(c, n_aggregate, junk_proj, views.junk_mic, maps.protein_diameter_A / optics.pixel_size_A)
    items += offcentre_junk(c, J.get("offcentre", 0), 4 * n_aggregate, junk_proj, views.junk_mic)
    items += partial_junk(c, J.get("partial", 0), frag_proj, views.part_mic)
    items += on_random_micrographs(c, "blob", J.get("blob", 0), blob_junk)
    items += on_random_micrographs(c, "patch", J.get("patch", 0), real_patch_junk)
    if float(s["ice_gradient"]) > 0:
        items = ice_fields(c, s, items)
    return items, measured


PARTICLE_COLS = ["rlnImageName", "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU",
                 "rlnDefocusV", "rlnDefocusAngle", "rlnCtfBfactor", "rlnCtfScalefactor", "rlnPhaseShift",
                 "rlnOpticsGroup"]
TRUTH_KEYS = ("view", "rot", "tilt", "psi", "ox", "oy", "n_members", "shift_px", "fragment")
OPTIONAL_TRUTH_KEYS = ("variant",)  # written only by jobs that have them (earlier truth.csv files unchanged)


def write_particles(items, optics, mics, rng, P):
    """Shuffle the particles, normalise them (as relion_preprocess), write one stack per
    micrograph, Import/job001/particles.star and truth.csv. Returns the truth rows."""
    bg_radius_px = 0.75 * optics.box_px / 2
    order = rng.permutation(len(items))
    per_mic = defaultdict(list)
    for o in order:
        per_mic[items[o][2]].append(o)
    name_of = {}
    for mi, lst in sorted(per_mic.items()):
        fn = f"Simulated/Particles/mic{mi + 1:03d}.mrcs"
        stack = np.stack([relion_normalise(items[o][0], bg_radius_px) for o in lst]).astype(np.float32)
        write_mrc(P(fn), stack, optics.pixel_size_A)
        for j, o in enumerate(lst):
            name_of[o] = f"{j + 1:06d}@{fn}"
    rows, truth = [], []
    keys = TRUTH_KEYS + tuple(k for k in OPTIONAL_TRUTH_KEYS if any(k in it[3] for it in items))
    for o in order:
        img, kind, mi, extra = items[o]
        m = mics[mi]
        cx, cy = rng.uniform(100, 3900, 2)
        rows.append([name_of[o], m[0], f"{cx:.1f}", f"{cy:.1f}", f"{m[1]:.2f}", f"{m[2]:.2f}", f"{m[3]:.2f}",
                     "0.000000", "1.000000", "0.000000", 1])
        truth.append(dict(rlnImageName=name_of[o], kind=kind, rlnMicrographName=m[0],
                          **{k: extra.get(k, "") for k in keys}))
    os.makedirs(P("Import", "job001"), exist_ok=True)
    write_star(P("Import", "job001", "particles.star"),
               [optics.block(), format_block("particles", PARTICLE_COLS, rows)])
    write_particle_truth(P(), truth)
    return truth


def classify(proj_dir, s, mask_diameter_A, rng, relion_timeout, log):
    """2D classification into Class2D/job002: real relion_refine, or the quick in-Python
    stand-in (quickclass). Returns (command or description, seconds)."""
    os.makedirs(os.path.join(proj_dir, "Class2D", "job002"), exist_ok=True)
    if s["classifier"] not in ("relion", "quick"):
        raise ValueError(f"unknown classifier {s['classifier']!r} (relion or quick)")
    t0 = time.time()
    if s["classifier"] == "quick":
        cmd = [quick_class2d(proj_dir, s, mask_diameter_A, rng, log)]
    else:
        cmd = _relion_class2d(proj_dir, s, mask_diameter_A, relion_timeout)
    seconds = time.time() - t0
    log(f"  {'relion_refine' if s['classifier'] == 'relion' else 'quickclass'} K={int(s['K'])} "
        f"iter={int(s['n_iter'])}: {seconds:.0f} s")
    return cmd, seconds


def analyse_and_clean(proj_dir, it, keep, log):
    """class_truth.csv, the montage, then (unless ``keep``) delete stacks and old iterations."""
    class_rows = analyse_class2d(proj_dir, it)
    try:
        montage(proj_dir, it, class_rows, os.path.join(proj_dir, "classes_montage.png"))
    except Exception as e:  # matplotlib missing: not essential
        log(f"  montage skipped: {e}")
    if not keep:
        cleanup(proj_dir, it)
    strip_progress(os.path.join(proj_dir, "Class2D", "job002", "run.out"))
    return class_rows


def build_project(spec, proj_dir, log=print, relion_timeout=None, keep=False):
    """Simulate particles, run relion_refine Class2D and write the truth files in proj_dir.

    ``spec`` is a dict like DEFAULT_SPEC (lengths in A, box in px). proj_dir must not exist
    yet or be empty. keep=True keeps particle stacks, maps and all iterations (debugging).
    Returns the info dict that is also written to corpus_job.json."""
    t_start = time.time()
    s = resolve_spec(spec)
    os.makedirs(proj_dir, exist_ok=True)
    P = lambda *a: os.path.join(proj_dir, *a)  # noqa: E731
    os.makedirs(P("Simulated", "Particles"), exist_ok=True)
    rng = np.random.default_rng(int(s["seed"]))
    optics = Optics.from_spec(s)
    # the stages draw from one generator, in this order: the same seed gives the same job
    maps = make_maps(s, optics, rng, P, log)
    mics = draw_micrographs(s, rng)
    views = draw_orientations(s, optics, mics, rng, P)
    noise = project_with_relion(s, optics, maps, views, P, log)
    items, measured = make_images(s, optics, maps, mics, views, noise, rng, P)
    truth = write_particles(items, optics, mics, rng, P)
    del items
    counts = dict(Counter(t["kind"] for t in truth))
    log(f"  particles: {len(truth)} {counts}; noise sd measured {measured:.4g}")
    cmd, t_refine = classify(proj_dir, s, maps.mask_diameter_A, rng, relion_timeout, log)
    it = int(s["n_iter"])
    class_rows = analyse_and_clean(proj_dir, it, keep, log)
    box_px, pixel_size_A = optics.box_px, optics.pixel_size_A
    info = dict(
        spec=s, split=s["split"], protein=s["protein"], map=maps.info, box=box_px, angpix=pixel_size_A,
        box_A=round(box_px * pixel_size_A, 1), snr=float(s["snr"]), noise_sigma=noise.sigma,
        signal_var=noise.signal_var, noise_sigma_measured=measured, counts=counts, n_particles=len(truth),
        junk_fraction=round(1 - counts.get("good", 0) / len(truth), 4), K=int(s["K"]), n_iter=it,
        classifier=s["classifier"], relion_command=" ".join(cmd),
        relion_version=relion_version() if s["classifier"] == "relion" else "none (quickclass, not RELION)",
        seconds_project=round(noise.seconds, 1), seconds_refine=round(t_refine, 1),
        seconds_total=round(time.time() - t_start, 1), class_summary=class_summary(class_rows),
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        note=(("relion_refine was run directly from the project root (not through relion_pipeliner); "
               if s["classifier"] == "relion" else
               "classes made by ranker.develop.simulate.quickclass (in-Python stand-in, NOT relion_refine); ")
              + "Import/job001/particles.star is the simulated particle STAR file; particle stacks deleted"))
    with open(P("corpus_job.json"), "w") as f:
        json.dump(info, f, indent=1, default=json_default)
    return info


def _relion_class2d(proj_dir, s, mask_diameter_A, relion_timeout):
    """Run relion_refine 2D classification from the project root; returns the command (list)."""
    P = lambda *a: os.path.join(proj_dir, *a)  # noqa: E731
    K, it = int(s["K"]), int(s["n_iter"])
    cmd = ["relion_refine", "--o", "Class2D/job002/run", "--i", "Import/job001/particles.star",
           "--dont_combine_weights_via_disc", "--preread_images", "--pool", str(int(s["pool"])), "--pad", "2",
           *(["--ctf"] if s["ctf_correct"] else []),
           *(["--ctf_intact_first_peak"] if s["ctf_intact_first_peak"] else []),  # resolve_spec: only with --ctf
           "--iter", str(it), "--tau2_fudge", f"{float(s['tau2_fudge']):g}",
           "--particle_diameter", f"{mask_diameter_A:.0f}", "--K", str(K), "--flatten_solvent", "--zero_mask",
           "--oversampling", "1", "--psi_step", f"{float(s['psi_step']):g}", "--offset_range",
           f"{float(s['offset_range']):g}", "--offset_step", f"{float(s['offset_step']):g}",
           "--allow_coarser_sampling", "--norm", "--scale", "--j", str(int(s["threads"]))]
    with open(P("Class2D", "job002", "note.txt"), "w") as f:
        f.write(f" ++++ Executing new job on {time.ctime()}\n ++++ with the following command(s): \n"
                f"{' '.join(cmd)}\n ++++ \n")
    with open(P("Class2D", "job002", "run.out"), "w") as fo, open(P("Class2D", "job002", "run.err"), "w") as fe:
        try:
            r = subprocess.run(cmd, cwd=proj_dir, stdout=fo, stderr=fe, timeout=relion_timeout)
        except subprocess.TimeoutExpired:
            raise JobError(f"relion_refine exceeded {relion_timeout} s")
    final = P("Class2D", "job002", f"run_it{it:03d}_model.star")
    if r.returncode != 0 or not os.path.exists(final):
        err = open(P("Class2D", "job002", "run.err")).read()[-2000:]
        raise JobError(f"relion_refine failed (rc {r.returncode}): {err}")
    return cmd
