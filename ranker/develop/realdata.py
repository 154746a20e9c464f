"""A real-image evaluation project from the EMPIAR-10017 micrographs in ``shared/realdata``.

The 12 beta-galactosidase micrographs (4096 x 4096 8-bit JPEG, 1.77 A/px, denoised by the
redistributors, protein dark) come with masks that mark manually picked particles as white discs of
108 px diameter. This module turns them into a RELION project whose particles have a truth by
*provenance*:

* ``good``: a marked pick, boxed at the disc centre (found by a circle Hough transform of the mask
  boundary; on the first micrograph it reproduces the shipped pick list to within 1 px);
* ``offcentre``: a marked pick boxed 0.3-0.5 disc diameters away from its centre, at a point that is
  not itself particle-like (the core score below; otherwise the box would hold a centred unmarked
  particle);
* ``noise``: empty ice, checked free of particles: no marked disc overlaps it and no point within one
  disc radius of its centre scores as particle-like as the faintest 5 % of the marked picks (the picks
  are incomplete, so "not marked" alone is not "empty");
* ``edge``: boxes straddling the striped padding along the micrograph borders (an artefact of the
  redistributors' processing) or centred on a carbon edge;
* ``ice``: boxes centred on contamination blobs.

The *core score* is the mean of the inverted, robustly normalised micrograph (median / MAD of the
unpadded area), low-pass filtered (Gaussian, sigma 7 A), in a disc of 0.2 pick diameters (about 38 A)
around a point: protein is bright after inversion, so real particle centres score high.

The project is then built with real RELION 3.1: inverted float32 MRC micrographs, one coordinate STAR
file per micrograph, ``relion_preprocess --extract`` (binning with ``--scale``, ``--norm``),
``Import/job001/particles.star``, and ``relion_refine`` 2D classification as ``Class2D/job002``
**without CTF correction** (the denoised JPEGs carry no CTF information). Truth per class comes from
:func:`ranker.develop.simulate.truth.analyse_class2d`, as for the simulated projects.

EMPIAR-10017 pixels are evaluation data only: nothing here trains, calibrates or tunes a model.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import time
from collections import Counter

import numpy as np
from scipy import ndimage as ndi
from scipy import signal
from scipy.spatial import cKDTree

from ranker.develop.truth import read_particle_truth, write_particle_truth
from ranker.runtime.mrc import read_mrc, write_mrc
from ranker.runtime.star import format_block, read_star, write_star

PIXEL_SIZE_A = 1.77          # EMPIAR-10017 micrographs as redistributed
PICK_DIAMETER_PX = 108       # the discs of masks/ (about 190 A)
VOLTAGE_KV = 300.0           # EMPIAR-10017 (not used: no CTF correction)
CS_MM = 2.0
AMPLITUDE_CONTRAST = 0.1

SUBDIR = "empiar10017_betagal"


# ======================================================================================
# reading the redistributed files
# ======================================================================================
def list_micrographs(realdata_dir: str) -> list[dict]:
    """The micrographs of ``realdata_dir/empiar10017_betagal`` (or of ``realdata_dir`` itself):
    [{name, image, mask, coords (path or None)}], sorted by name."""
    root = os.path.join(realdata_dir, SUBDIR)
    if not os.path.isdir(root):
        root = realdata_dir
    out = []
    for image in sorted(glob.glob(os.path.join(root, "images", "*.jpg"))):
        name = os.path.splitext(os.path.basename(image))[0]
        mask = os.path.join(root, "masks", name + "_mask.jpg")
        coords = os.path.join(root, "coords", name + ".csv")
        if not os.path.isfile(mask):
            raise FileNotFoundError(f"{mask}: no pick mask for {image}")
        out.append(dict(name=name, image=image, mask=mask, coords=coords if os.path.isfile(coords) else None))
    if not out:
        raise FileNotFoundError(f"{root}/images/*.jpg: no micrographs")
    return out


def read_inverted(path: str) -> np.ndarray:
    """An 8-bit micrograph as float32 with protein BRIGHT (255 - value)."""
    from PIL import Image

    return 255.0 - np.asarray(Image.open(path).convert("L"), dtype=np.float32)


def read_mask(path: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L")) > 127


def read_coords_csv(path: str) -> np.ndarray:
    """The shipped pick list (X-Coordinate, Y-Coordinate, Diameter): (n, 2) array of x, y in px."""
    return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)[:, :2]


# ======================================================================================
# picks from the masks
# ======================================================================================
def _disc(radius_px: float) -> np.ndarray:
    r = int(np.ceil(radius_px))
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return (x * x + y * y) <= radius_px * radius_px


def pick_centres(mask: np.ndarray, diameter_px: float = PICK_DIAMETER_PX, min_arc: float = 0.2,
                 tol_px: float = 3.0, merge_px: float = 5.0) -> np.ndarray:
    """Centres (x, y) of the discs of a pick mask, overlapping ones included.

    A circle Hough transform of fixed radius on the mask boundary: each boundary pixel votes for the
    ring of centres one radius away; a centre needs ``min_arc`` of a lone disc's votes (overlapped
    discs keep part of their rim) and room for a disc of radius - ``tol_px`` inside the mask. Peaks
    closer than ``merge_px`` are one disc."""
    radius = diameter_px / 2.0
    fits = ndi.distance_transform_edt(mask) >= radius - tol_px
    boundary = (mask & ~ndi.binary_erosion(mask)).astype(np.float32)
    r = int(np.ceil(radius)) + 2
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    ring = (np.abs(np.hypot(x, y) - radius) <= 1.0).astype(np.float32)
    lone = np.pad(_disc(radius), 2)
    lone_boundary = (lone & ~ndi.binary_erosion(lone)).astype(np.float32)
    full = signal.fftconvolve(lone_boundary, ring, mode="same").max()
    votes = signal.fftconvolve(boundary, ring, mode="same") / full
    peaks = (votes == ndi.maximum_filter(votes, size=9)) & (votes >= min_arc) & fits
    ys, xs = np.nonzero(peaks)
    order = np.argsort(-votes[ys, xs])
    kept = np.empty((0, 2))
    for i in order:  # strongest first; drop the other peaks of a plateau already taken
        p = np.array([xs[i], ys[i]], float)
        if not len(kept) or np.min(np.hypot(*(kept - p).T)) > merge_px:
            kept = np.vstack([kept, p])
    out = kept
    return out[np.lexsort((out[:, 0], out[:, 1]))]


def compare_with_coords(centres: np.ndarray, coords: np.ndarray, tol_px: float = 3.0) -> dict:
    """How the mask-derived centres match an explicit pick list: counts and distances (px)."""
    d_csv, _ = cKDTree(centres).query(coords)
    d_found, _ = cKDTree(coords).query(centres)
    return dict(n_list=len(coords), n_found=len(centres), list_matched=int((d_csv <= tol_px).sum()),
                found_matched=int((d_found <= tol_px).sum()), max_error_px=float(d_csv.max()),
                median_error_px=float(np.median(d_csv)), tol_px=tol_px)


# ======================================================================================
# micrograph maps: unpadded area, core score, carbon edges and contamination
# ======================================================================================
def _longest_run(ok: np.ndarray) -> tuple[int, int]:
    best, start = (0, 0), None
    for i, v in enumerate(list(ok) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


def unpadded_region(image: np.ndarray, margin_px: int = 12) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1) of the micrograph without its striped padding: the padding repeats the edge
    pixels, so its columns have no horizontal gradient (and its rows no vertical one)."""
    dx = np.abs(np.diff(image, axis=1)).mean(axis=0)
    dy = np.abs(np.diff(image, axis=0)).mean(axis=1)
    x0, x1 = _longest_run(dx > 0.25 * np.median(dx))
    y0, y1 = _longest_run(dy > 0.25 * np.median(dy))
    return x0 + margin_px, x1 - margin_px, y0 + margin_px, y1 - margin_px


