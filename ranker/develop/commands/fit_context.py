"""Refit the job-context stage of an existing model from a training run's out-of-fold scores.

    python -m ranker.develop fit_context --oof OOF.npz --model IN.npz --out OUT.npz

OOF.npz is written by ``python -m ranker.develop train --calibrate_folds K --oof_out OOF.npz``;
IN.npz must hold the networks that made those scores. OUT.npz gets the same networks with the
fitted (a, b, c, lift) (:mod:`ranker.develop.job_context`, :mod:`ranker.runtime.context`).
"""

from __future__ import annotations

import numpy as np


def add_args(p) -> None:
    p.add_argument("--oof", required=True, help=".npz written by 'train --oof_out'")
    p.add_argument("--model", required=True, help="weights file whose networks made those scores")
    p.add_argument("--out", required=True, help="weights file to write (the same networks + job_context)")


def main(a) -> int:
    from ranker.develop.job_context import fit_job_context
    from ranker.develop.metrics import class_purity
    from ranker.runtime.model import load_model, save_model

    d = np.load(a.oof)
    r = load_model(a.model, device="cpu")
    purity = class_purity(d["n_particles"], d["n_true"], d["target"])
    coef = fit_job_context(d["score"], d["job"], d["n_particles"], purity, r.logit_shift)
    card = dict(r.card, job_context={"coef": coef, "fitted_on": a.oof, "n_jobs": int(len(set(d["job"]))),
                                     "n_classes": int(len(d["score"]))})
    save_model(r.members, a.out, card, output=r.output, tta=r.tta, image_norm=r.image_norm,
               logit_shift=r.logit_shift, job_context=coef)
    print(f"job context a, b, c = {coef[0]:.3f}, {coef[1]:.3f}, {coef[2]:.3f}, lift {coef[3]:g} from "
          f"{len(d['score'])} classes of {len(set(d['job']))} jobs; wrote {a.out}")
    return 0
