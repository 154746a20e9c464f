"""Job context: a class's score seen beside the best class of the same 2D classification.

The network scores each class alone, so its scores shift from job to job (low-SNR jobs score
their good classes low; fragments of the protein score high next to the whole particle). The
job-context stage rescales each class's network score s with the job's best class:

    z = logit(s),  z_best = max of z over the job's scored classes
    z_ctx = a * z + b * (z - z_best) + c
    z_own = logit(the class's own calibrated score) = z + logit_shift
    score = sigmoid(z_ctx)                                 where z_ctx <= z_own (lowered fully)
            sigmoid(z_own + lift * (z_ctx - z_own))        where z_ctx >  z_own (lifted by a part)

(a, b, c, lift) are fitted on the *out-of-fold* network scores of the training jobs by
:mod:`ranker.develop.job_context` (``python -m ranker.develop train --calibrate_folds K
--job_context``, or ``python -m ranker.develop fit_context``). They are stored in the weights file
as ``job_context`` = [a, b, c, lift]; the job applies them unless ``--job_context false``.

**With the classes' likeness** (``job_context`` of :data:`N_LIKENESS` numbers, ``fit_context
--likeness``): how alike the job's class averages are also enters, since views of one protein look
more alike than junk of many kinds::

    like(i, j) = the best correlation of class images i and j over in-plane rotations and mirror
                 (:func:`likeness_matrix`; 64 x 64 network images, polar resampled)
    L          = the mean of like(i, j) over the job's pairs of classes
    own_i      = the mean of like(i, j) over the job's other classes j, weighted by their scores s_j
    z_ctx      = a * z + b * (z - z_best) + c + d * mean(z) + e * (L - L0) + f * (own - own0)

with [a, b, c, lift, d, e, f, L0, own0] stored (L0, own0: the training classes' means), and the same
lowering / lifting rule.

**With the class's signal** (``job_context`` of :data:`N_SIGNAL` numbers, ``fit_context --likeness
--signal``; v7): the class's RelativeSignalIntensity S also enters: its normalised feature
:data:`SIGNAL_FEATURE`, the integrated density inside the protein mask above the solvent level,
which RELION's normalisation standardises *within the job* (mean 0, stddev 1 over the job's featured
classes). So the term re-ranks within a job: with g < 0 a class brighter than its job's average
(blobs, contamination patches, aggregates are, on the training classes) is lowered, a faint one raised::

    z_ctx = (the likeness stage's z_ctx) + g * (S - S0)

with [a, b, c, lift, d, e, f, L0, own0, g, S0] stored (S0: the training classes' mean, ~0).

Trade-off, stated plainly: a low-scoring job's best class is lifted, so in a job with no good
class at all the best junk class is kept more often than by the class's own score; ``lift`` < 1
limits that.
"""

from __future__ import annotations

import numpy as np


