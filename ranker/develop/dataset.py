"""Labelled class averages for training and evaluation.

Three sources, each giving a :class:`LabelledClasses` (features computed exactly as the job
computes them, so training sees what inference sees):

* :func:`from_truth_job` -- a RELION project made by :mod:`ranker.simulate` (or the shared
  fixtures) with ``class_truth.csv``: the target is the class purity (fraction of true
  particles), see :func:`purity_target`; or such a project frozen by :func:`freeze_job` (its
  classes' features and images, without the particles: small enough to keep in the repository).
* :func:`from_selection` -- a user's own Class2D job plus the ``backup_selection.star`` of
  their manual Select job: selected = 1, unselected = 0.
* :func:`from_relion_training_star` -- RELION's own training layout: a STAR with
  ``rlnClassScore``, ``rlnSubImageStack`` and ``rlnNormalizedFeatureVector`` (EMPIAR-10812).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ranker.develop.truth import TARGETS, detail, read_class_truth
from ranker.runtime.mrc import read_stack
from ranker.runtime.star import StarError, read_star


@dataclass
class LabelledClasses:
    """N labelled classes. ``targets`` in [0, 1]; ``n_particles`` and ``n_true`` (true
    particles, NaN when unknown) come from data.star and the truth table."""

    vectors: np.ndarray
    images: np.ndarray
    targets: np.ndarray
    job: list[str]
    class_number: list[int]
    n_particles: np.ndarray
    n_true: np.ndarray
    split: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)  # majority kind from the truth ("" if unknown)

    def __len__(self) -> int:
        return len(self.targets)

    @staticmethod
    def concat(parts: list["LabelledClasses"]) -> "LabelledClasses":
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("no labelled classes")
        return LabelledClasses(
            vectors=np.concatenate([p.vectors for p in parts]), images=np.concatenate([p.images for p in parts]),
            targets=np.concatenate([p.targets for p in parts]), job=sum((p.job for p in parts), []),
            class_number=sum((p.class_number for p in parts), []),
            n_particles=np.concatenate([p.n_particles for p in parts]),
            n_true=np.concatenate([p.n_true for p in parts]), split=sum((p.split for p in parts), []),
            kind=sum((p.kind or [""] * len(p) for p in parts), []))

    def subset(self, mask) -> "LabelledClasses":
        idx = np.nonzero(np.asarray(mask))[0]
        pick = lambda seq: [seq[i] for i in idx]  # noqa: E731
        return LabelledClasses(self.vectors[idx], self.images[idx], self.targets[idx], pick(self.job),
                               pick(self.class_number), self.n_particles[idx], self.n_true[idx],
                               pick(self.split) if self.split else [], pick(self.kind) if self.kind else [])


def purity_target(frac_true: np.ndarray) -> np.ndarray:
    """Training target from truth: the fraction of true particles in the class.

    No resolution term: the job keeps a class when its score is >= 0.5, which then means
    "at least half of its particles are real", the same rule as the best possible
    class-level selection (the oracle used in evaluation).
    """
    return np.clip(np.nan_to_num(np.asarray(frac_true, float), nan=0.0), 0.0, 1.0).astype(np.float32)


@contextlib.contextmanager
def _in_dir(path: str):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def featurise(optimiser_rel: str, project_dir: str = "."):
    """(job, particle summary, FeatureSet) of a Class2D iteration; paths relative to project_dir."""
    from ranker.runtime.class2d import read_class2d
    from ranker.runtime.features import compute_features
    from ranker.runtime.particles import scan_particles

    with _in_dir(project_dir):
        job = read_class2d(optimiser_rel)
        parts = scan_particles(job.data_path)
        fs = compute_features(job, job.load_images(), parts.n_particles, parts.optics, parts.last_row)
    return job, parts, fs


def find_optimiser(project_dir: str) -> str:
    """The last iteration's optimiser STAR of the (single) Class2D job in a project."""
    found = sorted(glob.glob(os.path.join(project_dir, "Class2D", "job*", "run_it*_optimiser.star")))
    if not found:
        raise StarError(f"{project_dir}: no Class2D/job*/run_it*_optimiser.star")
    return os.path.relpath(found[-1], project_dir)


