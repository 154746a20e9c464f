#!/usr/bin/env python3
"""relion_it-style snippet: add the 2D-class ranker as a RELION External job, and run it.

Copy the functions into your own ``relion_it.py``-like script, or run this file from the
RELION project directory (it needs only the Python standard library and RELION's
``relion_pipeliner`` on PATH; the ranker itself runs later, as RELION's External job):

    python3 /path/to/relion_external_rank/schemes/relion_it_snippet.py \\
        --in_part Class2D/job008/ --min_score 0.5 --run

Give the Class2D **job directory**: the job ranks that job's final complete iteration and says
in its run.out which one ("Class2D job directory Class2D/job008/: ranking its final iteration, 25"),
so nothing here depends on the iteration count (RELION 4/5 VDAM writes ``run_it200_*``, EM
``run_it025_*``). A ``run_itNNN_data.star`` works too.

What it does, in the order a script would:

1. :func:`rank_job_star` fills ``schemes/external_rank/job.star`` (the template shipped for
   RELION 4/5 Schemes) with this run's input and options. A job directory goes into the param
   ``in_optimiser``, not into ``in_part``: RELION registers ``in_part`` as a pipeline node and
   touches ``.Nodes/<type>/<in_part>``, which fails for a directory (RELION 3.1.3, measured:
   ``Filename::touch ERROR: Cannot open file: .Nodes/3/Class2D/job002/``; RELION 4/5 have the same
   ``PipeLine::addNode`` -> ``touchTemporaryNodeFile`` code). A data.star file goes into ``in_part``.
   With ``relion_major=3`` it writes the RELION-3.1 header (``_rlnJobType 99``) instead of
   ``_rlnJobTypeLabel relion.external``: RELION 3.1 refuses the newer header ("unrecognised
   job-type") and RELION 4/5 the older.
2. :func:`add_rank_job` adds the job with ``relion_pipeliner --addJobFromStar JOB.star`` (it reads
   the job type and every option from the file, so no option list is spelled on a command line).
3. :func:`run_job` runs it with ``relion_pipeliner --RunJobs JOBDIR`` (one job per call) and
   returns the status RELION recorded in ``default_pipeline.star``.

The next job (Class2D, InitialModel, ...) takes ``JOBDIR/particles.star`` as its particles.
:func:`prepare_scheme_job` writes the job.star for a RELION 4/5 Scheme (``Schemes/NAME/JOB/``).
``cleaning_rounds.py`` (beside this file) uses these functions to run Class2D -> rank rounds.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = os.path.join(HERE, "external_rank", "job.star")
# the repository's relion_external_rank.py finds the Python install.sh installed into, whatever runs it
DEFAULT_EXE = os.path.join(os.path.dirname(HERE), "relion_external_rank.py")

# relion_it-style options (names as in relion_it.py option files); None = keep the template's value
RANK_OPTIONS = {
    "rank_exe": DEFAULT_EXE,            # fn_exe: the repository's relion_external_rank.py (or an installed command)
    "rank_min_score": None,             # keep classes scoring at least this (template: 0.5; or "auto")
    "rank_max_score": None,
    "rank_select_min_nr_particles": None,  # add best classes until this many particles (-1: off)
    "rank_select_min_nr_classes": None,
    "rank_device": None,                # auto, cpu, cuda, cuda:N
    "rank_nr_threads": None,
    "rank_other_args": None,            # verbatim, e.g. "--model /path/weights.pt --write_features"
}
_PARAM_OPTIONS = ("min_score", "max_score", "select_min_nr_particles", "select_min_nr_classes", "device")
STATUS_31 = {"0": "Running", "1": "Scheduled", "2": "Succeeded", "3": "Failed", "4": "Aborted"}


# ------------------------------------------------------------------------------------------
# job.star text (a tiny reader/writer for RELION's two-column job.star)
# ------------------------------------------------------------------------------------------
def read_job_star(path: str = TEMPLATE) -> tuple[dict[str, str], dict[str, str]]:
    """(``data_job`` key/values, ``data_joboptions_values`` variable -> value)."""
    header: dict[str, str] = {}
    options: dict[str, str] = {}
    block = None
    with open(path) as fh:
        for raw in fh:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("data_"):
                block = line[5:]
            elif line.startswith("loop_") or (block == "joboptions_values" and line.startswith("_")):
                continue
            elif block == "job" and line.startswith("_"):
                key, _, value = line[1:].partition(" ")
                header[key] = value.strip()
            elif block == "joboptions_values":
                parts = shlex.split(line)
                if len(parts) != 2:
                    raise ValueError(f"{path}: cannot read job option line {line!r}")
                options[parts[0]] = parts[1]
    return header, options


def _quote(value: str) -> str:
    value = str(value)
    if value == "":
        return '""'
    if any(c.isspace() for c in value) or value.startswith(("_", "#", "data_", "loop_")):
        if '"' in value:
            raise ValueError(f"cannot write a job option holding both spaces and '\"': {value!r}")
        return f'"{value}"'
    return value


def write_job_star(header: dict[str, str], options: dict[str, str]) -> str:
    lines = ["", "# version 30001", "", "data_job", ""]
    lines += [f"_{key:<30} {value}" for key, value in header.items()]
    lines += [" ", "", "# version 30001", "", "data_joboptions_values", "", "loop_ ",
              "_rlnJobOptionVariable #1 ", "_rlnJobOptionValue #2 "]
    lines += [f"{key:>10} {_quote(value)} " for key, value in options.items()]
    return "\n".join(lines) + "\n \n"


def is_job_directory(path: str) -> bool:
    """Whether ``path`` names a Class2D job directory rather than a STAR file: anything not
    ending in ``.star`` (``Class2D/job008/``, ``Class2D/job008``, ``Schemes/proc/class2d/``)."""
    return not str(path).rstrip().endswith(".star")


def _param_slots(options: dict[str, str]) -> dict[str, int]:
    return {options.get(f"param{i}_label", ""): i for i in range(1, 11) if options.get(f"param{i}_label", "")}


def _set_param(options: dict[str, str], name: str, value) -> None:
    """Set param ``name`` (its slot in the template, else the first free one)."""
    i = _param_slots(options).get(name)
    if i is None:
        free = [k for k in range(1, 11) if not options.get(f"param{k}_label")]
        if not free:
            raise ValueError(f"no free param slot for {name} (RELION's External job has 10)")
        i = free[0]
        options[f"param{i}_label"] = name
    options[f"param{i}_value"] = str(value)


def _clear_param(options: dict[str, str], name: str) -> None:
    i = _param_slots(options).get(name)
    if i is not None:
        options[f"param{i}_label"] = options[f"param{i}_value"] = ""


def set_class2d_input(options: dict[str, str], class2d: str) -> None:
    """Point the job's options at a Class2D job directory or a ``run_itNNN_data.star``.

    A directory goes into the param ``in_optimiser`` (RELION passes ``--in_optimiser DIR/``;
    the job ranks its final complete iteration) and ``in_part`` is left empty: RELION cannot
    register a directory as a pipeline node (see the module docstring). A data.star goes into
    ``in_part`` (``--in_parts``, an input edge in the pipeline)."""
    if is_job_directory(class2d):
        options["in_part"] = ""
        _set_param(options, "in_optimiser", class2d.rstrip().rstrip("/") + "/")
    else:
        options["in_part"] = class2d
        _clear_param(options, "in_optimiser")


def rank_job_star(in_part: str, opts: dict | None = None, relion_major: int = 5,
                  template: str = TEMPLATE, params: dict | None = None) -> str:
    """The External job.star for ``in_part`` (a Class2D job directory, or a ``run_itNNN_data.star``)
    with ``opts`` (:data:`RANK_OPTIONS` names) applied to the template's params, and ``params``
    (any ranker option without its ``--``: value) set as params too."""
    merged = dict(RANK_OPTIONS)
    merged.update(opts or {})
    header, options = read_job_star(template)
    options["fn_exe"] = os.path.abspath(merged["rank_exe"])
    set_class2d_input(options, in_part)
    for name in _PARAM_OPTIONS:
        value = merged.get(f"rank_{name}")
        if value is not None:
            _set_param(options, name, value)
    for name, value in (params or {}).items():
        _set_param(options, name, value)
    if merged.get("rank_nr_threads") is not None:
        options["nr_threads"] = str(merged["rank_nr_threads"])
    if merged.get("rank_other_args") is not None:
        options["other_args"] = str(merged["rank_other_args"])
    if relion_major < 4:  # RELION 3.1: integer job type, no tomo flag
        header = {"rlnJobType": "99", "rlnJobIsContinue": header.get("rlnJobIsContinue", "0")}
    return write_job_star(header, options)


# ------------------------------------------------------------------------------------------
# RELION calls
# ------------------------------------------------------------------------------------------
def relion_major_version() -> int:
    """Major version of the ``relion_pipeliner`` on PATH (3, 4 or 5)."""
    out = subprocess.run(["relion_pipeliner", "--version"], capture_output=True, text=True)
    match = re.search(r"RELION version:\s*v?(\d+)", out.stdout + out.stderr)
    if not match:
        raise RuntimeError("cannot tell the RELION version from 'relion_pipeliner --version': "
                           + (out.stdout + out.stderr).strip())
    return int(match.group(1))


def pipeline_processes(project: str = ".") -> dict[str, str]:
    """Process name -> status (as text) from ``default_pipeline.star`` (RELION 3.1 to 5)."""
    path = os.path.join(project, "default_pipeline.star")
    processes: dict[str, str] = {}
    labels: list[str] = []
    in_block = False
    with open(path) as fh:
        for raw in fh:
            line = raw.strip()
            if line.startswith("data_"):
                in_block = line == "data_pipeline_processes"
                labels = []
            elif not in_block or not line or line.startswith(("#", "loop_")):
                continue
            elif line.startswith("_"):
                labels.append(line.split()[0][1:])
            else:
                row = dict(zip(labels, shlex.split(line)))
                status = row.get("rlnPipeLineProcessStatusLabel") or STATUS_31.get(
                    row.get("rlnPipeLineProcessStatus", ""), row.get("rlnPipeLineProcessStatus", "?"))
                processes[row["rlnPipeLineProcessName"]] = status
    return processes


def add_job_from_star(text: str, project: str = ".", alias: str | None = None) -> str:
    """Add a job from job.star ``text`` with ``relion_pipeliner --addJobFromStar``; returns the job
    directory (``External/job012/``) RELION gave it (scheduled, not run)."""
    before = set(pipeline_processes(project))
    # the name ends in "job.star": RELION 3.1 reads <prefix>job.star
    fd, path = tempfile.mkstemp(prefix=".relion_it_", suffix="_job.star", dir=project)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        cmd = ["relion_pipeliner", "--addJobFromStar", os.path.basename(path)]
        if alias:
            cmd += ["--setJobAlias", alias]
        result = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
    finally:
        os.remove(path)
    new = sorted(set(pipeline_processes(project)) - before)
    if result.returncode != 0 or len(new) != 1:
        shutil.rmtree(os.path.join(project, ".relion_lock"), ignore_errors=True)  # a failed call leaves it
        raise RuntimeError(f"relion_pipeliner --addJobFromStar failed (rc {result.returncode}): "
                           f"{(result.stdout + result.stderr).strip()[-2000:]}")
    return new[0]


def add_rank_job(in_part: str, opts: dict | None = None, project: str = ".", relion_major: int | None = None,
                 alias: str | None = None) -> str:
    """Add the ranker on ``in_part`` (a Class2D job directory or data.star) with
    ``relion_pipeliner --addJobFromStar``; returns the job directory."""
    major = relion_major or relion_major_version()
    return add_job_from_star(rank_job_star(in_part, opts, relion_major=major), project, alias)


def run_job(jobdir: str, project: str = ".", sec_wait_after: int = 2) -> str:
    """``relion_pipeliner --RunJobs JOBDIR``; returns RELION's status for the job afterwards."""
    subprocess.run(["relion_pipeliner", "--RunJobs", jobdir, "--sec_wait_after", str(sec_wait_after)],
                   cwd=project, check=True)
    return pipeline_processes(project)[jobdir]


