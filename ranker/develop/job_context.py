"""Fitting the job-context stage (:mod:`ranker.runtime.context`) on out-of-fold scores.

(a, b, c) are fitted by weighted logistic regression on the *out-of-fold* network scores of the
training jobs (each job scored by networks that never saw it), target = class purity, weight =
sqrt(particles); ``lift`` is then the value in 0, 0.25, ..., 1 whose keep/reject decisions at 0.5
agree with the oracle's for the most out-of-fold particles.
"""

from __future__ import annotations

import numpy as np

from ranker.runtime.context import context_features, context_scores

L2 = 1e-2  # ridge on a and b (not on c)


def job_features(scores, job) -> np.ndarray:
    """(N, 3) design matrix of classes from many jobs: :func:`context_features` within each job."""
    scores, job = np.asarray(scores, float), np.asarray(job)
    x = np.zeros((len(scores), 3))
    for name in np.unique(job):
        m = job == name
        x[m] = context_features(scores[m])
    return x


def choose_lift(scores, job, n_particles, purity, coef, logit_shift: float = 0.0) -> float:
    """The lift in 0, 0.25, ..., 1 whose decisions at 0.5 agree with the oracle's (keep a class
    iff >= 50 % real) for the most particles; ties go to the smaller lift."""
    scores = np.asarray(scores, float)
    x = job_features(scores, job)
    n = np.nan_to_num(np.asarray(n_particles, float))
    real = np.asarray(purity, float) >= 0.5
    best = None
    for lift in (0.0, 0.25, 0.5, 0.75, 1.0):
        out = context_scores(x, scores, list(coef[:3]) + [lift], logit_shift)
        agree = float((((out >= 0.5) == real) * n).sum())
        if best is None or agree > best[0] + 1e-9:
            best = (agree, lift)
    return best[1]


def fit_job_context(scores, job, n_particles, purity, logit_shift: float = 0.0) -> list[float]:
    """(a, b, c, lift) from out-of-fold network scores of many jobs.

    scores, n_particles, purity: (N,) over classes; job: (N,) job names (the context is taken
    within each job). (a, b, c): weighted logistic regression, target purity (fraction of real
    particles, or a user's 0/1 selection), weight sqrt(n_particles); then lift by
    :func:`choose_lift`, with the model's ``logit_shift``."""
    from scipy.optimize import minimize

    n = np.maximum(np.nan_to_num(np.asarray(n_particles, float)), 1.0)
    y = np.clip(np.nan_to_num(np.asarray(purity, float)), 0, 1)
    x = job_features(scores, job)
    w = np.sqrt(n)
    w /= w.mean()

    def loss(coef):
        p = np.clip(1 / (1 + np.exp(-x @ coef)), 1e-6, 1 - 1e-6)
        return -(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).mean() + L2 * (coef[:2] ** 2).sum()

    coef = [float(v) for v in minimize(loss, np.array([1.0, 0.0, 0.0]), method="L-BFGS-B").x]
    return coef + [choose_lift(scores, job, n_particles, purity, coef, logit_shift)]
