"""Measure how far simulated data are from real data (image statistics and class features); print Markdown.

    python -m ranker.develop realism --sim JOB [JOB ...] [--classes PROJECT ...] [--real_classes PROJECT ...]
    python -m ranker.develop realism --write_noise_spectrum ranker/develop/simulate/data/real_noise_spectrum.csv
    python -m ranker.develop realism --write_junk_patches ranker/develop/simulate/data/real_junk_patches.npz

``--sim``: simulated jobs made with ``simulate ... --keep`` (their particle stacks are read): each is
compared with real boxes of the same extent in A (module :mod:`ranker.develop.realism`: the real
contamination micrograph's autopick and background boxes, the graded micrograph examples).
``--classes``: Class2D projects with ``class_truth.csv`` (default: the ``--sim`` jobs): the 24
class-ranker features (+ roundness, high-frequency power) of good (>= 80 % real) and junk (<= 20 %)
classes. ``--real_classes``: real Class2D projects (e.g. the EMPIAR-10017 fixture), reported for
EVALUATION only. ``--write_noise_spectrum``: store the real background spectrum the simulator's
``noise_model: real`` uses (radial power of the contamination micrograph's junk-free background);
``--write_junk_patches``: store the real junk patches of the simulator's ``patch`` kind (graded
contamination and crystalline-ice examples, the contamination micrograph; never EMPIAR-10017).
"""

from __future__ import annotations

import os

from ranker.develop.commands import UsageError


def add_args(p) -> None:
    from ranker.develop.realism import CONTAMINATION_APIX_A, GRADED_APIX_A

    p.add_argument("--sim", nargs="*", default=[], help="simulated jobs with kept particle stacks (simulate --keep)")
    p.add_argument("--classes", nargs="*", default=None,
                   help="labelled Class2D projects for the class-level table (default: the --sim jobs)")
    p.add_argument("--real_classes", nargs="*", default=[],
                   help="real Class2D projects (evaluation only; labels from their class_truth.csv if any)")
    p.add_argument("--realdata", default="", help="shared/realdata (default: beside the checkout)")
    p.add_argument("--per_kind", type=int, default=150, help="particles per kind and job")
    p.add_argument("--n_background", type=int, default=150, help="real background boxes per box geometry")
    p.add_argument("--real_apix", type=float, default=CONTAMINATION_APIX_A,
                   help="assumed pixel size (A) of the contamination micrograph (not given by its source)")
    p.add_argument("--graded_apix", type=float, default=GRADED_APIX_A,
                   help="assumed pixel size (A) of the graded 512 px micrograph examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--md", default="", help="also write the tables to this Markdown file")
    p.add_argument("--write_noise_spectrum", default="", metavar="CSV",
                   help="measure and write the real background spectrum, then stop")
    p.add_argument("--write_junk_patches", default="", metavar="NPZ",
                   help="cut and write the real junk patches of the simulator's 'patch' kind (+ .csv provenance), "
                        "then stop")


def main(a) -> int:
    from ranker.develop import realism as R

    realdata = a.realdata or R.default_realdata()
    if not os.path.isdir(os.path.join(realdata, R.CONTAMINATION)):
        raise UsageError(f"--realdata: {realdata} has no {R.CONTAMINATION}/ (shared/realdata)")
    if a.write_junk_patches:
        from ranker.develop.simulate.noise import write_patches

        patches, rows = R.real_junk_patches(realdata)
        write_patches(a.write_junk_patches, patches, rows)
        print(f"{a.write_junk_patches}: {len(patches)} patches")
        return 0
    if a.write_noise_spectrum:
        from ranker.develop.simulate.noise import write_spectrum

        power, tiles = R.background_spectrum(realdata)
        write_spectrum(a.write_noise_spectrum, power, (
            "Radially averaged power spectrum of the junk-free background (junk mask < 0.5, tile mean < 0.1)\n"
            f"of the real contamination micrograph {R.CONTAMINATION}/mics/{R.RealMicrograph(realdata).name}\n"
            f"(micrograph_cleaner_em, Apache-2.0): Welch average of {tiles} Hann-windowed 128 px tiles,\n"
            "frequency in fractions of Nyquist, power normalised to mean 1 over shells 1..64.\n"
            "Made by: python -m ranker.develop realism --write_noise_spectrum THIS_FILE"))
        print(f"{a.write_noise_spectrum}: {tiles} tiles")
        return 0
    classes = a.sim if a.classes is None else a.classes
    if not a.sim and not classes:
        raise UsageError("give --sim jobs (made with --keep) and/or --classes projects")
    out = []
    if a.sim:
        groups = R.measure_boxes(a.sim, realdata, a.per_kind, a.n_background, a.seed, a.real_apix, a.graded_apix)
        out += [f"Particle boxes ({len(a.sim)} simulated jobs; real contamination micrograph at an assumed "
                f"{a.real_apix:g} A/px, graded examples at {a.graded_apix:g} A/px); median (interquartile range):", "",
                R.box_table(groups), ""]
    if classes:
        sim = R.measure_classes(classes)
        real = R.measure_classes(a.real_classes) if a.real_classes else None
        out += [f"Class averages ({len(classes)} simulated projects"
                + (f", {len(a.real_classes)} real, evaluation only" if a.real_classes else "") + "), KS distances:",
                "", R.class_table(sim, real), ""]
    text = "\n".join(out)
    print(text)
    if a.md:
        with open(a.md, "w") as fh:
            fh.write(text + "\n")
    return 0