def _normalised_filter(x: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    num = ndi.gaussian_filter(np.where(valid, x, 0.0), sigma)
    return num / np.maximum(ndi.gaussian_filter(valid.astype(float), sigma), 1e-3)


class MicrographMaps:
    """Everything the pick choice needs from one micrograph.

    ``z``: the inverted micrograph, (value - median) / (1.4826 MAD) over the unpadded area (padding
    set to 0); ``core``: the core score on a grid binned by ``core_bin`` (4 px); ``artefact`` and
    ``carbon``: boolean maps binned by ``art_bin`` (8 px)."""

    core_bin = 4
    art_bin = 8

    def __init__(self, image: np.ndarray, diameter_px: float = PICK_DIAMETER_PX,
                 pixel_size_A: float = PIXEL_SIZE_A):
        self.shape = image.shape
        self.region = x0, x1, y0, y1 = unpadded_region(image)
        valid = np.zeros(image.shape, bool)
        valid[y0:y1, x0:x1] = True
        v = image[valid]
        med = float(np.median(v))
        mad = float(np.median(np.abs(v - med))) * 1.4826
        self.z = ((image - med) / mad).astype(np.float32)  # padding kept (it is written to the MRC)
        z = np.where(valid, self.z, 0.0)
        # core score, binned 4: low-pass sigma 7 A, disc mean of radius 0.2 pick diameters
        b = self.core_bin
        h, w = (s // b for s in image.shape)
        zb = z[:h * b, :w * b].reshape(h, b, w, b).mean(axis=(1, 3))
        self.valid_b = valid[:h * b, :w * b].reshape(h, b, w, b).all(axis=(1, 3))
        low = _normalised_filter(zb, self.valid_b, 7.0 / (pixel_size_A * b))
        k = _disc(0.2 * diameter_px / b).astype(float)
        self.core = signal.fftconvolve(low, k / k.sum(), mode="same")
        self.core_max_disc = ndi.maximum_filter(self.core, footprint=_disc(0.5 * diameter_px / b))
        # artefacts, binned 8: strong gradients of the 48 px low-pass (carbon edges, blobs) and very
        # bright (dark before inversion) 16 px low-pass (contamination)
        a = self.art_bin
        h, w = (s // a for s in image.shape)
        za = z[:h * a, :w * a].reshape(h, a, w, a).mean(axis=(1, 3))
        va = valid[:h * a, :w * a].reshape(h, a, w, a).all(axis=(1, 3))
        broad = _normalised_filter(za, va, 6.0)
        grad = ndi.gaussian_gradient_magnitude(broad, 2.0)
        fine = _normalised_filter(za, va, 2.0)
        self.artefact = ((grad > 0.08) | (fine > 2.5)) & va
        # contamination: bright blobs reaching 4 (a particle reaches about 3 at this scale)
        lab, n = ndi.label((fine > 2.5) & va)
        peak = ndi.maximum(fine, lab, np.arange(1, n + 1)) if n else np.zeros(0)
        self.bright = np.isin(lab, 1 + np.flatnonzero(peak >= 4.0))
        self.fine = fine
        # carbon: large areas of thick (bright after inversion) support that touch an artefact edge
        lab, n = ndi.label((broad > 0.8) & va)
        near = ndi.binary_dilation(self.artefact, iterations=3)
        carbon = np.zeros_like(va)
        for i, sl in enumerate(ndi.find_objects(lab), 1):
            comp = lab[sl] == i
            if comp.sum() >= 0.005 * va.size and (near[sl] & comp).any():
                carbon[sl] |= comp
        self.carbon = carbon
        self.valid_a = va
        self._grown: dict = {}

    # -- look-ups at full-resolution pixel positions (x, y)
    def core_at(self, xy: np.ndarray) -> np.ndarray:
        b = self.core_bin
        i = np.clip((np.asarray(xy)[:, 1] // b).astype(int), 0, self.core.shape[0] - 1)
        j = np.clip((np.asarray(xy)[:, 0] // b).astype(int), 0, self.core.shape[1] - 1)
        return self.core[i, j]

    def core_max_within_radius(self, xy: np.ndarray) -> np.ndarray:
        b = self.core_bin
        i = np.clip((np.asarray(xy)[:, 1] // b).astype(int), 0, self.core.shape[0] - 1)
        j = np.clip((np.asarray(xy)[:, 0] // b).astype(int), 0, self.core.shape[1] - 1)
        return self.core_max_disc[i, j]

    def box_inside(self, xy: np.ndarray, box_px: int, unpadded: bool = True) -> np.ndarray:
        """Whether a box of ``box_px`` (full resolution) centred at each point lies inside the
        unpadded area (``unpadded``) or at least inside the micrograph."""
        x, y = np.asarray(xy, float).T
        h = box_px / 2.0
        if unpadded:
            x0, x1, y0, y1 = self.region
        else:
            x0, y0, (y1, x1) = 0, 0, self.shape
        return (x - h >= x0) & (x + h <= x1) & (y - h >= y0) & (y + h <= y1)

    def near_artefact(self, xy: np.ndarray, radius_px: float) -> np.ndarray:
        """Whether an artefact pixel or carbon lies within ``radius_px`` of each point."""
        a = self.art_bin
        key = round(radius_px / a, 3)
        if key not in self._grown:
            self._grown[key] = ndi.binary_dilation(self.artefact | self.carbon, structure=_disc(radius_px / a))
        grow = self._grown[key]
        i = np.clip((np.asarray(xy)[:, 1] // a).astype(int), 0, grow.shape[0] - 1)
        j = np.clip((np.asarray(xy)[:, 0] // a).astype(int), 0, grow.shape[1] - 1)
        return grow[i, j]


# ======================================================================================
# choosing boxes
# ======================================================================================
def _spaced(xy: np.ndarray, min_dist_px: float, rng, limit: int | None = None) -> np.ndarray:
    """A random subset of points no two closer than ``min_dist_px`` (greedy in random order)."""
    kept = np.empty((0, 2))
    for i in rng.permutation(len(xy)):
        if limit is not None and len(kept) >= limit:
            break
        if not len(kept) or np.min(np.hypot(*(kept - xy[i]).T)) >= min_dist_px:
            kept = np.vstack([kept, xy[i]])
    return kept


def candidate_boxes(maps: MicrographMaps, centres: np.ndarray, box_px: int, rng,
                    diameter_px: float = PICK_DIAMETER_PX, empty_core_max: float = 1.0) -> dict:
    """Every box this micrograph offers, by kind: {kind: [(x, y, detail), ...]} in full-res px.

    ``box_px``: full-resolution box. ``empty_core_max``: a point is particle-free if no point within
    one disc radius has a core score this high (set from the marked picks, see ``build``)."""
    radius = diameter_px / 2.0
    tree = cKDTree(centres) if len(centres) else None
    out: dict[str, list] = {k: [] for k in ("good", "offcentre", "noise", "edge", "ice")}
    clean = maps.box_inside(centres, box_px) & ~maps.near_artefact(centres, box_px / 2.0)
    # good: every marked pick whose box is inside the unpadded area and clear of artefacts
    for x, y in centres[clean]:
        out["good"].append((x, y, "marked_pick"))
    # offcentre: a marked pick shifted 0.3-0.5 diameters, landing on no particle core and no disc centre
    for x, y in centres[clean]:
        for _ in range(8):
            r = rng.uniform(0.3, 0.5) * diameter_px
            t = rng.uniform(0, 2 * np.pi)
            p = np.array([[x + r * np.cos(t), y + r * np.sin(t)]])
            if not maps.box_inside(p, box_px)[0] or maps.near_artefact(p, box_px / 2.0)[0]:
                continue
            d_other = tree.query(p[0], k=2)[0][1] if len(centres) > 1 else np.inf
            if d_other < radius or maps.core_at(p)[0] >= empty_core_max:
                continue
            out["offcentre"].append((p[0, 0], p[0, 1], f"shift_px={r:.1f}"))
            break
    # noise: grid points with no marked disc overlapping and no particle-like core within a radius
    x0, x1, y0, y1 = maps.region
    step = 16
    gy, gx = np.mgrid[y0:y1:step, x0:x1:step]
    grid = np.c_[gx.ravel(), gy.ravel()].astype(float)
    grid = grid[maps.box_inside(grid, box_px) & ~maps.near_artefact(grid, box_px / 2.0)]
    if tree is not None:
        grid = grid[tree.query(grid)[0] >= diameter_px]
    grid = grid[maps.core_max_within_radius(grid) < empty_core_max]
    for x, y in _spaced(grid, diameter_px, rng):
        out["noise"].append((x, y, "empty_ice"))
    # edge, padding: boxes straddling the unpadded area's border by 15-40 % of the box
    for side in ("left", "right", "top", "bottom"):
        for _ in range(60):
            u = rng.uniform(0.1, 0.35) * box_px  # centre this far inside the unpadded area
            if side in ("left", "right"):
                y = rng.uniform(y0 + box_px / 2, y1 - box_px / 2)
                x = x0 + u if side == "left" else x1 - u
            else:
                x = rng.uniform(x0 + box_px / 2, x1 - box_px / 2)
                y = y0 + u if side == "top" else y1 - u
            p = np.array([[x, y]])
            if maps.box_inside(p, box_px, unpadded=False)[0] and not maps.near_artefact(p, box_px / 2.0)[0]:
                out["edge"].append((x, y, f"padding_{side}"))
    # edge, carbon: points on long artefact edges; ice: on compact bright blobs (contamination)
    a = maps.art_bin
    lab, n = ndi.label(maps.artefact)
    for i, sl in enumerate(ndi.find_objects(lab), 1):
        comp = lab[sl] == i
        ys, xs = np.nonzero(comp)
        ys, xs = (ys + sl[0].start + 0.5) * a, (xs + sl[1].start + 0.5) * a
        extent = max(np.ptp(xs), np.ptp(ys))
        pts = np.c_[xs, ys]
        pts = pts[maps.box_inside(pts, box_px, unpadded=False)]
        if not len(pts):
            continue
        if extent >= 4 * diameter_px:
            for x, y in _spaced(pts, diameter_px, rng):
                out["edge"].append((x, y, "carbon_edge"))
        elif (maps.bright[sl] & comp).any() and not (maps.carbon[sl] & comp).any():
            # the blob's brightest point and up to two more spaced points of its core (>= 4)
            f = maps.fine[(pts[:, 1] // a).astype(int), (pts[:, 0] // a).astype(int)]
            bi = int(np.argmax(f))
            core = np.delete(pts[f >= 4.0], np.flatnonzero(np.all(pts[f >= 4.0] == pts[bi], axis=1)), axis=0)
            keep = [pts[bi]] + list(_spaced(core, 0.3 * diameter_px, rng, limit=2))
            for x, y in keep:
                out["ice"].append((x, y, "contamination"))
    return out


def _subsample(items: list, n: int | None, rng) -> list:
    if n is None or len(items) <= n:
        return list(items)
    return [items[i] for i in sorted(rng.choice(len(items), n, replace=False))]


# ======================================================================================
# RELION project
# ======================================================================================
def _run(cmd: list[str], cwd: str, log_path: str, timeout: float | None = None) -> float:
    """Run a RELION program at niceness 10; returns seconds; raises with the log's tail on failure."""
    t0 = time.time()
    with open(log_path, "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        # RELION at niceness 10 (not 10 more than ours: the builder may itself run under nice)
        nice = ["nice", "-n", str(max(0, 10 - os.nice(0)))]
        r = subprocess.run(nice + cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    if r.returncode != 0:
        tail = open(log_path, errors="replace").read()[-2000:]
        raise RuntimeError(f"{cmd[0]} failed (rc {r.returncode}); log {log_path}:\n{tail}")
    return time.time() - t0


def write_micrograph_mrc(path: str, z: np.ndarray, pixel_size_A: float = PIXEL_SIZE_A) -> None:
    write_mrc(path, z, pixel_size_A, stack=False)


def optics_block(name: str, pixel_size_A: float, box_px: int | None = None, micrographs: bool = False) -> str:
    labels = ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographPixelSize" if micrographs else
              "rlnMicrographOriginalPixelSize", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]
    row = ["opticsGroup1", 1, PIXEL_SIZE_A, VOLTAGE_KV, CS_MM, AMPLITUDE_CONTRAST]
    if not micrographs:
        labels += ["rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality"]
        row += [float(pixel_size_A), int(box_px), 2]
    return format_block(name, labels, [row])


def write_pipeline(path: str, it: int) -> None:
    """default_pipeline.star of a project with Import/job001 (particles) and Class2D/job002."""
    blocks = [
        format_block("pipeline_general", ["rlnPipeLineJobCounter"], [[3]], loop=False),
        format_block("pipeline_processes", ["rlnPipeLineProcessName", "rlnPipeLineProcessAlias",
                                            "rlnPipeLineProcessType", "rlnPipeLineProcessStatus"],
                     [["Import/job001/", "None", 0, 2], ["Class2D/job002/", "None", 8, 2]]),
        format_block("pipeline_nodes", ["rlnPipeLineNodeName", "rlnPipeLineNodeType"],
                     [["Import/job001/particles.star", 3], [f"Class2D/job002/run_it{it:03d}_data.star", 3],
                      [f"Class2D/job002/run_it{it:03d}_model.star", 8]]),
        format_block("pipeline_input_edges", ["rlnPipeLineEdgeFromNode", "rlnPipeLineEdgeProcess"],
                     [["Import/job001/particles.star", "Class2D/job002/"]]),
        format_block("pipeline_output_edges", ["rlnPipeLineEdgeProcess", "rlnPipeLineEdgeToNode"],
                     [["Import/job001/", "Import/job001/particles.star"],
                      ["Class2D/job002/", f"Class2D/job002/run_it{it:03d}_data.star"],
                      ["Class2D/job002/", f"Class2D/job002/run_it{it:03d}_model.star"]]),
    ]
    write_star(path, blocks)


def refine_command(K: int, n_iter: int, diameter_A: float, threads: int = 1, psi_step_deg: float = 10.0,
                   offset_range_px: float = 5.0, offset_step_px: float = 2.0, tau2_fudge: float = 2.0,
                   allow_coarser: bool = True, highres_exp_A: float = 20.0,
                   random_seed: int = -1) -> list[str]:
    """relion_refine 2D classification (EM), WITHOUT CTF correction, from the project root.
    ``allow_coarser``: RELION's --allow_coarser_sampling (coarser sampling while the resolution is low;
    several times faster on one thread). ``highres_exp_A``: --strict_highres_exp, the E-step's resolution
    limit (A; 0 = none): the denoised micrographs' power falls 1000-fold between 90 and 35 A, yet
    RELION's own estimate climbs to about 13 A within three iterations and each iteration then takes
    several minutes on one thread. ``random_seed``: -1 = RELION's default (from the clock); RELION records
    the seed it used as rlnRandomSeed in the optimiser STAR file."""
    return ["relion_refine", "--o", "Class2D/job002/run", "--i", "Import/job001/particles.star",
            "--dont_combine_weights_via_disc", "--preread_images", "--pool", "30", "--pad", "2",
            "--iter", str(n_iter), "--tau2_fudge", f"{tau2_fudge:g}", "--particle_diameter", f"{diameter_A:g}",
            "--K", str(K), "--flatten_solvent", "--zero_mask", "--oversampling", "1",
            "--psi_step", f"{psi_step_deg:g}", "--offset_range", f"{offset_range_px:g}",
            "--offset_step", f"{offset_step_px:g}", "--norm", "--scale", "--j", str(threads)] + \
        (["--allow_coarser_sampling"] if allow_coarser else []) + \
        (["--strict_highres_exp", f"{highres_exp_A:g}"] if highres_exp_A > 0 else []) + \
        (["--random_seed", str(random_seed)] if random_seed >= 0 else [])


DEFAULT_COUNTS = dict(good=1800, offcentre=300, noise=300, edge=250, ice=None)


def build(realdata_dir: str, out_dir: str, bin_factor: float = 2.0, box_px: int = 96,
          diameter_A: float = 160.0, K: int = 20, n_iter: int = 15, counts: dict | None = None,
          seed: int = 0, refine: bool = True, threads: int = 1, psi_step_deg: float = 10.0,
          offset_range_px: float = 5.0, offset_step_px: float = 2.0, highres_exp_A: float = 20.0,
          relion_seed: int = -1, log=print) -> dict:
    """Build the project in ``out_dir`` (micrographs, coordinates, extracted stacks, Class2D/job002,
    truth.csv, class_truth.csv, classes_montage.png, build.json) and return build.json's content.

    ``bin_factor``: full-resolution px per extracted px; ``box_px``: extracted (binned) box, so the
    full-resolution box is ``box_px * bin_factor``; ``counts``: at most this many boxes of each kind
    (None = all available)."""
    t_start = time.time()
    counts = dict(DEFAULT_COUNTS, **(counts or {}))
    rng = np.random.default_rng(seed)
    full_box = box_px * bin_factor
    if abs(full_box - round(full_box)) > 1e-6 or round(full_box) % 2:
        raise ValueError(f"box_px * bin_factor = {full_box:g}: must be an even whole number of micrograph px")
    full_box = int(round(full_box))
    pixel_size_A = PIXEL_SIZE_A * bin_factor
    P = lambda *a: os.path.join(out_dir, *a)  # noqa: E731
    for d in ("Micrographs", "Coordinates/Micrographs", "Import/job001", "Class2D/job002", "checks"):
        os.makedirs(P(d), exist_ok=True)

    # ---- picks and candidate boxes per micrograph
    mics = list_micrographs(realdata_dir)
    per_mic, info_mics, coords_check = [], [], None
    good_core = []
    for m in mics:
        image = read_inverted(m["image"])
        centres = pick_centres(read_mask(m["mask"]))
        if m["coords"]:
            coords_check = dict(micrograph=m["name"], **compare_with_coords(centres, read_coords_csv(m["coords"])))
        maps = MicrographMaps(image)
        good_core.append(maps.core_at(centres[maps.box_inside(centres, full_box)]))
        per_mic.append((m, centres, maps))
        log(f"  {m['name']}: {len(centres)} marked picks, unpadded {maps.region}")
    good_core = np.concatenate(good_core)
    empty_core_max = float(np.percentile(good_core, 5))
    log(f"  particle-like core score: >= {empty_core_max:.3f} (5th percentile of {len(good_core)} marked picks)")

    cand = {k: [] for k in ("good", "offcentre", "noise", "edge", "ice")}
    for m, centres, maps in per_mic:
        c = candidate_boxes(maps, centres, full_box, rng, empty_core_max=empty_core_max)
        for kind, items in c.items():
            cand[kind] += [(m["name"], x, y, detail) for x, y, detail in items]
        info_mics.append(dict(name=m["name"], n_marked=len(centres), region=maps.region,
                              **{f"n_{k}_available": len(v) for k, v in c.items()}))
    available = {k: len(v) for k, v in cand.items()}
    log(f"  boxes available: {available}")
    # padding and carbon edges share the "edge" budget half and half where both exist
    chosen = {}
    for kind, items in cand.items():
        if kind == "edge" and counts["edge"] is not None:
            carbon = [i for i in items if i[3] == "carbon_edge"]
            padding = [i for i in items if i[3] != "carbon_edge"]
            n_c = min(len(carbon), counts["edge"] // 2)
            chosen[kind] = _subsample(carbon, n_c, rng) + _subsample(padding, counts["edge"] - n_c, rng)
        else:
            chosen[kind] = _subsample(items, counts.get(kind), rng)
    log(f"  boxes chosen: { {k: len(v) for k, v in chosen.items()} }")

    # ---- micrographs, coordinates, truth per coordinate
    picks_by_mic = {m["name"]: [] for m, _, _ in per_mic}
    for kind, items in chosen.items():
        for name, x, y, detail in items:
            picks_by_mic[name].append((round(float(x)), round(float(y)), kind, detail))
    mic_rows = []
    for m, centres, maps in per_mic:
        name = m["name"]
        write_micrograph_mrc(P("Micrographs", name + ".mrc"), maps.z)
        mic_rows.append([f"Micrographs/{name}.mrc", 1])
        picks = sorted(picks_by_mic[name], key=lambda p: (p[1], p[0]))
        picks_by_mic[name] = picks
        coords = [[float(x), float(y)] for x, y, _, _ in picks]
        write_star(P("Coordinates", "Micrographs", name + "_pick.star"),
                   [format_block("", ["rlnCoordinateX", "rlnCoordinateY"], coords)])
    write_star(P("Micrographs", "micrographs.star"),
               [optics_block("optics", PIXEL_SIZE_A, micrographs=True),
                format_block("micrographs", ["rlnMicrographName", "rlnOpticsGroup"], mic_rows)])

    # ---- extraction with relion_preprocess (binning with --scale, background normalisation)
    bg_radius = int(round(0.375 * box_px))
    extract = ["relion_preprocess", "--i", "Micrographs/micrographs.star", "--coord_dir", "Coordinates/",
               "--coord_suffix", "_pick.star", "--part_star", "Extract/particles.star", "--part_dir", "Extract/",
               "--extract", "--extract_size", str(full_box), "--norm", "--bg_radius", str(bg_radius),
               "--white_dust", "-1", "--black_dust", "-1"]
    if full_box != box_px:
        extract += ["--scale", str(box_px)]
    os.makedirs(P("Extract"), exist_ok=True)
    t_extract = _run(extract, out_dir, P("Extract", "run.out"))
    log(f"  relion_preprocess --extract: {t_extract:.0f} s")

    # ---- Import/job001/particles.star and truth.csv (matched by micrograph and coordinates)
    blocks = read_star(P("Extract", "particles.star"))
    parts = blocks["particles"]
    col = {lab: i for i, lab in enumerate(parts.labels)}
    truth_of = {}
    for name, picks in picks_by_mic.items():
        for x, y, kind, detail in picks:
            truth_of[(f"Micrographs/{name}.mrc", x, y)] = (kind, detail)
    truth_rows = []
    maps_of = {m["name"]: maps for m, _, maps in per_mic}
    for row in parts.rows:
        mic = row[col["rlnMicrographName"]]
        x, y = round(float(row[col["rlnCoordinateX"]])), round(float(row[col["rlnCoordinateY"]]))
        kind, detail = truth_of[(mic, x, y)]
        maps = maps_of[os.path.splitext(os.path.basename(mic))[0]]
        xy = np.array([[x, y]], float)
        truth_rows.append(dict(rlnImageName=row[col["rlnImageName"]], kind=kind, rlnMicrographName=mic,
                               x=x, y=y, detail=detail, core_score=round(float(maps.core_at(xy)[0]), 3),
                               core_max_within_radius=round(float(maps.core_max_within_radius(xy)[0]), 3)))
    if len(truth_rows) != sum(len(v) for v in picks_by_mic.values()):
        raise RuntimeError(f"relion_preprocess extracted {len(truth_rows)} of "
                           f"{sum(len(v) for v in picks_by_mic.values())} boxes")
    shutil.copyfile(P("Extract", "particles.star"), P("Import", "job001", "particles.star"))
    write_particle_truth(out_dir, truth_rows)
    n_kind = dict(Counter(r["kind"] for r in truth_rows))
    log(f"  particles: {len(truth_rows)} {n_kind}")

    cleanliness = truth_cleanliness(truth_rows, empty_core_max)
    pick_montages(out_dir, full_box)

    info = dict(source="EMPIAR-10017 (beta-galactosidase) via the CryoSegNet redistribution (MIT)",
                micrographs=info_mics, pick_list_check=coords_check, particle_like_core_min=empty_core_max,
                available=available, counts=n_kind, n_particles=len(truth_rows), cleanliness=cleanliness,
                bin_factor=bin_factor, box_px=box_px, full_box_px=full_box, pixel_size_A=pixel_size_A,
                diameter_A=diameter_A, K=K, n_iter=n_iter, seed=seed, extract_command=" ".join(extract),
                seconds_extract=round(t_extract, 1), ctf="none (denoised JPEGs carry no CTF information)")

    if refine:
        cmd = refine_command(K, n_iter, diameter_A, threads, psi_step_deg, offset_range_px, offset_step_px,
                             highres_exp_A=highres_exp_A, random_seed=relion_seed)
        with open(P("Class2D", "job002", "note.txt"), "w") as fh:
            fh.write(f" ++++ Executing new job on {time.ctime()}\n ++++ with the following command(s): \n"
                     f"{' '.join(cmd)}\n ++++ \n")
        log("  " + " ".join(cmd))
        t_refine = _run(cmd, out_dir, P("Class2D", "job002", "run.out"))
        log(f"  relion_refine: {t_refine:.0f} s")
        info.update(refine_command=" ".join(cmd), seconds_refine=round(t_refine, 1))
        info.update(finish_class2d(out_dir, n_iter))
    info["seconds_total"] = round(time.time() - t_start, 1)
    with open(P("build.json"), "w") as fh:
        json.dump(info, fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    return info


def finish_class2d(out_dir: str, it: int) -> dict:
    """class_truth.csv, classes_montage.png and default_pipeline.star of a finished Class2D/job002."""
    from ranker.develop.simulate.truth import analyse_class2d, montage, strip_progress
    from ranker.develop.truth import class_summary

    rows = analyse_class2d(out_dir, it)
    montage(out_dir, it, rows, os.path.join(out_dir, "classes_montage.png"))  # the simulator's class montage
    write_pipeline(os.path.join(out_dir, "default_pipeline.star"), it)
    strip_progress(os.path.join(out_dir, "Class2D", "job002", "run.out"))
    return dict(class_summary=class_summary(rows))


# ======================================================================================
# checks: how clean the truth is
# ======================================================================================
def truth_cleanliness(truth_rows: list[dict], particle_like: float) -> dict:
    """Per kind: n, the fraction of boxes whose centre is particle-like (core score >= the 5th
    percentile of the marked picks) and whose neighbourhood (one disc radius) holds a particle-like
    point, and the median core score."""
    out = {}
    for kind in sorted({r["kind"] for r in truth_rows}):
        c = np.array([r["core_score"] for r in truth_rows if r["kind"] == kind])
        cm = np.array([r["core_max_within_radius"] for r in truth_rows if r["kind"] == kind])
        out[kind] = dict(n=len(c), frac_centre_particle_like=round(float((c >= particle_like).mean()), 4),
                         frac_particle_like_within_radius=round(float((cm >= particle_like).mean()), 4),
                         median_core_score=round(float(np.median(c)), 3))
    return out


def pick_montages(build_dir: str, box_px: int, rng=None, n: int = 48, z_range=(-2.5, 3.0)) -> list[str]:
    """For checking the truth by eye: ``checks/picks_<kind>.png``, a random sample of ``n`` boxes of each
    kind of ``truth.csv``, cut from the written micrographs (full resolution ``box_px``, lightly
    low-passed, ONE grey scale for all kinds: ``z_range`` in micrograph MAD units), the 108 px pick circle
    drawn. Returns the paths written."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0) if rng is None else rng
    truth = read_particle_truth(build_dir)
    os.makedirs(os.path.join(build_dir, "checks"), exist_ok=True)
    cache: dict = {}
    tile, cols, h = 96, 8, box_px // 2
    lo, hi = z_range
    written = []
    for kind in [k for k in ("good", "offcentre", "noise", "edge", "ice") if any(r["kind"] == k for r in truth)]:
        rows = [r for r in truth if r["kind"] == kind]
        sel = [rows[i] for i in sorted(rng.choice(len(rows), min(n, len(rows)), replace=False))]
        sheet = Image.new("RGB", (cols * tile, ((len(sel) + cols - 1) // cols) * tile))
        for k, r in enumerate(sel):
            mic = r["rlnMicrographName"]
            if mic not in cache:
                cache[mic] = read_mrc(os.path.join(build_dir, mic))
            x, y = int(r["x"]), int(r["y"])
            cut = ndi.gaussian_filter(cache[mic][max(y - h, 0):y + h, max(x - h, 0):x + h], 2.0)
            im = Image.fromarray((np.clip((cut - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8))
            im = im.resize((tile, tile)).convert("RGB")
            d = ImageDraw.Draw(im)
            rr = PICK_DIAMETER_PX / 2 * tile / box_px
            d.ellipse([tile / 2 - rr, tile / 2 - rr, tile / 2 + rr, tile / 2 + rr], outline=(255, 80, 0))
            d.text((3, 2), str(k + 1), fill=(255, 255, 0))
            sheet.paste(im, ((k % cols) * tile, (k // cols) * tile))
        path = os.path.join(build_dir, "checks", f"picks_{kind}.png")
        sheet.save(path)
        written.append(path)
    return written


# ======================================================================================
# the trimmed fixture
# ======================================================================================
FIXTURE_FILES = ("default_pipeline.star", "truth.csv", "class_truth.csv", "classes_montage.png", "build.json")


def trim_fixture(build_dir: str, fixture_dir: str, it: int, realdata_dir: str | None = None) -> list[str]:
    """Copy what the ranker and the evaluation need into ``fixture_dir``: the final iteration's
    data/model/optimiser STAR files and class averages, the pipeline, the truth, the montages and
    build.json (no micrographs, no particle stacks), and the redistributors' licence from
    ``realdata_dir``. README.md is written by hand. Returns the copied paths, relative to ``fixture_dir``."""
    copied = []
    for sub in ("Class2D/job002", "checks"):
        os.makedirs(os.path.join(fixture_dir, sub), exist_ok=True)
    names = [f"Class2D/job002/run_it{it:03d}_{x}" for x in ("data.star", "model.star", "optimiser.star",
                                                              "classes.mrcs")]
    names += ["Class2D/job002/note.txt"] + list(FIXTURE_FILES)
    names += [os.path.relpath(p, build_dir) for p in sorted(glob.glob(os.path.join(build_dir, "checks", "*.png")))]
    for rel in names:
        src = os.path.join(build_dir, rel)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(fixture_dir, rel))
            copied.append(rel)
    if realdata_dir:
        for lic in glob.glob(os.path.join(realdata_dir, SUBDIR, "LICENSE*")) + \
                glob.glob(os.path.join(realdata_dir, "LICENSE*")):
            shutil.copyfile(lic, os.path.join(fixture_dir, os.path.basename(lic)))
            copied.append(os.path.basename(lic))
    return copied
