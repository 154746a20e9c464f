"""How far simulated training data are from real data: image statistics of particle boxes and
feature distributions of class averages, on comparable terms.

Real material (``shared/realdata``, see its README; nothing here trains or calibrates on it):

* the contamination micrograph of micrograph_cleaner_em (real noise, pixel size unknown, assumed
  ``CONTAMINATION_APIX_A``): boxes at its 45 RELION autopick coordinates, split by its junk
  probability mask into picks off the contamination (``real picks``) and on/at the edge of it
  (``real junk picks``), and random junk-free background boxes (``real background``);
* the 30 human-graded MicAssess/Magellon micrographs (8-bit, heavily binned; pixel size unknown,
  assumed ``GRADED_APIX_A``): random boxes of the empty-vitreous-ice folder (``graded background``)
  and boxes centred on the densest blobs of the contamination/aggregate folder (``graded junk``);
* optionally real Class2D jobs (e.g. the EMPIAR-10017 fixture): their class features, for
  EVALUATION only (never to choose the simulation recipe).

Every box is brought to the same box in A as the simulated job it is compared with, at the
coarser of the two pixel sizes (Fourier cropping with ranker.runtime.fourier.resize_map), real
boxes contrast-inverted (dense = bright, as RELION extracts with --invert_contrast) and normalised
like RELION (background outside 0.75 of the box radius: mean 0, sd 1).

Per box (:func:`box_stats`): ``slope`` (log-log slope of the radial power spectrum between 0.1 and
0.9 Nyquist: 0 for white noise), ``low_high`` (log10 of the power at 0.05-0.25 over 0.75-1.0
Nyquist), ``kurtosis`` (excess kurtosis of the background pixels), ``acf_px`` (radius where the
autocorrelation falls to 0.5), ``ramp`` (range of a plane fitted to the background over the box,
background sd), ``contrast`` (sd inside the central circle of radius 0.3 box / background sd) and
``detail`` (sd of the 1-px high-pass inside that circle / outside it).
Per class (:func:`class_vectors`): the 24 raw features of ranker.runtime.features, plus ``roundness``
(fraction of the 64 px network image's variance explained by its rotational average) and
``hf_power`` (fraction of the network image's power above a quarter of its Nyquist frequency, i.e.
detail finer than 1/16 of the mask diameter: low for featureless blobs).
"""
from __future__ import annotations

import glob
import json
import math
import os
from collections import defaultdict

import numpy as np
from scipy import ndimage

from ranker.develop.simulate.noise import radial_power, shell_index
from ranker.develop.simulate.optics import relion_normalise
from ranker.develop.truth import read_particle_truth
from ranker.runtime.fourier import resize_map
from ranker.runtime.geometry import circle_mask, radius2_px
from ranker.runtime.mrc import read_mrc, read_stack
from ranker.runtime.star import read_star

CONTAMINATION_APIX_A = 4.0   # assumed: a K2 frame (3838 x 3710) binned 4 x; the real value is not given
GRADED_APIX_A = 8.0          # assumed: 4k Leginon exposures binned to 512 px
CONTAMINATION = "contamination_micrograph"
GRADED = "micrograph_quality_examples"
GRADED_BACKGROUND = ("5Empty_ice_no_particles_but_vitreous_ice",)
GRADED_JUNK = ("2Contamination_Aggregate_Crack_Breaking_Drifting",)
BOX_STATS = ("slope", "low_high", "kurtosis", "acf_px", "ramp", "contrast", "detail")
CLASS_EXTRA = ("roundness", "hf_power")
MEDIAN_FEATURES = ("roundness", "hf_power", "ProteinStddev", "LowpassFilteredImageStddev", "RelativeResolution")


