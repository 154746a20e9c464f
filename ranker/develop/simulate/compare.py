"""Check quick (in-Python) class averages against RELION-classified ones: feature distributions.

``python -m ranker.simulate compare RELION_CORPUS QUICK_CORPUS [--md OUT.md]`` featurises every job
present in both corpora (same job names: ``make_corpus.sh`` with the same SEED gives the same
particles, classified once by relion_refine and once by ``--classifier quick``) and prints, for
good classes (>= 80 % true particles) and junk classes (<= 20 %), each raw ranker feature's
median [25 %, 75 %] under both classifiers and the two-sample Kolmogorov-Smirnov statistic D
(0: same distribution, 1: disjoint), how many good / mixed / junk / empty classes each made, and
the median classification wall time per job (``seconds_refine`` of corpus_job.json).
"""
from __future__ import annotations

import csv
import glob
import json
import os

import numpy as np

from ranker.develop.truth import read_class_truth

GOOD_MIN, JUNK_MAX = 0.8, 0.2
EXTRA = ("ClassDistribution", "EstimatedResolution")


def corpus_classes(job_dirs):
    """(feature names, {"good": (n, F) array, "junk": (n, F) array}, class counts) of the jobs."""
    from ranker.develop.dataset import featurise, find_optimiser
    from ranker.runtime.features import FEATURE_NAMES

    names = list(EXTRA) + list(FEATURE_NAMES)
    out = {"good": [], "junk": []}
    counts = {"good": 0, "mixed": 0, "junk": 0, "empty": 0}
    for d in job_dirs:
        frac = {r["class_number"]: r["frac_good"] for r in read_class_truth(d)}
        job, _parts, fs = featurise(find_optimiser(d), d)
        featured = {job.classes[i].class_number: raw for i, raw in zip(fs.rows, fs.raw)}
        for k, f in frac.items():
            if not np.isfinite(f) or k not in featured:
                counts["empty"] += 1
                continue
            kind = "good" if f >= GOOD_MIN else "junk" if f <= JUNK_MAX else "mixed"
            counts[kind] += 1
            if kind != "mixed":
                out[kind].append([featured[k][n] for n in names])
    return names, {k: np.array(v, float).reshape(-1, len(names)) for k, v in out.items()}, counts


def paired_jobs(relion_corpus, quick_corpus):
    """Job names (jobNNNN) finished in both corpora."""
    def done(c):
        return {os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(c, "job*", "class_truth.csv"))}
    return sorted(done(relion_corpus) & done(quick_corpus))


def _q(v):
    if len(v) == 0:
        return "-"
    a, b, c = np.percentile(v, [25, 50, 75])
    return f"{b:.3g} [{a:.3g}, {c:.3g}]"


def compare(relion_corpus, quick_corpus) -> str:
    """The Markdown comparison (see module docstring)."""
    from scipy.stats import ks_2samp

    jobs = paired_jobs(relion_corpus, quick_corpus)
    if not jobs:
        raise SystemExit(f"no job finished in both {relion_corpus} and {quick_corpus}")
    secs = {c: [json.load(open(os.path.join(c, j, "corpus_job.json"))).get("seconds_refine", np.nan) for j in jobs]
            for c in (relion_corpus, quick_corpus)}
    names, R, cr = corpus_classes([os.path.join(relion_corpus, j) for j in jobs])
    _, Q, cq = corpus_classes([os.path.join(quick_corpus, j) for j in jobs])
    lines = [f"{len(jobs)} jobs classified both ways ({relion_corpus} by relion_refine, {quick_corpus} by quickclass).",
             f"Classification wall time per job, median: relion_refine {np.nanmedian(secs[relion_corpus]):.0f} s, "
             f"quickclass {np.nanmedian(secs[quick_corpus]):.0f} s.",
             "",
             "| classes | good (>= 80 %) | mixed | junk (<= 20 %) | empty or <= 10 particles |",
             "|---|---|---|---|---|",
             f"| relion_refine | {cr['good']} | {cr['mixed']} | {cr['junk']} | {cr['empty']} |",
             f"| quickclass | {cq['good']} | {cq['mixed']} | {cq['junk']} | {cq['empty']} |",
             "",
             "Median [25 %, 75 %] of each raw feature; D = Kolmogorov-Smirnov distance quick vs RELION.",
             "",
             "| feature | good: RELION | good: quick | D | junk: RELION | junk: quick | D |",
             "|---|---|---|---|---|---|---|"]
    ds = {"good": [], "junk": []}
    for j, n in enumerate(names):
        cells = []
        for kind in ("good", "junk"):
            a, b = R[kind][:, j], Q[kind][:, j]
            d = ks_2samp(a, b).statistic if len(a) and len(b) else float("nan")
            ds[kind].append(d)
            cells += [_q(a), _q(b), f"{d:.2f}"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    med = {k: (f"{np.median(v):.2f}" if np.isfinite(v).all() else "n/a (no such classes)") for k, v in ds.items()}
    lines += ["", f"Median D: good {med['good']}, junk {med['junk']}; features with D > 0.5: "
              + (", ".join(n for n, a, b in zip(names, ds["good"], ds["junk"]) if np.nanmax([a, b]) > 0.5) or "none")]
    return "\n".join(lines) + "\n"
