"""Facility-scale benchmark: every figure of README.md's speed table from ONE run on one machine.

    python bench/bench_scale.py [--sizes 10000,1000000] [--classes 200] [--repeat 3] [--workdir /tmp/rer_bench]
                                [--model models/relion_external_rank_v5.npz] [--j 2]

For each particle count it makes a synthetic Class2D job (bench/make_big_job.py, in
WORKDIR/nN; reused if present) and times, interleaved and ``--repeat`` times each (the
median is shown): our whole job (``relion_external_rank.py``, as RELION starts it), RELION's
``relion_star_handler --select rlnClassNumber`` keeping half the classes (when installed),
our particle subset step alone (``ranker.runtime.particles.write_selected``, the same
classes) and a streaming ``awk`` filter (the same classes; our subset must be byte-identical
to it). The headline ratio is ``relion_star_handler / our whole job``: RELION's own tool
doing only the selection against our job doing everything (read, features, three networks,
selection, every output, the report). Then the example project (examples/class2d_sim, 20
classes) and a 300-class, 400 px job (features and inference) as whole jobs. Wall time and
peak RSS come from GNU time (the RSS of the largest process: ours fork helpers). The machine
(CPU, cores) and its load average before and after are printed with the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OPT = "Class2D/job001/run_it025_optimiser.star"
DATA = "Class2D/job001/run_it025_data.star"
AWK = ('BEGIN{c=0} /^data_particles/{p=1} p && /^_rlnClassNumber/{split($2,a,"#"); c=a[2]} '
       'p && c && NF>5 {if ($c>=1 && $c<=%d) print; next} {print}')


def timed(cmd, cwd, stdout=None):
    """(wall s, peak RSS MB, stdout text, CPU s: user + system of the command and its children) of
    a command, from GNU time."""
    full = ["/usr/bin/time", "-f", "TIME %e %M %U %S"] + cmd
    with open(stdout, "wb") if stdout else open(os.devnull, "wb") as out:
        r = subprocess.run(full, cwd=cwd, stdout=out if stdout else subprocess.PIPE, stderr=subprocess.PIPE)
    m = re.search(rb"TIME ([\d.]+) (\d+) ([\d.]+) ([\d.]+)", r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.decode()[-400:]}")
    return float(m[1]), int(m[2]) / 1024, (r.stdout or b"").decode(), float(m[3]) + float(m[4])


def median(runs):
    """(median wall, largest peak RSS, stdout of the median run, median CPU) of timed() results."""
    ordered = sorted(runs)
    mid = ordered[len(ordered) // 2]
    return mid[0], max(r[1] for r in runs), mid[2], statistics.median(r[3] for r in runs)


def make_job(path, particles, classes, box, angpix):
    if not os.path.exists(os.path.join(path, OPT)):
        subprocess.run([sys.executable, os.path.join(HERE, "make_big_job.py"), path, "--particles", str(particles),
                        "--classes", str(classes), "--box", str(box), "--angpix", str(angpix)], check=True)


def whole_job(exe, cwd, args, repeat):
    """Our job ``repeat`` times (External/ removed before each)."""
    runs = []
    for _ in range(repeat):
        shutil.rmtree(os.path.join(cwd, "External"), ignore_errors=True)
        runs.append(timed(exe + ["--o", "External/job002/"] + args, cwd))
    return median(runs)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,1000000")
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each command; the median is shown")
    ap.add_argument("--workdir", default="/tmp/rer_bench")
    ap.add_argument("--model", default=None)
    ap.add_argument("--j", type=int, default=2)
    a = ap.parse_args(argv)
    exe = [os.path.join(ROOT, "relion_external_rank.py")]  # as RELION starts it (it finds its own Python)
    extra = (["--model", a.model] if a.model else []) + ["--j", str(a.j)]
    half = a.classes // 2
    subset = ("import sys; sys.path.insert(0, %r); from ranker.runtime.particles import write_selected; "
              "write_selected(%r, 'subset.star', range(1, %d))" % (ROOT, DATA, half + 1))
    star_handler = shutil.which("relion_star_handler")
    load_before = load()
    rows = []
    for n in [int(s) for s in a.sizes.split(",")]:
        job = os.path.join(a.workdir, f"n{n}")
        make_job(job, n, a.classes, 128, 1.5)
        r = {"n": n, "job": [], "relion": [], "subset": [], "awk": []}
        for _ in range(a.repeat):  # interleaved, so that a change in the machine's load hits all alike
            r["job"].append(whole_job(exe, job, ["--in_parts", DATA] + extra, 1))
            if star_handler:
                r["relion"].append(timed([star_handler, "--i", DATA, "--o", "relion_sel.star", "--select",
                                          "rlnClassNumber", "--minval", "1", "--maxval", str(half)], job))
            r["subset"].append(timed([sys.executable, "-c", subset], job))
            r["awk"].append(timed(["awk", AWK % half, DATA], job, stdout=os.path.join(job, "awk.star")))
        r = {k: (median(v) if isinstance(v, list) and v else v) for k, v in r.items()}
        with open(os.path.join(job, "subset.star"), "rb") as f1, open(os.path.join(job, "awk.star"), "rb") as f2:
            r["same_as_awk"] = f1.read() == f2.read()
        for name in ("relion_sel.star", "subset.star", "awk.star"):
            if os.path.exists(os.path.join(job, name)):
                os.remove(os.path.join(job, name))
        rows.append(r)
        print(f"{n} particles done", flush=True)

    example = os.path.join(a.workdir, "example_class2d_sim")
    shutil.rmtree(example, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "examples", "class2d_sim"), example)
    ex_wall, ex_rss, _, _ = whole_job(exe, example, ["--in_parts", "Class2D/job002/run_it020_data.star"] + extra,
                                   a.repeat)
    big = os.path.join(a.workdir, "n10000_300x400")
    make_job(big, 10000, 300, 400, 1.0)
    wall, rss, out, _ = whole_job(exe, big, ["--in_optimiser", OPT] + extra, a.repeat)
    stages = dict(re.findall(r" \+ ([^:]+): ([\d.]+) s", out))
    load_after = load()

    print(f"\nMachine: {machine()}; load average (1, 5, 15 min) {load_before} before, {load_after} after; "
          f"median of {a.repeat} interleaved runs each")
    print("\n| particles | our whole job: wall / peak RSS | relion_star_handler (half the classes) | "
          "**relion_star_handler / our whole job** | our subset step | awk | subset / awk |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        rel = r["relion"]
        print(f"| {r['n']:,} | {r['job'][0]:.2f} s / {r['job'][1]:.0f} MB | "
              + (f"{rel[0]:.2f} s / {rel[1]:.0f} MB | **{rel[0] / r['job'][0]:.2g}x**" if rel else "not installed | -")
              + f" | {r['subset'][0]:.2f} s / {r['subset'][1]:.0f} MB | {r['awk'][0]:.2f} s / {r['awk'][1]:.0f} MB"
              + (f" | {r['subset'][0] / r['awk'][0]:.2f}x |" if r["awk"][0] >= 0.1 else " | - |"))
    for r in rows:
        rel = r["relion"]
        print(f"\nCPU time (user + system, all processes) at {r['n']:,} particles: our whole job {r['job'][3]:.2f} s"
              + (f", relion_star_handler {rel[3]:.2f} s (ratio {rel[3] / r['job'][3]:.2g}x)" if rel else ""))
    print(f"\nexample project (examples/class2d_sim, 20 classes), whole job: {ex_wall:.2f} s, {ex_rss:.0f} MB")
    print(f"subset output byte-identical to awk's: {all(r['same_as_awk'] for r in rows)}")
    small, large = rows[0], rows[-1]
    print(f"peak RSS of the whole job: {small['job'][1]:.0f} MB at {small['n']:,} vs {large['job'][1]:.0f} MB at "
          f"{large['n']:,} particles (difference {large['job'][1] - small['job'][1]:+.0f} MB)")
    feats = float(stages.get("features and network images", "nan"))
    scores = float(stages.get("scores", "nan"))
    m = re.search(r"(\d+) class images through (\d+) network\(s\) in (\d+) batches: (\d+) in a background process, "
                  r"([\d.]+) s to ([\d.]+) s after the start, (\d+) in this stage", out)
    cnn = (f"{m[1]} images x {m[2]} networks: {m[4]} of {m[3]} batches in the background process, "
           f"{float(m[6]) - float(m[5]):.2f} s alongside reading and features, the other {m[7]} in the scores stage"
           if m else "networks: see run.out")
    print(f"300 classes x 400 px (10,000 particles): features {feats:.2f} s; inference: {cnn} ({scores:.2f} s); "
          f"whole job {wall:.2f} s, {rss:.0f} MB")
    print("stages of that job:", "; ".join(f"{k} {v} s" for k, v in stages.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
