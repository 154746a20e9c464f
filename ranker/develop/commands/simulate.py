"""Make one labelled RELION project from simulated particles, 2D-classified by relion_refine.

    python -m ranker.develop simulate OUTDIR [--pdb FILE | --shape ring] [--box_px 64 --pixel_size_A 3 ...]
    python -m ranker.develop simulate OUTDIR --spec SPEC.json      # as written in corpus_job.json["spec"]

Writes OUTDIR as described in :mod:`ranker.develop.simulate` (Import/, Class2D/job002/, truth.csv,
class_truth.csv, classes_montage.png, corpus_job.json). ``--classifier quick`` replaces
relion_refine by the fast in-Python stand-in (:mod:`ranker.develop.simulate.quickclass`; NOT RELION).
Units: lengths in A unless the option ends in ``_px``; defocus in um; voltage in kV; Cs in mm.
"""

from __future__ import annotations

import argparse
import json
import os


def parse_junk(s: str) -> dict:
    """'noise=150,ice=80' -> {"noise": 150, "ice": 80}; kinds must be junk kinds."""
    from ranker.develop.truth import JUNK_KINDS

    out = {}
    for kv in filter(None, s.split(",")):
        k, _, v = kv.partition("=")
        if k not in JUNK_KINDS:
            raise argparse.ArgumentTypeError(f"junk kind {k!r} not in {', '.join(JUNK_KINDS)}")
        out[k] = int(v)
    return out


def add_args(p) -> None:
    from ranker.develop.simulate.project import DEFAULT_SPEC
    from ranker.develop.simulate.structures import PSEUDO_SHAPES

    p.add_argument("outdir")
    p.add_argument("--spec", default="", help="JSON spec (a corpus_job.json or its 'spec'); other options ignored")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pdb", default="", help="PDB / mmCIF / PQR file (or .npz from 'structures')")
    g.add_argument("--shape", default="multidomain", choices=PSEUDO_SHAPES, help="pseudo-atomic model shape")
    p.add_argument("--n_res", type=int, default=2500, help="pseudo model size in residues (~110 Da each)")
    p.add_argument("--box_px", "--box", type=int, default=64, help="box size (px, even)")
    p.add_argument("--pixel_size_A", "--angpix", type=float, default=3.0, help="pixel size (A)")
    p.add_argument("--mask_diameter_A", "--mask_diameter", type=float, default=None,
                   help="relion --particle_diameter (A); default from the structure")
    p.add_argument("--blur_A", "--blur", type=float, default=1.3,
                   help="Gaussian sigma of atoms (A); B = 8 pi^2 sigma^2")
    p.add_argument("--snr", type=float, default=0.1, help="signal variance in particle circle / noise variance")
    p.add_argument("--n_good", type=int, default=1200)
    p.add_argument("--junk", type=parse_junk, default=DEFAULT_SPEC["junk"],
                   help="e.g. noise=150,ice=80,edge=60,aggregate=80,offcentre=60,partial=50,blob=100")
    p.add_argument("--junk_contrast", type=float, default=1.0, help="scale of ice / edge contrast")
    p.add_argument("--n_mics", type=int, default=30)
    p.add_argument("--defocus_um", "--defocus", type=float, nargs=2, default=[1.0, 2.5], help="defocus range (um)")
    p.add_argument("--voltage_kV", "--kv", type=float, default=300.0)
    p.add_argument("--cs_mm", "--cs", type=float, default=2.7, help="spherical aberration (mm)")
    p.add_argument("--q0", type=float, default=0.1, help="amplitude contrast")
    p.add_argument("--n_views", type=int, default=6, help="preferred views (0: uniform)")
    p.add_argument("--K", type=int, default=12, help="number of 2D classes")
    p.add_argument("--iter", type=int, default=15)
    p.add_argument("--psi_step", type=float, default=16.0, help="relion --psi_step (deg)")
    p.add_argument("--offset_range", type=float, default=3, help="relion --offset_range (px)")
    p.add_argument("--offset_step", type=float, default=2, help="relion --offset_step (px)")
    p.add_argument("--threads", type=int, default=1, help="relion --j")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--split", default="train", choices=["train", "val", "heldout"])
    p.add_argument("--keep", action="store_true", help="keep stacks, maps and all iterations")
    p.add_argument("--classifier", default="relion", choices=["relion", "quick"],
                   help="relion_refine, or the fast in-Python stand-in (quickclass; not RELION)")
    r = p.add_argument_group("realism options (defaults: the earlier white-noise simulator)")
    r.add_argument("--noise_model", default="white", choices=["white", "real"],
                   help="real: coloured noise with a real micrograph's background spectrum")
    r.add_argument("--noise_colour", type=float, default=1.0, help="exponent on the real spectrum (0 white)")
    r.add_argument("--noise_stretch", type=float, default=1.0,
                   help="> 1 moves the real spectrum's features to lower frequencies")
    r.add_argument("--ice_gradient", type=float, default=0.0,
                   help="ice-thickness field per micrograph: median ramp across a box, in noise sd")
    r.add_argument("--crowd_frac", type=float, default=0.0, help="fraction of good particles with neighbours")
    r.add_argument("--no_ctf_correct", action="store_true", help="classify without CTF correction")
    r.add_argument("--ctf_intact_first_peak", action="store_true",
                   help="classify with relion_refine --ctf --ctf_intact_first_peak")


def spec_from_args(a) -> dict:
    """The simulation spec (keys of corpus_job.json["spec"]) of the command-line options."""
    if a.pdb:
        name = os.path.splitext(os.path.basename(a.pdb))[0]
        protein = dict(source="pdb", name=name, path=os.path.abspath(a.pdb))
    else:
        protein = dict(source="pseudo", shape=a.shape, n_res=a.n_res, seed=a.seed, name=f"pseudo-{a.shape}-{a.n_res}")
    return dict(protein=protein, box=a.box_px, angpix=a.pixel_size_A, mask_diameter_A=a.mask_diameter_A,
                blur_A=a.blur_A, snr=a.snr, n_good=a.n_good, junk=a.junk, junk_contrast=a.junk_contrast,
                n_mics=a.n_mics, defocus_um=list(a.defocus_um), kv=a.voltage_kV, cs=a.cs_mm, q0=a.q0,
                n_views=a.n_views, K=a.K, n_iter=a.iter, psi_step=a.psi_step, offset_range=a.offset_range,
                offset_step=a.offset_step, threads=a.threads, seed=a.seed, split=a.split, classifier=a.classifier,
                noise_model=a.noise_model, noise_colour=a.noise_colour, noise_stretch=a.noise_stretch,
                ice_gradient=a.ice_gradient, crowd_frac=a.crowd_frac, ctf_correct=not a.no_ctf_correct,
                ctf_intact_first_peak=a.ctf_intact_first_peak)


def main(a) -> int:
    from ranker.develop.commands import UsageError
    from ranker.develop.simulate.project import build_project, resolve_spec

    if a.spec:
        spec = json.load(open(a.spec))
        spec = spec.get("spec", spec)
    else:
        spec = spec_from_args(a)
    try:
        resolve_spec(spec)  # a spec that cannot be built: one usage line, not a traceback
    except ValueError as exc:
        raise UsageError(f"{a.spec or 'options'}: {exc}") from None
    info = build_project(spec, a.outdir, keep=a.keep)
    print(json.dumps(info["class_summary"]), f"{info['seconds_total']:.0f} s")
    return 0
