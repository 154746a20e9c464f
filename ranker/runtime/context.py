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


def context_features(scores) -> np.ndarray:
    """(K, 3) design matrix of one job's K network scores: z, z - z_best, 1."""
    z = logit(scores)
    if len(z) == 0:
        return np.zeros((0, 3))
    return np.stack([z, z - z.max(), np.ones_like(z)], 1)


def context_scores(x, scores, coef, logit_shift: float) -> np.ndarray:
    """Scores (float32) from design rows x (N, 3) and the same classes' network scores (N,)."""
    a, b, c, lift = (list(coef) + [1.0])[:4]
    z_ctx = x @ np.array([a, b, c], np.float64)
    z_own = logit(scores) + logit_shift
    z = np.where(z_ctx > z_own, z_own + lift * (z_ctx - z_own), z_ctx)
    return (1 / (1 + np.exp(-z))).astype(np.float32)


def apply_job_context(scores, coef, logit_shift: float = 0.0) -> np.ndarray:
    """Job-context scores (float32, shape (K,)) of ONE job's network scores (K,).

    coef: (a, b, c) or (a, b, c, lift); lift defaults to 1 (z_ctx as it is)."""
    if len(scores) == 0:
        return np.zeros(0, np.float32)
    return context_scores(context_features(scores), scores, coef, logit_shift)
