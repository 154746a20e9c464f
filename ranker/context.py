"""Job context: a class's score seen beside the best class of the same 2D classification.

The network scores each class alone, so its scores shift from job to job (low-SNR jobs score
their good classes low; fragments of the protein score high next to the whole particle). The
job-context stage rescales each class's network score s with the job's best class:

    z = logit(s),  z_best = max of z over the job's scored classes
    score = sigmoid(a * z + b * (z - z_best) + c)

(a, b, c) are fitted by weighted logistic regression on the *out-of-fold* network scores of the
training jobs (``ranker.train --calibrate_folds K --job_context``; each job scored by networks
that never saw it), target = class purity, weight = sqrt(particles). They are stored in the
weights file as ``job_context``; the job applies them unless ``--no_job_context``.

Trade-off, stated plainly: the best class of a job is lifted (with the shipped coefficients its
threshold on the network score drops to about 0.16), so in a job with no good class at all the
best junk class is kept more often than by the network score alone.

Usage (refit the stage of an existing model from a training run's out-of-fold scores):

    python -m ranker.context --oof OOF.npz --model IN.pt --out OUT.pt
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

L2 = 1e-2  # ridge on a and b (not on c)


def _logit(scores) -> np.ndarray:
    p = np.clip(np.asarray(scores, np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def context_features(scores) -> np.ndarray:
    """(K, 3) design matrix of one job's K network scores: z, z - z_best, 1."""
    z = _logit(scores)
    if len(z) == 0:
        return np.zeros((0, 3))
    return np.stack([z, z - z.max(), np.ones_like(z)], 1)


def apply_job_context(scores, coef) -> np.ndarray:
    """Job-context scores (float32, shape (K,)) of ONE job's network scores (K,)."""
    if len(scores) == 0:
        return np.zeros(0, np.float32)
    x = context_features(scores) @ np.asarray(coef, np.float64)
    return (1 / (1 + np.exp(-x))).astype(np.float32)


def fit_job_context(scores, job, n_particles, purity) -> list[float]:
    """(a, b, c) from out-of-fold network scores of many jobs.

    scores, n_particles, purity: (N,) over classes; job: (N,) job names (the context is taken
    within each job). Target: purity (fraction of real particles, or a user's 0/1 selection);
    weight sqrt(n_particles)."""
    from scipy.optimize import minimize

    scores, job = np.asarray(scores, float), np.asarray(job)
    n = np.maximum(np.nan_to_num(np.asarray(n_particles, float)), 1.0)
    y = np.clip(np.nan_to_num(np.asarray(purity, float)), 0, 1)
    x = np.zeros((len(scores), 3))
    for name in np.unique(job):
        m = job == name
        x[m] = context_features(scores[m])
    w = np.sqrt(n)
    w /= w.mean()

    def loss(coef):
        p = np.clip(1 / (1 + np.exp(-x @ coef)), 1e-6, 1 - 1e-6)
        return -(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).mean() + L2 * (coef[:2] ** 2).sum()

    return [float(v) for v in minimize(loss, np.array([1.0, 0.0, 0.0]), method="L-BFGS-B").x]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ranker.context", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--oof", required=True, help=".npz written by ranker.train --oof_out")
    p.add_argument("--model", required=True, help="weights file whose networks made those scores")
    p.add_argument("--out", required=True, help="weights file to write (the same networks + job_context)")
    a = p.parse_args(argv)
    from .model import load_model, save_model

    d = np.load(a.oof)
    from .metrics import class_purity

    purity = class_purity(d["n_particles"], d["n_true"], d["target"])
    coef = fit_job_context(d["score"], d["job"], d["n_particles"], purity)
    r = load_model(a.model, device="cpu")
    card = dict(r.card, job_context={"coef": coef, "fitted_on": a.oof, "n_jobs": int(len(set(d["job"]))),
                                     "n_classes": int(len(d["score"]))})
    save_model(r.members, a.out, card, output=r.output, tta=r.tta, image_norm=r.image_norm,
               logit_shift=r.logit_shift, job_context=coef)
    print(f"job context a, b, c = {coef[0]:.3f}, {coef[1]:.3f}, {coef[2]:.3f} from {len(d['score'])} classes of "
          f"{len(set(d['job']))} jobs; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
