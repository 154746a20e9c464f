"""Build a tiny, real RELION-3.1 project for the integration tests, and drive RELION in it.

:func:`build_project` makes, in an empty directory, what a user has before adding our External job:

1. ``Simulated/``: ~300 particle images with known truth. Good particles are projections of a
   simple asymmetric density (a few Gaussian lobes) made by RELION itself
   (``relion_project --ctf --add_noise --white_noise``) with a few preferred views; junk is
   made with numpy (pure noise, some with an ice-thickness gradient, and high-contrast
   blobs). Images are normalised like ``relion_preprocess`` and stored per "micrograph".
   ``Simulated/particles.star`` is in RELION-3.1 format (``data_optics`` + ``data_particles``).
2. ``Import/job001/`` and ``Class2D/job002/`` (K classes, a few iterations, one thread), both
   created and run through ``relion_pipeliner`` exactly as the GUI would schedule them.

The helpers :func:`add_job`, :func:`run_job` and :func:`read_pipeline` drive
``relion_pipeliner`` and read back what RELION wrote (``default_pipeline.star``). Every call
runs with the project root as working directory and under a time limit, so a job that never
finishes fails the test instead of hanging CI.

Pitfalls handled here (see ``../shared/docs/relion_external_job_protocol.md``):
``relion_pipeliner`` needs an existing ``default_pipeline.star``; a failed call can leave a
stale ``.relion_lock/`` that makes the next call wait 2 minutes; ``--RunJobs`` runs one job per
call reliably; each job costs at least one ``--sec_wait_after`` polling interval.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from ranker.develop.simulate.optics import relion_normalise
from ranker.runtime.geometry import circle_mask
from ranker.runtime.mrc import read_stack, write_mrc
from ranker.runtime.star import format_block

PIPELINER = "relion_pipeliner"
EMPTY_PIPELINE = format_block("pipeline_general", ["rlnPipeLineJobCounter"], [[1]], loop=False)
STATUS = {0: "running", 1: "scheduled", 2: "succeeded", 3: "failed", 4: "aborted"}
SEC_WAIT_AFTER = 1


class RelionError(RuntimeError):
    """A RELION program failed or timed out; the message carries its output."""


@dataclass
class Project:
    """A built project. Paths are relative to ``root`` (the RELION project directory)."""

    root: str
    class2d_job: str        # "Class2D/job002/"
    iteration: int
    n_particles: int
    n_good: int
    angpix: float
    box: int
    mask_diameter_A: float

    @property
    def data_star(self) -> str:
        return f"{self.class2d_job}run_it{self.iteration:03d}_data.star"

    @property
    def optimiser_star(self) -> str:
        return f"{self.class2d_job}run_it{self.iteration:03d}_optimiser.star"

    @property
    def model_star(self) -> str:
        return f"{self.class2d_job}run_it{self.iteration:03d}_model.star"


# --------------------------------------------------------------------------------------------
# running RELION programs
# --------------------------------------------------------------------------------------------
def relion_available() -> bool:
    return shutil.which(PIPELINER) is not None


def run_program(args: list[str], cwd: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    """Run a RELION program in ``cwd`` (its own process group, killed on timeout)."""
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise RelionError(f"{' '.join(args)} timed out after {timeout:.0f} s in {cwd}\n"
                          f"stdout: {out[-3000:]}\nstderr: {err[-3000:]}") from None
    result = subprocess.CompletedProcess(args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise RelionError(f"{' '.join(args)} exited with {proc.returncode} in {cwd}\n"
                          f"stdout: {out[-3000:]}\nstderr: {err[-3000:]}")
    return result


def pipeliner(root: str, args: list[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """``relion_pipeliner ARGS`` in the project; clears a stale ``.relion_lock`` if a call failed."""
    try:
        result = run_program([PIPELINER] + args, root, timeout, check=check)
    except RelionError:
        shutil.rmtree(os.path.join(root, ".relion_lock"), ignore_errors=True)
        raise
    if result.returncode != 0:
        shutil.rmtree(os.path.join(root, ".relion_lock"), ignore_errors=True)
    return result


def init_pipeline(root: str) -> None:
    """What the GUI does in a new project: an empty ``default_pipeline.star``."""
    path = os.path.join(root, "default_pipeline.star")
    if not os.path.exists(path):
        with open(path, "w") as fh:
            fh.write(EMPTY_PIPELINE)


def format_options(options: dict) -> str:
    """``--addJobOptions`` text: ``key == value;key == value``."""
    for key, value in options.items():
        if ";" in str(value) or ";" in key:
            raise ValueError(f"job option {key}: {value!r} contains ';', which RELION uses as separator")
    return ";".join(f"{key} == {value}" for key, value in options.items())


def add_job(root: str, job_type: str, options: dict) -> str:
    """Schedule a job with ``relion_pipeliner --addJob``; returns its directory (``External/job003/``)."""
    number = read_pipeline(root)["counter"]
    pipeliner(root, ["--addJob", job_type, "--addJobOptions", format_options(options)])
    jobdir = f"{job_type}/job{number:03d}/"
    if jobdir not in read_pipeline(root)["processes"]:
        raise RelionError(f"relion_pipeliner --addJob {job_type} did not create {jobdir}")
    return jobdir


def add_job_from_star(root: str, job_star: str) -> str:
    """Schedule a job with ``relion_pipeliner --addJobFromStar JOB.star``; returns its directory."""
    before = set(read_pipeline(root)["processes"])
    pipeliner(root, ["--addJobFromStar", job_star])
    new = sorted(set(read_pipeline(root)["processes"]) - before)
    if len(new) != 1:
        raise RelionError(f"relion_pipeliner --addJobFromStar {job_star} added {new}")
    return new[0]


def run_job(root: str, jobdir: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``relion_pipeliner --RunJobs JOBDIR`` (blocks until RELION sees an exit file); returns the call."""
    return pipeliner(root, ["--RunJobs", jobdir, "--sec_wait_after", str(SEC_WAIT_AFTER)], timeout=timeout)