def _build(numbers, vectors, images, counts, targets_by_class, true_by_class, name, split,
           kind_by_class=None) -> LabelledClasses:
    """The labelled classes among the featured ones (``numbers``, with their ``vectors`` and ``images``);
    ``counts``: {class number: particles}."""
    keep = [j for j, k in enumerate(numbers) if k in targets_by_class]
    numbers = [numbers[j] for j in keep]
    return LabelledClasses(
        vectors=vectors[keep], images=images[keep],
        targets=np.array([targets_by_class[k] for k in numbers], np.float32), job=[name] * len(keep),
        class_number=numbers, n_particles=np.array([counts.get(k, 0) for k in numbers], float),
        n_true=np.array([true_by_class.get(k, np.nan) for k in numbers], float), split=[split] * len(keep),
        kind=[(kind_by_class or {}).get(k, "") for k in numbers])


def _featured(job, parts, fs):
    """(class numbers, vectors, images, {class number: particles}) of a featurised job."""
    return [job.classes[i].class_number for i in fs.rows], fs.vectors, fs.images, parts.counts


FROZEN_FILENAME = "frozen_classes.npz"
FROZEN_FORMAT = 1
FROZEN_COPIES = ("class_truth.csv", "corpus_job.json")  # copied beside it where present
# the runtime modules whose code makes the 24 features and the 64x64 image, and the particle counts
FEATURE_MODULES = ("class2d", "ctf", "features", "fourier", "geometry", "mrc", "particles", "star")
_warned_fingerprints: set = set()


