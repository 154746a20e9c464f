"""The 24 normalised features and the 64x64 network image of RELION's class ranker.

Each step follows ``shared/docs/relion_class_ranker_features.md`` (RELION 5's
``relion_class_ranker --do_granularity_features``), so a network trained on RELION's
features sees the same numbers here. Entry point: :func:`compute_features`.

Units: the class image is rescaled to 4 A/px (``UNIFORM_ANGPIX_A``) for the image
features; radii below are in those 4 A pixels. Raw feature names are RELION's
features.star labels (without ``rln``'s underscore).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .class2d import Class2DJob, resolution_from_ssnr
from .fourier import first_peak_ctf_correction, lowpass, relion_round, resize_map
from .geometry import centre_window, radius2_px

UNIFORM_ANGPIX_A = 4.0
LOWPASS_A = 25.0
MIN_PARTICLES = 10          # classes need strictly more particles (distribution x total)
NETWORK_IMAGE_PX = 64
RING_RADIUS_RATIO = 0.95
MIN_BOX_4A_PX = 15

# Hard-coded global normalisation of the first 21 features (RELION's constants).
GLOBAL_MEAN = np.array([4.352, 3.871, 0.001, 0.061, -0.199, 0.424, 0.744, -0.380, 0.292, 0.024, 0.047,
                        0.116, 0.638, -1.112, 2.990, 837.576, 726.097, 602.175, 483.469, 328.014, 196.059])
GLOBAL_STD = np.array([4.759, 3.019, 0.002, 0.088, 0.283, 0.629, 0.585, 0.378, 0.485, 0.075, 0.075,
                       0.182, 0.429, 1.087, 1.758, 1958.823, 2845.330, 3605.858, 4001.972, 4399.578, 4709.751])

FEATURE_NAMES = (
    "AccuracyRotations", "AccuracyTranslationsAngst", "WeightedResolution", "RelativeResolution",
    "RingMean", "RingStddev", "ProteinStddev", "SolventMean", "SolventStddev", "ScatteredSignal",
    "EdgeSignal", "LowpassFilteredImageMean", "LowpassFilteredImageStddev", "LowpassFilteredImageMin",
    "LowpassFilteredImageMax", "Granulo1", "Granulo2", "Granulo3", "Granulo4", "Granulo5", "Granulo6",
    "ProteinSum", "SolventSum", "RelativeSignalIntensity")


class FeatureError(ValueError):
    """The class images cannot be featurised (e.g. too small at 4 A/px)."""


@dataclass
class FeatureSet:
    """Features of the classes with more than 10 particles.

    ``rows``: indices into ``job.classes`` (ascending class order), length K.
    ``raw``: one dict per featured class, RELION's features.star labels -> value.
    ``vectors``: float32 (K, 24), the normalised vector fed to the network.
    ``images``: float32 (K, 64, 64), the network image (raw values, not normalised).
    ``notes``: things worth telling the user (fallbacks taken).
    """

    rows: list[int]
    raw: list[dict]
    vectors: np.ndarray
    images: np.ndarray
    notes: list[str]


def moments(values: np.ndarray, select: np.ndarray) -> dict:
    """Sum, mean, population stddev, skew (g1) and kurtosis (not excess) of selected pixels."""
    x = values[select]
    if x.size == 0:
        return dict(sum=0.0, mean=0.0, stddev=0.0, skew=0.0, kurt=0.0)
    total = float(x.sum())
    mean = total / x.size
    d = x - mean
    m2 = float((d * d).sum())
    out = dict(sum=total, mean=mean, stddev=math.sqrt(m2 / x.size), skew=0.0, kurt=0.0)
    if m2 != 0:
        out["skew"] = float((d ** 3).sum()) * math.sqrt(x.size) / m2 ** 1.5
        out["kurt"] = float((d ** 4).sum()) * x.size / (m2 * m2)
    return out


def lowpass_stats(img: np.ndarray) -> dict:
    """Mean, population stddev, max and RELION's min (which skips running-maximum records)."""
    flat = img.ravel()
    avg = float(flat.mean())
    std = math.sqrt(abs(float((flat * flat).mean()) - avg * avg))
    previous_max = np.maximum.accumulate(np.concatenate(([-np.inf], flat[:-1])))
    not_record = ~(flat > previous_max)
    vmin = float(flat[not_record].min()) if not_record.any() else float(flat.min())
    return dict(mean=avg, stddev=std, min=vmin, max=float(flat.max()))


