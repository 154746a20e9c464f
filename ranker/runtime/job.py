"""The External job from start to end: read, featurise, score, select, write.

``relion_external_rank.py`` calls :func:`program` (:func:`main`, then exit). Progress goes
to stdout (RELION's run.out); an error is one line on stderr (run.err) naming the file and
the problem, followed by ``RELION_JOB_EXIT_FAILURE`` and a non-zero exit. Outputs are
written under temporary names and renamed together at the end, so a failure or abort
leaves none. :func:`run_stages` lists the stages; run.out times each (`` + stage: S s``),
from the process start (:func:`process_start`) to the ``Total time`` line.
"""

from __future__ import annotations

import os
import sys
import time

from .. import __version__
from . import protocol
from .options import OptionError, Options, parse_options, usable_threads, usage
from .protocol import JobAborted, JobDir, OutputError

OUTPUT_NAMES = ("particles.star", "class_averages.star", "backup_selection.star", "rank_model.star",
                "rank_optimiser.star", "rank_data.star", "features.star", "features_images.mrcs", "logfile.pdf",
                "logfile.png", protocol.NODES_FILE)


def process_start() -> float | None:
    """When this process started, on the time.perf_counter() clock; None where unknown.

    Linux: the start time the kernel keeps in /proc/self/stat (field 22, clock ticks since
    boot, rounded down to a tick; half a tick, 5 ms, is added back), compared with
    CLOCK_BOOTTIME now. So it counts what ``time`` counts: the interpreter's own start-up
    and every import before :func:`main` (and a wrapper script that exec's Python)."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()  # fields from 3 on (the name may hold spaces)
        tick = 1.0 / os.sysconf("SC_CLK_TCK")
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - (int(fields[19]) + 0.5) * tick
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.perf_counter() - age


_IMPORTED = time.perf_counter()  # where /proc is missing, start-up is counted from here


class Log:
    """run.out lines and stage timings.

    Each ``' + stage: S s'`` line is the time since the previous one, so with the start-up
    line (process start to :func:`main`) they add up to the ``Total time`` line: the job's
    wall time from the process start. ``started``: the perf_counter time counted from, and
    ``startup`` / ``since`` what the start-up line covers and the total counts from (None:
    from when main() was called, as when tests call it; no start-up line then)."""

    def __init__(self, started: float | None = None, startup: str = "", since: str = "since main() was called"):
        self.called = time.perf_counter()
        self.t0 = self.called if started is None else started
        self.t = self.called
        self.startup_text, self.since = startup, since

    def __call__(self, text: str) -> None:
        _say(text)

    def startup(self) -> None:
        if self.startup_text:
            _say(f" + start-up ({self.startup_text}): {self.called - self.t0:.2f} s")

    def stage(self, name: str) -> None:
        now = time.perf_counter()
        _say(f" + {name}: {now - self.t:.2f} s")
        self.t = now

    def total(self) -> None:
        _say(f"Total time: {time.perf_counter() - self.t0:.2f} s ({self.since}; the + lines add up to it)")


def run(opts: Options, jobdir: JobDir, log: Log) -> None:
    """Everything between reading the inputs and renaming the outputs into place.

    The networks run alongside reading data.star and the features (:func:`start_networks`);
    the report is drawn while particles.star and the other STAR outputs are written. Where
    torch is needed (a GPU, a torch weights file), the scorer process starts at once, so that
    torch's import overlaps with everything else."""
    from .background import Background, Inbox
    from .model import score_when_ready, uses_torch

    inbox, started = Inbox(), []
    job_box = Inbox() if uses_torch(opts.model, opts.device) else None
    if job_box is not None:
        started.append(Background(score_when_ready, inbox, opts.model, opts.device, opts.threads, opts.job_context,
                                  lambda: early_network_images(job_box.get())))
    try:
        run_stages(opts, jobdir, log, started, inbox, job_box)
    finally:
        for process in started:
            process.cancel()  # (after a failure or a signal, main's cleanup ends every background step)


