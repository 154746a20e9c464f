"""Writing what RELION's auto-select writes, plus our features table.

Each function writes one file to the path it is given (a temporary name from
:class:`ranker.protocol.JobDir`; the caller renames all outputs together on success).
Tables and labels follow RELION-5's ``relion_class_ranker --auto_select``
(``shared/docs/relion_class_ranker_features.md`` section 11).
"""

from __future__ import annotations

import errno
import math
import os
import shutil

from .class2d import Class2DJob
from .features import FeatureSet
from .mrc import write_mrc
from .selection import Selection
from .star import format_block, write_star

UNSCORED = -999.0
RANK_MODEL_COLUMNS = ("rlnReferenceImage", "rlnClassScore", "rlnClassDistribution", "rlnAccuracyRotations",
                      "rlnAccuracyTranslationsAngst", "rlnEstimatedResolution", "rlnOverallFourierCompleteness",
                      "rlnClassPriorOffsetX", "rlnClassPriorOffsetY")


def _number(token: str):
    """A numeric STAR token re-emitted as RELION would print it (inf/nan become 0)."""
    try:
        value = float(token)
    except ValueError:
        return token
    return 0.0 if not math.isfinite(value) else token


def _class_value(job: Class2DJob, cls, label: str):
    if label == "rlnAccuracyTranslationsAngst":
        return float(cls.accuracy_translation_A)
    return _number(cls.row.get(label, "0.000000"))


def write_rank_model(path: str, job: Class2DJob, scores: dict[int, float]) -> None:
    """``rank_model.star``: table model_classes, every class, rlnClassScore (-999 unscored)."""
    rows = []
    for cls in job.classes:
        row = []
        for label in RANK_MODEL_COLUMNS:
            row.append(float(scores.get(cls.class_number, UNSCORED)) if label == "rlnClassScore"
                       else _class_value(job, cls, label))
        rows.append(row)
    write_star(path, [format_block("model_classes", list(RANK_MODEL_COLUMNS), rows)])


def write_rank_optimiser(path: str, job: Class2DJob, rank_model_path: str, rank_data_path: str) -> None:
    """``rank_optimiser.star``: the input optimiser_general with the model replaced by
    rank_model.star and the data by rank_data.star, as RELION's ranker writes it."""
    labels = list(job.optimiser.labels)
    values = list(job.optimiser.rows[0])
    values[labels.index("rlnModelStarFile")] = rank_model_path
    values[labels.index("rlnExperimentalDataStarFile")] = rank_data_path
    write_star(path, [format_block("optimiser_general", labels, [values], loop=False)])


def write_rank_data(path: str, job: Class2DJob) -> None:
    """``rank_data.star``: a copy of the input data.star (all particles), as RELION's ranker writes.

    relion_display finds the particles of a class display by file name, not through the
    optimiser: ``X_optimiser.star`` (RELION 4/5) and ``X_model.star`` (RELION 3.1) with
    ``--class`` read ``X_data.star``. Without it the GUI's Display of rank_optimiser.star and a
    Select job on it stop with "File .../rank_data.star does not exist". A byte copy, not a
    link, so that editing it can never change the Class2D job's file: with copy_file_range,
    which on XFS, btrfs and NFS 4.2 shares the blocks copy-on-write (a reflink, no data
    moved) and elsewhere copies inside the kernel; shutil's copy where it is refused."""
    copy_file(job.data_path, path)