def feature_fingerprint() -> str:
    """sha256 (first 16 hex digits) of the source of :data:`FEATURE_MODULES`: a frozen job made by
    other feature code may hold features the job would now compute differently."""
    import hashlib
    import importlib

    h = hashlib.sha256()
    for name in FEATURE_MODULES:
        with open(importlib.import_module(f"ranker.runtime.{name}").__file__, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def is_frozen(project_dir: str) -> bool:
    """True for a directory made by :func:`freeze_job`."""
    return os.path.isfile(os.path.join(project_dir, FROZEN_FILENAME))


def inside(path: str, parent: str) -> bool:
    """``path`` is ``parent`` or below it, both resolved through symbolic links."""
    path, parent = os.path.realpath(path), os.path.realpath(parent)
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def frozen_source(frozen_dir: str) -> str:
    """The path of the project a frozen job was made from (as it was when frozen)."""
    with np.load(os.path.join(frozen_dir, FROZEN_FILENAME), allow_pickle=False) as z:
        return json.loads(str(z["meta"])).get("source", "")


def resolve_destination(dest_dir: str) -> str:
    """The directory ``dest_dir`` names, with its parent resolved through links (so the path that is
    checked is the path that is written). Refuses ``.``/``..`` and a destination that is a link."""
    name = os.path.basename(dest_dir.rstrip(os.sep))
    if name in ("", os.curdir, os.pardir):
        raise StarError(f"{dest_dir}: name the frozen job's own directory (not '.', '..' or '/')")
    parent = os.path.realpath(os.path.dirname(dest_dir.rstrip(os.sep)) or os.curdir)
    dest = os.path.join(parent, name)
    if os.path.islink(dest):
        raise StarError(f"{dest_dir}: is a symbolic link; give the directory itself")
    return dest


def _check_freeze_paths(project_dir: str, dest: str, dest_dir: str) -> None:
    """``dest``: :func:`resolve_destination` of ``dest_dir`` (the name the user gave)."""
    if inside(dest, project_dir):
        raise StarError(f"{dest_dir}: inside the job it would freeze ({project_dir}); give another destination")
    if inside(project_dir, dest):
        raise StarError(f"{dest_dir}: holds the job it would freeze ({project_dir}); give another destination")
    if is_frozen(project_dir):
        raise StarError(f"{project_dir}: already frozen; copy the directory instead")
    if os.path.lexists(dest):
        allowed = {FROZEN_FILENAME, *FROZEN_COPIES}
        if not os.path.isdir(dest) or not is_frozen(dest) or not set(os.listdir(dest)) <= allowed:
            raise StarError(f"{dest_dir}: exists and is not a frozen job; nothing replaced")
        try:
            source = frozen_source(dest)
        except Exception:  # noqa: BLE001 - a damaged frozen job: refuse rather than guess
            source = "(unreadable)"
        if os.path.realpath(source) != os.path.realpath(project_dir):
            raise StarError(f"{dest_dir}: holds the frozen job of {source}, not of {project_dir}; "
                            "remove it first to replace it")


def freeze_job(project_dir: str, dest_dir: str) -> str:
    """Keep what training and evaluation read from a labelled project, without its particles.

    Writes ``dest_dir/frozen_classes.npz`` -- ``class_number`` (K,) int, ``n_particles`` (K,) int,
    ``vectors`` float32 (K, 24) and ``images`` float32 (K, 64, 64) of the K featured classes (more than
    10 particles), exactly as the job computes them, and ``meta`` (JSON: format, feature fingerprint,
    package version, source path, Class2D iteration) -- and copies :data:`FROZEN_COPIES`.
    :func:`from_truth_job` reads ``dest_dir`` like the project: same targets, counts, split and features.
    A RELION project of 1-50 MB becomes about 13 KB per featured class (the 64x64 float32
    images hardly compress; a realism job of 14 classes: about 180 KB).

    ``dest_dir`` must not be, hold or lie inside the project. An existing ``dest_dir`` is replaced only
    when it is the frozen job of the same project (nothing but the frozen files), and only once the new
    one is complete: it is built beside it and swapped in, and a failure puts the old one back.
    Returns ``dest_dir``."""
    import shutil
    import tempfile

    from ranker import __version__

    dest = resolve_destination(dest_dir)
    _check_freeze_paths(project_dir, dest, dest_dir)
    read_class_truth(project_dir)  # a job without truth is not worth freezing: FileNotFoundError names it
    optimiser = find_optimiser(project_dir)
    numbers, vectors, images, counts = _featured(*featurise(optimiser, project_dir))
    meta = {"format": FROZEN_FORMAT, "feature_fingerprint": feature_fingerprint(), "version": __version__,
            "source": os.path.abspath(project_dir), "optimiser": optimiser}
    parent, name = os.path.split(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=name + ".tmp-")
    old = None
    try:
        np.savez_compressed(os.path.join(tmp, FROZEN_FILENAME), class_number=np.array(numbers, np.int32),
                            n_particles=np.array([counts.get(k, 0) for k in numbers], np.int64),
                            vectors=np.asarray(vectors, np.float32), images=np.asarray(images, np.float32),
                            meta=np.array(json.dumps(meta)))
        for copy in FROZEN_COPIES:
            if os.path.isfile(os.path.join(project_dir, copy)):
                shutil.copyfile(os.path.join(project_dir, copy), os.path.join(tmp, copy))
        os.chmod(tmp, 0o755)
        _check_freeze_paths(project_dir, dest, dest_dir)  # again: the features took a while
        if os.path.lexists(dest):
            old = tempfile.mkdtemp(dir=parent, prefix=name + ".old-")
            os.rename(dest, os.path.join(old, "job"))
        os.rename(tmp, dest)
    except BaseException:
        if old and os.path.lexists(os.path.join(old, "job")) and not os.path.lexists(dest):
            os.rename(os.path.join(old, "job"), dest)  # put the old frozen job back
        if old and not os.path.lexists(os.path.join(old, "job")):
            os.rmdir(old)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)
    return dest_dir


def read_frozen(project_dir: str):
    """(class numbers, vectors (K, 24), images (K, 64, 64), {class number: particles}) of a frozen job.
    Warns once per fingerprint when the feature code has changed since it was frozen. A file that is
    not a complete frozen job raises :class:`StarError` naming it."""
    import sys
    import zipfile

    path = os.path.join(project_dir, FROZEN_FILENAME)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FROZEN_FORMAT:
                raise StarError(f"{path}: frozen format {meta.get('format')!r}, this code reads {FROZEN_FORMAT}")
            numbers = [int(k) for k in z["class_number"]]
            n_particles = [int(n) for n in z["n_particles"]]
            vectors, images = z["vectors"].astype(np.float32), z["images"].astype(np.float32)
    except StarError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise StarError(f"{path}: not a readable frozen job ({type(exc).__name__}: {exc})") from None
    k = len(numbers)
    if vectors.shape != (k, 24) or images.shape != (k, 64, 64) or len(n_particles) != k:
        raise StarError(f"{path}: {k} classes but vectors {vectors.shape}, images {images.shape}, "
                        f"{len(n_particles)} particle counts")
    old = meta.get("feature_fingerprint")
    if old != feature_fingerprint() and old not in _warned_fingerprints:
        _warned_fingerprints.add(old)
        print(f"note: {path}: features frozen by other feature code (fingerprint {old}, now "
              f"{feature_fingerprint()}); the job would compute them anew from its Class2D files", file=sys.stderr)
    return numbers, vectors, images, dict(zip(numbers, n_particles))


