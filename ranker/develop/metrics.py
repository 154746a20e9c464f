"""Quality metrics for ranking classes (no scikit-learn needed)."""

from __future__ import annotations

import numpy as np


def roc_auc(scores, positive) -> float:
    """Area under the ROC curve (ties count half); NaN if one class is missing."""
    scores = np.asarray(scores, float)
    positive = np.asarray(positive, bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def class_purity(n_particles, n_true, targets) -> np.ndarray:
    """Fraction of real particles per class: n_true / n_particles where the truth is known,
    else the class's target (a user's 0/1 selection)."""
    n = np.maximum(np.nan_to_num(np.asarray(n_particles, float), nan=1.0), 1.0)
    n_true = np.asarray(n_true, float)
    return np.where(np.isfinite(n_true), n_true / n, np.asarray(targets, float))


def class_regret(keep, n_particles, n_true) -> np.ndarray:
    """Particles each class's keep/reject decision costs against the class-level oracle (keep iff
    >= 50 % true particles), shape (N,): |true - junk| where ``keep`` differs from the oracle, else 0.
    Their sum is :func:`selection_vs_oracle`'s ``regret``."""
    keep = np.asarray(keep, bool)
    n = np.asarray(n_particles, float)
    t = np.nan_to_num(np.asarray(n_true, float))
    oracle = (t >= 0.5 * n) & (n > 0)
    return np.where(keep != oracle, np.abs(2 * t - n), 0.0)


def best_job_threshold_regret(scores, n_particles, n_true) -> float:
    """The least regret (particles) any threshold on these scores reaches in ONE job: what a selector
    that ranks the classes as ``scores`` do, but knows where to cut in this job, would regret.
    A class scored -inf (not scored) is never kept."""
    s = np.asarray(scores, float)
    cuts = np.r_[np.unique(s[np.isfinite(s)]), np.inf]
    return float(min(class_regret(s >= cut, n_particles, n_true).sum() for cut in cuts))


def selection_vs_oracle(keep, n_particles, n_true) -> dict:
    """Particles kept/removed by a class selection, against the oracle that keeps exactly the
    classes with >= 50 % true particles.

    Returns true particles kept (ours / oracle's), junk removed (ours / oracle's), the
    junk the oracle must keep (inside majority-true classes: not removable by class selection),
    the particles whose class gets the oracle's keep/reject decision ("agreeing"), and the
    ``regret``: particles whose fate is worse than under the oracle, beyond what the oracle gets
    wrong anyway -- each class decided unlike the oracle costs |true - junk| particles (keeping a
    junk-majority class keeps junk - true more particles wrongly; dropping a true-majority class
    loses true - junk more). Divide by the particle total for the fraction users care about.
    """
    keep = np.asarray(keep, bool)
    n = np.asarray(n_particles, float)
    t = np.nan_to_num(np.asarray(n_true, float))
    junk = n - t
    oracle = t >= 0.5 * n
    oracle &= n > 0
    out = {"true_kept": float(t[keep].sum()), "oracle_true_kept": float(t[oracle].sum()),
           "junk_removed": float(junk[~keep].sum()), "oracle_junk_removed": float(junk[~oracle].sum()),
           "junk_unremovable": float(junk[oracle].sum()), "true_total": float(t.sum()), "junk_total": float(junk.sum()),
           "agreeing": float(n[keep == oracle].sum()),
           "regret": float(class_regret(keep, n, t).sum())}
    out["true_kept_vs_oracle"] = out["true_kept"] / out["oracle_true_kept"] if out["oracle_true_kept"] else 1.0
    out["junk_removed_vs_oracle"] = (out["junk_removed"] / out["oracle_junk_removed"]
                                     if out["oracle_junk_removed"] else 1.0)
    return out


def pooled_regret(regret, total) -> float:
    """Pooled regret fraction of several jobs: sum(regret) / sum(total), both per job in particles."""
    return float(np.sum(regret) / max(float(np.sum(total)), 1.0))


def _resampled_jobs(n_jobs: int, draws: int, seed: int) -> np.ndarray:
    """(draws, n_jobs) job indices drawn with replacement: the bootstrap over jobs (seeded, so reproducible)."""
    return np.random.default_rng(seed).integers(0, n_jobs, size=(draws, n_jobs))


def _pooled_per_draw(values, total, pick) -> np.ndarray:
    """Pooled fraction sum(values) / sum(total) of each resample's jobs; ``pick`` from :func:`_resampled_jobs`."""
    return values[pick].sum(1) / np.maximum(total[pick].sum(1), 1.0)


def _percentile_interval(values, level: float) -> tuple:
    """The central ``level`` percentile interval (low, high) of bootstrap ``values``."""
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_regret(regret, total, draws: int = 2000, level: float = 0.95, seed: int = 0) -> tuple:
    """Percentile interval of a pooled regret fraction, resampling whole jobs with replacement.

    ``regret`` and ``total`` are per job (particles, as :func:`selection_vs_oracle` counts them); the pooled
    figure is :func:`pooled_regret`, a ratio of sums (large jobs weigh more). Jobs, not classes, are the unit:
    a job's classes share one classification. Returns (low, high) as fractions; (nan, nan) for fewer than two
    jobs. With few jobs (< 10) the interval is little more than the range of the per-job regrets.
    """
    regret, total = np.asarray(regret, float), np.asarray(total, float)
    if len(regret) < 2:
        return float("nan"), float("nan")
    return _percentile_interval(_pooled_per_draw(regret, total, _resampled_jobs(len(regret), draws, seed)), level)


def paired_regret_difference(regret_a, regret_b, total, draws: int = 2000, level: float = 0.95,
                             seed: int = 0) -> dict:
    """Pooled regret of selection B minus that of selection A on the same jobs, with a paired bootstrap over jobs.

    ``regret_a``, ``regret_b`` and ``total`` are per job, in particles; each resample draws the same jobs for A
    and B. Returns ``difference`` (fraction of all particles; negative: B regrets less), its percentile interval
    ``low``/``high``, and the fractions of resamples in which B's pooled regret is lower (``b_better``) and
    higher (``b_worse``) than A's; the rest are ties (the two selections differ on few jobs). The resampling
    covers the choice of jobs, not the training seed: compare seed twins for that.
    """
    a, b, total = (np.asarray(x, float) for x in (regret_a, regret_b, total))
    out = {"difference": pooled_regret(b, total) - pooled_regret(a, total)}
    if len(a) < 2:
        return dict(out, low=float("nan"), high=float("nan"), b_better=float("nan"), b_worse=float("nan"))
    pick = _resampled_jobs(len(a), draws, seed)
    diff = _pooled_per_draw(b - a, total, pick)
    low, high = _percentile_interval(diff, level)
    return dict(out, low=low, high=high, b_better=float(np.mean(diff < 0)),
                b_worse=float(np.mean(diff > 0)))
