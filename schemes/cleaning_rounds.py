#!/usr/bin/env python3
"""Automated 2D cleaning rounds: Class2D -> rank -> Class2D on the kept particles -> rank -> ...

Runs from a RELION project directory with RELION's ``relion_pipeliner`` (3.1, 4 or 5) on PATH,
and needs only the Python standard library (and ``relion_it_snippet.py`` beside it), like a
relion_it-style script. Every job is a normal pipeline job (``Class2D/jobNNN/``,
``External/jobNNN/``), added with ``relion_pipeliner --addJobFromStar`` and run with
``relion_pipeliner --RunJobs``, so the GUI shows them as usual.

    cd /my/relion/project
    python3 /path/to/relion_external_rank/schemes/cleaning_rounds.py \\
        --in_parts Select/job005/particles.star --rounds 3 --K 50 --iter 25 \\
        --particle_diameter 180 --stop_fraction 0.98 --min_score 0.5 --threads 8 \\
        --class2d_option use_gpu=Yes --class2d_option gpu_ids=0

Each round classifies the round's particles (Class2D, K classes), ranks the Class2D job
directory with the ranker (an External job; it takes the job's final complete iteration and says
in its run.out which), and gives the kept particles (``External/jobNNN/particles.star``) to the
next round. It stops when a round keeps at least ``--stop_fraction`` of its input particles (the
classes are clean), after ``--rounds`` rounds, or when a round keeps fewer than
``--min_particles``. It prints a table of the rounds, e.g.::

    round  Class2D job      rank job          particles in  kept  fraction  classes kept
    1      Class2D/job002/  External/job003/  300           173   0.577     1 of 3
    2      Class2D/job004/  External/job005/  173           173   1.000     3 of 3
    stopped: round 2 kept 100.0 % of its particles (>= 98.0 %)
    final particles: External/job005/particles.star (173)

The counts come from the ranker's run.out ("Selected 1 of 3 classes (2); 173 of 300 particles")
and are checked against the rows of its particles.star.

Other modes:

``--summary``        print the table for rounds already in this project (for example made by the
                     RELION 4/5 Scheme ``clean2d``): every chain rank job -> Class2D -> rank job ...
                     found through the jobs' run.out and job.star files.
``--write_scheme``   write ``Schemes/clean2d/`` (RELION 4/5) with these options filled in
                     (``--in_parts``, ``--K``, ``--iter`` as VDAM mini-batches, ...); start it with
                     ``relion_schemer --scheme clean2d --run`` or from the GUI. No job is run.

Class2D options: the job starts from ``schemes/clean2d/class2d/job.star`` (or ``--class2d_template``,
e.g. the ``job.star`` of a Class2D job you ran: ``Class2D/job008/job.star``); ``--class2d_option
KEY=VALUE`` sets any RELION Class2D job option (``nr_mpi=4``, ``use_gpu=Yes``, ``psi_sampling=10``,
``do_preread_images=Yes``, ...). ``--algorithm em`` (default; the only one in RELION 3.1) runs
``--iter`` EM iterations; ``--algorithm vdam`` (RELION 4/5) runs ``--iter`` VDAM mini-batches.
Ranker options: ``--min_score``, ``--rank_option KEY=VALUE`` (any ranker option as a param, e.g.
``select_min_nr_particles=5000``, ``device=cuda``), ``--rank_other_args``.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import relion_it_snippet as snippet  # noqa: E402  (standard library only, beside this file)

SCHEME_DIR = os.path.join(HERE, "clean2d")
CLASS2D_TEMPLATE = os.path.join(SCHEME_DIR, "class2d", "job.star")

# Class2D job options one RELION version has and the other lacks (RELION's pipeline_jobs.cpp)
ONLY_RELION_4_5 = {"do_em", "nr_iter_em", "do_grad", "nr_iter_grad", "do_center"}
ONLY_RELION_3 = {"nr_iter", "do_fast_subsets"}

RE_DIRECTORY = re.compile(r"Class2D job directory (\S+): ranking its final iteration, (\d+)")
RE_SELECTED = re.compile(r"Selected (\d+) of (\d+) classes \(([^)]*)\); (\d+) of (\d+) particles")
TABLE_COLUMNS = ("round", "Class2D job", "rank job", "particles in", "kept", "fraction", "classes kept")


# ------------------------------------------------------------------------------------------
# STAR reading (standard library only)
# ------------------------------------------------------------------------------------------
def count_particles(path: str) -> int:
    """Data rows of the particles table of a particle STAR file (``data_particles``, or the only
    table of a RELION-3.0 style file)."""
    counts: dict[str, int] = {}
    block, in_loop, in_rows = None, False, False
    with open(path) as fh:
        for raw in fh:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("data_"):
                block, in_loop, in_rows = line[5:], False, False
                counts.setdefault(block, 0)
            elif line.startswith("loop_"):
                in_loop, in_rows = True, False
            elif line.startswith("_"):
                if in_rows:  # a key/value pair after a loop: not a row
                    in_loop = False
            elif in_loop and block is not None:
                in_rows = True
                counts[block] += 1
    if "particles" in counts:
        return counts["particles"]
    tables = [b for b in counts if b != "optics"]
    if len(tables) != 1:
        raise ValueError(f"{path}: no particles table")
    return counts[tables[0]]


# ------------------------------------------------------------------------------------------
# job.star for the Class2D job
# ------------------------------------------------------------------------------------------
def class2d_job_star(fn_img: str, nr_classes: int, iterations: int, relion_major: int, *,
                     particle_diameter: float = 200, threads: int = 1, use_gpu: bool = False,
                     algorithm: str = "em", options: dict | None = None, other_args: str | None = None,
                     template: str = CLASS2D_TEMPLATE) -> str:
    """The Class2D job.star of one round: the template with its ``$$`` Scheme variables filled,
    the algorithm and iteration count set in the version's option names, ``options`` applied last."""
    header, opts = snippet.read_job_star(template)
    values = {"parts_in": fn_img, "nr_classes": str(nr_classes), "mask_diameter": f"{particle_diameter:g}",
              "nr_threads": str(threads), "nr_iter_grad": str(iterations), "use_gpu": "Yes" if use_gpu else "No"}
    for key, value in opts.items():
        if value.startswith("$$"):
            if value[2:] not in values:
                raise ValueError(f"{template}: {key} uses the unknown variable {value}")
            opts[key] = values[value[2:]]
    opts["fn_img"] = fn_img
    opts["nr_classes"] = str(nr_classes)
    if algorithm not in ("em", "vdam"):
        raise ValueError(f"--algorithm {algorithm}: use em or vdam")
    if relion_major < 4:
        if algorithm != "em":
            raise ValueError("RELION 3.1's Class2D has only the EM algorithm (--algorithm em)")
        opts = {k: v for k, v in opts.items() if k not in ONLY_RELION_4_5}
        opts["nr_iter"] = str(iterations)
        header = {"rlnJobType": "8", "rlnJobIsContinue": "0"}  # 3.1: PROC_2DCLASS
    else:
        opts = {k: v for k, v in opts.items() if k not in ONLY_RELION_3}
        opts.update({"do_em": "Yes", "do_grad": "No", "nr_iter_em": str(iterations)} if algorithm == "em" else
                    {"do_em": "No", "do_grad": "Yes", "nr_iter_grad": str(iterations)})
        header = {"rlnJobTypeLabel": "relion.class2d", "rlnJobIsContinue": "0", "rlnJobIsTomo": "0"}
    if other_args is not None:
        opts["other_args"] = other_args
    opts.update({k: str(v) for k, v in (options or {}).items()})
    return snippet.write_job_star(header, dict(sorted(opts.items())))


