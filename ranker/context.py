"""Job context: a class's score seen beside the best class of the same 2D classification.

The network scores each class alone, so its scores shift from job to job (low-SNR jobs score
their good classes low; fragments of the protein score high next to the whole particle). The
job-context stage rescales each class's network score s with the job's best class:

    z = logit(s),  z_best = max of z over the job's scored classes
    z_ctx = a * z + b * (z - z_best) + c
    z_own = logit(the class's own calibrated score) = z + logit_shift
    score = sigmoid(z_ctx)                                 where z_ctx <= z_own (lowered fully)
            sigmoid(z_own + lift * (z_ctx - z_own))        where z_ctx >  z_own (lifted by a part)

(a, b, c) are fitted by weighted logistic regression on the *out-of-fold* network scores of the
training jobs (``ranker.train --calibrate_folds K --job_context``; each job scored by networks
that never saw it), target = class purity, weight = sqrt(particles); ``lift`` is then the value
in 0, 0.25, ..., 1 whose keep/reject decisions at 0.5 agree with the oracle's for the most
out-of-fold particles. They are stored in the weights file as ``job_context`` = [a, b, c, lift];
the job applies them unless ``--job_context false``.

Trade-off, stated plainly: a low-scoring job's best class is lifted, so in a job with no good
class at all the best junk class is kept more often than by the class's own score; ``lift`` < 1
limits that.

Usage (refit the stage of an existing model from a training run's out-of-fold scores):

    python -m ranker.context --oof OOF.npz --model IN.pt --out OUT.pt
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

L2 = 1e-2  # ridge on a and b (not on c)


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


def job_features(scores, job) -> np.ndarray:
    """(N, 3) design matrix of classes from many jobs: :func:`context_features` within each job."""
    scores, job = np.asarray(scores, float), np.asarray(job)
    x = np.zeros((len(scores), 3))
    for name in np.unique(job):
        m = job == name
        x[m] = context_features(scores[m])
    return x


def _context_scores(x, scores, coef, logit_shift: float) -> np.ndarray:
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
    return _context_scores(context_features(scores), scores, coef, logit_shift)


def choose_lift(scores, job, n_particles, purity, coef, logit_shift: float = 0.0) -> float:
    """The lift in 0, 0.25, ..., 1 whose decisions at 0.5 agree with the oracle's (keep a class
    iff >= 50 % real) for the most particles; ties go to the smaller lift."""
    scores = np.asarray(scores, float)
    x = job_features(scores, job)
    n = np.nan_to_num(np.asarray(n_particles, float))
    real = np.asarray(purity, float) >= 0.5
    best = None
    for lift in (0.0, 0.25, 0.5, 0.75, 1.0):
        out = _context_scores(x, scores, list(coef[:3]) + [lift], logit_shift)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ranker.context", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--oof", required=True, help=".npz written by ranker.train --oof_out")
    p.add_argument("--model", required=True, help="weights file whose networks made those scores")
    p.add_argument("--out", required=True, help="weights file to write (the same networks + job_context)")
    a = p.parse_args(argv)
    from .metrics import class_purity
    from .model import load_model, save_model

    d = np.load(a.oof)
    r = load_model(a.model, device="cpu")
    purity = class_purity(d["n_particles"], d["n_true"], d["target"])
    coef = fit_job_context(d["score"], d["job"], d["n_particles"], purity, r.logit_shift)
    card = dict(r.card, job_context={"coef": coef, "fitted_on": a.oof, "n_jobs": int(len(set(d["job"]))),
                                     "n_classes": int(len(d["score"]))})
    save_model(r.members, a.out, card, output=r.output, tta=r.tta, image_norm=r.image_norm,
               logit_shift=r.logit_shift, job_context=coef)
    print(f"job context a, b, c = {coef[0]:.3f}, {coef[1]:.3f}, {coef[2]:.3f}, lift {coef[3]:g} from {len(d['score'])} classes of "
          f"{len(set(d['job']))} jobs; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
