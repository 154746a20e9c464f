"""Experiment (2026-12-08; not part of the product): does a job-context stage that also sees how alike the job's
class averages are place the keep/reject cut better?

Usage::

    python tools/likeness_context.py --model d0.npz --oof d0_oof.npz [--sets val_r8 val]

``--model``: weights trained with ``--calibrate_folds 4 --oof_out d0_oof.npz`` (models/MODEL_CARD.md, "A loss shaped
like the regret, and where the regret comes from"); ``--oof``: its out-of-fold scores of the training classes. Fits,
on the out-of-fold scores of the training jobs only, a particle-weighted logistic regression of class purity on

    z (the class's network logit), z - z_best (the job's best class), the job's mean z,
    L (the job's mean aligned likeness: the best correlation over in-plane rotations and mirror of two class
    images, polar resampled), own (the class's likeness to the job's other classes, weighted by their scores), 1

(the inputs of the shipped stage, :func:`ranker.runtime.context.likeness_features`)

and, beside it, on the first two and 1 alone (v5's stage's form); then prints the regret at 0.5 on the frozen
validation sets (``datasets/realism/<set>.txt``) of each stage, with ("lowered only": the score never rises above the
class's own calibrated score, as v5's stage with lift 0) and without that rule, and the paired bootstrap
difference to the three-feature stage and to the baseline (v5). Regret is counted over the classes the model scores
(``evaluate`` also counts the few it does not: v5 on ``val.txt`` 4.16 % there, 4.11 % here).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from scipy.optimize import minimize

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ranker.develop.commands.evaluate import class_truth_counts  # noqa: E402
from ranker.develop.dataset import from_truth_job  # noqa: E402
from ranker.develop.metrics import class_regret, paired_regret_difference  # noqa: E402
from ranker.runtime.context import likeness_features  # noqa: E402
from ranker.runtime.model import load_model  # noqa: E402

# inputs: the columns of ranker.runtime.context.likeness_features (z, z - z_best, 1, mean z, L, own)
STAGES = {"z, z - z_best, 1": [0, 1, 2], "+ job likeness": [0, 1, 2, 4], "all five": [0, 1, 2, 3, 4, 5]}
CONSTANT = 2  # the column of ones (no ridge on its coefficient)


def fit(x, purity, n, cols) -> np.ndarray:
    """Particle-weighted (sqrt) logistic regression of purity on the columns ``cols`` of x; ridge 1e-3."""
    w = np.sqrt(np.maximum(n, 1.0))
    w /= w.mean()
    ridged = np.array(cols) != CONSTANT

    def loss(coef):
        p = np.clip(1 / (1 + np.exp(-x[:, cols] @ coef)), 1e-6, 1 - 1e-6)
        return -(w * (purity * np.log(p) + (1 - purity) * np.log(1 - p))).mean() + 1e-3 * (coef[ridged] ** 2).sum()

    return minimize(loss, np.r_[1.0, np.zeros(len(cols) - 1)], method="L-BFGS-B").x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--oof", required=True)
    ap.add_argument("--sets", nargs="*", default=["val_r8", "val"])
    ap.add_argument("--baseline", default="models/relion_external_rank_v5.npz", help="the model to compare with (v5: the experiment was made against it)")
    args = ap.parse_args(argv)
    oof = np.load(args.oof, allow_pickle=True)
    xs, ys, ns = [], [], []
    for job in sorted(set(oof["job"])):
        m = oof["job"] == job
        images = dict(zip(*(lambda d: (d.class_number, d.images))(from_truth_job(job))))
        xs.append(likeness_features(oof["score"][m], np.stack([images[k] for k in oof["class_number"][m]])))
        n = oof["n_particles"][m].astype(float)
        ns.append(n)
        ys.append(np.nan_to_num(oof["n_true"][m].astype(float)) / np.maximum(n, 1))
    x, purity, n = np.concatenate(xs), np.concatenate(ys), np.concatenate(ns)
    # a job of one class has no likeness: 0 here, as the experiment was run (the shipped stage's fit,
    # ranker.develop.job_context, gives it the training mean instead)
    x[:, 4:] = np.nan_to_num(x[:, 4:])
    centre = x[:, 4:].mean(0)
    x[:, 4:] -= centre
    coefs = {name: fit(x, purity, n, cols) for name, cols in STAGES.items()}
    for name, coef in coefs.items():
        print(f"{name}: coefficients {np.round(coef, 3).tolist()} (columns {STAGES[name]} of z, z - z_best, 1, mean z, L, own; fitted on {len(set(oof['job']))} training jobs)")
    model, baseline = load_model(args.model, device="cpu"), load_model(args.baseline, device="cpu")
    for name_set in args.sets:
        per_job = {}
        totals = []
        for project in open(os.path.join("datasets", "realism", name_set + ".txt")).read().split():
            d, counts = from_truth_job(project), class_truth_counts(project, (), "detail")
            idx = [i for i, k in enumerate(d.class_number) if k in counts and counts[k][0] > 0]
            nn = np.array([counts[d.class_number[i]][0] for i in idx], float)
            tt = np.array([counts[d.class_number[i]][1] for i in idx], float)
            totals.append(nn.sum())
            xj = likeness_features(model.network_scores(d.vectors, d.images)[idx], d.images[idx])
            xj[:, 4:] = np.nan_to_num(xj[:, 4:]) - centre
            z = xj[:, 0]
            per_job.setdefault("baseline", []).append(
                class_regret(baseline.score_job(d.vectors, d.images)[idx] >= 0.5, nn, tt).sum())
            for name, cols in STAGES.items():
                zc = xj[:, cols] @ coefs[name]
                per_job.setdefault((name, False), []).append(class_regret(zc >= 0, nn, tt).sum())
                lowered = np.minimum(zc, z + model.logit_shift)
                per_job.setdefault((name, True), []).append(class_regret(lowered >= 0, nn, tt).sum())
        tot = np.array(totals)
        base = per_job[("z, z - z_best, 1", True)]
        print(f"{name_set} ({len(tot)} jobs): baseline {100 * sum(per_job['baseline']) / tot.sum():.2f} %")
        for key, regret in per_job.items():
            if key == "baseline":
                continue
            a = paired_regret_difference(base, regret, tot)
            b = paired_regret_difference(per_job["baseline"], regret, tot)
            print(f"  {key[0]}{', lowered only' if key[1] else ''}: {100 * sum(regret) / tot.sum():.2f} %; vs the "
                  f"3-feature stage lowered only {100 * a['difference']:+.2f} ({100 * a['low']:+.2f} to "
                  f"{100 * a['high']:+.2f}); vs baseline {100 * b['difference']:+.2f} ({100 * b['low']:+.2f} to "
                  f"{100 * b['high']:+.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
