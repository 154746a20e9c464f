"""Command line of :mod:`ranker.simulate` (usage in the package docstring)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ranker.simulate import __doc__ as simulate_doc
from ranker.simulate.corpus import run_many, summarise
from ranker.simulate.files import JUNK_KINDS
from ranker.simulate.project import DEFAULT_SPEC, build_project
from ranker.simulate.structures import (
    DEBIAN_STRUCTURES,
    PSEUDO_SHAPES,
    fetch_structures,
)


# ======================================================================================
# command line
# ======================================================================================
def _parse_junk(s):
    out = {}
    for kv in filter(None, s.split(",")):
        k, v = kv.split("=")
        if k not in JUNK_KINDS:
            raise argparse.ArgumentTypeError(f"junk kind {k!r} not in {JUNK_KINDS}")
        out[k] = int(v)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ranker.simulate", description=simulate_doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ps = sub.add_parser("structures", help="fetch real coordinate files from Debian packages")
    ps.add_argument("dest")
    ps.add_argument("--names", default="", help="comma-separated subset of: " + ",".join(DEBIAN_STRUCTURES))

    pj = sub.add_parser("job", help="one project with explicit parameters")
    pj.add_argument("outdir")
    g = pj.add_mutually_exclusive_group()
    g.add_argument("--pdb", default="", help="PDB / mmCIF / PQR file (or .npz from 'structures')")
    g.add_argument("--shape", default="multidomain", choices=PSEUDO_SHAPES, help="pseudo-atomic model shape")
    pj.add_argument("--n_res", type=int, default=2500, help="pseudo model size in residues (~110 Da each)")
    pj.add_argument("--box", type=int, default=64, help="box size (px, even)")
    pj.add_argument("--angpix", type=float, default=3.0, help="pixel size (A)")
    pj.add_argument("--mask_diameter", type=float, default=None, help="relion --particle_diameter (A); default from the structure")
    pj.add_argument("--blur", type=float, default=1.3, help="Gaussian sigma of atoms (A); B = 8 pi^2 sigma^2")
    pj.add_argument("--snr", type=float, default=0.1, help="signal variance in particle circle / noise variance")
    pj.add_argument("--n_good", type=int, default=1200)
    pj.add_argument("--junk", type=_parse_junk, default=DEFAULT_SPEC["junk"],
                    help="e.g. noise=150,ice=80,edge=60,aggregate=80,offcentre=60,partial=50")
    pj.add_argument("--junk_contrast", type=float, default=1.0, help="scale of ice / edge contrast")
    pj.add_argument("--n_mics", type=int, default=30)
    pj.add_argument("--defocus", type=float, nargs=2, default=[1.0, 2.5], help="defocus range (um)")
    pj.add_argument("--kv", type=float, default=300.0)
    pj.add_argument("--cs", type=float, default=2.7, help="spherical aberration (mm)")
    pj.add_argument("--q0", type=float, default=0.1, help="amplitude contrast")
    pj.add_argument("--n_views", type=int, default=6, help="preferred views (0: uniform)")
    pj.add_argument("--K", type=int, default=12)
    pj.add_argument("--iter", type=int, default=15)
    pj.add_argument("--psi_step", type=float, default=16.0, help="relion --psi_step (deg)")
    pj.add_argument("--offset_range", type=float, default=3, help="relion --offset_range (px)")
    pj.add_argument("--offset_step", type=float, default=2, help="relion --offset_step (px)")
    pj.add_argument("--threads", type=int, default=1, help="relion --j")
    pj.add_argument("--seed", type=int, default=1)
    pj.add_argument("--split", default="train", choices=["train", "val", "heldout"])
    pj.add_argument("--keep", action="store_true", help="keep stacks, maps and all iterations")
    pj.add_argument("--classifier", default="relion", choices=["relion", "quick"],
                    help="relion_refine, or the fast in-Python stand-in (quickclass; not RELION)")

    pp = sub.add_parser("spec", help="one project from a JSON spec")
    pp.add_argument("outdir")
    pp.add_argument("spec_json")

    pm = sub.add_parser("many", help="a corpus of varied jobs (restartable)")
    pm.add_argument("corpus")
    pm.add_argument("--n", type=int, default=60, help="number of jobs (job0001..)")
    pm.add_argument("--structures", default="", help="directory made by 'structures'")
    pm.add_argument("--seed", type=int, default=1)
    pm.add_argument("--heldout", default="8,28,48", help="job numbers that use 4JSV (split heldout)")
    pm.add_argument("--budget", type=float, default=None,
                    help="max estimated relion_refine seconds per job (relion_seconds()); sizes shrink to fit")
    pm.add_argument("--relion_timeout", type=float, default=900, help="s; a slower relion_refine fails the job")
    pm.add_argument("--retry_failed", action="store_true")
    pm.add_argument("--stop_after_hours", type=float, default=None)
    pm.add_argument("--snr_range", type=float, nargs=2, default=[0.03, 0.3], metavar=("LOW", "HIGH"),
                    help="log-uniform SNR range of the jobs")
    pm.add_argument("--junk_kinds", default="", help="comma-separated junk kinds jobs draw from (default all: "
                    + ",".join(JUNK_KINDS) + ")")
    pm.add_argument("--classifier", default="relion", choices=["relion", "quick"],
                    help="relion_refine, or the fast in-Python stand-in (quickclass; not RELION)")

    pc = sub.add_parser("compare", help="feature distributions: RELION- vs quick-classified corpus")
    pc.add_argument("relion_corpus")
    pc.add_argument("quick_corpus")
    pc.add_argument("--md", default="", help="also write the Markdown table here")

    pq = sub.add_parser("summary", help="progress of a corpus")
    pq.add_argument("corpus")
    pq.add_argument("--jobs", action="store_true", help="one line per job")

    a = p.parse_args(argv)
    if a.cmd == "structures":
        fetch_structures(a.dest, [n for n in a.names.split(",") if n] or None)
    elif a.cmd == "job":
        if a.pdb:
            nm = os.path.splitext(os.path.basename(a.pdb))[0]
            protein = dict(source="pdb", name=nm, path=os.path.abspath(a.pdb))
        else:
            protein = dict(source="pseudo", shape=a.shape, n_res=a.n_res, seed=a.seed, name=f"pseudo-{a.shape}-{a.n_res}")
        spec = dict(protein=protein, box=a.box, angpix=a.angpix, mask_diameter_A=a.mask_diameter, blur_A=a.blur,
                    snr=a.snr, n_good=a.n_good, junk=a.junk, junk_contrast=a.junk_contrast, n_mics=a.n_mics,
                    defocus_um=list(a.defocus), kv=a.kv, cs=a.cs, q0=a.q0, n_views=a.n_views, K=a.K,
                    n_iter=a.iter, psi_step=a.psi_step, offset_range=a.offset_range, offset_step=a.offset_step,
                    threads=a.threads, seed=a.seed, split=a.split, classifier=a.classifier)
        info = build_project(spec, a.outdir, keep=a.keep)
        print(json.dumps(info["class_summary"]), f"{info['seconds_total']:.0f} s")
    elif a.cmd == "spec":
        spec = json.load(open(a.spec_json))
        spec = spec.get("spec", spec)
        info = build_project(spec, a.outdir)
        print(json.dumps(info["class_summary"]), f"{info['seconds_total']:.0f} s")
    elif a.cmd == "many":
        bad = [k for k in a.junk_kinds.split(",") if k and k not in JUNK_KINDS]
        if bad:
            p.error(f"--junk_kinds: unknown kind(s) {','.join(bad)}; known: {','.join(JUNK_KINDS)}")
        held = tuple(int(v) for v in a.heldout.split(",") if v)
        run_many(a.corpus, a.n, a.structures or None, a.seed, held, a.budget, a.relion_timeout,
                 a.retry_failed, a.stop_after_hours * 3600 if a.stop_after_hours else None,
                 log=lambda m: print(m, flush=True), snr_range=tuple(a.snr_range),
                 junk_kinds=[k for k in a.junk_kinds.split(",") if k] or None, classifier=a.classifier)
    elif a.cmd == "compare":
        from ranker.simulate.compare import compare
        md = compare(a.relion_corpus, a.quick_corpus)
        print(md, end="")
        if a.md:
            with open(a.md, "w") as f:
                f.write(md)
    elif a.cmd == "summary":
        summarise(a.corpus, a.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
