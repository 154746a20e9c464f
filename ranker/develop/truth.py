"""The truth of a labelled RELION project: particle kinds, the per-particle table ``truth.csv``, the
per-class table ``class_truth.csv``, and what a class is worth to a user.

``truth.csv`` (one row per picked particle, written by :mod:`ranker.develop.simulate` and
:mod:`ranker.develop.realdata`) has ``rlnImageName`` (as in the Import job's particles.star),
``kind`` (one of :data:`KINDS`; "good" = a real particle) and the columns its builder adds (e.g.
the simulated pose, or a real pick's provenance).

``class_truth.csv`` (one row per class of the Class2D job, written by :mod:`ranker.develop.simulate`
and shipped with the fixtures) has ``class_number``, ``n_particles``, ``n_good``, ``frac_good``
(n_good / n_particles; empty for an empty class), ``majority_kind`` and ``n_<kind>`` for every junk
kind, plus RELION's per-class values (``rlnEstimatedResolution``, A). This module is its one reader
and writer.

**Two meanings of "good class"** (:data:`TARGETS`):

* ``purity``: the fraction of real particles in the class (what models up to v3 were trained on);
* ``detail`` (what a careful user means, and RELION's human labels): mostly real particles AND an
  average that shows the structural detail this job can reach. Detail is read from RELION's own
  per-class resolution estimate against the job's best real class (the best resolution among classes
  of more than 10 particles that are >= 50 % real)::

      ratio  = best_resolution_A / resolution_A              (1 for the best class, < 1 for blurrier)
      detail = clip((ratio - DETAIL_NONE) / (DETAIL_FULL - DETAIL_NONE), 0, 1)
      target = purity * detail                                  (the training target)

  With DETAIL_FULL = 0.6 and DETAIL_NONE = 0.4 a class within 1.67x of the best resolution counts as
  fully detailed and one 2.5x worse or more as featureless (detail 0). For the class-level oracle a
  class of real particles whose detail is below 0.5 (resolution more than 2x worse than the best)
  is *featureless*: its real particles count as junk (a user would not keep it: they do not align).
  Junk classes stay junk whatever their resolution (RELION estimates a pure-noise class, aligned to
  itself, at about the best class's resolution).
"""

from __future__ import annotations

import csv
import math
import os

# new kinds go at the END (class_truth.csv columns follow this order; files without a column read as 0)
KINDS = ("good", "noise", "ice", "edge", "aggregate", "offcentre", "partial", "blob", "patch")
JUNK_KINDS = KINDS[1:]
FILENAME = "class_truth.csv"
PARTICLE_FILENAME = "truth.csv"


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
    return _write_rows(class_truth_path(project), rows)


def particle_truth_path(project: str) -> str:
    return os.path.join(project, PARTICLE_FILENAME)


def read_particle_truth(project: str) -> list[dict]:
    """The rows of ``project/truth.csv``, one per particle in file order, values as written (str).

    Raises FileNotFoundError naming the file when the project has none."""
    path = particle_truth_path(project)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (this needs the job's per-particle truth)")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_particle_truth(project: str, rows: list[dict]) -> str:
    """Write ``rows`` (dicts with the same keys, ``rlnImageName`` and ``kind`` among them) as
    ``project/truth.csv``."""
    return _write_rows(particle_truth_path(project), rows)


def _write_rows(path: str, rows: list[dict]) -> str:
    with open(path, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        wr.writeheader()
        wr.writerows(rows)
    return path


TARGETS = ("purity", "detail")
DETAIL_FULL, DETAIL_NONE = 0.6, 0.4  # ratios best_resolution / resolution (see the module docstring)
SCORED_MIN_PARTICLES = 10  # the job scores only classes with more particles (RELION's rule)


def detail(rows: list[dict]) -> dict:
    """{class number: detail in [0, 1]} of a job's truth rows (:func:`read_class_truth`); 1 where the
    resolution is unknown, nan-free. See the module docstring for the formula."""
    def resolution(r):
        try:
            value = float(r.get("rlnEstimatedResolution") or "nan")
        except ValueError:
            return math.nan
        return value if value > 0 else math.nan

    real = [resolution(r) for r in rows
            if r["n_particles"] > SCORED_MIN_PARTICLES and r["frac_good"] >= 0.5 and math.isfinite(resolution(r))]
    best = min(real) if real else math.nan
    out = {}
    for r in rows:
        res = resolution(r)
        if not (math.isfinite(res) and math.isfinite(best)):
            out[r["class_number"]] = 1.0
            continue
        ratio = best / res
        out[r["class_number"]] = min(1.0, max(0.0, (ratio - DETAIL_NONE) / (DETAIL_FULL - DETAIL_NONE)))
    return out


def class_truth_counts(project: str, ignore_kinds=(), target: str = "purity") -> dict:
    """All non-empty classes of a job, {class number: (n_particles, n_true, {junk kind: n})}, leaving
    out the particles of ``ignore_kinds`` (e.g. "partial"). With ``target="detail"`` the real particles
    of a featureless class (detail < 0.5) count as junk (n_true 0), as a user would judge it."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    rows = read_class_truth(project)
    usable = detail(rows) if target == "detail" else {}
    out = {}
    for r in rows:
        n = r["n_particles"] - sum(r[f"n_{k}"] for k in ignore_kinds)
        if n > 0:
            kinds = {k: float(r[f"n_{k}"]) for k in JUNK_KINDS if k not in ignore_kinds}
            n_true = float(r["n_good"])
            if usable.get(r["class_number"], 1.0) < 0.5:
                kinds["featureless real"], n_true = n_true, 0.0
            out[r["class_number"]] = (float(n), n_true, kinds)
    return out


def class_summary(rows) -> dict:
    """Counts of good (frac_good >= 0.8), bad (<= 0.2), mixed and empty classes among truth rows."""
    full = [d for d in rows if d["n_particles"]]
    g = sum(1 for d in full if float(d["frac_good"]) >= 0.8)
    b = sum(1 for d in full if float(d["frac_good"]) <= 0.2)
    return dict(good=g, bad=b, mixed=len(full) - g - b, empty=len(rows) - len(full))