# ------------------------------------------------------------------------------------------
# one round's numbers, from the ranker's run.out
# ------------------------------------------------------------------------------------------
def read_rank_job(rank_job: str, project: str = ".") -> dict:
    """What the rank job says in run.out: the Class2D job and iteration it ranked, particles in
    and kept, classes kept. Raises ValueError if run.out lacks them (not our job, or unfinished)."""
    path = os.path.join(project, rank_job, "run.out")
    with open(path, errors="replace") as fh:
        text = fh.read()
    directory = RE_DIRECTORY.search(text)
    selected = RE_SELECTED.search(text)
    if not directory or not selected:
        raise ValueError(f"{path}: no 'Class2D job directory ...' and 'Selected ...' lines "
                         "(not a finished ranker job on a Class2D job directory)")
    class2d = directory.group(1).rstrip("/") + "/"
    kept, n_in = int(selected.group(4)), int(selected.group(5))
    return {"class2d_job": class2d, "iteration": int(directory.group(2)), "rank_job": rank_job,
            "classes_kept": int(selected.group(1)), "classes": int(selected.group(2)),
            "particles_in": n_in, "kept": kept, "fraction": kept / n_in if n_in else 0.0,
            "particles": rank_job + "particles.star"}


def class2d_input(class2d_job: str, project: str = ".") -> str:
    """The particles a Class2D job classified (``fn_img`` of its job.star)."""
    _header, opts = snippet.read_job_star(os.path.join(project, class2d_job, "job.star"))
    return opts.get("fn_img", "")