def from_truth_job(project_dir: str, target: str = "purity") -> LabelledClasses:
    """A labelled RELION project: Class2D job + class_truth.csv (+ corpus_job.json split), or a
    frozen one (:func:`freeze_job`: its features as the job computed them when it was frozen).

    ``target`` (:data:`ranker.develop.truth.TARGETS`): "purity", the fraction of real particles; or
    "detail", purity x the class's detail (:func:`ranker.develop.truth.detail`), with the real
    particles of a featureless class counted as junk in ``n_true``, as the evaluation's oracle does."""
    if target not in TARGETS:
        raise StarError(f"unknown training target {target!r}; use one of {', '.join(TARGETS)}")
    try:
        rows = read_class_truth(project_dir)
    except FileNotFoundError as exc:
        raise StarError(str(exc)) from None
    weight = detail(rows) if target == "detail" else {}
    frac = {r["class_number"]: r["frac_good"] * weight.get(r["class_number"], 1.0) for r in rows}
    n_good = {r["class_number"]: float(r["n_good"]) if weight.get(r["class_number"], 1.0) >= 0.5 else 0.0
              for r in rows}
    meta_path = os.path.join(project_dir, "corpus_job.json")
    split = json.load(open(meta_path)).get("split", "") if os.path.exists(meta_path) else ""
    featured = read_frozen(project_dir) if is_frozen(project_dir) else _featured(
        *featurise(find_optimiser(project_dir), project_dir))
    targets = {k: float(purity_target([v])[0]) for k, v in frac.items()}
    kinds = {r["class_number"]: r.get("majority_kind", "") for r in rows}
    return _build(*featured, targets, n_good, os.path.abspath(project_dir), split, kinds)


def from_selection(optimiser_path: str, selection_path: str, project_dir: str = ".") -> LabelledClasses:
    """A user's Class2D job and manual selection (rlnSelected 1 = good), for fine-tuning."""
    with _in_dir(project_dir):
        tab = next(iter(read_star(selection_path).values()))
        selected = [int(float(v)) for v in tab.column("rlnSelected")]
    job, parts, fs = featurise(optimiser_path, project_dir)
    if len(selected) != job.nr_classes:
        raise StarError(f"{selection_path}: {len(selected)} rows but {optimiser_path} has {job.nr_classes} classes")
    targets = {c.class_number: float(s == 1) for c, s in zip(job.classes, selected)}
    name = os.path.abspath(os.path.join(project_dir, optimiser_path))
    return _build(*_featured(job, parts, fs), targets, {}, name, "train")


def from_relion_training_star(star_path: str, project_dir: str = ".") -> LabelledClasses:
    """RELION's training layout: rlnClassScore, rlnSubImageStack (64x64), rlnNormalizedFeatureVector."""
    with _in_dir(project_dir):
        tab = next(iter(read_star(star_path).values()))
        scores = np.array(tab.float_column("rlnClassScore"), np.float32)
        vectors = np.array([[float(x) for x in v.strip("[]").split(",")]
                            for v in tab.column("rlnNormalizedFeatureVector")], np.float32)
        images = []
        for ref in tab.column("rlnSubImageStack"):
            index, _, path = ref.rpartition("@")
            images.append(read_stack(path)[int(index) - 1 if index else 0])
    if vectors.shape[1:] != (24,):
        raise StarError(f"{star_path}: rlnNormalizedFeatureVector must have 24 values")
    n = len(scores)
    name = os.path.abspath(os.path.join(project_dir, star_path))
    return LabelledClasses(vectors, np.stack(images), np.clip(scores, 0, 1), [name] * n,
                           list(range(1, n + 1)), np.full(n, np.nan), np.full(n, np.nan), ["train"] * n)