def run_stages(opts: Options, jobdir: JobDir, log: Log, started: list, inbox, job_box) -> None:
    """The stages, in order. Each ends with its ' + ' timing line in run.out and, where
    marked, a look for RELION_JOB_ABORT_NOW (the particle stream also looks while it runs).
    ``started``: background processes (the torch scorer, if started; the networks' helper is
    added); ``job_box``: the torch scorer's inbox for the Class2D job, or None."""
    from .background import Background, Inbox

    def stage_done(name: str, poll_abort: bool = True) -> None:
        log.stage(name)
        if poll_abort:
            jobdir.check_abort()

    import_job_modules()
    stage_done("imports (numpy, scipy, the job's modules) and set-up", poll_abort=False)
    job = read_class2d_job(opts, log)
    stage_done("read optimiser and model")
    if job_box is not None:
        job_box.put(job)  # to the torch scorer, started before
        cnn = None
    else:
        cnn = start_networks(opts, job, started)
        stage_done("class images and networks loaded; the networks start on the images in a background process")
    # Without the minimum-particle rule nothing before particles.star needs the particles of
    # each class: they are counted while it is written, and this pass counts rows only.
    parts = count_particles_per_class(job, jobdir, log, per_class=opts.select_min_nr_particles > 0)
    stage_done("count particles per class" if parts.per_class else
               "count particles (per class later, while particles.star is written)" if parts.rows_counted else
               "read data.star's header and optics table (particles counted while particles.star is written)")
    images, fs = featurise_classes(job, parts, opts.threads, jobdir, log, cnn.class_images if cnn else None)
    stage_done("features and network images")
    copy_rank_data(jobdir, job)
    stage_done("rank_data.star (a copy of data.star), while the scorer finishes")
    scores, raw_scores, model_path = score_classes(job, fs, started[0], cnn, inbox, opts.job_context, log)
    stage_done("scores")
    sel, threshold_text = apply_selection_rules(opts, scores, raw_scores, parts, log)
    note_uncertain_decisions(job, scores, sel, log)
    stage_done("selection", poll_abort=False)

    # the report is drawn while particles.star is written; where that pass counts the classes,
    # the counts follow through an inbox once it is done
    counts_box = None if parts.per_class else Inbox()
    report = None
    try:
        report = Background(_write_report, jobdir.temp("logfile.pdf"), jobdir.temp("logfile.png"), job, images, fs,
                            scores, parts, sel, threshold_text, model_path, counts_box)
        if parts.per_class:
            write_star_outputs(opts, jobdir, job, fs, scores, sel, parts)
            n_written = write_particles_star(job, sel, jobdir, workers=opts.threads or 1)
        else:
            n_written = write_particles_star(job, sel, jobdir, counts=parts.counts, workers=opts.threads or 1)
            check_class_numbers(job, parts)
            log(f"  {len(parts.counts)} non-empty classes (counted while particles.star was written)")
            sel.n_particles = n_written
            counts_box.put((parts.counts, parts.n_particles, n_written))
            write_star_outputs(opts, jobdir, job, fs, scores, sel, parts)
        stage_done("write STAR outputs", poll_abort=False)
        with jobdir.writing("logfile.pdf", "logfile.png"):
            report.result()
    finally:
        if report is not None:
            report.cancel()
    stage_done("report (logfile.pdf, logfile.png), drawn while the STAR outputs were written")
    move_outputs_into_place(jobdir)
    stage_done("move outputs into place", poll_abort=False)
    log_results(job, parts, scores, sel, n_written, jobdir, log)
    log.total()


def import_job_modules() -> None:
    """Import what the stages use (numpy, scipy, ...), so that the stage timings do not hide
    import time (and before the scorer's fork, which then needs not import them again)."""
    from . import class2d, features, fourier, outputs, particles, selection, star  # noqa: F401


