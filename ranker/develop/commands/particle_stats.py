"""Inside a mixed class, do RELION's per-particle statistics tell real particles from junk?

Usage::

    python -m ranker.develop particle_stats JOB_DIR [JOB_DIR ...] [--min_particles 30]
        [--purity_range 0.3 0.7] [--seed 0] [--out report.md]

Each JOB_DIR is a labelled RELION project with a per-particle ``truth.csv`` (``rlnImageName``,
``kind``; "good" = a real particle) and one Class2D job. For every class of the job's last iteration
with at least ``--min_particles`` particles whose real fraction lies in ``--purity_range`` (the
classes that decide the regret near the 50 % cut), it computes the particle-level ROC-AUC of each
column of :data:`COLUMNS` in ``run_itNNN_data.star`` for real vs junk particles, and prints, with
classes weighted by their particle counts:

* separation = max(AUC, 1 - AUC): whichever way round (a job may flip the direction);
* ``chance``: the same figure for a random score on the same classes (max(AUC, 1 - AUC) exceeds 0.5
  by chance in small classes; read the separation against it);
* the fraction of classes separated >= 0.75, and of classes where real particles score higher.

A per-class feature built from these columns (their spread or median within the class) can only help
a class selection if they separate real from junk particles inside the mixed classes. This measures
whether they do, before anyone builds one.
"""

from __future__ import annotations

import os

import numpy as np

from ranker.develop.commands import UsageError
from ranker.develop.dataset import find_optimiser
from ranker.develop.metrics import roc_auc
from ranker.develop.truth import particle_truth_path, read_particle_truth
from ranker.runtime.star import read_star

#: RELION's per-particle values of a Class2D job's data.star that describe how a particle aligned
COLUMNS = ("rlnLogLikeliContribution", "rlnMaxValueProbDistribution", "rlnNormCorrection",
           "rlnNrOfSignificantSamples")
CHANCE = "random score"


def job_separation(project: str, min_particles: int = 30, purity_range=(0.3, 0.7), seed: int = 0) -> list[dict]:
    """One row per mixed class of ``project``: ``class_number``, ``n_particles``, ``purity`` (real
    fraction, 0-1) and the particle-level ROC-AUC (real particles as positives) of each column of
    :data:`COLUMNS` and of :data:`CHANCE` (a seeded random normal score)."""
    kind = {r["rlnImageName"]: r["kind"] for r in read_particle_truth(project)}
    data_path = os.path.join(project, find_optimiser(project).replace("_optimiser.star", "_data.star"))
    particles = read_star(data_path)["particles"]
    names = particles.column("rlnImageName")
    missing = [n for n in names if n not in kind]
    if missing:
        raise ValueError(f"{particle_truth_path(project)}: no truth for {len(missing)} particles of {data_path} (e.g. {missing[0]})")
    real = np.array([kind[n] == "good" for n in names])
    classes = np.array(particles.float_column("rlnClassNumber")).astype(int)
    values = {c: np.array(particles.float_column(c)) for c in COLUMNS}
    rng = np.random.default_rng(seed)
    rows = []
    for k in np.unique(classes):
        members = classes == k
        purity = float(real[members].mean())
        if members.sum() < min_particles or not purity_range[0] <= purity <= purity_range[1]:
            continue
        row = {"class_number": int(k), "n_particles": int(members.sum()), "purity": purity}
        for c in COLUMNS:
            row[c] = roc_auc(values[c][members], real[members])
        row[CHANCE] = roc_auc(rng.normal(size=int(members.sum())), real[members])
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    """Per column: ``abs_auc`` (particle-weighted mean of max(AUC, 1 - AUC)), ``median_abs_auc``,
    ``strong`` (fraction of classes with max(AUC, 1 - AUC) >= 0.75) and ``real_higher`` (fraction of
    classes with AUC > 0.5)."""
    weights = np.array([r["n_particles"] for r in rows], float)
    out = {}
    for c in COLUMNS + (CHANCE,):
        auc = np.array([r[c] for r in rows])
        sep = np.maximum(auc, 1 - auc)
        out[c] = {"abs_auc": float(np.average(sep, weights=weights)), "median_abs_auc": float(np.median(sep)),
                  "strong": float(np.mean(sep >= 0.75)), "real_higher": float(np.mean(auc > 0.5))}
    return out


def to_markdown(per_column: dict, n_classes: int, n_particles: int, n_jobs: int, purity_range) -> str:
    lo, hi = (int(round(100 * p)) for p in purity_range)
    out = [f"{n_classes} classes {lo}-{hi} % real ({n_particles} particles) in {n_jobs} jobs: "
           "particle-level ROC-AUC of real vs junk particles inside each class", "",
           "| column | separation max(AUC, 1 - AUC), particle-weighted mean | median | classes separated >= 0.75 "
           "| classes where real is higher |",
           "|---|---|---|---|---|"]
    for c, s in per_column.items():
        out.append(f"| {c} | {s['abs_auc']:.3f} | {s['median_abs_auc']:.3f} | {100 * s['strong']:.0f} % | "
                   f"{100 * s['real_higher']:.0f} % |")
    return "\n".join(out) + "\n"


def add_args(p) -> None:
    p.add_argument("jobs", nargs="+", help="RELION projects with a per-particle truth.csv")
    p.add_argument("--min_particles", type=int, default=30, help="smallest class counted")
    p.add_argument("--purity_range", type=float, nargs=2, default=(0.3, 0.7), metavar=("LOW", "HIGH"),
                   help="real fraction (0-1) of the classes counted")
    p.add_argument("--seed", type=int, default=0, help="seed of the random reference score")
    p.add_argument("--out", help="also write the Markdown table here")


def main(args) -> int:
    lo, hi = args.purity_range
    if not 0 <= lo <= hi <= 1 or args.min_particles < 2:
        raise UsageError("--purity_range needs 0 <= LOW <= HIGH <= 1 and --min_particles >= 2")
    for job in args.jobs:
        if not os.path.isfile(particle_truth_path(job)):
            raise UsageError(f"{particle_truth_path(job)}: no such file (each job needs per-particle truth)")
    rows = [r for job in args.jobs for r in job_separation(job, args.min_particles, (lo, hi), args.seed)]
    if not rows:
        raise UsageError(f"no class of at least {args.min_particles} particles is {lo:g}-{hi:g} real in these jobs")
    report = to_markdown(summary(rows), len(rows), sum(r["n_particles"] for r in rows), len(args.jobs), (lo, hi))
    print(report)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(report)
    return 0