def stop_reason(record: dict, round_number: int, rounds: int, stop_fraction: float, min_particles: int) -> str | None:
    """Why the rounds end after this one, or None to go on."""
    if record["kept"] == 0:
        return f"round {round_number} kept no particles"
    if record["fraction"] >= stop_fraction:
        return (f"round {round_number} kept {100 * record['fraction']:.1f} % of its particles "
                f"(>= {100 * stop_fraction:.1f} %)")
    if round_number >= rounds:
        return f"reached {rounds} round{'s' if rounds > 1 else ''} (--rounds)"
    if record["kept"] < min_particles:
        return f"round {round_number} kept {record['kept']} particles, fewer than {min_particles} (--min_particles)"
    return None


def table(records: list[dict]) -> str:
    rows = [TABLE_COLUMNS] + [(str(r["round"]), r["class2d_job"], r["rank_job"], str(r["particles_in"]),
                               str(r["kept"]), f"{r['fraction']:.3f}", f"{r['classes_kept']} of {r['classes']}")
                              for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def write_tsv(records: list[dict], path: str) -> None:
    with open(path, "w") as fh:
        fh.write("\t".join(c.replace(" ", "_") for c in TABLE_COLUMNS) + "\tclasses\titeration\tparticles\n")
        for r in records:
            fh.write(f"{r['round']}\t{r['class2d_job']}\t{r['rank_job']}\t{r['particles_in']}\t{r['kept']}\t"
                     f"{r['fraction']:.4f}\t{r['classes_kept']}\t{r['classes']}\t{r['iteration']}\t"
                     f"{r['particles']}\n")


# ------------------------------------------------------------------------------------------
# the rounds
# ------------------------------------------------------------------------------------------
def run_rounds(in_parts: str, *, rounds: int = 3, nr_classes: int = 50, iterations: int = 25,
               stop_fraction: float = 0.98, min_score="0.5", min_particles: int = 100,
               rank_exe: str = snippet.DEFAULT_EXE, rank_options: dict | None = None,
               rank_other_args: str | None = None, class2d_options: dict | None = None,
               class2d_other_args: str | None = None, class2d_template: str = CLASS2D_TEMPLATE,
               algorithm: str = "em", particle_diameter: float = 200, threads: int = 1,
               project: str = ".", relion_major: int | None = None, sec_wait_after: int = 2,
               log=print) -> tuple[list[dict], str]:
    """Run the rounds; returns (one record per round, why they stopped)."""
    if not os.path.exists(os.path.join(project, "default_pipeline.star")):
        raise RuntimeError(f"{os.path.abspath(project)} has no default_pipeline.star: run this from a RELION "
                           "project directory")
    if not os.path.exists(os.path.join(project, in_parts)):
        raise RuntimeError(f"{in_parts}: no such file in the project")
    major = relion_major or snippet.relion_major_version()
    rank_opts = {"rank_exe": rank_exe, "rank_min_score": min_score, "rank_nr_threads": threads,
                 "rank_other_args": rank_other_args}
    records: list[dict] = []
    parts = in_parts
    for number in range(1, rounds + 1):
        text = class2d_job_star(parts, nr_classes, iterations, major, particle_diameter=particle_diameter,
                                threads=threads, algorithm=algorithm, options=class2d_options,
                                other_args=class2d_other_args, template=class2d_template)
        class2d = snippet.add_job_from_star(text, project)
        log(f"round {number}: {class2d} classifies {parts} (K={nr_classes}, {iterations} "
            f"{'EM iterations' if algorithm == 'em' else 'VDAM mini-batches'})")
        _run(class2d, project, sec_wait_after)
        rank_text = snippet.rank_job_star(class2d, rank_opts, relion_major=major, params=rank_options)
        rank = snippet.add_job_from_star(rank_text, project)
        log(f"round {number}: {rank} ranks {class2d}")
        _run(rank, project, sec_wait_after)
        record = dict(read_rank_job(rank, project), round=number)
        rows = count_particles(os.path.join(project, record["particles"]))
        if rows != record["kept"]:
            raise RuntimeError(f"{record['particles']} has {rows} particles, run.out says {record['kept']}")
        log(f"round {number}: kept {record['kept']} of {record['particles_in']} particles "
            f"({100 * record['fraction']:.1f} %), {record['classes_kept']} of {record['classes']} classes "
            f"(iteration {record['iteration']} of {class2d})")
        records.append(record)
        reason = stop_reason(record, number, rounds, stop_fraction, min_particles)
        if reason:
            return records, reason
        parts = record["particles"]
    raise AssertionError("unreachable: the last round always stops")


def _run(jobdir: str, project: str, sec_wait_after: int) -> None:
    status = snippet.run_job(jobdir, project, sec_wait_after=sec_wait_after)
    if status != "Succeeded":
        tail = ""
        for name in ("run.err", "run.out"):
            path = os.path.join(project, jobdir, name)
            if os.path.exists(path):
                with open(path, errors="replace") as fh:
                    tail += f"\n--- {jobdir}{name}:\n" + fh.read()[-1500:]
        raise RuntimeError(f"{jobdir} ended {status}; stopping the rounds{tail}")


# ------------------------------------------------------------------------------------------
# --summary: the rounds already in a project (e.g. run by the Scheme)
# ------------------------------------------------------------------------------------------
def summarize(project: str = ".") -> list[list[dict]]:
    """Chains of rounds in a project: each rank job on a Class2D job directory, linked to the rank
    job whose particles.star that Class2D job classified. Returns one list of records per chain,
    in job order."""
    ranks = {}
    for path in sorted(glob.glob(os.path.join(project, "External", "job*", "run.out"))):
        jobdir = os.path.relpath(os.path.dirname(path), project) + "/"
        try:
            ranks[jobdir] = read_rank_job(jobdir, project)
        except ValueError:
            continue
    by_particles = {r["particles"]: r for r in ranks.values()}
    previous = {}
    for job, record in ranks.items():
        try:
            record["input"] = class2d_input(record["class2d_job"], project)
        except OSError:
            record["input"] = ""
        if record["input"] in by_particles:
            previous[job] = by_particles[record["input"]]["rank_job"]
    followed = set(previous.values())
    chains = []
    for job in ranks:
        if job in followed:
            continue
        chain = [job]
        while chain[-1] in previous:
            chain.append(previous[chain[-1]])
        chain.reverse()
        chains.append([dict(ranks[j], round=i + 1) for i, j in enumerate(chain)])
    return sorted(chains, key=lambda c: c[0]["rank_job"])


# ------------------------------------------------------------------------------------------
# --write_scheme: the RELION 4/5 Scheme with these options
# ------------------------------------------------------------------------------------------
def write_scheme(project: str, name: str, values: dict, rank_exe: str) -> str:
    """Copy ``schemes/clean2d`` to ``PROJECT/Schemes/NAME/`` with the scheme's variables set to
    ``values`` (value and reset value) and the ranker's path in the rank job."""
    target = os.path.join(project, "Schemes", name)
    os.makedirs(os.path.join(target, "class2d"), exist_ok=True)
    os.makedirs(os.path.join(target, "rank"), exist_ok=True)
    with open(os.path.join(SCHEME_DIR, "scheme.star")) as fh:
        scheme = fh.read().replace("Schemes/clean2d/", f"Schemes/{name}/")
    for var, value in values.items():
        scheme, n = re.subn(rf"(?m)^({re.escape(var)}\s+)\S+(\s+)\S+(\s*)$",
                            lambda m: f"{m.group(1)}{value}{m.group(2)}{value}{m.group(3)}", scheme)
        if n != 1:
            raise ValueError(f"scheme.star has no variable {var}")
    with open(os.path.join(target, "scheme.star"), "w") as fh:
        fh.write(scheme)
    with open(CLASS2D_TEMPLATE) as fh:
        class2d = fh.read()
    with open(os.path.join(target, "class2d", "job.star"), "w") as fh:
        fh.write(class2d)
    header, opts = snippet.read_job_star(os.path.join(SCHEME_DIR, "rank", "job.star"))
    opts["fn_exe"] = os.path.abspath(rank_exe)
    snippet._set_param(opts, "in_optimiser", f"Schemes/{name}/class2d/")
    with open(os.path.join(target, "rank", "job.star"), "w") as fh:
        fh.write(snippet.write_job_star(header, opts))
    return target


# ------------------------------------------------------------------------------------------
def _key_values(items: list[str], option: str) -> dict:
    result = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{option} {item!r}: use KEY=VALUE")
        result[key.strip()] = value.strip()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Class2D -> rank -> Class2D on the kept particles -> rank ..., until a "
                                            "round keeps (almost) all its particles. Run from the RELION project "
                                            "directory.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--in_parts", help="particles STAR file of the first round (e.g. Extract/job007/particles.star)")
    p.add_argument("--rounds", type=int, default=3, help="at most this many rounds")
    p.add_argument("--K", type=int, default=50, help="Class2D classes per round")
    p.add_argument("--iter", type=int, default=25, help="Class2D EM iterations (--algorithm vdam: mini-batches)")
    p.add_argument("--algorithm", choices=("em", "vdam"), default="em", help="vdam: RELION 4/5 only")
    p.add_argument("--particle_diameter", type=float, default=200, help="Class2D mask diameter (A)")
    p.add_argument("--stop_fraction", type=float, default=0.98,
                   help="stop when a round keeps at least this fraction of its input particles")
    p.add_argument("--min_particles", type=int, default=100, help="stop when a round keeps fewer particles")
    p.add_argument("--min_score", default="0.5", help="ranker: keep classes scoring at least this (or auto)")
    p.add_argument("--fn_exe", default=snippet.DEFAULT_EXE, help="the ranker executable")
    p.add_argument("--rank_option", action="append", metavar="KEY=VALUE",
                   help="a ranker option as a param (repeatable), e.g. select_min_nr_particles=5000")
    p.add_argument("--rank_other_args", default=None, help='appended to the ranker command, e.g. "--model w.pt"')
    p.add_argument("--class2d_option", action="append", metavar="KEY=VALUE",
                   help="a RELION Class2D job option (repeatable), e.g. nr_mpi=4, use_gpu=Yes")
    p.add_argument("--class2d_other_args", default=None, help="Class2D 'Additional arguments'")
    p.add_argument("--class2d_template", default=CLASS2D_TEMPLATE,
                   help="Class2D job.star to start from (e.g. Class2D/job008/job.star)")
    p.add_argument("--threads", type=int, default=1, help="threads of each Class2D and rank job")
    p.add_argument("--sec_wait_after", type=int, default=2, help="relion_pipeliner --RunJobs polling (s)")
    p.add_argument("--summary_tsv", default=None, help="also write the table to this file")
    p.add_argument("--summary", action="store_true", help="only print the rounds already in this project")
    p.add_argument("--write_scheme", nargs="?", const="clean2d", default=None, metavar="NAME",
                   help="only write Schemes/NAME/ (RELION 4/5) with these options")
    a = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # our lines in order with relion_pipeliner's

    if a.summary:
        chains = summarize(".")
        if not chains:
            print("no rank jobs on Class2D job directories in this project")
            return 1
        for chain in chains:
            print(f"rounds starting from {chain[0].get('input') or '?'}:")
            print(table(chain))
            print()
        if a.summary_tsv:
            write_tsv([r for chain in chains for r in chain], a.summary_tsv)
        return 0
    if not a.in_parts:
        p.error("--in_parts is required")
    if a.write_scheme:
        batches = a.iter if a.algorithm == "vdam" else 200
        if a.algorithm != "vdam" or a.class2d_option or a.rank_option or a.class2d_template != CLASS2D_TEMPLATE:
            print(f"note: the Scheme's Class2D runs VDAM ({batches} mini-batches; --algorithm vdam --iter N sets "
                  f"them); edit Schemes/{a.write_scheme}/class2d/job.star and rank/job.star for other job options")
        values = {"parts_in": a.in_parts, "nr_classes": f"{a.K:.6f}", "nr_iter_grad": f"{batches:.6f}",
                  "mask_diameter": f"{a.particle_diameter:.6f}", "nr_threads": f"{a.threads:.6f}",
                  "stop_fraction": f"{a.stop_fraction:.6f}", "max_rounds": f"{a.rounds:.6f}",
                  "min_nr_parts": f"{a.min_particles:.6f}"}
        try:
            values["min_score"] = f"{float(a.min_score):.6f}"
        except ValueError:
            p.error("--write_scheme needs a numeric --min_score (a Scheme float variable)")
        target = write_scheme(".", a.write_scheme, values, a.fn_exe)
        print(f"wrote {target}/; start it with: relion_schemer --scheme {a.write_scheme} --run  "
              f"(afterwards: python3 {os.path.abspath(__file__)} --summary)")
        return 0
    try:
        records, reason = run_rounds(
            a.in_parts, rounds=a.rounds, nr_classes=a.K, iterations=a.iter, stop_fraction=a.stop_fraction,
            min_score=a.min_score, min_particles=a.min_particles, rank_exe=a.fn_exe,
            rank_options=_key_values(a.rank_option, "--rank_option"), rank_other_args=a.rank_other_args,
            class2d_options=_key_values(a.class2d_option, "--class2d_option"),
            class2d_other_args=a.class2d_other_args, class2d_template=a.class2d_template,
            algorithm=a.algorithm, particle_diameter=a.particle_diameter, threads=a.threads,
            sec_wait_after=a.sec_wait_after)
    except (RuntimeError, ValueError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    print()
    print(table(records))
    print(f"stopped: {reason}")
    print(f"final particles: {records[-1]['particles']} ({records[-1]['kept']})")
    if a.summary_tsv:
        write_tsv(records, a.summary_tsv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
