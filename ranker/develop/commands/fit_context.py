"""Refit the job-context stage of an existing model from a training run's out-of-fold scores.

    python -m ranker.develop fit_context --oof OOF.npz --model IN.npz --out OUT.npz [--likeness [--signal]]

OOF.npz is written by ``python -m ranker.develop train --calibrate_folds K --oof_out OOF.npz``;
IN.npz must hold the networks that made those scores. OUT.npz gets the same networks with the
fitted (a, b, c, lift) (:mod:`ranker.develop.job_context`, :mod:`ranker.runtime.context`).
``--likeness``: the stage that also reads how alike the job's class images are; the images come
from the labelled jobs named in OOF.npz (they must be readable where they were). ``--signal`` (with
``--likeness``): the stage that also reads each class's RelativeSignalIntensity, from the same jobs.
"""

from __future__ import annotations

import numpy as np

from ranker.develop.commands import UsageError


def add_args(p) -> None:
    p.add_argument("--oof", required=True, help=".npz written by 'train --oof_out'")
    p.add_argument("--model", required=True, help="weights file whose networks made those scores")
    p.add_argument("--out", required=True, help="weights file to write (the same networks + job_context)")
    p.add_argument("--likeness", action="store_true",
                   help="fit the stage that also reads the likeness of the job's class images (ranker.runtime.context)")
    p.add_argument("--signal", action="store_true",
                   help="with --likeness: the stage that also reads each class's RelativeSignalIntensity")


def main(a) -> int:
    from ranker.develop.job_context import fit_job_context
    from ranker.develop.metrics import class_purity
    from ranker.runtime.model import load_model, save_model

    if a.signal and not a.likeness:
        raise UsageError("--signal needs --likeness (the signal term extends the likeness stage)")
    d = np.load(a.oof)
    r = load_model(a.model, device="cpu")
    purity = class_purity(d["n_particles"], d["n_true"], d["target"])
    images, vectors = class_inputs(d["job"], d["class_number"]) if a.likeness else (None, None)
    coef = fit_job_context(d["score"], d["job"], d["n_particles"], purity, r.logit_shift, images,
                           vectors if a.signal else None)
    card = dict(r.card, job_context={"coef": coef, "fitted_on": a.oof, "n_jobs": int(len(set(d["job"]))),
                                     "n_classes": int(len(d["score"]))})
    save_model(r.members, a.out, card, output=r.output, tta=r.tta, image_norm=r.image_norm,
               logit_shift=r.logit_shift, job_context=coef)
    print(f"job context {', '.join(f'{v:.3f}' for v in coef)} (a, b, c, lift[, d, e, f, L0, own0][, g, S0]) from "
          f"{len(d['score'])} classes of {len(set(d['job']))} jobs; wrote {a.out}")
    return 0


def class_inputs(jobs, class_numbers) -> tuple:
    """(images (N, 64, 64), normalised feature vectors (N, 24)) of the classes named by (job, class
    number) pairs, read from the labelled jobs."""
    from ranker.develop.dataset import from_truth_job

    by_job = {}
    for job in dict.fromkeys(jobs):
        data = from_truth_job(str(job))
        by_job[job] = dict(zip(data.class_number, zip(data.images, data.vectors)))
    rows = [by_job[j][int(k)] for j, k in zip(jobs, class_numbers)]
    return np.stack([im for im, _ in rows]), np.stack([v for _, v in rows])
