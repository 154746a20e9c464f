"""The truth of a labelled RELION project: particle kinds and the per-class table ``class_truth.csv``.

``class_truth.csv`` (one row per class of the Class2D job, written by :mod:`ranker.develop.simulate`
and shipped with the fixtures) has ``class_number``, ``n_particles``, ``n_good``, ``frac_good``
(n_good / n_particles; empty for an empty class), ``majority_kind`` and ``n_<kind>`` for every junk
kind, plus RELION's per-class values. This module is its one reader and writer.
"""

from __future__ import annotations

import csv
import math
import os

# new kinds go at the END (class_truth.csv columns follow this order; files without a column read as 0)
KINDS = ("good", "noise", "ice", "edge", "aggregate", "offcentre", "partial", "blob", "patch")
JUNK_KINDS = KINDS[1:]
FILENAME = "class_truth.csv"


def class_truth_path(project: str) -> str:
    return os.path.join(project, FILENAME)


def read_class_truth(project: str) -> list[dict]:
    """The rows of ``project/class_truth.csv``, in class order, with typed values:
    ``class_number``, ``n_particles``, ``n_good`` and every ``n_<kind>`` as int (0 where a column is
    missing), ``frac_good`` as float (nan for an empty class); other columns as written.

    Raises FileNotFoundError naming the file when the project has none."""
    path = class_truth_path(project)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (each labelled job needs its class truth)")
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            r["class_number"] = int(r["class_number"])
            r["n_particles"] = int(float(r["n_particles"]))
            r["n_good"] = int(float(r.get("n_good") or 0))
            for kind in JUNK_KINDS:
                r[f"n_{kind}"] = int(float(r.get(f"n_{kind}") or 0))
            f = r.get("frac_good", "")
            r["frac_good"] = float(f) if f not in ("", "nan", None) else math.nan
            rows.append(r)
    return rows


def write_class_truth(project: str, rows: list[dict]) -> str:
    """Write ``rows`` (dicts with the same keys, in class order) as ``project/class_truth.csv``."""
    path = class_truth_path(project)
    with open(path, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        wr.writeheader()
        wr.writerows(rows)
    return path


def class_truth_counts(project: str, ignore_kinds=()) -> dict:
    """All non-empty classes of a job, {class number: (n_particles, n_true, {junk kind: n})}, leaving
    out the particles of ``ignore_kinds`` (e.g. "partial")."""
    out = {}
    for r in read_class_truth(project):
        n = r["n_particles"] - sum(r[f"n_{k}"] for k in ignore_kinds)
        if n > 0:
            kinds = {k: float(r[f"n_{k}"]) for k in JUNK_KINDS if k not in ignore_kinds}
            out[r["class_number"]] = (float(n), float(r["n_good"]), kinds)
    return out


def class_summary(rows) -> dict:
    """Counts of good (frac_good >= 0.8), bad (<= 0.2), mixed and empty classes among truth rows."""
    full = [d for d in rows if d["n_particles"]]
    g = sum(1 for d in full if float(d["frac_good"]) >= 0.8)
    b = sum(1 for d in full if float(d["frac_good"]) <= 0.2)
    return dict(good=g, bad=b, mixed=len(full) - g - b, empty=len(rows) - len(full))
