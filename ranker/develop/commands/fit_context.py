"""Refit the job-context stage of an existing model from a training run's out-of-fold scores.

    python -m ranker.develop fit_context --oof OOF.npz --model IN.npz --out OUT.npz [--likeness]

OOF.npz is written by ``python -m ranker.develop train --calibrate_folds K --oof_out OOF.npz``;
IN.npz must hold the networks that made those scores. OUT.npz gets the same networks with the
fitted (a, b, c, lift) (:mod:`ranker.develop.job_context`, :mod:`ranker.runtime.context`).
``--likeness``: the stage that also reads how alike the job's class images are; the images come
from the labelled jobs named in OOF.npz (they must be readable where they were).
"""

from __future__ import annotations

import numpy as np


def add_args(p) -> None:
    p.add_argument("--oof", required=True, help=".npz written by 'train --oof_out'")
    p.add_argument("--model", required=True, help="weights file whose networks made those scores")
    p.add_argument("--out", required=True, help="weights file to write (the same networks + job_context)")
    p.add_argument("--likeness", action="store_true",
                   help="fit the stage that also reads the likeness of the job's class images (ranker.runtime.context)")


def main(a) -> int:
    from ranker.develop.job_context import fit_job_context
    from ranker.develop.metrics import class_purity
    from ranker.runtime.model import load_model, save_model

    d = np.load(a.oof)
    r = load_model(a.model, device="cpu")
    purity = class_purity(d["n_particles"], d["n_true"], d["target"])
    images = class_images(d["job"], d["class_number"]) if a.likeness else None
    coef = fit_job_context(d["score"], d["job"], d["n_particles"], purity, r.logit_shift, images)
    card = dict(r.card, job_context={"coef": coef, "fitted_on": a.oof, "n_jobs": int(len(set(d["job"]))),
                                     "n_classes": int(len(d["score"]))})
    save_model(r.members, a.out, card, output=r.output, tta=r.tta, image_norm=r.image_norm,
               logit_shift=r.logit_shift, job_context=coef)
    print(f"job context {', '.join(f'{v:.3f}' for v in coef)} (a, b, c, lift[, d, e, f, L0, own0]) from "
          f"{len(d['score'])} classes of {len(set(d['job']))} jobs; wrote {a.out}")
    return 0


def class_images(jobs, class_numbers) -> np.ndarray:
    """(N, 64, 64) network images of the classes named by (job, class number) pairs, read from the labelled jobs."""
    from ranker.develop.dataset import from_truth_job

    by_job = {}
    for job in dict.fromkeys(jobs):
        data = from_truth_job(str(job))
        by_job[job] = dict(zip(data.class_number, data.images))
    return np.stack([by_job[j][int(k)] for j, k in zip(jobs, class_numbers)])