def default_realdata() -> str:
    """``shared/realdata`` beside the checkout (the team's layout)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(os.path.dirname(root), "shared", "realdata")


def _even(v: float) -> int:
    return max(8, int(2 * round(v / 2)))


# ======================================================================================
# real sources
# ======================================================================================
class RealMicrograph:
    """The contamination micrograph: ``image`` (float64, inverted: dense = bright, mean 0),
    ``junk`` (per-pixel junk probability) and ``picks`` ((x, y) px of the autopick STAR)."""

    def __init__(self, realdata: str):
        d = os.path.join(realdata, CONTAMINATION)
        name = os.path.basename(sorted(glob.glob(os.path.join(d, "mics", "*.mrc")))[0])
        img = read_mrc(os.path.join(d, "mics", name)).astype(np.float64)
        self.image = -(img - img.mean())
        self.junk = read_mrc(os.path.join(d, "masks", name)).astype(np.float64)
        star = sorted(glob.glob(os.path.join(d, "inCoords", "relion", "*.star")))[0]
        tab = next(iter(read_star(star).values()))
        self.picks = np.stack([tab.float_column("rlnCoordinateX"), tab.float_column("rlnCoordinateY")], 1)
        self.name = name

    def cut(self, x: float, y: float, m: int):
        """The m x m box centred at (x, y) px, or None where it leaves the micrograph."""
        y0, x0 = int(round(y)) - m // 2, int(round(x)) - m // 2
        h, w = self.image.shape
        if y0 < 0 or x0 < 0 or y0 + m > h or x0 + m > w:
            return None
        return self.image[y0:y0 + m, x0:x0 + m]

    def junk_at(self, x, y, m):
        y0, x0 = int(round(y)) - m // 2, int(round(x)) - m // 2
        return self.junk[max(y0, 0):y0 + m, max(x0, 0):x0 + m]

    def background_positions(self, m: int, count: int, rng, max_junk: float = 0.3):
        """Up to ``count`` random box centres whose whole m x m box is junk-free (mask < max_junk)."""
        h, w = self.image.shape
        out = []
        for _ in range(count * 50):
            x, y = rng.uniform(m / 2, w - m / 2), rng.uniform(m / 2, h - m / 2)
            if self.junk_at(x, y, m).max() < max_junk:
                out.append((x, y))
                if len(out) == count:
                    break
        return out

    def split_picks(self, m: int):
        """(picks off the contamination, picks on or at its edge): a pick is junk when the mask
        exceeds 0.5 anywhere within a quarter box of it."""
        good, junk = [], []
        for x, y in self.picks:
            (junk if self.junk_at(x, y, max(4, m // 2)).max() > 0.5 else good).append((x, y))
        return good, junk


def graded_images(realdata: str, folders) -> list[np.ndarray]:
    """The graded micrographs of ``folders`` as float64, inverted (dense = bright), mean 0."""
    from PIL import Image

    out = []
    for folder in folders:
        for f in sorted(glob.glob(os.path.join(realdata, GRADED, folder, "*.png"))):
            a = np.asarray(Image.open(f).convert("L"), np.float64)
            out.append(-(a - a.mean()))
    return out


def blob_centres(img: np.ndarray, scale_px: float, count: int, border: int):
    """(x, y) of the ``count`` strongest local maxima of ``img`` smoothed at ``scale_px``
    (dense blobs after inversion), at least ``border`` px from the edges and 2 scales apart."""
    s = ndimage.gaussian_filter(img, scale_px) - ndimage.gaussian_filter(img, 4 * scale_px)
    peaks = (s == ndimage.maximum_filter(s, size=int(4 * scale_px) | 1))
    ys, xs = np.nonzero(peaks)
    h, w = img.shape
    ok = (ys >= border) & (xs >= border) & (ys < h - border) & (xs < w - border)
    order = np.argsort(-s[ys[ok], xs[ok]])[:count]
    return [(float(xs[ok][i]), float(ys[ok][i])) for i in order]


def cut_box(img: np.ndarray, x: float, y: float, m: int):
    y0, x0 = int(round(y)) - m // 2, int(round(x)) - m // 2
    if y0 < 0 or x0 < 0 or y0 + m > img.shape[0] or x0 + m > img.shape[1]:
        return None
    return img[y0:y0 + m, x0:x0 + m]


# ======================================================================================
# statistics of one normalised box
# ======================================================================================
def to_grid(box: np.ndarray, n: int) -> np.ndarray:
    """Fourier-crop an m x m box to n x n (n <= m), then normalise like RELION."""
    b = np.asarray(box, np.float64)
    if b.shape[-1] != n:
        b = resize_map(b, n)
    return relion_normalise(b, 0.75 * n / 2)


def box_stats(img: np.ndarray) -> dict:
    """The statistics of the module docstring for one normalised n x n box."""
    n = img.shape[-1]
    p = radial_power(img)
    fr = np.arange(len(p)) / (n / 2)
    sel = (fr >= 0.1) & (fr <= 0.9) & (p > 0)
    slope = float(np.polyfit(np.log(fr[sel]), np.log(p[sel]), 1)[0])
    lo = p[(fr >= 0.05) & (fr <= 0.25)].mean()
    hi = p[(fr >= 0.75) & (fr <= 1.0)].mean()
    bg = ~circle_mask(n, 0.75 * n / 2)
    v = img[bg]
    v = v - v.mean()
    kurt = float(np.mean(v ** 4) / max(np.mean(v ** 2) ** 2, 1e-12) - 3)
    # autocorrelation of the background pixels (box with the particle circle zeroed, normalised
    # by the autocorrelation of the mask so every lag is an average over background pairs)
    a = np.where(bg, img - img[bg].mean(), 0.0)
    fa, fm = np.fft.fft2(a), np.fft.fft2(bg.astype(float))
    acf = np.real(np.fft.ifft2(np.abs(fa) ** 2)) / np.maximum(np.real(np.fft.ifft2(np.abs(fm) ** 2)), 1)
    s = shell_index(n).ravel()
    prof = np.bincount(s, acf.ravel()) / np.maximum(np.bincount(s), 1)
    prof = prof / prof[0]
    below = np.nonzero(prof < 0.5)[0]
    if len(below) and below[0] > 0:
        k = below[0]
        acf_px = float(k - 1 + (prof[k - 1] - 0.5) / (prof[k - 1] - prof[k]))
    else:
        acf_px = float(n // 2)
    yy, xx = np.indices((n, n)) - n // 2
    A = np.stack([np.ones(bg.sum()), xx[bg], yy[bg]], 1)
    coef = np.linalg.lstsq(A, img[bg], rcond=None)[0]
    ramp = float(2 * math.hypot(coef[1], coef[2]) * n / max(img[bg].std(), 1e-9))
    inside = circle_mask(n, 0.3 * n)
    hp = img - ndimage.gaussian_filter(img, 1.0)
    return dict(slope=slope, low_high=float(np.log10(max(lo, 1e-12) / max(hi, 1e-12))), kurtosis=kurt,
                acf_px=acf_px, ramp=ramp, contrast=float(img[inside].std() / max(img[bg].std(), 1e-9)),
                detail=float(hp[inside].std() / max(hp[bg].std(), 1e-9)))


# ======================================================================================
# simulated particle boxes (jobs made with --keep)
# ======================================================================================
def sim_job_geometry(job: str) -> tuple[int, float]:
    info = json.load(open(os.path.join(job, "corpus_job.json")))
    return int(info["box"]), float(info["angpix"])


def sim_boxes(job: str, per_kind: int, rng) -> dict:
    """{kind: [n x n images]} of up to ``per_kind`` particles per kind of a job whose stacks
    were kept (``simulate --keep``), read as written (already normalised)."""
    truth = read_particle_truth(job)
    by_kind = defaultdict(list)
    for r in truth:
        by_kind[r["kind"]].append(r["rlnImageName"])
    stacks, out = {}, {}
    for kind, names in sorted(by_kind.items()):
        pick = [names[i] for i in sorted(rng.choice(len(names), min(per_kind, len(names)), replace=False))]
        imgs = []
        for nm in pick:
            idx, path = nm.split("@", 1)
            if path not in stacks:
                full = os.path.join(job, path)
                if not os.path.exists(full):
                    raise FileNotFoundError(f"{full}: particle stacks deleted (make the job with --keep)")
                stacks[path] = read_stack(full)
            imgs.append(stacks[path][int(idx) - 1].astype(np.float64))
        out[kind] = imgs
    return out


def ks_distance(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (max difference of the empirical CDFs)."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not len(a) or not len(b):
        return float("nan")
    x = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, x, "right") / len(a) - np.searchsorted(b, x, "right") / len(b))))


def measure_boxes(sim_jobs, realdata: str, per_kind: int = 150, n_background: int = 150, seed: int = 0,
                  real_apix: float = CONTAMINATION_APIX_A, graded_apix: float = GRADED_APIX_A) -> dict:
    """{group: {stat: [values]}} for the simulated groups (``sim good``, ``sim junk``, ``sim empty``
    and ``sim <kind>``) and the real groups of the module docstring, each simulated job compared
    at its own box in A (real boxes cut to the same extent and pixel size)."""
    rng = np.random.default_rng(seed)
    mic = RealMicrograph(realdata)
    graded_bg = graded_images(realdata, GRADED_BACKGROUND)
    graded_junk = graded_images(realdata, GRADED_JUNK)
    groups = defaultdict(lambda: defaultdict(list))

    def add(group, img):
        for k, v in box_stats(img).items():
            groups[group][k].append(v)

    done_real = set()
    for job in sim_jobs:
        box, apix = sim_job_geometry(job)
        box_A = box * apix
        for kind, imgs in sim_boxes(job, per_kind, rng).items():
            n_c = _even(box_A / max(apix, real_apix))
            for im in imgs:
                g = to_grid(im, n_c) if n_c < box else im
                labels = {"good": ["sim good"], "noise": ["sim empty", "sim junk"]}.get(kind, ["sim junk"])
                for lab in labels + [f"sim {kind}"]:
                    add(lab, g)
        # real boxes at this job's extent (once per distinct geometry)
        n_c = _even(box_A / max(apix, real_apix))
        m = _even(box_A / real_apix)
        if (n_c, m, "mic") not in done_real:
            done_real.add((n_c, m, "mic"))
            for x, y in mic.background_positions(m, n_background, rng):
                add("real background", to_grid(mic.cut(x, y, m), n_c))
            good, junk = mic.split_picks(m)
            for lab, pts in (("real picks", good), ("real junk picks", junk)):
                for x, y in pts:
                    b = mic.cut(x, y, m)
                    if b is not None:
                        add(lab, to_grid(b, n_c))
        n_g = _even(box_A / max(apix, graded_apix))
        m_g = _even(box_A / graded_apix)
        if (n_g, m_g, "graded") not in done_real and m_g >= 16:
            done_real.add((n_g, m_g, "graded"))
            for img in graded_bg:
                h, w = img.shape
                for _ in range(max(1, n_background // max(len(graded_bg), 1))):
                    x, y = rng.uniform(m_g / 2, w - m_g / 2), rng.uniform(m_g / 2, h - m_g / 2)
                    add("graded background", to_grid(cut_box(img, x, y, m_g), n_g))
            for img in graded_junk:
                for x, y in blob_centres(img, max(1.0, m_g / 8), 12, m_g // 2 + 1):
                    b = cut_box(img, x, y, m_g)
                    if b is not None:
                        add("graded junk", to_grid(b, n_g))
    return {g: dict(v) for g, v in groups.items()}


# ======================================================================================
# class averages
# ======================================================================================
def class_vectors(project: str) -> dict:
    """{"good" | "junk" | "mixed" | "unlabelled": {feature: [values]}} of a Class2D project's
    featured classes; labels from class_truth.csv (>= 0.8 / <= 0.2 real) when it has one."""
    from ranker.develop.dataset import featurise, find_optimiser
    from ranker.develop.truth import read_class_truth

    job, _parts, fs = featurise(find_optimiser(project), project)
    try:
        frac = {r["class_number"]: r["frac_good"] for r in read_class_truth(project)}
    except FileNotFoundError:
        frac = {}
    out = defaultdict(lambda: defaultdict(list))
    r2 = radius2_px(fs.images.shape[-1])
    rr = np.rint(np.sqrt(r2)).astype(int)
    for j, i in enumerate(fs.rows):
        k = job.classes[i].class_number
        f = frac.get(k)
        lab = ("unlabelled" if f is None else "mixed" if not np.isfinite(f) else
               "good" if f >= 0.8 else "junk" if f <= 0.2 else "mixed")
        for name, v in fs.raw[j].items():
            out[lab][name].append(float(v))
        img = fs.images[j].astype(np.float64)
        img = img - img.mean()
        prof = np.bincount(rr.ravel(), img.ravel()) / np.maximum(np.bincount(rr.ravel()), 1)
        out[lab]["roundness"].append(float(1 - np.var(img - prof[rr]) / max(np.var(img), 1e-12)))
        p = radial_power(img, window=False)
        fr = np.arange(len(p)) / (len(p) - 1)          # fraction of Nyquist; the image spans the mask diameter
        out[lab]["hf_power"].append(float(p[fr > 0.25].sum() / max(p[1:].sum(), 1e-12)))
    return {k: dict(v) for k, v in out.items()}


def measure_classes(projects) -> dict:
    """{label: {feature: [values]}} pooled over projects (see :func:`class_vectors`)."""
    pooled = defaultdict(lambda: defaultdict(list))
    for p in projects:
        for lab, feats in class_vectors(p).items():
            for k, v in feats.items():
                pooled[lab][k].extend(v)
    return {k: dict(v) for k, v in pooled.items()}


# ======================================================================================
# the background spectrum stored for the simulator
# ======================================================================================
def background_spectrum(realdata: str, tile: int = 128, max_junk: float = 0.5, mean_junk: float = 0.1):
    """(radial power of the contamination micrograph's junk-free background, normalised to mean 1
    over shells 1..tile/2; number of tiles): Welch average of Hann-windowed tile x tile tiles
    (half overlap) whose junk mask stays below ``max_junk`` and averages below ``mean_junk``."""
    mic = RealMicrograph(realdata)
    h, w = mic.image.shape
    acc, count = np.zeros(tile // 2 + 1), 0
    for y in range(0, h - tile + 1, tile // 2):
        for x in range(0, w - tile + 1, tile // 2):
            j = mic.junk[y:y + tile, x:x + tile]
            if j.max() < max_junk and j.mean() < mean_junk:
                acc += radial_power(mic.image[y:y + tile, x:x + tile])
                count += 1
    acc[0] = acc[1]          # the mean is removed per tile: shell 0 carries no information
    return acc / acc[1:].mean(), count


# ======================================================================================
# the report
# ======================================================================================
def _median_iqr(v) -> str:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return ""
    q1, q2, q3 = np.percentile(v, [25, 50, 75])
    return f"{q2:.2f} ({q1:.2f}..{q3:.2f})"


BOX_PAIRS = (("sim empty", "real background"), ("sim good", "real picks"), ("sim junk", "real junk picks"),
             ("sim empty", "graded background"), ("sim junk", "graded junk"))


def box_table(groups: dict) -> str:
    """Markdown: median (IQR) of every box statistic per group, then KS distances of the pairs."""
    order = [g for g in ("real background", "real picks", "real junk picks", "graded background", "graded junk",
                         "sim empty", "sim good", "sim junk") if g in groups]
    order += sorted(g for g in groups if g not in order)
    lines = ["| statistic | " + " | ".join(f"{g} (n={len(next(iter(groups[g].values())))})" for g in order) + " |",
             "|---" * (len(order) + 1) + "|"]
    for s in BOX_STATS:
        lines.append(f"| {s} | " + " | ".join(_median_iqr(groups[g].get(s, [])) for g in order) + " |")
    pairs = [(a, b) for a, b in BOX_PAIRS if a in groups and b in groups]
    lines += ["", "| KS distance | " + " | ".join(f"{a} vs {b}" for a, b in pairs) + " |",
              "|---" * (len(pairs) + 1) + "|"]
    for s in BOX_STATS:
        lines.append(f"| {s} | " + " | ".join(f"{ks_distance(groups[a][s], groups[b][s]):.2f}" for a, b in pairs)
                     + " |")
    return "\n".join(lines)


def class_table(sim: dict, real: dict | None, real_name: str = "real") -> str:
    """Markdown: KS distance per feature between simulated good and junk classes, and (when real
    classes are given) between each simulated label and the real classes of the same label
    (or all real classes when they are unlabelled); then the median distances."""
    from ranker.runtime.features import FEATURE_NAMES

    names = list(FEATURE_NAMES) + list(CLASS_EXTRA)
    cols = [("sim good vs sim junk", sim.get("good"), sim.get("junk"))]
    if real:
        for lab in ("good", "junk"):
            other = real.get(lab) or real.get("unlabelled")
            if sim.get(lab) and other:
                tag = lab if real.get(lab) else "all"
                cols.append((f"sim {lab} vs {real_name} {tag}", sim[lab], other))
    cols = [c for c in cols if c[1] and c[2]]
    n = {lab: len(next(iter(v.values()))) for lab, v in sim.items()}
    head = (f"classes: sim good {n.get('good', 0)}, sim junk {n.get('junk', 0)}, sim mixed {n.get('mixed', 0)}"
            + (", " + ", ".join(f"{real_name} {lab} {len(next(iter(v.values())))}" for lab, v in real.items())
               if real else ""))
    lines = [head, "", "| feature | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    dist = defaultdict(list)
    for f in names:
        row = []
        for title, a, b in cols:
            d = ks_distance(a.get(f, []), b.get(f, []))
            dist[title].append(d)
            row.append(f"{d:.2f}")
        lines.append(f"| {f} | " + " | ".join(row) + " |")
    lines.append("| **median** | " + " | ".join(f"**{np.nanmedian(dist[c[0]]):.2f}**" for c in cols) + " |")
    lines.append("| **max** | " + " | ".join(f"**{np.nanmax(dist[c[0]]):.2f}**" for c in cols) + " |")
    # what blurry blobs look like: round, little fine detail, low contrast
    labels = [(f"sim {lab}", v) for lab, v in sim.items() if lab in ("good", "junk")]
    labels += [(f"{real_name} {lab}", v) for lab, v in (real or {}).items()]
    lines += ["", "| median | " + " | ".join(lab for lab, _ in labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for f in MEDIAN_FEATURES:
        lines.append(f"| {f} | " + " | ".join(f"{np.nanmedian(v.get(f, [np.nan])):.3g}" for _, v in labels) + " |")
    return "\n".join(lines)


# ======================================================================================
# real junk patches stored for the simulator (junk kind "patch")
# ======================================================================================
PATCH_PX = 64
GRADED_JUNK_SOURCES = ("2Contamination_Aggregate_Crack_Breaking_Drifting", "4Crystalline_ice")


def _patch(box: np.ndarray) -> np.ndarray:
    """A cut box as a stored patch: Fourier-resized to PATCH_PX, background ring (outside 0.75 of
    the radius) at mean 0, whole patch at sd 1."""
    b = np.asarray(box, np.float64)
    if b.shape[-1] != PATCH_PX:
        b = resize_map(b, PATCH_PX)
    ring = ~circle_mask(PATCH_PX, 0.75 * PATCH_PX / 2)
    b = b - b[ring].mean()
    return b / max(b.std(), 1e-9)


def real_junk_patches(realdata: str, per_image: int = 4):
    """(patches (N, 64, 64) float32, provenance rows) of real junk, dense = bright: boxes of 32, 48
    and 64 px centred on the densest blobs of the graded contamination/aggregate/crack and
    crystalline-ice examples (``per_image`` per size and image), and 64 and 96 px boxes of the
    contamination micrograph at its autopick picks on the contamination and at its densest small
    blobs. No EMPIAR-10017 pixel."""
    from PIL import Image

    patches, rows = [], []
    for folder in GRADED_JUNK_SOURCES:
        for f in sorted(glob.glob(os.path.join(realdata, GRADED, folder, "*.png"))):
            a = np.asarray(Image.open(f).convert("L"), np.float64)
            img = -(a - a.mean())
            for m in (32, 48, 64):
                for x, y in blob_centres(img, m / 8, per_image, m // 2 + 1):
                    patches.append(_patch(cut_box(img, x, y, m)))
                    rows.append((f"{GRADED}/{folder}/{os.path.basename(f)}", round(x), round(y), m))
    mic = RealMicrograph(realdata)
    src = f"{CONTAMINATION}/mics/{mic.name}"
    for m in (64, 96):
        _good, junk = mic.split_picks(m)
        for x, y in junk:
            b = mic.cut(x, y, m)
            if b is not None:
                patches.append(_patch(b))
                rows.append((src + " (autopick on contamination)", round(x), round(y), m))
        for x, y in blob_centres(mic.image, m / 8, 10, m // 2 + 1):
            patches.append(_patch(mic.cut(x, y, m)))
            rows.append((src + " (dense blob)", round(x), round(y), m))
    return np.stack(patches).astype(np.float32), rows