def read_class2d_job(opts: Options, log: Log):
    """The Class2D optimiser, model and class images' header (the latest complete iteration
    if the named one does not exist yet)."""
    from .class2d import (iteration_number, job_finished, latest_complete_iteration, read_class2d,
                          resolve_optimiser)
    from .star import StarError

    for note in opts.ignored:
        log(f"Note: ignoring {note} (not used for ranking 2D classes)")
    optimiser = resolve_optimiser(opts.in_optimiser, opts.in_parts)
    data_path = opts.in_parts
    given_dir = next((p for p in (opts.in_optimiser, opts.in_parts) if p and os.path.isdir(p)), None)
    if given_dir:
        # the optimiser names its data.star; a data.star given besides must be that one (checked on reading)
        data_path = opts.in_parts if opts.in_parts and given_dir != opts.in_parts else None
        log(f"Class2D job directory {given_dir}: ranking its final iteration, {iteration_number(optimiser)}")
        if not job_finished(given_dir):
            log(f"WARNING: {given_dir} has no RELION_JOB_EXIT_SUCCESS (Class2D still running or failed?); "
                f"iteration {iteration_number(optimiser)} is the newest complete one")
    if not os.path.exists(optimiser):
        latest = latest_complete_iteration(optimiser)
        if latest is None:
            raise StarError(f"{optimiser}: optimiser STAR not found" +
                            (" (looked beside the --in_parts data.star)" if not opts.in_optimiser else ""))
        log(f"Note: {optimiser} does not exist yet (Class2D job still running?); "
            f"using the latest complete iteration, {latest}")
        optimiser, data_path = latest, None
    job = read_class2d(optimiser, data_path=data_path)
    log(f"Class2D job: {optimiser}")
    log(f"  model {job.model_path}, data {job.data_path}")
    log(f"  {job.nr_classes} classes, box {job.box_px} px, pixel size {job.pixel_size_A:g} A, "
        f"particle diameter {job.particle_diameter_A:g} A" + (" (VDAM)" if job.is_gradient else ""))
    if not job.do_correct_ctf:
        log("WARNING: this job was run without CTF correction (RELION's ranker refuses such jobs); "
            "ranking anyway, scores may be less reliable")
    return job


def count_particles_per_class(job, jobdir: JobDir, log: Log, per_class: bool = True):
    """Stream data.star once: particles per class (or, ``per_class`` False, only the
    particles: :func:`write_particles_star` counts the classes), optics groups (flat memory)."""
    from .class2d import check_particles_fit, model_particle_count
    from .particles import scan_particles

    # the model counts the particles (checked against the rows on the pass that writes
    # particles.star): then only data.star's header is read here, unless the first-peak CTF
    # correction needs the last row's defocus
    known = None if per_class or job.ignore_ctf_until_first_peak else model_particle_count(job)
    parts = scan_particles(job.data_path, abort=jobdir.check_abort, per_class=per_class, n_rows=known)
    if per_class:
        check_particles_fit(job, parts.n_particles, parts.counts, job.data_path)
        log(f"  {parts.n_particles} particles in {len(parts.counts)} non-empty classes, "
            f"{parts.n_optics_groups} optics group(s)")
    elif known is not None:
        log(f"  {parts.n_particles} particles (as {os.path.basename(job.model_path)} counts them; data.star's rows "
            f"are counted while particles.star is written), {parts.n_optics_groups} optics group(s)")
    else:
        log(f"  {parts.n_particles} particles, {parts.n_optics_groups} optics group(s)")
    return parts


def check_class_numbers(job, parts) -> None:
    """data.star fits the model (:func:`ranker.runtime.class2d.check_particles_fit`), once the
    classes are counted (while particles.star is written, where the first pass counted rows only)."""
    from .class2d import check_particles_fit

    parts.n_particles = sum(parts.counts.values())  # the rows counted (the first pass may have taken the model's)
    check_particles_fit(job, parts.n_particles, parts.counts, job.data_path)


def featurise_classes(job, parts, threads: int, jobdir: JobDir, log: Log, images=None):
    """The class images (``images``: loaded before), and RELION's 24 features and 64x64
    network image of every class with more than 10 particles. Returns (images, feature set)."""
    from . import features, fourier

    images = job.load_images() if images is None else images
    fourier.WORKERS = threads
    fs = features.compute_features(job, images, parts.n_particles, parts.optics, parts.last_row,
                                   abort=jobdir.check_abort)
    for note in fs.notes:
        log(f"Note: {note}")
    log(f"  {len(fs.rows)} classes with more than 10 particles get features and a score")
    return images, fs


def early_network_images(job, images=None):
    """The network images of every class with particles (distribution > 0), exactly as
    :func:`featurise_classes` will make them (``images``: the class images, if loaded), for
    the networks to start on while data.star is read; None where they depend on data.star
    (CTFs ignored until the first peak: the last particle row's defocus)."""
    if job.ignore_ctf_until_first_peak:
        return None
    import numpy as np

    from .features import network_image

    rows = [i for i, c in enumerate(job.classes) if c.distribution > 0]
    if not rows:
        return None
    images = job.load_images() if images is None else images
    step = 16  # classes at a time: the particle-diameter windows of 300 classes of 400 px take 190 MB at once
    return np.concatenate([network_image(images[rows[i:i + step]], job.pixel_size_A, job.particle_diameter_A)
                           .astype(np.float32) for i in range(0, len(rows), step)])


