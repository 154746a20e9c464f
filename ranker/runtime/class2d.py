"""Reading a finished RELION 2D classification (Class2D job, RELION 3.0 to 5).

:func:`resolve_optimiser` turns what RELION passed (``--in_optimiser`` or ``--in_parts``)
into the optimiser STAR path; :func:`read_class2d` reads optimiser.star and model.star
(every table by column name) into a :class:`Class2DJob`; :meth:`Class2DJob.load_images`
reads the class averages. data.star is streamed separately (:mod:`ranker.particles`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from .inputs import declare
from .mrc import mmap_stack
from .star import StarBlock, StarError, block, read_star


@dataclass
class ClassAverage:
    """One row of ``data_model_classes``.

    ``class_number`` is the stack index before ``@`` in ``rlnReferenceImage`` (1-based),
    which RELION uses as the class number. Accuracies are in degrees and Angstrom;
    ``estimated_resolution_A`` is 0 when RELION wrote ``inf``/``nan``.
    """

    class_number: int
    reference_image: str
    distribution: float
    accuracy_rotation_deg: float
    accuracy_translation_A: float
    estimated_resolution_A: float
    row: dict[str, str] = field(default_factory=dict)

    @property
    def stack_path(self) -> str:
        return self.reference_image.split("@", 1)[1]


@dataclass
class Class2DJob:
    """The model and optimiser of one Class2D iteration.

    ``pixel_size_A`` is the class-average pixel size (Angstrom/px), ``box_px`` the class
    image size (``rlnOriginalImageSize``), ``particle_diameter_A`` the mask diameter.
    """

    optimiser_path: str
    model_path: str
    data_path: str
    optimiser: StarBlock
    model_general: StarBlock
    model_blocks: dict[str, StarBlock]
    classes: list[ClassAverage]
    pixel_size_A: float
    box_px: int
    particle_diameter_A: float
    do_correct_ctf: bool
    ignore_ctf_until_first_peak: bool
    is_gradient: bool

    @property
    def nr_classes(self) -> int:
        return len(self.classes)

    def load_images(self) -> np.ndarray:
        """All class averages as float64, shape (nr_classes, box_px, box_px), model order."""
        images = np.zeros((len(self.classes), self.box_px, self.box_px))
        by_stack: dict[str, list[tuple[int, int]]] = {}
        for row, cls in enumerate(self.classes):
            by_stack.setdefault(cls.stack_path, []).append((row, cls.class_number))
        for stack, members in by_stack.items():
            try:
                mapped = mmap_stack(stack)
            except FileNotFoundError:
                raise StarError(f"{stack}: class-average stack not found "
                                f"(named in {self.model_path})") from None
            except (ValueError, OSError) as exc:
                raise StarError(f"{stack}: not a readable MRC stack ({exc})") from None
            with mapped:
                data = mapped.data
                if data.ndim != 3 or data.shape[1:] != (self.box_px, self.box_px):
                    raise StarError(f"{stack}: class images are {'x'.join(map(str, data.shape[-2:]))} px "
                                    f"but {self.model_path} says {self.box_px}x{self.box_px}")
                for row, k in members:
                    if not 1 <= k <= data.shape[0]:
                        raise StarError(f"{stack}: has {data.shape[0]} images, "
                                        f"but {self.model_path} asks for image {k}")
                    images[row] = data[k - 1]
            if not np.isfinite(images).all():
                raise StarError(f"{stack}: class images hold NaN or Inf values")
        return images


_DATA_SUFFIX = re.compile(r"_data\.star$")


def resolve_optimiser(in_optimiser: str | None, in_parts: str | None) -> str:
    """The optimiser STAR to read, from ``--in_optimiser``, a Class2D ``_data.star``, or a Class2D job
    directory given to either (its final iteration: :func:`final_iteration`)."""
    given = in_optimiser or in_parts
    if not given:
        raise StarError("no input: give --in_parts Class2D/jobNNN/run_itNNN_data.star, a Class2D job directory "
                        "(Class2D/jobNNN/) or --in_optimiser Class2D/jobNNN/run_itNNN_optimiser.star")
    if os.path.isdir(given):
        return final_iteration(given)
    if in_optimiser:
        return in_optimiser
    if not _DATA_SUFFIX.search(in_parts):
        raise StarError(f"{in_parts}: input particles must be a Class2D run_itNNN_data.star "
                        "(its _optimiser.star and _model.star are read beside it)")
    return _DATA_SUFFIX.sub("_optimiser.star", in_parts)


_ITERATION = re.compile(r"^(?P<root>.*)_it(?P<it>\d+)_(?:optimiser|data)\.star$")


def iteration_number(path: str) -> int | None:
    """NNN of a ``..._itNNN_optimiser.star`` or ``..._itNNN_data.star`` path, else None."""
    m = _ITERATION.match(path)
    return int(m["it"]) if m else None


def _newest_complete(pattern: str, before: int | None = None) -> str | None:
    """The optimiser STAR of the highest iteration matching ``pattern`` (a glob of
    ``*_itNNN_optimiser.star``), below ``before`` if given, whose model, data and class stack are all
    written; None if there is none."""
    import glob

    best = None
    for path in glob.glob(pattern):
        it = iteration_number(path)
        if it is None or (before is not None and it >= before):
            continue
        stem = path[: -len("_optimiser.star")]
        if all(os.path.exists(stem + suffix) for suffix in ("_model.star", "_data.star", "_classes.mrcs")):
            if best is None or it > best[0]:
                best = (it, path)
    return best[1] if best else None


def latest_complete_iteration(optimiser_path: str) -> str | None:
    """For a Class2D job still running: the newest ``run_itNNN_optimiser.star`` beside
    ``optimiser_path``, older than the one asked for, whose model, data and class stack
    are all written; None if there is none."""
    import glob

    m = _ITERATION.match(optimiser_path)
    if not m:
        return None
    return _newest_complete(glob.escape(m["root"]) + "_it*_optimiser.star", before=int(m["it"]))


def final_iteration(job_dir: str) -> str:
    """The optimiser STAR of a Class2D job directory's final iteration: the highest ``*_itNNN``
    whose optimiser, model, data and class stack are all written (what a pipeline can name without
    knowing the iteration count, e.g. RELION-4/5 VDAM's 200 or an EM job's 25)."""
    import glob

    path = _newest_complete(os.path.join(glob.escape(job_dir), "*_it*_optimiser.star"))
    if path is None:
        raise StarError(f"{job_dir}: no complete Class2D iteration in this directory "
                        "(run_itNNN_optimiser.star, _model.star, _data.star and _classes.mrcs)")
    return path


def job_finished(job_dir: str) -> bool:
    """Whether RELION marked the job directory as finished (RELION_JOB_EXIT_SUCCESS)."""
    return os.path.exists(os.path.join(job_dir, "RELION_JOB_EXIT_SUCCESS"))


def _class_number(reference: str, model_path: str) -> int:
    if "@" not in reference:
        raise StarError(f"{model_path}: rlnReferenceImage {reference!r} is not index@stack")
    try:
        return int(reference.split("@", 1)[0])
    except ValueError:
        raise StarError(f"{model_path}: rlnReferenceImage {reference!r} has no stack index") from None


def read_class2d(optimiser_path: str, data_path: str | None = None) -> Class2DJob:
    """Read optimiser.star and model.star of a Class2D iteration.

    ``data_path`` overrides the optimiser's ``rlnExperimentalDataStarFile`` (used when RELION
    passed the data.star itself). Raises StarError for missing files, missing tables or
    columns, and 3D classifications.
    """
    opt = block(read_star(optimiser_path), "optimiser_general", optimiser_path)
    model_path = opt.value("rlnModelStarFile")
    data_path = data_path or opt.value("rlnExperimentalDataStarFile")
    declare(model_path)  # inputs from now on, even if reading fails before they are opened
    declare(data_path)
    if not os.path.exists(model_path):
        raise StarError(f"{model_path}: model STAR not found (named in {optimiser_path})")
    blocks = read_star(model_path)
    general = block(blocks, "model_general", model_path)
    classes_tab = block(blocks, "model_classes", model_path)
    dim = int(general.float_value("rlnReferenceDimensionality"))
    if dim != 2:
        raise StarError(f"{model_path}: this is a {dim}D classification; "
                        "the ranker only ranks 2D class averages (Class2D jobs)")
    pixel = general.float_value("rlnPixelSize")
    box = int(general.float_value("rlnOriginalImageSize"))
    if pixel <= 0 or box <= 0:
        raise StarError(f"{model_path}: invalid rlnPixelSize {pixel} or rlnOriginalImageSize {box}")
    for label in ("rlnReferenceImage", "rlnClassDistribution", "rlnAccuracyRotations"):
        classes_tab.column(label)  # raises a clear error if missing
    if classes_tab.has("rlnAccuracyTranslationsAngst"):
        acc_trans = classes_tab.float_column("rlnAccuracyTranslationsAngst")
    elif classes_tab.has("rlnAccuracyTranslations"):
        acc_trans = [v * pixel for v in classes_tab.float_column("rlnAccuracyTranslations")]
    else:
        raise StarError(f"{model_path}: table data_model_classes has no _rlnAccuracyTranslationsAngst "
                        "(or _rlnAccuracyTranslations)")
    res = (classes_tab.float_column("rlnEstimatedResolution") if classes_tab.has("rlnEstimatedResolution")
           else [0.0] * len(classes_tab.rows))
    classes = []
    for i, (ref, pdf, rot) in enumerate(zip(classes_tab.column("rlnReferenceImage"),
                                            classes_tab.float_column("rlnClassDistribution"),
                                            classes_tab.float_column("rlnAccuracyRotations"))):
        classes.append(ClassAverage(
            class_number=_class_number(ref, model_path), reference_image=ref, distribution=pdf,
            accuracy_rotation_deg=rot, accuracy_translation_A=acc_trans[i], estimated_resolution_A=res[i],
            row=dict(zip(classes_tab.labels, classes_tab.rows[i]))))
    if not classes:
        raise StarError(f"{model_path}: table data_model_classes has no classes")
    nr_classes = int(general.float_value("rlnNrClasses", float(len(classes))))
    if nr_classes != len(classes):
        raise StarError(f"{model_path}: rlnNrClasses is {nr_classes} but table data_model_classes has "
                        f"{len(classes)} rows (file truncated?)")
    diameter = opt.float_value("rlnParticleDiameter")
    if diameter <= 0:
        raise StarError(f"{optimiser_path}: rlnParticleDiameter {diameter} is not a valid diameter")
    flag = lambda label: opt.value(label, "0").strip() not in ("0", "")  # noqa: E731
    return Class2DJob(
        optimiser_path=optimiser_path, model_path=model_path, data_path=data_path, optimiser=opt,
        model_general=general, model_blocks=blocks, classes=classes, pixel_size_A=pixel, box_px=box,
        particle_diameter_A=diameter, do_correct_ctf=flag("rlnDoCorrectCtf"),
        ignore_ctf_until_first_peak=flag("rlnDoIgnoreCtfUntilFirstPeak"),
        is_gradient=flag("rlnDoGradientRefine"))


def resolution_from_ssnr(job: Class2DJob, cls: ClassAverage) -> float:
    """RELION's fallback resolution (A) when ``rlnEstimatedResolution`` is not positive.

    Scans ``data_model_class_<k>`` for the first shell with SSNR < 1 and returns the
    resolution of the shell before it; ``2 x pixel size`` if the SSNR never drops below 1.
    """
    tab = job.model_blocks.get(f"model_class_{cls.class_number}")
    if tab is not None and tab.has("rlnSsnrMap") and tab.has("rlnAngstromResolution"):
        ssnr = tab.float_column("rlnSsnrMap")
        ang = tab.float_column("rlnAngstromResolution")
        for k in range(1, len(ssnr)):
            if ssnr[k] < 1:
                return ang[k - 1]
    return 2 * job.pixel_size_A