def logit(scores, eps: float = 1e-4) -> np.ndarray:
    """log(p / (1 - p)) of scores in [0, 1] (float64), clipped to [eps, 1 - eps] first."""
    p = np.clip(np.asarray(scores, np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


#: length of a ``job_context`` that reads the classes' likeness: a, b, c, lift, d, e, f, L0, own0
N_LIKENESS = 9
#: length of one that also reads the class's signal: the N_LIKENESS numbers, g, S0
N_SIGNAL = 11
#: the normalised feature (ranker.runtime.features.FEATURE_NAMES) the N_SIGNAL stage reads
SIGNAL_FEATURE = "RelativeSignalIntensity"
POLAR_RADII, POLAR_ANGLES = 28, 96  # polar sampling of a 64 x 64 image: radii 1-28 px, 3.75 degree steps


def likeness_matrix(images) -> np.ndarray:
    """(K, K) best correlation over in-plane rotations (3.75 degree steps) and mirror between the K
    class images (K, 64, 64), each polar resampled (radii 1-28 px) to mean 0 and norm 1; 0 on the diagonal."""
    from scipy.ndimage import map_coordinates

    images = np.asarray(images, np.float64)
    k = len(images)
    r, t = np.meshgrid(np.arange(1, POLAR_RADII + 1), np.linspace(0, 2 * np.pi, POLAR_ANGLES, endpoint=False),
                       indexing="ij")
    polar = np.zeros((k, POLAR_RADII, POLAR_ANGLES))
    for i, img in enumerate(images):
        c = (img.shape[0] - 1) / 2
        p = map_coordinates(img, [c + r * np.sin(t), c + r * np.cos(t)], order=1)
        p -= p.mean()
        polar[i] = p / (np.sqrt((p ** 2).sum()) + 1e-9)
    spectra = np.fft.rfft(polar, axis=2)
    mirrored = np.fft.rfft(polar[:, :, ::-1], axis=2)
    out = np.zeros((k, k))
    for i in range(k):  # the correlation at every rotation: one inverse FFT per pair, as is and mirrored
        direct, mirror = (np.fft.irfft(np.einsum("rf,krf->kf", spectra[i], np.conj(other)), n=POLAR_ANGLES, axis=1)
                          for other in (spectra, mirrored))
        out[i] = np.maximum(direct.max(1), mirror.max(1))
    np.fill_diagonal(out, 0.0)
    return out


def likeness_inputs(scores, images) -> tuple:
    """(L, own) of ONE job: the mean likeness over its pairs of classes (float) and each class's mean
    likeness to the others weighted by their scores ((K,)); (nan, nan...) with fewer than 2 classes."""
    k = len(scores)
    if k < 2:
        return float("nan"), np.full(k, np.nan)
    like = likeness_matrix(images)
    others = np.where(np.eye(k, dtype=bool), 0.0, np.asarray(scores, np.float64)[None, :])
    own = (like * others).sum(1) / np.maximum(others.sum(1), 1e-9)
    return float(like.sum() / (k * (k - 1))), own


def context_features(scores) -> np.ndarray:
    """(K, 3) design matrix of one job's K network scores: z, z - z_best, 1."""
    z = logit(scores)
    if len(z) == 0:
        return np.zeros((0, 3))
    return np.stack([z, z - z.max(), np.ones_like(z)], 1)


def likeness_features(scores, images) -> np.ndarray:
    """(K, 6) design matrix of one job's K network scores and images: :func:`context_features`'s
    z, z - z_best, 1, then mean z, L, own (:func:`likeness_inputs`)."""
    x = context_features(scores)
    if len(x) == 0:
        return np.zeros((0, 6))
    big_l, own = likeness_inputs(scores, images)
    return np.c_[x, np.full(len(x), x[:, 0].mean()), np.full(len(x), big_l), own]


def signal_features(scores, images, vectors) -> np.ndarray:
    """(K, 7) design matrix of one job: :func:`likeness_features`, then each class's
    :data:`SIGNAL_FEATURE` from its normalised feature vector (``vectors`` (K, 24))."""
    from .features import FEATURE_NAMES

    x = likeness_features(scores, images)
    return np.c_[x, np.asarray(vectors, np.float64)[:, FEATURE_NAMES.index(SIGNAL_FEATURE)]]


def context_scores(x, scores, coef, logit_shift: float) -> np.ndarray:
    """Scores (float32) from design rows x (N, 3), or (N, 6) with a likeness ``coef``
    (:data:`N_LIKENESS` numbers), or (N, 7) with a signal ``coef`` (:data:`N_SIGNAL`), and the same
    classes' network scores (N,). A class whose likeness is undefined (a job of one class) takes the
    training mean (L0, own0)."""
    a, b, c, lift = (list(coef) + [1.0])[:4]
    z_ctx = x[:, :3] @ np.array([a, b, c], np.float64)
    if len(coef) in (N_LIKENESS, N_SIGNAL):
        d, e, f, big_l0, own0 = coef[4:N_LIKENESS]
        z_ctx = z_ctx + d * x[:, 3] + e * np.nan_to_num(x[:, 4] - big_l0) + f * np.nan_to_num(x[:, 5] - own0)
    if len(coef) == N_SIGNAL:
        g, s0 = coef[N_LIKENESS:]
        z_ctx = z_ctx + g * (x[:, 6] - s0)
    z_own = logit(scores) + logit_shift
    z = np.where(z_ctx > z_own, z_own + lift * (z_ctx - z_own), z_ctx)
    return (1 / (1 + np.exp(-z))).astype(np.float32)


def apply_job_context(scores, coef, logit_shift: float = 0.0, images=None, vectors=None) -> np.ndarray:
    """Job-context scores (float32, shape (K,)) of ONE job's network scores (K,).

    coef: (a, b, c) or (a, b, c, lift); lift defaults to 1 (z_ctx as it is); or the
    :data:`N_LIKENESS` numbers of the stage that reads the likeness of the job's ``images`` (K, 64, 64);
    or the :data:`N_SIGNAL` numbers of the one that also reads the classes' normalised ``vectors`` (K, 24)."""
    if len(scores) == 0:
        return np.zeros(0, np.float32)
    if len(coef) == N_SIGNAL:
        if images is None or vectors is None:
            raise ValueError("this job context reads the class images and feature vectors: give both")
        return context_scores(signal_features(scores, images, vectors), scores, coef, logit_shift)
    if len(coef) == N_LIKENESS:
        if images is None:
            raise ValueError("this job context reads the class images' likeness: give the images")
        return context_scores(likeness_features(scores, images), scores, coef, logit_shift)
    return context_scores(context_features(scores), scores, coef, logit_shift)