def start_networks(opts: Options, job, started: list):
    """Load the class images and the networks (numpy), and start a background process that
    makes the classes' network images and runs them through the networks (the costly part
    of scoring, which needs no features; :class:`ranker.runtime.model.CNNWork`). Returns the
    work (with ``class_images``), which this process joins once its features are done."""
    from .background import Background
    from .model import CNNWork, load_model

    began = time.perf_counter()
    images = job.load_images()  # once, for both processes (the features need them too)
    ranker = load_model(opts.model, device=opts.device, threads=opts.threads)
    work = CNNWork(ranker, sum(c.distribution > 0 for c in job.classes))
    work.began, work.class_images = began, images

    def helper():
        t = time.perf_counter()
        work.fill(lambda: early_network_images(job, images))  # the first helper makes them, the others wait
        return work.work(), t, time.perf_counter()

    # --j N: N - 1 helpers (at least one) and this process, once its features are done
    work.helpers = [Background(helper) for _ in range(max(1, min(opts.threads or 1, os.cpu_count() or 1) - 1))]
    started.extend(work.helpers)
    return work


def score_classes(job, fs, scorer, cnn, inbox, use_context: bool, log: Log):
    """The scores of the featurised classes. ``cnn``: the networks' work on the class images
    (numpy): this process does what the background one has not, then scores here; None: the
    torch scorer process does everything, given the features. Returns ({class number:
    score}, raw scores in feature-row order, the model file)."""
    if cnn is None:
        inbox.put((fs.vectors, fs.images))
        raw_scores, model_path, device, engine, context, timing = scorer.result()
        log(f"  model {model_path} on {device} ({engine})" + (_CONTEXT_NOTE if context else ""))
        where = (f"in a background process, {timing['began'] - log.t0:.2f} s to {timing['early_done'] - log.t0:.2f} "
                 f"s after the start, alongside the stages above" if scorer.proc is not None else "in this stage")
        torch_text = f"torch {timing['torch']} imported" if timing["torch"] else "torch not imported"
        log(f"  model loaded in {timing['loaded'] - timing['began']:.2f} s ({torch_text}) and {timing['n_early']} "
            f"class images run through the networks in {timing['early_done'] - timing['loaded']:.2f} s ({where}); "
            f"{timing['reused']} of the {len(fs.rows)} scored classes among them")
    else:
        ranker = cnn.ranker
        here = cnn.work(alive=lambda: any(h.proc is None or h.proc.is_alive() for h in cnn.helpers))
        done = [h.result() for h in cnn.helpers]
        there, began, ended = sum(d[0] for d in done), min(d[1] for d in done), max(d[2] for d in done)
        ranker.precompute_from(cnn)
        reused = ranker.precomputed(fs.images)
        raw_scores = ranker.score_job(fs.vectors, fs.images, use_context)
        model_path = ranker.path
        log(f"  model {model_path} on {ranker.device} ({ranker.engine})" +
            (_CONTEXT_NOTE if ranker.context_applies(use_context) else ""))
        n = len(cnn.helpers)
        where = (f"{'a background process' if n == 1 else f'{n} background processes'}, {began - log.t0:.2f} s to "
                 f"{ended - log.t0:.2f} s after the start," if cnn.helpers[0].proc is not None else "this process")
        log(f"  model loaded in {ranker.load_seconds:.2f} s (torch not imported); {cnn.ready_count} class images "
            f"through {len(ranker.states)} network(s) in {cnn.units} batches: {there} in {where} {here} in this "
            f"stage; {reused} of the {len(fs.rows)} scored classes among them")
    import numpy as np

    from .model import ModelError

    bad = [job.classes[i].class_number for i, s in zip(fs.rows, raw_scores) if not np.isfinite(s)]
    if bad:
        raise ModelError(f"{model_path}: gave NaN or Inf scores (class(es) {bad[:5]}); nothing can be selected")
    scores = {job.classes[i].class_number: float(s) for i, s in zip(fs.rows, raw_scores)}
    return scores, raw_scores, model_path