def solvent_masks(filtered: np.ndarray, stddev: float, radius_px: float) -> dict:
    """RELION's automatic protein / solvent masks on the low-pass filtered 4 A image."""
    r2 = radius2_px(filtered.shape[-1])
    in_disc = r2 <= radius_px * radius_px
    central = r2 <= (0.36 * radius_px) * radius_px
    white = (filtered > 0.05 * stddev) & in_disc
    labels, _ = ndimage.label(white)  # 4-connected
    protein = np.zeros_like(white)
    scattered = 0
    min_inside = 0.1 * 3.14 * 0.36 * radius_px * radius_px
    for lab in np.unique(labels[central & white]):
        component = labels == lab
        if int((component & central).sum()) > min_inside:
            protein |= component
        else:
            scattered += int(component.sum())
    protein_area = int(protein.sum())
    circular_area = int(in_disc.sum())
    return dict(protein=protein, solvent=in_disc & ~protein, protein_area=protein_area,
                solvent_area=circular_area - protein_area,
                scattered_signal=scattered / (scattered + protein_area + 1))


def _disk_filter(stack: np.ndarray, radius: int, pad_values: np.ndarray, erode: bool) -> np.ndarray:
    """Grey erosion (or dilation) of every image in a (K, n, n) stack by the disk
    ``dx^2 + dy^2 <= radius^2``, neighbours outside the image ignored (each image is padded
    with its own ``pad_values``, which can never win). The disk is a stack of horizontal
    segments, so the filter is the min (max) over dy of 1D sliding minima (maxima)."""
    k, n, _ = stack.shape
    r = radius
    padded = np.empty((k, n + 2 * r, n + 2 * r))
    padded[:] = pad_values[:, None, None]
    padded[:, r:r + n, r:r + n] = stack
    filt = ndimage.minimum_filter1d if erode else ndimage.maximum_filter1d
    combine = np.minimum if erode else np.maximum
    rows: dict[int, np.ndarray] = {}
    out = None
    for dy in range(-r, r + 1):
        half = math.isqrt(r * r - dy * dy)
        if half not in rows:
            rows[half] = filt(padded, size=2 * half + 1, axis=2, mode="nearest")
        part = rows[half][:, r + dy:r + dy + n, r:r + n]
        out = part.copy() if out is None else combine(out, part, out=out)
    return out


def granulo(stack: np.ndarray) -> np.ndarray:
    """Granulometry of each image of a (K, n, n) stack: for disks of radius 1..6 px, the
    sum of the grey opening (erosion, then dilation; image edges ignored as in RELION).
    Returns (K, 6)."""
    stack = np.asarray(stack, float)
    vmax, vmin = stack.max(axis=(1, 2)), stack.min(axis=(1, 2))
    out = np.zeros((stack.shape[0], 6))
    for radius in range(1, 7):
        eroded = _disk_filter(stack, radius, vmax, erode=True)
        out[:, radius - 1] = _disk_filter(eroded, radius, vmin, erode=False).sum(axis=(1, 2))
    return out


def protein_car(protein: np.ndarray) -> float:
    """Circumference-to-area ratio of the protein mask (8-neighbour boundary pixels)."""
    area = int(protein.sum())
    if area == 0:
        return 0.0
    padded = np.pad(protein, 1)
    interior = ndimage.binary_erosion(padded, structure=np.ones((3, 3), bool))[1:-1, 1:-1]
    return int((protein & ~interior).sum()) / (2 * math.sqrt(3.14 * area))