def copy_file(src: str, dst: str) -> None:
    """Copy ``src`` to a new ``dst`` byte for byte (copy_file_range where the kernel and
    filesystem allow, else :func:`shutil.copyfile`)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), size - done)
                if n == 0:  # the file shrank while copied: copy what remains the ordinary way
                    break
                done += n
        except (AttributeError, OSError) as exc:  # no such call, or EXDEV/ENOSYS/EINVAL/... on this pair
            if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
                raise
        fin.seek(done)
        fout.seek(done)
        shutil.copyfileobj(fin, fout, 1 << 20)


def write_backup_selection(path: str, job: Class2DJob, selection: Selection) -> None:
    """``backup_selection.star``: rlnSelected 1/0 for every class, in class order."""
    chosen = set(selection.selected)
    rows = [[int(cls.class_number in chosen)] for cls in job.classes]
    write_star(path, [format_block("", ["rlnSelected"], rows)])


def write_class_averages(path: str, job: Class2DJob, selection: Selection, scores: dict[int, float],
                         counts: dict[int, int]) -> None:
    """``class_averages.star``: the selected classes, best score first, with their score and
    the number of particles in data.star (rlnParticleNumber).

    RELION-5 writes threshold picks in class order; we sort by score so that every RELION
    version displays them ranked (RELION 3.1 does not know rlnPredictedClassScore and
    cannot sort on it)."""
    labels = ["rlnReferenceImage", "rlnPredictedClassScore", "rlnClassDistribution", "rlnAccuracyRotations",
              "rlnAccuracyTranslationsAngst", "rlnEstimatedResolution", "rlnParticleNumber"]
    by_number = {cls.class_number: cls for cls in job.classes}
    rows = []
    for k in sorted(selection.selected, key=lambda k: (-scores[k], k)):
        cls = by_number[k]
        rows.append([cls.reference_image, float(scores[k]), _number(cls.row["rlnClassDistribution"]),
                     _number(cls.row["rlnAccuracyRotations"]), float(cls.accuracy_translation_A),
                     _class_value(job, cls, "rlnEstimatedResolution"), int(counts.get(k, 0))])
    write_star(path, [format_block("", labels, rows)])


def _vector(values) -> str:
    return "[" + ",".join(f"{float(v):.12g}" for v in values) + "]"


def write_features(star_path: str, stack_path: str, stack_name: str, job: Class2DJob, fs: FeatureSet,
                   scores: dict[int, float]) -> None:
    """``features.star`` (table class_features, RELION's labels) and the stack of 64x64 images.

    ``stack_name`` is how rows refer to the stack (relative to the project root).
    rlnAccuracyTranslations holds Angstrom, as in RELION's own features.star.
    """
    scalar = ["ClassDistribution", "AccuracyRotations", "AccuracyTranslations", "EstimatedResolution",
              "WeightedResolution", "RelativeResolution", "ParticleNr", "RingMean", "RingStddev", "RingSkew",
              "RingKurt", "ProteinArea", "ProteinSum", "ProteinMean", "ProteinStddev", "ProteinSkew",
              "ProteinKurt", "SolventArea", "SolventSum", "SolventMean", "SolventStddev", "SolventSkew",
              "SolventKurt", "RelativeSignalIntensity", "ScatteredSignal", "EdgeSignal", "ProteinCAR",
              "LowpassFilteredImageMean", "LowpassFilteredImageStddev", "LowpassFilteredImageMin",
              "LowpassFilteredImageMax"]
    labels = (["rlnReferenceImage", "rlnClassScore", "rlnClassIndex"] + [f"rln{s}" for s in scalar]
              + ["rlnGranulo", "rlnNormalizedFeatureVector", "rlnSubImageStack"])
    rows = []
    for j, i in enumerate(fs.rows):
        cls = job.classes[i]
        raw = dict(fs.raw[j], AccuracyTranslations=fs.raw[j]["AccuracyTranslationsAngst"])
        rows.append([cls.reference_image, float(scores.get(cls.class_number, UNSCORED)), cls.class_number]
                    + [raw[s] if isinstance(raw[s], int) else float(raw[s]) for s in scalar]
                    + [_vector(raw[f"Granulo{g}"] for g in range(1, 7)), _vector(fs.vectors[j]),
                       f"{j + 1:06d}@{stack_name}"])
    write_star(star_path, [format_block("class_features", labels, rows)])
    write_mrc(stack_path, fs.images, pixel_size_A=1.0, stack=True)