_CONTEXT_NOTE = "; scores read beside this job's best class (job context; --job_context false scores each class alone)"


def apply_selection_rules(opts: Options, scores: dict, raw_scores, parts, log: Log):
    """RELION's selection rules (``--min_score auto``: this job's own threshold).
    Returns (selection, the threshold in words for the report)."""
    from .selection import select_classes

    min_score = opts.min_score
    threshold_text = f"{min_score:g}" if min_score != "auto" else ""
    if min_score == "auto":
        from .threshold import auto_threshold
        min_score = auto_threshold(raw_scores)
        threshold_text = f"auto -> {min_score:.3f}"
        log(f"  --min_score auto: threshold {min_score:.3f} for this job")
    sel = select_classes(scores, parts.counts, min_score, opts.max_score, opts.select_min_nr_particles,
                         opts.select_min_nr_classes, opts.relative_thresholds)
    if opts.relative_thresholds:
        threshold_text += f" x best score = {sel.min_score:.3f} (relative)"
        log(f"  relative thresholds: keep scores in [{sel.min_score:.3f}, {sel.max_score:.3f}]")
    return sel, threshold_text


def note_uncertain_decisions(job, scores: dict, sel, log: Log) -> None:
    """One run.out line naming the classes scored within NEAR_THRESHOLD of the threshold, kept or not,
    with their share of the particles (model.star's class distribution): where the model's errors lie,
    for a user who checks the selection by hand (interactive Select on rank_optimiser.star)."""
    from .selection import NEAR_THRESHOLD, near_threshold

    near = near_threshold(scores, sel.min_score)
    if not near:
        return
    share = {c.class_number: c.distribution for c in job.classes}
    chosen = set(sel.selected)
    listed = ", ".join(f"{k} ({scores[k]:.3f}, {'kept' if k in chosen else 'rejected'})" for k in near)
    log(f"  {len(near)} class(es) scored within {NEAR_THRESHOLD:g} of the threshold {sel.min_score:.3f}, with "
        f"{100.0 * sum(share.get(k, 0.0) for k in near):.1f} % of the particles: {listed}. These are the decisions "
        f"a small error in the score reverses; to check them, open rank_optimiser.star in an interactive Select "
        f"(sorted on rlnClassScore).")


def copy_rank_data(jobdir: JobDir, job) -> None:
    """rank_data.star, a byte copy of data.star (temporary name); needs no scores."""
    from . import outputs

    with jobdir.writing("rank_data.star"):
        outputs.write_rank_data(jobdir.temp("rank_data.star"), job)


def write_star_outputs(opts: Options, jobdir: JobDir, job, fs, scores: dict, sel, parts) -> None:
    """The small STAR outputs (rank_model/optimiser, backup_selection, class_averages, and
    features if asked), under temporary names."""
    from . import outputs

    rank_model = jobdir.file("rank_model.star")
    with jobdir.writing("rank_model.star"):
        outputs.write_rank_model(jobdir.temp("rank_model.star"), job, scores)
    with jobdir.writing("rank_optimiser.star"):
        outputs.write_rank_optimiser(jobdir.temp("rank_optimiser.star"), job, rank_model,
                                     jobdir.file("rank_data.star"))
    with jobdir.writing("backup_selection.star"):
        outputs.write_backup_selection(jobdir.temp("backup_selection.star"), job, sel)
    with jobdir.writing("class_averages.star"):
        outputs.write_class_averages(jobdir.temp("class_averages.star"), job, sel, scores, parts.counts)
    if opts.write_features:
        with jobdir.writing("features.star", "features_images.mrcs"):
            outputs.write_features(jobdir.temp("features.star"), jobdir.temp("features_images.mrcs"),
                                   jobdir.file("features_images.mrcs"), job, fs, scores)


def write_particles_star(job, sel, jobdir: JobDir, counts: dict | None = None, workers: int = 1) -> int:
    """particles.star: the selected classes' rows copied byte for byte (temporary name), by
    ``workers`` processes on a large data.star. Returns the number of particles written; fills
    ``counts`` (class -> particles), if given."""
    from .particles import write_selected

    with jobdir.writing("particles.star"):
        return write_selected(job.data_path, jobdir.temp("particles.star"), sel.selected, abort=jobdir.check_abort,
                              counts=counts, workers=workers)


