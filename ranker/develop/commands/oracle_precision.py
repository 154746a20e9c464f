"""How precisely must a class selection know each class's purity to meet a target against the oracle?

Usage::

    python -m ranker.develop oracle_precision JOB_DIR [JOB_DIR ...] [--sigmas 0.02,0.05,0.1,0.15]
        [--draws 1000] [--target 0.95] [--ignore_kinds partial] [--seed 0] [--truth purity|detail] [--out report.md]

The oracle of ``ranker.evaluate`` keeps exactly the classes with >= 50 % real particles. A
*noisy oracle* keeps a class iff ``purity + e >= 0.5`` with ``e ~ N(0, sigma)`` drawn for each
class: a selector that knows every class's purity to within ``sigma`` (purity units, 0-1) and
makes no other mistake. For each sigma this prints, pooled over the jobs as ``ranker.evaluate``
pools them, the true particles kept and junk particles removed as fractions of the oracle's
(mean and 5th percentile over the draws), the fraction of draws meeting both targets, and the
regret ``evaluate`` reports (mean, 95th percentile, draws with regret <= 1 %).

It needs only each job's ``class_truth.csv`` (no model): it says how much of a target like
"95 % of the oracle's real particles kept and 95 % of its junk removed" depends on the few
large classes near the 50 % cut. Compare with a model's own error there, which
``ranker.evaluate`` reports ("score - purity on classes 35-65 % real").
"""

from __future__ import annotations

import os

import numpy as np

from ranker.develop.commands import UsageError
from ranker.develop.truth import TARGETS, class_truth_counts
from ranker.develop.metrics import selection_vs_oracle

DEFAULT_SIGMAS = (0.0, 0.02, 0.05, 0.1, 0.15)


def noisy_oracle(n_particles, n_true, sigma: float, draws: int = 1000, seed: int = 0) -> dict:
    """Pooled figures of ``draws`` noisy-oracle selections over classes pooled from any number of jobs.

    n_particles, n_true: (n_classes,) particle counts per class. Returns arrays of shape (draws,):
    ``true_kept_vs_oracle``, ``junk_removed_vs_oracle`` and ``regret`` (as ``evaluate``'s: a fraction of
    all particles). Pooling classes of several jobs in one array
    gives the same figures as summing per-job counts (the oracle decides each class alone)."""
    n = np.asarray(n_particles, float)
    t = np.asarray(n_true, float)
    purity = t / np.maximum(n, 1)
    keep = purity[None, :] + np.random.default_rng(seed).normal(0.0, sigma, (draws, len(n))) >= 0.5
    figures = [selection_vs_oracle(k, n, t) for k in keep]
    out = {key: np.array([f[key] for f in figures]) for key in ("true_kept_vs_oracle", "junk_removed_vs_oracle")}
    out["regret"] = np.array([f["regret"] / max(f["true_total"] + f["junk_total"], 1) for f in figures])
    return out


def precision_table(projects, sigmas=DEFAULT_SIGMAS, draws: int = 1000, target: float = 0.95,
                    ignore_kinds=(), seed: int = 0, truth: str = "purity") -> list[dict]:
    """One row per sigma: mean and 5th percentile of both pooled figures, the fraction of
    draws with both >= target, and the regret's mean, 95th percentile and the fraction of draws
    with regret <= 1 %. ``truth``: the class truth (``ranker.develop.truth.TARGETS``)."""
    n, t = [], []
    for project in projects:
        for n_k, t_k, _ in class_truth_counts(project, ignore_kinds, truth).values():
            n.append(n_k)
            t.append(t_k)
    rows = []
    for sigma in sigmas:
        f = noisy_oracle(n, t, sigma, draws, seed)
        kept, removed = f["true_kept_vs_oracle"], f["junk_removed_vs_oracle"]
        rows.append({"sigma": sigma, "kept_mean": float(kept.mean()), "kept_p5": float(np.percentile(kept, 5)),
                     "removed_mean": float(removed.mean()), "removed_p5": float(np.percentile(removed, 5)),
                     "both": float(((kept >= target) & (removed >= target)).mean()),
                     "regret_mean": float(f["regret"].mean()), "regret_p95": float(np.percentile(f["regret"], 95)),
                     "regret_1pct": float((f["regret"] <= 0.01).mean())})
    return rows


def to_markdown(rows, target: float, n_jobs: int, draws: int) -> str:
    pct = int(round(100 * target))
    out = [f"Noisy oracle over {n_jobs} jobs ({draws} draws): keeps a class iff purity + N(0, sigma) >= 0.5", "",
           "| sigma (purity error) | real kept vs oracle: mean [5th pct] | junk removed vs oracle: mean [5th pct] "
           f"| draws with both >= {pct} % | regret: mean [95th pct] | draws with regret <= 1 % |",
           "|---|---|---|---|---|---|"]
    out += [f"| {r['sigma']:.2f} | {100 * r['kept_mean']:.1f} % [{100 * r['kept_p5']:.1f}] | "
            f"{100 * r['removed_mean']:.1f} % [{100 * r['removed_p5']:.1f}] | {100 * r['both']:.0f} % | "
            f"{100 * r['regret_mean']:.2f} % [{100 * r['regret_p95']:.2f}] | {100 * r['regret_1pct']:.0f} % |"
            for r in rows]
    return "\n".join(out) + "\n"


def add_args(p) -> None:
    p.add_argument("jobs", nargs="+", help="RELION projects with class_truth.csv")
    p.add_argument("--sigmas", default=",".join(str(s) for s in DEFAULT_SIGMAS),
                   help="comma-separated purity errors (0-1) to simulate")
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--target", type=float, default=0.95, help="both pooled figures must reach this")
    p.add_argument("--ignore_kinds", default="", help="comma-separated junk kinds to leave out (as ranker.evaluate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truth", choices=TARGETS, default="purity",
                   help="class truth: purity (the default, as earlier reports), or detail (evaluate's default)")
    p.add_argument("--out", help="also write the Markdown table here")


def main(args) -> int:
    try:
        sigmas = [float(s) for s in args.sigmas.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--sigmas: not a comma-separated list of numbers: {args.sigmas!r}")
    if any(s < 0 for s in sigmas) or args.draws < 1:
        raise UsageError("--sigmas must be >= 0 and --draws >= 1")
    for job in args.jobs:
        if not os.path.isfile(os.path.join(job, "class_truth.csv")):
            raise UsageError(f"{os.path.join(job, 'class_truth.csv')}: no such file (each job needs its class truth)")
    kinds = tuple(k for k in args.ignore_kinds.split(",") if k)
    rows = precision_table(args.jobs, sigmas, args.draws, args.target, kinds, args.seed, args.truth)
    report = to_markdown(rows, args.target, len(args.jobs), args.draws)
    print(report)
    if args.out:
        open(args.out, "w").write(report)
    return 0
