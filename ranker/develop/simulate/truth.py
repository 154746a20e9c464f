"""Per-class truth of a finished simulated Class2D job, its montage and clean-up."""
from __future__ import annotations

import glob
import os
import re
from collections import Counter, defaultdict

from ranker.develop.simulate.files import read_star_loop
from ranker.develop.truth import KINDS, read_particle_truth, write_class_truth
from ranker.runtime.mrc import read_stack


def analyse_class2d(proj_dir, it):
    """Per-class truth of Class2D/job002/run_itNNN (composition from truth.csv + RELION's
    per-class values); writes class_truth.csv and returns its rows."""
    root = os.path.join(proj_dir, "Class2D", "job002", f"run_it{it:03d}")
    truth = {r["rlnImageName"]: r["kind"] for r in read_particle_truth(proj_dir)}
    cols, rows = read_star_loop(root + "_data.star", "particles")
    ci, ii = cols.index("rlnClassNumber"), cols.index("rlnImageName")
    comp = defaultdict(Counter)
    for r in rows:
        comp[int(r[ci])][truth[r[ii]]] += 1
    mcols, mrows = read_star_loop(root + "_model.star", "model_classes")
    out = []
    for k in range(1, len(mrows) + 1):
        m = dict(zip(mcols, mrows[k - 1]))
        c = comp[k]
        nn = sum(c.values())
        d = dict(class_number=k, n_particles=nn, frac_good=round(c["good"] / nn, 4) if nn else "",
                 majority_kind=(c.most_common(1)[0][0] if nn else "empty"))
        for kd in KINDS:
            d["n_" + kd] = c[kd]
        for lab in ("rlnClassDistribution", "rlnEstimatedResolution", "rlnAccuracyRotations",
                    "rlnAccuracyTranslationsAngst"):
            d[lab] = m.get(lab)
        d["rlnReferenceImage"] = m.get("rlnReferenceImage")
        out.append(d)
    write_class_truth(proj_dir, out)
    return out


def montage(proj_dir, it, rows, out_png):
    """Class averages labelled with n, fraction good, majority kind (green good, red bad)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cls = read_stack(os.path.join(proj_dir, "Class2D", "job002", f"run_it{it:03d}_classes.mrcs"))
    K = len(rows)
    nc = 6 if K <= 24 else 8
    nr = (K + nc - 1) // nc
    fig, ax = plt.subplots(nr, nc, figsize=(1.6 * nc, 1.8 * nr), squeeze=False)
    for a in ax.flat:
        a.axis("off")
    for k in range(K):
        a, d = ax.flat[k], rows[k]
        a.imshow(cls[k], cmap="gray")
        fg = d["frac_good"]
        a.set_title(f"#{k + 1} n={d['n_particles']} g={fg if fg == '' else f'{fg:.2f}'}\n{d['majority_kind']}",
                    fontsize=6, color=("green" if fg != "" and fg >= 0.8 else "red" if fg != "" and fg <= 0.2
                                       else "orange"))
    plt.tight_layout()
    plt.savefig(out_png, dpi=60)
    plt.close(fig)


def cleanup(proj_dir, it):
    """Delete particle stacks, projections, maps and all but the final Class2D iteration."""
    for f in glob.glob(os.path.join(proj_dir, "Simulated", "Particles", "*.mrcs")):
        os.remove(f)
    for pat in ("*.mrcs", "*.mrc", "*_ang.star", "good_sub*.star", "*_clean.star", "good_noisy.star"):
        for f in glob.glob(os.path.join(proj_dir, "Simulated", pat)):
            os.remove(f)
    keep = {f"run_it{it:03d}_{x}" for x in ("optimiser.star", "model.star", "data.star", "sampling.star",
                                             "classes.mrcs")}
    for f in glob.glob(os.path.join(proj_dir, "Class2D", "job002", "run_it*")):
        if os.path.basename(f) not in keep:
            os.remove(f)


def strip_progress(path):
    """Remove RELION's progress-bar lines from run.out."""
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        return
    keep = [l for l in lines if not re.match(r"^\s*[\d.]+/\s*[\d.]+ (sec|min|hrs)", l) and "~~(,_,\">" not in l]
    with open(path, "w") as f:
        f.write("\n".join(keep) + "\n")