def move_outputs_into_place(jobdir: JobDir) -> None:
    """Write RELION_OUTPUT_NODES.star and rename every output into place together."""
    nodes = [(jobdir.file("particles.star"), protocol.NODE_PARTICLES),
             (jobdir.file("class_averages.star"), protocol.NODE_CLASS_AVERAGES),
             (jobdir.file("rank_optimiser.star"), protocol.NODE_OPTIMISER),
             (jobdir.file("logfile.pdf"), protocol.NODE_PDF_LOG)]
    with jobdir.writing(protocol.NODES_FILE):
        with open(jobdir.temp(protocol.NODES_FILE), "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(protocol.nodes_star(nodes))
    jobdir.commit(OUTPUT_NAMES)


def log_results(job, parts, scores: dict, sel, n_written: int, jobdir: JobDir, log: Log) -> None:
    """The scores, best first, and what was selected."""
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    log("Scores (class: score, particles):")
    log("  " + ", ".join(f"{k}: {s:.3f} ({parts.counts.get(k, 0)})" for k, s in ranked))
    kept = ", ".join(map(str, sel.selected)) or "none"
    log(f"Selected {len(sel.selected)} of {job.nr_classes} classes ({kept}); "
        f"{n_written} of {parts.n_particles} particles "
        f"({100.0 * n_written / parts.n_particles:.1f} %) written to {jobdir.file('particles.star')}")
    if sel.by_fallback:
        log(f"  {len(sel.by_fallback)} class(es) added to reach the minimum number of particles/classes: "
            + ", ".join(map(str, sel.by_fallback)))
    if not n_written:
        log("WARNING: no particle was selected: particles.star holds none (lower --min_score, or set "
            "--select_min_nr_classes / --select_min_nr_particles)")


def _write_report(pdf_path, png_path, job, images, fs, scores, parts, sel, threshold_text, model_path,
                  counts_box=None) -> None:
    """Draw logfile.pdf/png (in a background process). ``counts_box``: an Inbox that brings
    (particles per class, particles, particles kept) once particles.star is written, where
    ``parts`` has no per-class counts yet; the report is drawn as far as it can go meanwhile."""
    from .features import network_image
    from .report import ReportDraft, rejection_reason

    thumbs = {i: fs.images[j] for j, i in enumerate(fs.rows)}  # scored classes: images already made
    unscored = [i for i in range(job.nr_classes) if i not in thumbs]
    if unscored:
        thumbs.update(zip(unscored, network_image(images[unscored], job.pixel_size_A, job.particle_diameter_A)))
    raw = {job.classes[i].class_number: fs.raw[j] for j, i in enumerate(fs.rows)}
    chosen = set(sel.selected)
    entries = []
    for row, cls in enumerate(job.classes):
        k = cls.class_number
        entries.append({"class_number": k, "image": thumbs[row], "score": scores.get(k),
                        "resolution_A": raw[k]["EstimatedResolution"] if k in raw else cls.estimated_resolution_A,
                        "selected": k in chosen})
    title = job.optimiser_path.encode(errors="surrogateescape").decode(errors="replace")  # drawable text
    summary = {"title": f"relion_external_rank: {title}", "classes_in": job.nr_classes,
               "classes_kept": len(sel.selected), "classes_scored": len(scores), "threshold": sel.min_score,
               "threshold_text": threshold_text, "model": model_path}
    draft = ReportDraft(entries, summary)
    if counts_box is None:
        counts, n_particles, n_kept = parts.counts, parts.n_particles, sel.n_particles
    else:
        counts, n_particles, n_kept = counts_box.get()
    draft.finish(pdf_path, png_path, counts=counts, particles_in=n_particles, particles_kept=n_kept,
                 reason=lambda e: rejection_reason(e["score"] or 0.0, e["count"], raw.get(e["class_number"]),
                                                   sel.min_score))


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns the process exit status (0 success, 1 failure/abort/refusal, 2 usage,
    128 + N when signal N stopped it).

    Whatever happens the job keeps RELION's promise: one exit file, one line in run.err naming
    the file and the problem, no partial or stale output, inputs untouched (see protocol.py).
    Run as a program (``argv`` None), run.out's times count from the process start;
    called with ``argv`` (from Python, e.g. tests), from this call."""
    as_program = argv is None
    argv = sys.argv[1:] if argv is None else argv
    _tolerant_streams()
    signals = protocol.Interruptions().install()
    try:
        return _main(argv, as_program, signals)
    finally:
        signals.restore()


def _main(argv: list[str], as_program: bool, signals: protocol.Interruptions) -> int:
    from . import inputs

    jobdir: JobDir | None = None
    outcome: BaseException | None = None
    try:
        try:
            signals.replay()  # a signal that came while Python started
            inputs.reset()
            for token in argv:  # whatever the command line names is an input: never removed, even after a failure
                if not token.startswith("--") and os.path.lexists(token):
                    inputs.declare(token)
            try:
                opts = parse_options(argv)
            except OptionError as exc:
                if str(exc) in ("help", "version"):
                    print(usage() if str(exc) == "help" else version())
                    return 0
                _say(usage())  # to run.out; run.err gets the one line
                return _fail_early(_out_dir_guess(argv), f"ERROR: {exc}", 2, signals)
            jobdir = JobDir(opts.out_dir)
            log = _log_for(as_program)
            try:
                notes = jobdir.claim(OUTPUT_NAMES)
            except protocol.JobRefused as exc:
                _say(f"ERROR: {exc}", sys.stderr)
                return 1
            opts.threads, threads_note = usable_threads(opts.threads)
            for note in notes + ([threads_note] if threads_note else []):
                log(note)
            from .model import model_path
            log(f"{version()} (Python {sys.version.split()[0]}, {sys.executable}); model {model_path(opts.model)}")
            log(f"relion_external_rank: {' '.join(argv)}")
            log.startup()
            run(opts, jobdir, log)
        except BaseException as exc:  # noqa: BLE001 - every way out ends in the one cleanup below
            signals.block()
            outcome = signals.as_raised(exc)
    except protocol.JobInterrupted as exc:  # landed in the handler above, before block(): the first signal
        outcome = exc
    signals.block()
    if jobdir is None or jobdir.lock_fd is None:  # stopped before the directory was ours (a signal at start-up)
        status = 128 + outcome.signum if isinstance(outcome, protocol.JobInterrupted) else 1
        line = (f"ERROR: {outcome}; no outputs written" if isinstance(outcome, protocol.JobInterrupted)
                else f"ERROR: {_one_line(outcome)}")
        return _fail_early(jobdir.path if jobdir else _out_dir_guess(argv), line, status, signals)
    return _finish(jobdir, outcome, signals)


def _finish(jobdir: JobDir, outcome: BaseException | None, signals: protocol.Interruptions) -> int:
    """The one cleanup: end the background processes, remove temporary and stale outputs (never an
    input), write the exit file and one line in run.err, drop the lock. Signals no longer stop it."""
    from .background import stop_all

    try:
        if outcome is None:
            exit_name, status = protocol.EXIT_SUCCESS, 0
        else:
            if not isinstance(outcome, (protocol.JobInterrupted, JobAborted)) and signals.pending:
                outcome = protocol.JobInterrupted(signals.pending[0])  # its child was stopped first
            kept = []
            for step in (stop_all, jobdir.discard, lambda: kept.extend(jobdir.remove_outputs(OUTPUT_NAMES))):
                try:  # each step on its own: whatever fails here, the exit file is still written
                    step()
                except Exception as exc:  # noqa: BLE001
                    _say(f"Note: cleanup: {_one_line(exc)}")
            if isinstance(outcome, JobAborted):
                _say("Aborted by the user (RELION_JOB_ABORT_NOW); no outputs written.")
                exit_name, status = protocol.EXIT_ABORTED, 1
            elif isinstance(outcome, protocol.JobInterrupted):
                _say(f"ERROR: {outcome}; no outputs written", sys.stderr)
                exit_name, status = protocol.EXIT_FAILURE, 128 + outcome.signum
            elif isinstance(outcome, (KeyboardInterrupt, SystemExit)):
                _say(f"ERROR: stopped ({type(outcome).__name__}); no outputs written", sys.stderr)
                exit_name, status = protocol.EXIT_FAILURE, 1
            else:
                _say(f"ERROR: {_one_line(outcome)}", sys.stderr)
                if os.environ.get("RELION_EXTERNAL_RANK_DEBUG"):
                    import traceback
                    try:
                        traceback.print_exception(outcome)
                    except (OSError, ValueError):
                        pass
                exit_name, status = protocol.EXIT_FAILURE, 1
            if kept:
                _say(f"Note: kept {', '.join(kept)}: read as an input of this run")
        try:
            jobdir.finish(exit_name)
        except OSError as exc:
            _say(f"ERROR: {jobdir.path}: cannot write {exit_name} ({exc.strerror})", sys.stderr)
            status = status or 1
        return status
    finally:
        jobdir.release()


def _fail_early(out_dir: str | None, line: str, status: int, signals: protocol.Interruptions) -> int:
    """A failure before the job directory was claimed (a bad command line, a signal at start-up): the
    line on stderr and, where the directory can be claimed as ours, RELION_JOB_EXIT_FAILURE (so that
    RELION does not wait for ever) after removing an earlier run's outputs."""
    signals.block()
    _say(line, sys.stderr)
    if not out_dir:
        return status
    jobdir = JobDir(out_dir)
    try:
        jobdir.claim(OUTPUT_NAMES)
    except (protocol.JobRefused, OSError):
        return status  # another job's directory, or another run is in it: not ours to mark
    try:
        jobdir.remove_outputs(OUTPUT_NAMES)
        jobdir.finish(protocol.EXIT_FAILURE)
    except OSError:
        pass
    finally:
        jobdir.release()
    return status


def _tolerant_streams() -> None:
    """stdout/stderr (run.out/run.err) write file names as their bytes: Linux paths need not be
    UTF-8, and Python holds such bytes as surrogates that a strict stream refuses to print; what the
    stream's encoding cannot hold otherwise (a non-UTF-8 locale) is written as a backslash escape."""
    import codecs

    def as_bytes_or_escaped(exc):
        if isinstance(exc, UnicodeEncodeError):
            chunk = exc.object[exc.start:exc.end]
            if all(0xDC80 <= ord(c) <= 0xDCFF for c in chunk):
                return bytes(ord(c) - 0xDC00 for c in chunk), exc.end
        return codecs.backslashreplace_errors(exc)

    codecs.register_error("relion_external_rank", as_bytes_or_escaped)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="relion_external_rank")
        except (AttributeError, ValueError, OSError):
            pass


