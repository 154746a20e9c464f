"""A corpus of varied labelled jobs: sampled parameters (deterministic in seed and job
number), built one at a time, restartable; progress summary."""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import shutil
import time
import traceback
from collections import Counter

import numpy as np

from ranker.develop.simulate.files import json_default
from ranker.develop.simulate.project import build_project
from ranker.develop.simulate.structures import (
    HELDOUT_PROTEINS,
    PSEUDO_SHAPES,
    pseudo_model,
    structure_radius,
)
from ranker.develop.truth import JUNK_KINDS, class_summary, read_class_truth


# ======================================================================================
# corpus: varied jobs
# ======================================================================================
def _even(v):
    return int(2 * math.ceil(v / 2))


def choose_geometry(prot_diam, rng, box=None):
    """Pick (box px, angpix A, mask diameter A) for a particle of diameter prot_diam (A).

    Mostly small boxes (48-96 px), sometimes 112-160, rarely 192-256; the box spans 1.3-2.0
    mask diameters; pixel size kept in 1-5 A and box extent >= 64 A."""
    mask = 1.15 * prot_diam + 8
    if box is None:
        u = rng.uniform()
        if u < 0.85:
            box = int(rng.choice([48, 56, 64, 64, 72, 80, 80, 96]))
        elif u < 0.97:
            box = int(rng.choice([112, 128, 160]))
        else:
            box = int(rng.choice([192, 256]))
    ratio = rng.uniform(1.3, 2.0)
    apix = ratio * mask / box
    if apix > 5.0:
        apix = 5.0
        box = _even(ratio * mask / apix)
    if apix < 1.0:
        apix = 1.0
        box = max(48, _even(ratio * mask / apix))
    if box * apix < 64:
        apix = 64.0 / box
    apix = round(apix, 3)
    mask = min(mask, 0.9 * box * apix)
    return box, apix, round(mask, 1)


def relion_seconds(box, n, K, n_iter, psi_step, offset_range, offset_step=2):
    """Rough wall time (s) of relion_refine 2D with --j 1 on one core of the build machine.

    Calibrated on 3.1.3 runs: ~5.8e-4 s per particle x class x iteration at box 64, psi_step 16,
    offset_range 3 / step 2; grows only ~sqrt(box) because RELION works at the current
    (low) resolution rather than the full box."""
    n_tr = (2 * math.floor(offset_range / offset_step) + 1) ** 2
    return 5.8e-4 * n * K * n_iter * (16.0 / psi_step) * (n_tr / 9.0) * (box / 64.0) ** 0.5


# the junk kinds of the corpora before the realism recipe (new kinds are drawn only by recipe "realism")
V3_JUNK_KINDS = ("noise", "ice", "edge", "aggregate", "offcentre", "partial")
RECIPES = ("v3", "realism")
# realism recipe: pseudo shapes weighted towards the elongated / multi-domain shapes RELION users see
# scored too low (elongated, multidomain, dumbbell, bent: 70 % of pseudo-atomic jobs)
REALISM_SHAPE_WEIGHTS = dict(globular=0.10, multidomain=0.20, elongated=0.20, ring=0.07, dumbbell=0.15,
                             oligomer=0.07, bent=0.15, disc=0.06)


def realism_options(rng):
    """The realism options of one job (recipe "realism"; see project.REALISM_KEYS): real coloured
    noise in 80 % of jobs, an ice-thickness field in 50 %, crowded fields in 50 %, no CTF
    correction in 25 %."""
    real = rng.uniform() < 0.8
    return dict(
        noise_model="real" if real else "white",
        noise_colour=round(float(rng.uniform(0.7, 1.0)), 3) if real else 1.0,
        noise_stretch=round(float(math.exp(rng.uniform(math.log(0.8), math.log(1.25)))), 3) if real else 1.0,
        ice_gradient=round(float(rng.uniform(0.2, 0.8)), 3) if rng.uniform() < 0.5 else 0.0,
        crowd_frac=round(float(rng.uniform(0.1, 0.5)), 3) if rng.uniform() < 0.5 else 0.0,
        ctf_correct=bool(rng.uniform() >= 0.25))


