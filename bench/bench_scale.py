"""Facility-scale benchmark, everything timed in ONE run on this machine.

    python bench/bench_scale.py [--sizes 10000,1000000,5000000] [--classes 200] [--workdir /tmp/rer_bench]
                                [--model models/relion_external_rank_v3.npz] [--j 2]

For each particle count it makes a synthetic Class2D job (bench/make_big_job.py; reused if
present) and times, side by side: our whole job (``relion_external_rank.py``), our particle
subset step alone (``ranker.runtime.particles.write_selected``), RELION's ``relion_star_handler
--select`` (when installed) and a streaming ``awk`` filter, all selecting classes 1..C/2.
Then it runs a 300-class, 400 px job to time features + inference. Wall time and peak RSS
come from GNU time for each command. Ratios are printed against awk and
relion_star_handler measured in the same run; the RELION-5 ``relion_class_ranker
--auto_select`` figure (25.2 s for 1M particles, measured on this kind of machine and
quoted in the issue) is a fixed reference.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RELION5_AUTOSELECT_1M_S = 25.2
OPT = "Class2D/job001/run_it025_optimiser.star"
DATA = "Class2D/job001/run_it025_data.star"
AWK = ('BEGIN{c=0} /^data_particles/{p=1} p && /^_rlnClassNumber/{split($2,a,"#"); c=a[2]} '
       'p && c && NF>5 {if ($c>=1 && $c<=%d) print; next} {print}')


def timed(cmd, cwd, stdout=None):
    """(wall s, peak RSS MB, stdout text) of a command, from GNU time."""
    full = ["/usr/bin/time", "-f", "TIME %e %M"] + cmd
    with open(stdout, "wb") if stdout else open(os.devnull, "wb") as out:
        r = subprocess.run(full, cwd=cwd, stdout=out if stdout else subprocess.PIPE, stderr=subprocess.PIPE)
    m = re.search(rb"TIME ([\d.]+) (\d+)", r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.decode()[-400:]}")
    return float(m[1]), int(m[2]) / 1024, (r.stdout or b"").decode()


def make_job(path, particles, classes, box, angpix):
    if not os.path.exists(os.path.join(path, OPT)):
        subprocess.run([sys.executable, os.path.join(HERE, "make_big_job.py"), path, "--particles", str(particles),
                        "--classes", str(classes), "--box", str(box), "--angpix", str(angpix)], check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,1000000,5000000")
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--workdir", default="/tmp/rer_bench")
    ap.add_argument("--model", default=None)
    ap.add_argument("--j", type=int, default=2)
    a = ap.parse_args(argv)
    exe = [sys.executable, os.path.join(ROOT, "relion_external_rank.py")]
    model = ["--model", a.model] if a.model else []
    half = a.classes // 2
    subset = ("import sys; sys.path.insert(0, %r); from ranker.runtime.particles import write_selected; "
              "write_selected(%r, 'subset.star', range(1, %d))" % (ROOT, DATA, half + 1))
    star_handler = shutil.which("relion_star_handler")
    rows = []
    for n in [int(s) for s in a.sizes.split(",")]:
        job = os.path.join(a.workdir, f"job_{n}")
        make_job(job, n, a.classes, 128, 1.5)
        shutil.rmtree(os.path.join(job, "External"), ignore_errors=True)
        r = {"n": n}
        r["job"] = timed(exe + ["--o", "External/job002/", "--in_optimiser", OPT, "--j", str(a.j)] + model, job)
        r["subset"] = timed([sys.executable, "-c", subset], job)
        r["awk"] = timed(["awk", AWK % half, DATA], job, stdout=os.path.join(job, "awk.star"))
        if star_handler:
            r["relion"] = timed([star_handler, "--i", DATA, "--o", "relion_sel.star", "--select", "rlnClassNumber",
                                 "--minval", "1", "--maxval", str(half)], job)
        same = open(os.path.join(job, "subset.star"), "rb").read() == open(os.path.join(job, "awk.star"), "rb").read()
        r["same_as_awk"] = same
        rows.append(r)
        print(f"{n} particles done", flush=True)
    big = os.path.join(a.workdir, "job_300x400")
    make_job(big, 10000, 300, 400, 1.0)
    shutil.rmtree(os.path.join(big, "External"), ignore_errors=True)
    wall, rss, out = timed(exe + ["--o", "External/job002/", "--in_optimiser", OPT, "--j", str(a.j)] + model, big)
    stages = dict(re.findall(r" \+ ([^:]+): ([\d.]+) s", out))

    print("\n| particles | our job: wall / peak RSS | our subset step | awk | relion_star_handler | subset vs awk | "
          "relion_star_handler / subset | RELION-5 auto-select 1M (25.2 s) / our job |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rel = r.get("relion")
        print(f"| {r['n']:,} | {r['job'][0]:.2f} s / {r['job'][1]:.0f} MB | {r['subset'][0]:.2f} s / {r['subset'][1]:.0f} MB"
              f" | {r['awk'][0]:.2f} s / {r['awk'][1]:.0f} MB | "
              + (f"{rel[0]:.2f} s / {rel[1]:.0f} MB" if rel else "not installed")
              + f" | {r['subset'][0] / r['awk'][0]:.2f}x | " + (f"{rel[0] / r['subset'][0]:.1f}x" if rel else "-")
              + f" | {RELION5_AUTOSELECT_1M_S * r['n'] / 1e6 / r['job'][0]:.1f}x (scaled by particles) |")
    print(f"\nsubset output byte-identical to awk's: {all(r['same_as_awk'] for r in rows)}")
    small, large = rows[0], rows[-1]
    print(f"peak RSS of the whole job: {small['job'][1]:.0f} MB at {small['n']:,} vs {large['job'][1]:.0f} MB at "
          f"{large['n']:,} particles (difference {large['job'][1] - small['job'][1]:+.0f} MB)")
    feats = float(stages.get("features and network images", "nan"))
    scores = float(stages.get("scores", "nan"))
    print(f"300 classes x 400 px: features {feats:.2f} s + inference (incl. torch import) {scores:.2f} s = "
          f"{feats + scores:.2f} s; whole job {wall:.2f} s, {rss:.0f} MB")
    print("stages:", ", ".join(f"{k} {v} s" for k, v in stages.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
