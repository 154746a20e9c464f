"""Build the real-image evaluation project from EMPIAR-10017 (shared/realdata), classified by relion_refine.

Usage::

    python -m ranker.develop real_fixture --realdata ../shared/realdata --out DIR
        [--bin 2] [--box_px 96] [--diameter_A 160] [--K 20] [--iter 15]
        [--n_good 1800] [--n_offcentre 300] [--n_noise 300] [--n_edge 250] [--n_ice -1]
        [--psi_step 10] [--offset_range 5] [--offset_step 2] [--highres_exp_A 20]
        [--seed 0] [--relion_seed -1] [--j 1]
        [--no_refine] [--trim FIXTURE_DIR]

Writes a RELION project in DIR (see :mod:`ranker.develop.realdata`): inverted MRC micrographs,
coordinate STAR files, particles extracted by ``relion_preprocess`` (binned by ``--bin``, box
``--box_px`` after binning), ``Import/job001/particles.star``, ``Class2D/job002`` from
``relion_refine`` WITHOUT CTF correction, ``truth.csv`` (kind of every box by its provenance),
``class_truth.csv``, ``classes_montage.png``, ``checks/picks_<kind>.png`` (random boxes of each kind,
to check the truth by eye) and ``build.json`` (counts, cleanliness of the truth, commands, times).
``--trim DIR`` then copies what the ranker and ``evaluate`` need (no particle stacks) into DIR.

RELION runs with ``nice -n 10``; relion_refine with ``--j`` threads (default 1). A count of -1 means
every box of that kind the micrographs offer. EMPIAR-10017 is evaluation data only: never train,
calibrate or choose a model recipe on this project.

The defaults are the recipe of ``tests/data/real_empiar10017`` (its README says what else was tried);
``--relion_seed 1795970164`` is the seed relion_refine used for it.
"""

from __future__ import annotations

import json
import os

from ranker.develop.commands import UsageError


def add_args(p) -> None:
    p.add_argument("--realdata", required=True, help="shared/realdata (or its empiar10017_betagal folder)")
    p.add_argument("--out", required=True, help="project directory to build (about 1 GB with the micrographs)")
    p.add_argument("--bin", type=float, default=2.0, help="micrograph px per extracted px (1.77 A/px x bin)")
    p.add_argument("--box_px", type=int, default=96, help="extracted box after binning (px)")
    p.add_argument("--diameter_A", type=float, default=160.0, help="relion_refine --particle_diameter (A)")
    p.add_argument("--K", type=int, default=20)
    p.add_argument("--iter", type=int, default=15)
    for kind, n in (("good", 1800), ("offcentre", 300), ("noise", 300), ("edge", 250), ("ice", -1)):
        p.add_argument(f"--n_{kind}", type=int, default=n, help=f"at most this many {kind} boxes (-1 = all)")
    p.add_argument("--psi_step", type=float, default=10.0, help="in-plane angular step (deg)")
    p.add_argument("--offset_range", type=float, default=5.0, help="px, after binning")
    p.add_argument("--offset_step", type=float, default=2.0, help="px, after binning")
    p.add_argument("--highres_exp_A", type=float, default=20.0,
                   help="relion_refine --strict_highres_exp: E-step resolution limit in A (0 = none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the box choice")
    p.add_argument("--relion_seed", type=int, default=-1,
                   help="relion_refine --random_seed (-1: RELION's clock-based default; the seed used is recorded "
                        "as rlnRandomSeed in the optimiser STAR file)")
    p.add_argument("--j", type=int, default=1, help="relion_refine threads")
    p.add_argument("--no_refine", action="store_true", help="stop after extraction (truth and checks only)")
    p.add_argument("--trim", help="copy the trimmed fixture (STAR files, class averages, truth) here")


def main(args) -> int:
    from ranker.develop import realdata

    if args.bin <= 0 or args.box_px <= 0 or args.K < 1 or args.iter < 1:
        raise UsageError("--bin, --box_px, --K and --iter must be positive")
    full = args.box_px * args.bin
    if abs(full - round(full)) > 1e-6 or round(full) % 2:
        raise UsageError(f"--box_px x --bin = {full:g}: must be an even whole number of micrograph px")
    if args.trim and args.no_refine:
        raise UsageError("--trim needs the classification (drop --no_refine)")
    counts = {k: (None if getattr(args, f"n_{k}") < 0 else getattr(args, f"n_{k}"))
              for k in ("good", "offcentre", "noise", "edge", "ice")}
    info = realdata.build(args.realdata, args.out, bin_factor=args.bin, box_px=args.box_px,
                          diameter_A=args.diameter_A, K=args.K, n_iter=args.iter, counts=counts, seed=args.seed,
                          refine=not args.no_refine, threads=args.j, psi_step_deg=args.psi_step,
                          offset_range_px=args.offset_range, offset_step_px=args.offset_step,
                          highres_exp_A=args.highres_exp_A, relion_seed=args.relion_seed,
                          log=lambda m: print(m, flush=True))
    print(json.dumps({k: info[k] for k in ("counts", "pick_list_check", "cleanliness") if k in info}, indent=1))
    if args.trim:
        copied = realdata.trim_fixture(args.out, args.trim, args.iter, args.realdata)
        print(f"fixture: {len(copied)} files in {os.path.abspath(args.trim)}")
    return 0
