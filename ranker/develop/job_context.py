"""Fitting the job-context stage (:mod:`ranker.runtime.context`) on out-of-fold scores.

(a, b, c) are fitted by weighted logistic regression on the *out-of-fold* network scores of the
training jobs (each job scored by networks that never saw it), target = class purity, weight =
sqrt(particles); ``lift`` is then the value in 0, 0.25, ..., 1 whose keep/reject decisions at 0.5
agree with the oracle's for the most out-of-fold particles. With the class images (``fit_context
--likeness``) the stage also reads how alike the job's classes are
(:func:`ranker.runtime.context.likeness_features`): (a, b, c, d, e, f) by the same regression, L0 and
own0 the training classes' means. With the classes' feature vectors too (``--signal``), the class's
RelativeSignalIntensity (:func:`ranker.runtime.context.signal_features`): g by the same regression,
S0 its training mean.
"""

from __future__ import annotations

import numpy as np

from ranker.runtime.context import context_features, context_scores, likeness_features, signal_features

L2 = 1e-2  # ridge on a and b (not on c)
L2_LIKENESS = 1e-3  # ridge on a, b, d, e, f of the likeness stage (the value of the experiment that chose it, tools/)


def job_features(scores, job, images=None, vectors=None) -> np.ndarray:
    """(N, 3) design matrix of classes from many jobs: :func:`context_features` within each job; with
    ``images`` (N, 64, 64), (N, 6): :func:`likeness_features`; with ``vectors`` (N, 24) too, (N, 7):
    :func:`signal_features`."""
    scores, job = np.asarray(scores, float), np.asarray(job)
    x = np.zeros((len(scores), 3 if images is None else 6 if vectors is None else 7))
    for name in np.unique(job):
        m = job == name
        if images is None:
            x[m] = context_features(scores[m])
        elif vectors is None:
            x[m] = likeness_features(scores[m], np.asarray(images)[m])
        else:
            x[m] = signal_features(scores[m], np.asarray(images)[m], np.asarray(vectors)[m])
    return x


def choose_lift(scores, job, n_particles, purity, coef, logit_shift: float = 0.0, x=None) -> float:
    """The lift in 0, 0.25, ..., 1 whose decisions at 0.5 agree with the oracle's (keep a class
    iff >= 50 % real) for the most particles; ties go to the smaller lift. ``x``: the design
    matrix, if already made (:func:`job_features`)."""
    scores = np.asarray(scores, float)
    x = job_features(scores, job) if x is None else x
    n = np.nan_to_num(np.asarray(n_particles, float))
    real = np.asarray(purity, float) >= 0.5
    best = None
    for lift in (0.0, 0.25, 0.5, 0.75, 1.0):
        out = context_scores(x, scores, list(coef[:3]) + [lift] + list(coef[4:]), logit_shift)
        agree = float((((out >= 0.5) == real) * n).sum())
        if best is None or agree > best[0] + 1e-9:
            best = (agree, lift)
    return best[1]


def fit_job_context(scores, job, n_particles, purity, logit_shift: float = 0.0, images=None,
                    vectors=None) -> list[float]:
    """(a, b, c, lift) from out-of-fold network scores of many jobs; with the classes' ``images``
    (N, 64, 64), [a, b, c, lift, d, e, f, L0, own0]; with their normalised feature ``vectors`` (N, 24)
    too, [a, b, c, lift, d, e, f, L0, own0, g, S0] (:mod:`ranker.runtime.context`).

    scores, n_particles, purity: (N,) over classes; job: (N,) job names (the context is taken
    within each job). (a, b, c[, d, e, f]): weighted logistic regression, target purity (fraction of
    real particles, or a user's 0/1 selection), weight sqrt(n_particles), a ridge on every
    coefficient but c; then lift by :func:`choose_lift`, with the model's ``logit_shift``."""
    from scipy.optimize import minimize

    n = np.maximum(np.nan_to_num(np.asarray(n_particles, float)), 1.0)
    y = np.clip(np.nan_to_num(np.asarray(purity, float)), 0, 1)
    x = job_features(scores, job, images, vectors)
    centre = [float(np.nanmean(x[:, i])) for i in range(4, x.shape[1])]
    xc = x.copy()
    if centre:
        xc[:, 4:] = np.nan_to_num(x[:, 4:] - centre)
    w = np.sqrt(n)
    w /= w.mean()
    ridged = np.arange(x.shape[1]) != 2
    ridge = L2 if images is None else L2_LIKENESS

    def loss(coef):
        p = np.clip(1 / (1 + np.exp(-xc @ coef)), 1e-6, 1 - 1e-6)
        return -(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).mean() + ridge * (coef[ridged] ** 2).sum()

    start = np.r_[1.0, np.zeros(x.shape[1] - 1)]
    fitted = [float(v) for v in minimize(loss, start, method="L-BFGS-B").x]
    coef = fitted[:3] + [1.0] + fitted[3:6] + centre[:2]  # a, b, c, lift[, d, e, f, L0, own0]
    if vectors is not None:
        coef += [fitted[6], centre[2]]  # g, S0
    coef[3] = choose_lift(scores, job, n_particles, purity, coef, logit_shift, x)
    return coef
