"""Experiment (2026-12-08; not part of the product): which one of a class's 24 normalised features, added to the
likeness job-context stage, lowers the regret on the TRAINING jobs? (How ``fit_context --signal`` chose
RelativeSignalIntensity: models/MODEL_CARD.md, top section, v7.)

Usage::

    python tools/stage_inputs.py --oof datasets/stage_fits/v5_unseen_scores.npz [--folds 5] [--draws 5]

``--oof``: scores no network saw the job of, with job, class_number, score, n_particles, n_true (the file v6 and v7
were fitted on: datasets/README.md, "The scores the job-context stage is fitted on"); run from the repository root.
For the stage's inputs alone (:func:`ranker.runtime.context.likeness_features`: z, z - z_best, 1, mean z, L, own)
and for them plus each feature in
turn (the class's own value, standardised over the training classes), fits the stage's logistic regression
(``likeness_context.fit``: target purity, weight sqrt(n), ridge 1e-3) on the jobs of all folds but one and prints the
regret at 0.5 of the held-out fold's jobs, pooled over folds: grouped cross-validation over jobs, repeated for
``--draws`` random fold assignments. Validation jobs are never read.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from likeness_context import fit  # noqa: E402  (tools/ is this script's directory)

from ranker.develop.commands.fit_context import class_inputs  # noqa: E402
from ranker.develop.job_context import job_features  # noqa: E402
from ranker.develop.metrics import class_regret  # noqa: E402
from ranker.runtime.features import FEATURE_NAMES  # noqa: E402


def cv_regret(x, purity, n, n_true, job, folds: int, seed: int) -> float:
    """Regret at 0.5 (% of particles) of the stage fitted on x's columns, each job's classes predicted by the fit
    on the other folds' jobs."""
    jobs = np.array(sorted(set(job)))
    fold_of = dict(zip(jobs, np.random.default_rng(seed).permutation(len(jobs)) % folds))
    fold = np.array([fold_of[j] for j in job])
    z = np.zeros(len(job))
    cols = list(range(x.shape[1]))
    for f in range(folds):
        z[fold == f] = x[fold == f] @ fit(x[fold != f], purity[fold != f], n[fold != f], cols)
    return 100 * class_regret(z >= 0, n, n_true).sum() / n.sum()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--oof", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--draws", type=int, default=5)
    args = ap.parse_args(argv)
    d = np.load(args.oof)
    job, n = d["job"], d["n_particles"].astype(float)
    n_true = np.nan_to_num(d["n_true"].astype(float))
    purity = n_true / np.maximum(n, 1)
    images, vectors = class_inputs(job, d["class_number"])
    x = job_features(d["score"], job, images)
    x[:, 4:] = np.nan_to_num(x[:, 4:] - np.nanmean(x[:, 4:], 0))  # a one-class job: the training mean
    runs = {"the stage's inputs alone": x}
    for i, name in enumerate(FEATURE_NAMES):
        v = vectors[:, i].astype(float)
        runs[f"+ {name}"] = np.c_[x, (v - v.mean()) / (v.std() + 1e-9)]
    print(f"grouped {args.folds}-fold CV over {len(set(job))} training jobs ({len(job)} classes), {args.draws} draws:")
    print("| inputs | CV regret at 0.5, mean of draws | per draw |\n|---|---|---|")
    for name, xx in runs.items():
        r = [cv_regret(xx, purity, n, n_true, job, args.folds, seed) for seed in range(args.draws)]
        print(f"| {name} | {np.mean(r):.2f} % | {' '.join(f'{v:.2f}' for v in r)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
