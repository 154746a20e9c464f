"""Freeze labelled jobs: keep their classes' features, images and truth without the particles.

Usage::

    python -m ranker.develop freeze JOB_DIR [JOB_DIR ...] --dest DIR [--root ROOT]

Each JOB_DIR (a RELION project with a Class2D job and ``class_truth.csv``, as ``corpus`` makes them)
becomes DIR/<its path relative to ROOT> (default ROOT: the parent of the job's parent, so
``/work/corpora/corpus_r5/job0004`` -> ``DIR/corpus_r5/job0004``) holding ``frozen_classes.npz``
(the 24 features and the 64x64 image of every class of more than 10 particles, as the job computes
them; :func:`ranker.develop.dataset.freeze_job`) and copies of ``class_truth.csv`` and
``corpus_job.json``. ``train``, ``evaluate`` and ``oracle_precision`` read a frozen job like the
project it came from (``particle_stats`` needs the particles and does not). A job of 1-50 MB becomes
about 13 KB per featured class (~180 KB for a realism job of 14 classes), so sets of jobs can be kept in the
repository and measured again without ``relion_refine``. An existing frozen job at the destination is
replaced once the new one is complete; anything else there is refused, as is a destination inside the
job, and a job that is itself frozen (copy it instead). The frozen job's path is its name in
``train`` and ``evaluate`` (their folds follow the sorted names).
"""

from __future__ import annotations

import os
import sys

from ranker.develop.commands import UsageError


def add_args(p) -> None:
    p.add_argument("jobs", nargs="+", help="labelled RELION projects (Class2D job + class_truth.csv)")
    p.add_argument("--dest", required=True, help="directory to write the frozen jobs under")
    p.add_argument("--root", default="", help="job paths are kept relative to this (default: each job's "
                   "grandparent: CORPUS/jobNNNN -> DEST/CORPUS/jobNNNN)")


def destination(job: str, dest: str, root: str = "") -> str:
    """Where ``job`` is frozen to under ``dest``."""
    job = os.path.abspath(job)
    base = os.path.abspath(root) if root else os.path.dirname(os.path.dirname(job))
    rel = os.path.relpath(job, base)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise UsageError(f"{job} is not under --root {root}")
    return os.path.join(dest, rel)


def main(a) -> int:
    from ranker.develop.dataset import FROZEN_FILENAME, freeze_job, inside

    failed = 0
    targets = [(job, destination(job, a.dest, a.root)) for job in a.jobs]
    if len({d for _, d in targets}) != len(targets):
        raise UsageError("two jobs would be frozen to the same place; give --root")
    for job, _ in targets:  # no destination may lie in (or hold) any of the jobs, not only its own
        for other, dest in targets:
            if inside(dest, job) or inside(job, dest):
                raise UsageError(f"{dest} (for {other}) would lie inside or hold {job}; give another --dest")
    for job, dest in targets:
        try:
            freeze_job(job, dest)
        except Exception as exc:  # noqa: BLE001 - name the job and go on with the others
            failed += 1
            msg = str(exc)
            print(f"freeze: {msg}" if job in msg else f"freeze: {job}: {msg}", file=sys.stderr)
            continue
        size = os.path.getsize(os.path.join(dest, FROZEN_FILENAME))
        print(f"{job} -> {dest} ({size / 1024:.0f} KB)")
    return 1 if failed else 0