def image_features(img4: np.ndarray, radius_px: float, granulo_sums) -> dict:
    """All image features of one class average already at 4 A/px (granulo given, see
    :func:`granulo`, as it is computed for the whole stack at once)."""
    r2 = radius2_px(img4.shape[-1])
    ring_in = RING_RADIUS_RATIO * radius_px
    ring = moments(img4, (r2 >= ring_in ** 2) & (r2 <= radius_px ** 2))
    filtered = lowpass(img4, LOWPASS_A, UNIFORM_ANGPIX_A)
    lp = lowpass_stats(filtered)
    masks = solvent_masks(filtered, lp["stddev"], radius_px)
    within = r2 <= radius_px ** 2
    protein = moments(img4, within & masks["protein"])
    solvent = moments(img4, within & masks["solvent"])
    edge = np.floor(np.sqrt(r2) + 0.5)      # RELION ROUND (all values >= 0)
    on_edge = edge == relion_round(radius_px)
    edge_signal = int((on_edge & masks["protein"]).sum()) / int(on_edge.sum()) if on_edge.any() else 0.0
    feats = {
        "RingMean": ring["mean"], "RingStddev": ring["stddev"], "RingSkew": ring["skew"], "RingKurt": ring["kurt"],
        "ProteinArea": int(masks["protein_area"] > 1),
        "ProteinSum": protein["sum"], "ProteinMean": protein["mean"], "ProteinStddev": protein["stddev"],
        "ProteinSkew": protein["skew"], "ProteinKurt": protein["kurt"],
        "SolventArea": int(masks["solvent_area"] > 0.08 * 3.14 * radius_px * radius_px),
        "SolventSum": solvent["sum"], "SolventMean": solvent["mean"], "SolventStddev": solvent["stddev"],
        "SolventSkew": solvent["skew"], "SolventKurt": solvent["kurt"],
        "RelativeSignalIntensity": protein["sum"] - solvent["mean"] * masks["protein_area"],
        "ScatteredSignal": masks["scattered_signal"], "EdgeSignal": edge_signal,
        "ProteinCAR": protein_car(masks["protein"]),
        "LowpassFilteredImageMean": lp["mean"], "LowpassFilteredImageStddev": lp["stddev"],
        "LowpassFilteredImageMin": lp["min"], "LowpassFilteredImageMax": lp["max"],
    }
    for i, g in enumerate(granulo_sums, 1):
        feats[f"Granulo{i}"] = float(g)
    return feats


def network_image(img: np.ndarray, pixel_size_A: float, diameter_A: float) -> np.ndarray:
    """The 64x64 network input: a box of the particle diameter (+1 px, even) around the
    centre of the original class image, Fourier-resized to 64 px. Raw values (float64)."""
    bw = math.ceil(diameter_A / pixel_size_A) + 1
    bw += bw % 2
    return resize_map(centre_window(np.asarray(img, dtype=np.float64), bw), NETWORK_IMAGE_PX)


def first_peak_correct(job: Class2DJob, images: np.ndarray, optics, last_row: dict) -> np.ndarray:
    """Apply RELION's first-peak CTF correction (optics group 1, defocus of the LAST particle row)."""
    if optics is not None and optics.rows:
        get = lambda label: float(optics.value(label))  # noqa: E731
    else:
        get = lambda label: float(last_row[label])      # noqa: E731
    return first_peak_ctf_correction(
        images, job.pixel_size_A, get("rlnVoltage"), get("rlnSphericalAberration"),
        get("rlnAmplitudeContrast"), float(last_row["rlnDefocusU"]), float(last_row["rlnDefocusV"]))


