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

from .inputs import InputError, declare
from .mrc import mmap_stack
from .star import StarBlock, StarError, block, check_complete, read_star


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
            except InputError:
                raise
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
                if len(by_stack) == 1 and data.shape[0] != len(self.classes):
                    raise StarError(f"{stack}: holds {data.shape[0]} class images but {self.model_path} has "
                                    f"{len(self.classes)} classes; the files do not belong together")
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
    check_complete(optimiser_path)
    model_path = opt.value("rlnModelStarFile")
    named_data = opt.value("rlnExperimentalDataStarFile")
    declare(model_path)  # inputs from now on, even if reading fails before they are opened
    declare(named_data)
    declare(data_path)
    check_same_iteration(optimiser_path, model_path, named_data, data_path)
    data_path = data_path or named_data
    if not os.path.exists(model_path):
        raise StarError(f"{model_path}: model STAR not found (named in {optimiser_path})")
    blocks = read_star(model_path)
    check_complete(model_path)
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
    numbers = [c.class_number for c in classes]
    if len(set(numbers)) != len(numbers):
        twice = sorted({k for k in numbers if numbers.count(k) > 1})
        raise StarError(f"{model_path}: class image(s) {twice[:5]} named by more than one row of data_model_classes")
    check_model_tables(blocks, general, model_path, box)
    model_stem = _stem(model_path)
    for stack in sorted({c.stack_path for c in classes}):
        m = re.match(r"^(?P<stem>.+)_classes\.mrcs$", os.path.basename(stack))
        if model_stem and m and m["stem"] != model_stem:
            raise StarError(f"{model_path}: names class images in {stack}, which is not from the same iteration "
                            f"({model_stem}); the files do not belong together")
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


_STEM = re.compile(r"^(?P<stem>.+)_(?:optimiser|model|data)\.star$")


def _stem(path: str | None) -> str | None:
    """``run_it020`` of ``.../run_it020_optimiser.star`` (or _model, _data); None for other names."""
    m = _STEM.match(os.path.basename(path)) if path else None
    return m["stem"] if m else None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normpath(a) == os.path.normpath(b)


def check_same_iteration(optimiser_path: str, model_path: str, named_data: str, given_data: str | None) -> None:
    """The optimiser, the model and data.star it names, and a data.star given besides (``--in_parts``
    with ``--in_optimiser``) must be one Class2D iteration: RELION names them ``ROOT_itNNN_optimiser.star``,
    ``_model.star``, ``_data.star``. Names that do not follow that pattern are not compared."""
    stem = _stem(optimiser_path)
    for what, path in (("model", model_path), ("data", named_data)):
        other = _stem(path)
        if stem and other and other != stem:
            raise StarError(f"{optimiser_path}: names {path} as its {what}, which is not from its iteration "
                            f"({stem}); the files do not belong together")
    if given_data and not _same_file(given_data, named_data) and (
            os.path.basename(given_data) != os.path.basename(named_data)):
        raise StarError(f"{given_data}: is not the data.star of {optimiser_path} (which names {named_data}); "
                        "give the optimiser and data.star of one Class2D iteration")


def check_model_tables(blocks: dict[str, StarBlock], general: StarBlock, model_path: str, box: int) -> None:
    """Every table RELION writes into a 2D model.star is there and whole: ``model_class_K`` for each
    class and the per-group (3.x: ``model_group_G``) or per-optics-group (4/5: ``model_optics_group_O``)
    spectra, each with ``rlnOriginalImageSize / 2 + 1`` rows, and ``model_groups`` with one row per
    group. A model.star cut short between two tables passes the STAR reader; its missing tables do not
    pass this (the features read the class spectra: a cut there would move a score silently)."""
    n_classes = int(general.float_value("rlnNrClasses", 0.0))
    n_groups = int(general.float_value("rlnNrGroups", 0.0))
    shells = box // 2 + 1
    expected = [(f"model_class_{k}", shells) for k in range(1, n_classes + 1)]
    if n_groups > 0:
        expected.append(("model_groups", n_groups))
    if general.has("rlnNrOpticsGroups"):
        expected += [(f"model_optics_group_{g}", shells)
                     for g in range(1, int(general.float_value("rlnNrOpticsGroups")) + 1)]
    else:
        expected += [(f"model_group_{g}", shells) for g in range(1, n_groups + 1)]
    for name, rows in expected:
        tab = blocks.get(name)
        if tab is None:
            raise StarError(f"{model_path}: table data_{name} is missing (file cut short?)")
        if not tab.is_loop or len(tab.rows) != rows:
            raise StarError(f"{model_path}: table data_{name} has {len(tab.rows)} rows, {rows} expected "
                            "(file cut short?)")


def model_particle_count(job: Class2DJob) -> int | None:
    """The number of particles the model was made from: the sum of its groups'
    ``rlnGroupNrParticles`` (RELION counts the whole data set once, at the start of the job),
    or None where the model does not say."""
    groups = job.model_blocks.get("model_groups")
    if groups is None or not groups.has("rlnGroupNrParticles"):
        return None
    try:
        return int(round(sum(groups.float_column("rlnGroupNrParticles"))))
    except (ValueError, OverflowError):
        return None


def check_particles_fit(job: Class2DJob, n_particles: int, counts: dict[int, int], data_path: str) -> None:
    """data.star must be the one this model was made from (same Class2D job and iteration):

    * every particle's class is one of the model's classes;
    * as many particles as the model's groups count (``rlnGroupNrParticles``: RELION counts the
      whole data set once, at the start of the job);
    * no particles in a class the model says is empty (``rlnClassDistribution`` 0), and particles in
      every class the model says holds at least 2 % of them (and 100 or more): a data.star of
      another iteration assigns them elsewhere (it selected 0 particles with SUCCESS)."""
    by_number = {c.class_number: c for c in job.classes}
    unknown = sorted(set(counts) - set(by_number))
    if unknown:
        raise StarError(f"{data_path}: particles belong to class(es) {unknown[:5]} that "
                        f"{job.model_path} does not have ({job.nr_classes} classes)")
    expected = model_particle_count(job)
    if expected is not None:
        if expected != n_particles:
            raise StarError(f"{data_path}: has {n_particles} particles but {job.model_path} was made from "
                            f"{expected} (rlnGroupNrParticles); not the data.star of this Class2D job, or cut short")
    empty = [k for k, c in by_number.items() if c.distribution == 0 and counts.get(k, 0) > 1e-6 * n_particles]
    if empty:
        raise StarError(f"{data_path}: has particles in class(es) {empty[:5]} that {job.model_path} says are empty; "
                        "data.star and model.star are not from the same Class2D iteration")
    deserted = [k for k, c in by_number.items()
                if c.distribution >= 0.02 and c.distribution * n_particles >= 100 and counts.get(k, 0) == 0]
    if deserted:
        raise StarError(f"{data_path}: has no particles in class(es) {deserted[:5]} that {job.model_path} says hold "
                        "many; data.star and model.star are not from the same Class2D iteration")


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