def _say(line: str, stream=None) -> None:
    """Print a line; a closed or broken stream (stdout closed, a pipe gone) must not stop the cleanup."""
    try:
        print(line, file=stream or sys.stdout, flush=True)
    except (OSError, ValueError):
        pass


def program() -> None:
    """The ``relion_external_rank`` command: :func:`main` on ``sys.argv``, then the process
    ends at once with its status (stdout and stderr flushed). By then every output file is
    closed and the background processes are joined, so skipping the interpreter's teardown
    (about 50 ms with numpy and scipy loaded) loses nothing, and the job ends when run.out's
    Total time says it does."""
    # numpy's BLAS threads spin while they wait: on a busy machine two of them made the
    # networks' forward pass 4x slower than one. The job's parallelism is its processes.
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    status = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


def version() -> str:
    """``relion_external_rank VERSION`` (``ranker.__version__``)."""
    return f"relion_external_rank {__version__}"


def _log_for(as_program: bool) -> Log:
    """A run.out log counting from the process start (as a program), else from now."""
    if not as_program:
        return Log()
    started = process_start()
    if started is None:
        return Log(_IMPORTED, "imports before main(), since ranker.runtime.job was imported; Python's own start-up "
                              "is not measured here", "since ranker.runtime.job was imported")
    return Log(started, "Python start-up and imports before main(), since the process started",
               "since the process started")


def _one_line(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    text = str(exc).strip().splitlines()
    known = ("StarError", "FeatureError", "ModelError", "OptionError", "InputError", "OutputError", "MrcError")
    prefix = "" if type(exc).__name__ in known else f"{type(exc).__name__}: "
    return prefix + (text[0] if text else "unexpected error")


def _out_dir_guess(argv: list[str]) -> str | None:
    for flag in ("--o", "--pipeline_control"):
        if flag in argv:
            i = argv.index(flag)
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                return argv[i + 1]
    return None