def normalise(raw_vectors: np.ndarray) -> np.ndarray:
    """(K, 24) raw feature values -> float32 normalised vectors, as RELION does.

    Features 0-20 use RELION's global constants; 21-23 are standardised within the job
    (population stddev, mean and stddev stored as float32; stddev < 1e-10 gives 0).
    """
    out = np.zeros(raw_vectors.shape, dtype=np.float32)
    if raw_vectors.shape[0] == 0:
        return out
    out[:, :21] = ((raw_vectors[:, :21] - GLOBAL_MEAN) / GLOBAL_STD).astype(np.float32)
    local = raw_vectors[:, 21:]
    mean = local.mean(axis=0).astype(np.float32).astype(np.float64)
    std = np.sqrt(((local - local.mean(axis=0)) ** 2).mean(axis=0)).astype(np.float32).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(std < 1e-10, 0.0, (local - mean) / np.where(std < 1e-10, 1.0, std))
    out[:, 21:] = z.astype(np.float32)
    return out


def compute_features(job: Class2DJob, images: np.ndarray, n_particles_total: int,
                     optics=None, last_row: dict | None = None, abort=None) -> FeatureSet:
    """Features and network images of every class with more than 10 particles.

    ``images``: float64 (nr_classes, box, box) class averages in model order.
    ``n_particles_total``: rows of data.star (RELION's particle number is distribution x this).
    """
    notes: list[str] = []
    if job.ignore_ctf_until_first_peak:
        images = first_peak_correct(job, images, optics, last_row or {})
        notes.append("CTFs ignored until first peak: class images corrected as RELION does "
                     "(defocus of the last particle row)")
    newsize = relion_round(job.box_px * job.pixel_size_A / UNIFORM_ANGPIX_A)
    newsize -= newsize % 2
    if newsize < MIN_BOX_4A_PX:
        raise FeatureError(
            f"{job.model_path}: class images of {job.box_px} px at {job.pixel_size_A:g} A/px are only "
            f"{newsize} px at 4 A/px; RELION's ranker needs at least {MIN_BOX_4A_PX} "
            f"(box x pixel size >= about 60 A)")
    radius_px = min(newsize / 2, job.particle_diameter_A / (2 * UNIFORM_ANGPIX_A))
    rows = [i for i, c in enumerate(job.classes) if c.distribution * n_particles_total > MIN_PARTICLES]
    raw_dicts, raw_vectors = [], np.zeros((len(rows), 24))
    if rows:
        small = resize_map(images[rows], newsize)
        granulo_sums = granulo(small)
        big = network_image(images[rows], job.pixel_size_A, job.particle_diameter_A).astype(np.float32)
    else:
        big = np.zeros((0, NETWORK_IMAGE_PX, NETWORK_IMAGE_PX), np.float32)
    fallback = 0
    for j, i in enumerate(rows):
        if abort is not None:
            abort()
        cls = job.classes[i]
        particle_nr = cls.distribution * n_particles_total
        res = cls.estimated_resolution_A if cls.estimated_resolution_A > 0 else resolution_from_ssnr(job, cls)
        acc_rot, acc_trans = cls.accuracy_rotation_deg, cls.accuracy_translation_A
        if acc_rot > 99 or acc_trans > 99:
            acc_rot, acc_trans = 5.0, 8.0
            fallback += 1
        d = {"ClassIndex": cls.class_number, "ClassDistribution": cls.distribution,
             "AccuracyRotations": acc_rot, "AccuracyTranslationsAngst": acc_trans,
             "EstimatedResolution": res, "WeightedResolution": (1 / res ** 2) / math.log(particle_nr),
             "RelativeResolution": res / (job.box_px * job.pixel_size_A), "ParticleNr": particle_nr}
        d.update(image_features(small[j], radius_px, granulo_sums[j]))
        raw_dicts.append(d)
        raw_vectors[j] = [d[name] for name in FEATURE_NAMES]
    if fallback:
        notes.append(f"{fallback} class(es) have no accuracy estimate (999); used RELION's "
                     "5 deg / 8 fallback")
    return FeatureSet(rows=rows, raw=raw_dicts, vectors=normalise(raw_vectors), images=big, notes=notes)