def sample_spec(idx, base_seed, structures, heldout_idx=(), budget=None, snr_range=(0.03, 0.3), junk_kinds=None,
                recipe="v3", ctf_intact_first_peak=False):
    """Parameters of corpus job number idx (deterministic in (base_seed, idx) and the options).

    structures: {name: info with 'npz' absolute path and 'r99_A'} (may be empty: pseudo only).
    heldout_idx: job numbers that use 4JSV and are marked split 'heldout'.
    budget: max relion_seconds(); particle number, K and iterations are reduced to fit.
    snr_range: (low, high) of the log-uniform SNR (signal variance in the particle circle / noise variance).
    junk_kinds: the junk kinds a job may draw from (default: V3_JUNK_KINDS for recipe "v3", all of
    JUNK_KINDS for "realism"), to make a corpus rich in one failure mode (e.g. fragments only, or very
    low SNR); the defaults reproduce earlier corpora.
    recipe: "v3" (the corpora of v3, reproduced exactly) or "realism" (the changes measured against
    real data, ranker.develop.realism: pseudo shapes weighted by REALISM_SHAPE_WEIGHTS and 55 % of
    jobs pseudo-atomic, 1,000-8,000 particles before the budget, blurry "blob" junk in at least 75 %
    of jobs, and :func:`realism_options`).
    ctf_intact_first_peak: classify the job with ``relion_refine --ctf --ctf_intact_first_peak`` if it is
    CTF-corrected (spec key ``ctf_intact_first_peak``; it changes no other draw, so a corpus seed gives the
    same particles with and without it)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r}: one of {', '.join(RECIPES)}")
    realism = recipe == "realism"
    rng = np.random.default_rng([int(base_seed), int(idx)])
    pseed = int(rng.integers(1 << 30))
    trainable = [n for n in sorted(structures) if n not in HELDOUT_PROTEINS]
    if idx in heldout_idx and "4JSV" in structures:
        split = "heldout"
        st = structures["4JSV"]
        protein = dict(source="pdb", name="4JSV", path=st["npz_abs"], package=st["package"],
                       file=st["file"], description=st["description"])
        diam = 2 * st["r99_A"]
    else:
        split = "val" if rng.uniform() < 0.2 else "train"
        if trainable and rng.uniform() < (0.45 if realism else 0.55):
            name = trainable[int(rng.integers(len(trainable)))]
            st = structures[name]
            protein = dict(source="pdb", name=name, path=st["npz_abs"], package=st["package"],
                           file=st["file"], description=st["description"])
            diam = 2 * st["r99_A"]
        else:
            if realism:
                wts = np.array([REALISM_SHAPE_WEIGHTS[sh] for sh in PSEUDO_SHAPES])
                shape = PSEUDO_SHAPES[int(rng.choice(len(PSEUDO_SHAPES), p=wts / wts.sum()))]
            else:
                shape = PSEUDO_SHAPES[int(rng.integers(len(PSEUDO_SHAPES)))]
            n_res = int(round(math.exp(rng.uniform(math.log(400), math.log(6000)))))
            protein = dict(source="pseudo", shape=shape, n_res=n_res, seed=pseed, name=f"pseudo-{shape}-{n_res}")
            xyz, w = pseudo_model(shape, n_res, np.random.default_rng(pseed))
            diam = 2 * structure_radius(xyz, w)[1]
    box, apix, mask = choose_geometry(diam, rng)
    n_tot = int(math.exp(rng.uniform(math.log(1000), math.log(8000)))) if realism else int(rng.uniform(600, 3000))
    jf = rng.uniform(0.1, 0.7)
    kinds = list(junk_kinds or (JUNK_KINDS if realism else V3_JUNK_KINDS))
    nk = min(len(kinds), int(rng.choice([1, 2, 3, 3, 4, 4, 5, 5, 6, 6])))
    active = list(rng.choice(kinds, size=nk, replace=False))
    if realism and "blob" in kinds and "blob" not in active and rng.uniform() < 0.75:
        active[int(rng.integers(nk))] = "blob"
    props = rng.dirichlet(np.full(nk, 1.5))
    n_junk = int(round(jf * n_tot))
    cnt = rng.multinomial(n_junk, props)
    junk = {str(k): int(c) for k, c in zip(active, cnt) if c > 0}
    K = int(rng.integers(4, 25))
    n_iter = int(rng.integers(10, 21))
    psi = float(rng.choice([10.0, 12.0, 16.0]))
    offr = int(rng.choice([3, 3, 4, 5]))
    d0 = rng.uniform(0.5, 1.5)
    spec = dict(
        protein=protein, box=box, angpix=apix, mask_diameter_A=mask, blur_A=round(rng.uniform(0.8, 2.0), 2),
        snr=round(math.exp(rng.uniform(math.log(snr_range[0]), math.log(snr_range[1]))), 4), n_good=n_tot - n_junk,
        n_mics=max(5, int(n_tot / rng.uniform(25, 80))), junk=junk,
        junk_contrast=round(math.exp(rng.uniform(math.log(0.4), math.log(1.5))), 3),
        grad_frac=round(rng.uniform(0, 0.3), 3), kv=float(rng.choice([300.0, 300.0, 300.0, 200.0])),
        cs=float(rng.choice([2.7, 2.7, 2.7, 0.01])), q0=float(rng.choice([0.1, 0.07])),
        defocus_um=[round(d0, 3), round(d0 + rng.uniform(0.7, 2.0), 3)], astig_A=[50, float(rng.uniform(200, 800))],
        shift_sd_px=round(rng.uniform(0.5, 2.0), 2), n_views=int(rng.integers(0, 11)),
        view_spread_deg=round(rng.uniform(5, 20), 1), frac_uniform=round(rng.uniform(0.1, 0.6), 2),
        K=K, n_iter=n_iter, tau2_fudge=2.0, psi_step=psi, offset_range=offr, offset_step=2,
        pool=30, threads=1, seed=int(rng.integers(1 << 30)), split=split, job_index=int(idx))
    if realism:  # from their own generator: the draws above stay those of the recipe's other choices
        spec.update(realism_options(np.random.default_rng([int(base_seed), int(idx), 1])), recipe=recipe)
    if budget:
        # shrink particles, classes and iterations together (floors 600, 4, 10) to fit the budget (s)
        def n_of(sp):
            return sp["n_good"] + sum(sp["junk"].values())
        kmin = min(spec["K"], 4)
        nmin = min(n_of(spec), 900)  # classes collapse more with few particles: shrink K and iterations first
        for _ in range(80):
            est = relion_seconds(box, n_of(spec), spec["K"], spec["n_iter"], spec["psi_step"], offr)
            if est <= budget:
                break
            if spec["psi_step"] < 16:
                spec["psi_step"] = 16.0
                continue
            opts = [(w, k) for w, k, ok in ((1.5, "n", n_of(spec) * 0.93 >= nmin), (1.0, "K", spec["K"] > kmin),
                                            (3.0, "it", spec["n_iter"] > 10)) if ok]
            if not opts:
                if spec["offset_range"] > 3:
                    spec["offset_range"] = offr = 3
                    continue
                break
            wsum = sum(w for w, _ in opts)
            pick = opts[int(rng.choice(len(opts), p=[w / wsum for w, _ in opts]))][1]
            if pick == "n":
                spec["n_good"] = max(1, int(round(spec["n_good"] * 0.93)))
                spec["junk"] = {k: max(1, int(round(v * 0.93))) for k, v in spec["junk"].items()}
            elif pick == "K":
                spec["K"] -= 1
            else:
                spec["n_iter"] -= 1
        # RELION 3.1 empties most classes when they would hold < ~50 particles each
        spec["K"] = int(min(spec["K"], max(4, n_of(spec) // 60)))
        spec["n_mics"] = max(5, min(spec["n_mics"], n_of(spec) // 20))
        spec["est_refine_seconds"] = round(relion_seconds(box, n_of(spec), spec["K"], spec["n_iter"],
                                                          spec["psi_step"], spec["offset_range"]), 1)
    if ctf_intact_first_peak and spec.get("ctf_correct", True):
        spec["ctf_intact_first_peak"] = True
    return spec


def run_many(corpus, n, structures_dir=None, base_seed=1, heldout_idx=(8, 28, 48), budget=None,
             relion_timeout=900, retry_failed=False, stop_after_s=None, log=print, snr_range=(0.03, 0.3),
             junk_kinds=None, classifier="relion", recipe="v3", keep=False, only=None, freeze_to=None,
             ctf_intact_first_peak=False):
    """Build jobs CORPUS/job0001..jobNNNN one at a time (skipping finished or failed ones).

    ``only``: job numbers to build instead of 1..n (each job's spec depends on its number and
    ``base_seed`` alone, so this rebuilds chosen jobs of an earlier corpus).

    A job is built in CORPUS/jobNNNN.tmp and renamed when complete; a crash removes it and
    writes CORPUS/failed/jobNNNN.log. ``classifier``: "relion" (relion_refine) or "quick"
    (ranker.develop.simulate.quickclass, not RELION; for volume, check it with ``compare``).
    ``keep``: keep particle stacks and all iterations (for ``python -m ranker.develop realism``).
    ``freeze_to``: freeze each finished job to FREEZE_TO/<corpus name>/jobNNNN as it is made
    (:func:`ranker.develop.dataset.freeze_job`), so a corpus lost later leaves its labelled classes;
    a job that cannot be frozen is logged and kept. ``ctf_intact_first_peak``: see :func:`sample_spec`."""
    os.makedirs(corpus, exist_ok=True)
    structures = {}
    if structures_dir and os.path.exists(os.path.join(structures_dir, "structures.json")):
        structures = json.load(open(os.path.join(structures_dir, "structures.json")))
        for st in structures.values():
            st["npz_abs"] = os.path.abspath(os.path.join(structures_dir, st["npz"]))
    log(f"corpus {corpus}: {n} jobs, structures: {', '.join(sorted(structures)) or 'none (pseudo only)'}")
    t_all = time.time()
    os.makedirs(os.path.join(corpus, "failed"), exist_ok=True)
    for idx in (sorted(set(only)) if only else range(1, n + 1)):
        if stop_after_s and time.time() - t_all > stop_after_s:
            log("time limit reached")
            break
        name = f"job{idx:04d}"
        final = os.path.join(corpus, name)
        tmp = final + ".tmp"
        flog = os.path.join(corpus, "failed", name + ".log")
        frozen = os.path.join(freeze_to, os.path.basename(os.path.abspath(corpus)), name) if freeze_to else None
        if os.path.exists(os.path.join(final, "corpus_job.json")):
            if frozen:
                _freeze(final, frozen, log, only_if_missing=True)  # made before --freeze was given
            continue
        if os.path.exists(flog) and not retry_failed:
            continue
        for d in (tmp, final):
            if os.path.exists(d):
                shutil.rmtree(d)
        spec = sample_spec(idx, base_seed, structures, heldout_idx, budget, snr_range, junk_kinds, recipe,
                           ctf_intact_first_peak)
        spec["classifier"] = classifier
        log(f"[{time.strftime('%H:%M:%S')}] {name} ({spec['split']}): {spec['protein']['name']} box {spec['box']} "
            f"x {spec['angpix']} A, SNR {spec['snr']}, good {spec['n_good']}, junk {spec['junk']}, "
            f"K {spec['K']}, iter {spec['n_iter']}")
        try:
            info = build_project(spec, tmp, log=log, relion_timeout=relion_timeout, keep=keep)
            info["job"] = name
            with open(os.path.join(tmp, "corpus_job.json"), "w") as f:
                json.dump(info, f, indent=1, default=json_default)
            os.rename(tmp, final)
            cs = info["class_summary"]
            log(f"  done in {info['seconds_total']:.0f} s: classes good {cs['good']}, bad {cs['bad']}, "
                f"mixed {cs['mixed']}, empty {cs['empty']}")
            if frozen:
                _freeze(final, frozen, log)
        except KeyboardInterrupt:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as e:  # noqa: BLE001 - record and go on with the next job
            with open(flog, "w") as f:
                f.write(json.dumps(spec, default=json_default, indent=1) + "\n")
                f.write(traceback.format_exc())
            shutil.rmtree(tmp, ignore_errors=True)
            log(f"  FAILED: {str(e)[:500]}")


def _freeze(job_dir, dest, log, only_if_missing=False) -> None:
    from ranker.develop.dataset import freeze_job, is_frozen

    if only_if_missing and is_frozen(dest):
        return
    try:
        freeze_job(job_dir, dest)
        log(f"  frozen to {dest}")
    except Exception as e:  # noqa: BLE001 - the job itself is complete; say so and go on
        log(f"  freeze to {dest} FAILED: {str(e)[:300]}")


def summarise(corpus, per_job=False):
    """Print progress of a corpus: jobs, splits, wall times and class counts."""
    jobs = sorted(glob.glob(os.path.join(corpus, "job*", "corpus_job.json")))
    tot = Counter()
    splits = Counter()
    secs = []
    prots = Counter()
    for j in jobs:
        info = json.load(open(j))
        d = os.path.dirname(j)
        rows = read_class_truth(d)
        cs = class_summary(rows)
        big = class_summary([r for r in rows if r["n_particles"] >= 10])
        for k in ("good", "bad", "mixed"):
            tot[("all", k + ">=10")] += big[k]
        splits[info["split"]] += 1
        prots[info["protein"]["name"].split("-")[0] if info["protein"]["source"] == "pdb" else "pseudo"] += 1
        secs.append(info["seconds_total"])
        for k, v in cs.items():
            tot[(info["split"], k)] += v
            tot[("all", k)] += v
        if per_job:
            print(f"{os.path.basename(d)} {info['split']:8s} {info['protein']['name']:28s} box {info['box']:3d} "
                  f"{info['angpix']:.2f}A snr {info['snr']:.3f} junk {info['junk_fraction']:.2f} K {info['K']:2d} "
                  f"{info['seconds_total']:5.0f}s  good {cs['good']:2d} bad {cs['bad']:2d} mixed {cs['mixed']:2d} "
                  f"empty {cs['empty']:2d}")
    nfail = len(glob.glob(os.path.join(corpus, "failed", "*.log")))
    running = [os.path.basename(p) for p in glob.glob(os.path.join(corpus, "job*.tmp"))]
    print(f"{len(jobs)} finished jobs ({dict(splits)}), {nfail} failed, in progress: {running or 'none'}")
    if secs:
        print(f"wall time per job: mean {np.mean(secs):.0f} s, min {min(secs):.0f}, max {max(secs):.0f}")
    for sp in ["all"] + sorted(splits):
        print(f"  {sp:8s} classes: good {tot[(sp, 'good')]}, bad {tot[(sp, 'bad')]}, mixed {tot[(sp, 'mixed')]}, "
              f"empty {tot[(sp, 'empty')]}")
    print(f"  classes with >= 10 particles: good {tot[('all', 'good>=10')]}, bad {tot[('all', 'bad>=10')]}, "
          f"mixed {tot[('all', 'mixed>=10')]}")
    print("  proteins:", dict(prots))