def prepare_scheme_job(scheme: str, job_name: str = "rank_parts", in_part: str | None = None,
                       opts: dict | None = None, project: str = ".") -> str:
    """Write ``Schemes/SCHEME/JOB_NAME/job.star`` (RELION 4/5) from the template; returns its path.

    ``in_part`` defaults to the Scheme's Class2D job directory, ``Schemes/SCHEME/class2d/`` (the
    template's, with the scheme name replaced): the Schemer replaces it by the job it ran
    (``Class2D/job012/``) and the ranker takes that job's final iteration. Then add the job to
    ``scheme.star`` (schemes/README.md).
    """
    _header, options = read_job_star()
    if in_part is None:
        in_part = options[f"param{_param_slots(options)['in_optimiser']}_value"].replace(
            "Schemes/proc/", f"Schemes/{scheme}/")
    path = os.path.normpath(os.path.join(project, "Schemes", scheme, job_name, "job.star"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(rank_job_star(in_part, opts, relion_major=5))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Add (and run) the 2D-class ranker as a RELION External job, or write "
                                            "it into a RELION 4/5 Scheme. Run it from the RELION project directory.")
    p.add_argument("--in_part", help="the Class2D job directory (Class2D/job008/: its final iteration is ranked) "
                                     "or a run_itNNN_data.star (for --scheme: default Schemes/SCHEME/class2d/)")
    p.add_argument("--fn_exe", default=DEFAULT_EXE, help="relion_external_rank.py (or a wrapper)")
    for name in _PARAM_OPTIONS:
        p.add_argument(f"--{name}", default=None)
    p.add_argument("--nr_threads", default=None)
    p.add_argument("--other_args", default=None, help='verbatim, e.g. "--model weights.pt"')
    p.add_argument("--alias", default=None)
    p.add_argument("--run", action="store_true", help="also run it (relion_pipeliner --RunJobs)")
    p.add_argument("--scheme", default=None, help="only write Schemes/SCHEME/SCHEME_JOB/job.star (RELION 4/5)")
    p.add_argument("--scheme_job", default="rank_parts", help="job name in the Scheme (rank_parts)")
    a = p.parse_args(argv)
    opts = {"rank_exe": a.fn_exe, "rank_nr_threads": a.nr_threads, "rank_other_args": a.other_args}
    opts.update({f"rank_{n}": getattr(a, n) for n in _PARAM_OPTIONS})
    if a.scheme:
        path = prepare_scheme_job(a.scheme, a.scheme_job, a.in_part, opts)
        print(f"wrote {path}; add it to Schemes/{a.scheme}/scheme.star (schemes/README.md), then reset the "
              f"Scheme:\n  relion_schemer --scheme {a.scheme} --reset")
        return 0
    if not a.in_part:
        p.error("--in_part is required (or --scheme)")
    jobdir = add_rank_job(a.in_part, opts, alias=a.alias)
    print(f"added {jobdir}")
    if a.run:
        status = run_job(jobdir)
        print(f"{jobdir}: {status}")
        return 0 if status == "Succeeded" else 1
    print(f"run it with: relion_pipeliner --RunJobs {jobdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