def job_status(root: str, jobdir: str) -> int:
    return read_pipeline(root)["processes"][jobdir]["status"]


def job_log(root: str, jobdir: str, tail: int = 3000) -> str:
    """run.out + run.err of a job, for assertion messages."""
    text = []
    for name in ("note.txt", "run.out", "run.err"):
        path = os.path.join(root, jobdir, name)
        if os.path.exists(path):
            with open(path, errors="replace") as fh:
                text.append(f"--- {jobdir}{name}:\n{fh.read()[-tail:]}")
    return "\n".join(text)


# --------------------------------------------------------------------------------------------
# reading default_pipeline.star (a small, independent reader: the tests check what RELION wrote)
# --------------------------------------------------------------------------------------------
def read_star_tables(path: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """All blocks of a small STAR file: name -> (labels, rows); a key/value block has one row.
    (The product's reader, ranker.star, does the parsing.)"""
    from ranker.runtime.star import read_star

    return {name: (b.labels, b.rows) for name, b in read_star(path).items()}


def read_pipeline(root: str) -> dict:
    """``default_pipeline.star`` as dicts: counter, processes {name: {alias, type, status}},
    nodes {name: type}, input_edges [(from_node, process)], output_edges [(process, to_node)]."""
    tables = read_star_tables(os.path.join(root, "default_pipeline.star"))

    def rows(block):
        labels, data = tables.get(block, ([], []))
        return [dict(zip(labels, row)) for row in data]

    general = rows("pipeline_general")
    counter = int(general[0]["rlnPipeLineJobCounter"]) if general else 1
    processes = {r["rlnPipeLineProcessName"]: {"alias": r["rlnPipeLineProcessAlias"],
                                              "type": int(r["rlnPipeLineProcessType"]),
                                              "status": int(r["rlnPipeLineProcessStatus"])}
                 for r in rows("pipeline_processes")}
    nodes = {r["rlnPipeLineNodeName"]: int(r["rlnPipeLineNodeType"]) for r in rows("pipeline_nodes")}
    inputs = [(r["rlnPipeLineEdgeFromNode"], r["rlnPipeLineEdgeProcess"]) for r in rows("pipeline_input_edges")]
    outputs = [(r["rlnPipeLineEdgeProcess"], r["rlnPipeLineEdgeToNode"]) for r in rows("pipeline_output_edges")]
    return {"counter": counter, "processes": processes, "nodes": nodes, "input_edges": inputs,
            "output_edges": outputs}


def count_particles(path: str) -> int:
    """Rows of the particles table of a RELION-3.1 particle STAR file."""
    labels, data = read_star_tables(path)["particles"]
    return len(data)


# --------------------------------------------------------------------------------------------
# simulation
# --------------------------------------------------------------------------------------------
def _density(box: int, angpix: float, rng: np.random.Generator) -> np.ndarray:
    """An asymmetric "protein": 9 Gaussian lobes of 9-14 A inside an ellipsoid of ~150 A."""
    grid = (np.indices((box, box, box)) - box // 2).astype(np.float64) * angpix  # z, y, x in A
    semi = np.array([30.0, 42.0, 60.0])  # z, y, x semi-axes of the envelope (A)
    vol = np.zeros((box,) * 3)
    centres = []
    while len(centres) < 9:
        c = rng.uniform(-1, 1, 3) * semi
        if np.sum((c / semi) ** 2) <= 1:
            centres.append(c)
    for i, c in enumerate(centres):
        sigma = rng.uniform(9, 14)
        weight = 1.0 if i else 1.8  # one heavier lobe breaks any near-symmetry
        d2 = sum((grid[k] - c[k]) ** 2 for k in range(3))
        vol += weight * np.exp(-d2 / (2 * sigma ** 2))
    return (vol / vol.max()).astype(np.float32)


def _euler(rng: np.random.Generator, n: int, n_views: int, spread_deg: float, frac_uniform: float):
    """Euler angles: a few preferred directions (with spread) plus a uniform fraction; psi uniform."""
    rot = rng.uniform(-180, 180, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, n)))
    psi = rng.uniform(-180, 180, n)
    dirs = rng.normal(size=(n_views, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    for i in range(n):
        if rng.uniform() < frac_uniform:
            continue
        v = dirs[rng.integers(n_views)] + rng.normal(0, np.radians(spread_deg), 3)
        v /= np.linalg.norm(v)
        tilt[i] = np.degrees(np.arccos(np.clip(v[2], -1, 1)))
        rot[i] = np.degrees(np.arctan2(v[1], v[0]))
    return rot, tilt, psi


OPTICS_LABELS = ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize", "rlnVoltage",
                 "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize",
                 "rlnImageDimensionality"]


def simulate_particles(root: str, n_good: int = 180, n_noise: int = 60, n_blobs: int = 60, box: int = 64,
                       angpix: float = 3.5, snr: float = 0.3, n_mics: int = 6, seed: int = 1) -> dict:
    """Write ``Simulated/particles.star`` + stacks + ``truth.csv`` under ``root``; returns counts."""
    rng = np.random.default_rng(seed)
    sim = os.path.join(root, "Simulated")
    os.makedirs(os.path.join(sim, "Particles"), exist_ok=True)
    write_mrc(os.path.join(sim, "ref.mrc"), _density(box, angpix, rng), angpix)
    optics = [["opticsGroup1", 1, f"{angpix:.6f}", "300.000000", "2.700000", "0.100000", f"{angpix:.6f}", box, 2]]

    # micrographs (defocus, astigmatism) and which micrograph each particle comes from
    mics = []
    for m in range(n_mics):
        defocus = rng.uniform(12000, 25000)
        astig = rng.uniform(100, 500)
        mics.append((defocus + astig / 2, defocus - astig / 2, rng.uniform(-180, 180)))
    kinds = ["good"] * n_good + ["noise"] * n_noise + ["blob"] * n_blobs
    order = rng.permutation(len(kinds))
    kinds = [kinds[i] for i in order]
    mic_of = rng.integers(0, n_mics, len(kinds))

    # good particles: RELION projects the density with CTF (clean run to calibrate the noise)
    good_idx = [i for i, k in enumerate(kinds) if k == "good"]
    rot, tilt, psi = _euler(rng, len(good_idx), n_views=3, spread_deg=8, frac_uniform=0.2)
    shifts = rng.normal(0, 1.0, (len(good_idx), 2)) * angpix
    ang_labels = ["rlnMicrographName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                  "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfBfactor",
                  "rlnCtfScalefactor", "rlnPhaseShift", "rlnOpticsGroup"]
    ang_rows = []
    for j, i in enumerate(good_idx):
        du, dv, da = mics[mic_of[i]]
        ang_rows.append([f"Simulated/mic{mic_of[i] + 1:03d}.mrc", f"{rot[j]:.3f}", f"{tilt[j]:.3f}",
                         f"{psi[j]:.3f}", f"{shifts[j, 0]:.3f}", f"{shifts[j, 1]:.3f}", f"{du:.2f}", f"{dv:.2f}",
                         f"{da:.2f}", "0.0", "1.0", "0.0", 1])
    with open(os.path.join(sim, "good_ang.star"), "w") as fh:
        fh.write(format_block("optics", OPTICS_LABELS, optics) + format_block("particles", ang_labels, ang_rows))
    project = ["relion_project", "--i", "Simulated/ref.mrc", "--ang", "Simulated/good_ang.star", "--ctf"]
    run_program(project + ["--o", "Simulated/good_clean"], root, timeout=300)
    clean = read_stack(os.path.join(sim, "good_clean.mrcs")).astype(np.float64)
    radius_px = 0.5 * 150 / angpix
    inside = circle_mask(box, radius_px)
    signal_var = float(np.mean([im[inside].var() for im in clean]))
    sigma = float(np.sqrt(signal_var / snr))
    run_program(project + ["--o", "Simulated/good_noisy", "--add_noise", "--white_noise", f"{sigma:.6g}"],
                root, timeout=300)
    noisy = read_stack(os.path.join(sim, "good_noisy.mrcs")).astype(np.float64)
    if noisy.shape != (len(good_idx), box, box):
        raise RelionError(f"relion_project wrote {noisy.shape} images, expected {(len(good_idx), box, box)}")

    # junk: empty ice (noise, some with a thickness gradient) and high-contrast blobs
    y, x = (np.indices((box, box)) - box // 2).astype(np.float64)
    images = np.zeros((len(kinds), box, box))
    good_iter = iter(noisy)
    for i, kind in enumerate(kinds):
        if kind == "good":
            images[i] = next(good_iter)
            continue
        img = rng.normal(0, sigma, (box, box))
        if kind == "noise" and rng.uniform() < 0.4:
            t = rng.uniform(0, 2 * np.pi)
            img += rng.uniform(0.3, 1.0) * np.sqrt(signal_var) * (np.cos(t) * x + np.sin(t) * y) / box
        elif kind == "blob":
            for _ in range(int(rng.integers(1, 4))):
                cx, cy = rng.uniform(-0.4, 0.4, 2) * box
                rx, ry = rng.uniform(0.08, 0.3, 2) * box
                d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
                amp = rng.uniform(2, 4) * np.sqrt(signal_var) * rng.choice([-1, 1])
                img += amp / (1 + np.exp((d - 1) * 6))
        images[i] = img

    # per-micrograph stacks and the particle STAR (RELION 3.1 format)
    labels = ["rlnImageName", "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU",
              "rlnDefocusV", "rlnDefocusAngle", "rlnCtfBfactor", "rlnCtfScalefactor", "rlnPhaseShift",
              "rlnOpticsGroup"]
    rows, truth = [], ["rlnImageName,kind"]
    for m in range(n_mics):
        members = [i for i in range(len(kinds)) if mic_of[i] == m]
        if not members:
            continue
        stack = f"Simulated/Particles/mic{m + 1:03d}.mrcs"
        write_mrc(os.path.join(root, stack), np.stack([relion_normalise(images[i], 0.375 * box) for i in members]),
                  angpix, stack=True)
        du, dv, da = mics[m]
        for n, i in enumerate(members):
            name = f"{n + 1:06d}@{stack}"
            rows.append((i, [name, f"Simulated/mic{m + 1:03d}.mrc", f"{rng.uniform(100, 3900):.1f}",
                             f"{rng.uniform(100, 3900):.1f}", f"{du:.2f}", f"{dv:.2f}", f"{da:.2f}", "0.0",
                             "1.0", "0.0", 1]))
            truth.append(f"{name},{kinds[i]}")
    rows.sort(key=lambda r: r[0])  # shuffled order (kinds were permuted)
    with open(os.path.join(sim, "particles.star"), "w") as fh:
        fh.write(format_block("optics", OPTICS_LABELS, optics)
                 + format_block("particles", labels, [r for _, r in rows]))
    with open(os.path.join(sim, "truth.csv"), "w") as fh:
        fh.write("\n".join(truth) + "\n")
    return {"n_particles": len(kinds), "n_good": n_good, "sigma": sigma}


# --------------------------------------------------------------------------------------------
# the project
# --------------------------------------------------------------------------------------------
def build_project(root: str, n_good: int = 180, n_noise: int = 60, n_blobs: int = 60, n_classes: int = 4,
                  n_iter: int = 3, box: int = 64, angpix: float = 3.5, mask_diameter_A: float = 190,
                  seed: int = 1, log=None, classify: bool = True) -> Project:
    """Simulate particles, then Import + Class2D through ``relion_pipeliner`` (see module docstring).
    ``classify=False``: Import only (``class2d_job`` is empty)."""
    log = log or (lambda text: None)
    os.makedirs(root, exist_ok=True)
    t0 = time.perf_counter()
    counts = simulate_particles(root, n_good=n_good, n_noise=n_noise, n_blobs=n_blobs, box=box, angpix=angpix,
                                seed=seed)
    log(f"simulated {counts['n_particles']} particles in {time.perf_counter() - t0:.1f} s")
    init_pipeline(root)
    imp = add_job(root, "Import", {"do_raw": "No", "do_other": "Yes", "fn_in_other": "Simulated/particles.star",
                                   "node_type": "Particles STAR file (.star)"})
    run_job(root, imp, timeout=120)
    _require_success(root, imp)
    if not classify:
        return Project(root=root, class2d_job="", iteration=0, n_particles=counts["n_particles"], n_good=n_good,
                       angpix=angpix, box=box, mask_diameter_A=mask_diameter_A)
    t1 = time.perf_counter()
    c2d = add_job(root, "Class2D", {
        "fn_img": f"{imp}particles.star", "nr_classes": n_classes, "nr_iter": n_iter,
        "particle_diameter": mask_diameter_A, "do_zero_mask": "Yes", "do_ctf_correction": "Yes", "tau_fudge": 2,
        "psi_sampling": 10, "offset_range": 3, "offset_step": 1, "do_fast_subsets": "No", "allow_coarser": "Yes",
        "do_preread_images": "Yes", "nr_pool": 30, "nr_mpi": 1, "nr_threads": 1, "use_gpu": "No",
        "scratch_dir": "", "other_args": f"--random_seed {seed}"})
    run_job(root, c2d, timeout=900)
    _require_success(root, c2d)
    log(f"Class2D ({counts['n_particles']} particles, K={n_classes}, {n_iter} iterations) through "
        f"relion_pipeliner: {time.perf_counter() - t1:.1f} s")
    project = Project(root=root, class2d_job=c2d, iteration=n_iter, n_particles=counts["n_particles"],
                      n_good=n_good, angpix=angpix, box=box, mask_diameter_A=mask_diameter_A)
    for path in (project.data_star, project.optimiser_star, project.model_star):
        if not os.path.exists(os.path.join(root, path)):
            raise RelionError(f"Class2D finished but {path} is missing\n{job_log(root, c2d)}")
    return project


def _require_success(root: str, jobdir: str) -> None:
    status = job_status(root, jobdir)
    if status != 2 or not os.path.exists(os.path.join(root, jobdir, "RELION_JOB_EXIT_SUCCESS")):
        raise RelionError(f"{jobdir} ended with status {status} ({STATUS.get(status)})\n{job_log(root, jobdir)}")


def copy_project(src: str, dst: str) -> str:
    """A copy of a built project (hidden ``.Nodes`` included; particle stacks are hard-linked when possible)."""
    def link_or_copy(s, d):
        if s.endswith(".mrcs") and os.sep + "Particles" + os.sep in s:
            try:
                os.link(s, d)
                return d
            except OSError:
                pass
        return shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link_or_copy, dirs_exist_ok=True)
    shutil.rmtree(os.path.join(dst, ".relion_lock"), ignore_errors=True)
    return dst


def write_wrapper(root: str, exe: str, python: str = sys.executable, before: str = "",
                  name: str = "relion_external_rank_wrapper.sh") -> str:
    """An executable script in ``root`` that runs ``exe`` with ``python``; returns its absolute path.

    RELION's External job runs ``fn_exe`` directly, so the interpreter must come from the
    script (the system ``python3`` may lack torch). The name contains ``relion_``, so RELION
    appends ``--pipeline_control JOBDIR/``, as it does for a real install. ``before`` is shell
    code run first (``$JOBDIR`` is the job directory from ``--o``).
    """
    path = os.path.abspath(os.path.join(root, name))
    text = ("#!/bin/sh\n"
            "# fn_exe of the test External jobs: our job, run with the test interpreter\n"
            'JOBDIR=""; prev=""\n'
            'for a in "$@"; do [ "$prev" = "--o" ] && JOBDIR=$a; prev=$a; done\n'
            f"{before}\n"
            f'exec {shlex.quote(python)} {shlex.quote(os.path.abspath(exe))} "$@"\n')
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o755)
    return path


if __name__ == "__main__":  # build one for a look: python tests/relion_project.py DIR
    target = sys.argv[1] if len(sys.argv) > 1 else "relion_test_project"
    p = build_project(target, log=print)
    print(p)
