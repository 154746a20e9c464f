"""One labelled RELION project: simulate particles and junk, run relion_refine Class2D
(RELION 3.1) from the project root, write truth.csv / class_truth.csv / corpus_job.json."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import time
from collections import Counter, defaultdict

import numpy as np

from ranker.develop.simulate.files import json_default, relion_version
from ranker.develop.simulate.optics import (
    apply_ctf,
    ctf2d,
    make_map,
    pref_euler,
    relion_normalise,
)
from ranker.develop.simulate.quickclass import quick_class2d
from ranker.develop.simulate.structures import (
    pseudo_model,
    read_structure_atoms,
    structure_radius,
)
from ranker.develop.simulate.truth import (
    analyse_class2d,
    cleanup,
    montage,
    strip_progress,
)
from ranker.develop.truth import JUNK_KINDS, class_summary
from ranker.runtime.geometry import centre_window, circle_mask
from ranker.runtime.mrc import read_stack, write_mrc
from ranker.runtime.star import format_block, write_star

# ======================================================================================
# one job
# ======================================================================================
DEFAULT_SPEC = dict(
    protein=dict(source="pseudo", shape="multidomain", n_res=2500, name="pseudo-multidomain"),
    box=64, angpix=3.0, blur_A=1.3, snr=0.1, n_good=1200, n_mics=30,
    junk=dict(noise=150, ice=80, edge=60, aggregate=80, offcentre=60, partial=50),
    junk_contrast=1.0, grad_frac=0.15, kv=300.0, cs=2.7, q0=0.1,
    defocus_um=[1.0, 2.5], astig_A=[100, 600], shift_sd_px=1.0,
    n_views=6, view_spread_deg=12.0, frac_uniform=0.3,
    K=12, n_iter=15, tau2_fudge=2.0, psi_step=16.0, offset_range=3, offset_step=2,
    mask_diameter_A=None, pool=30, threads=1, seed=1, split="train", classifier="relion",
)


class JobError(RuntimeError):
    pass


def _run(cmd, log, cwd, timeout=None):
    with open(log, "w") as lf:
        r = subprocess.run(cmd, cwd=cwd, stdout=lf, stderr=subprocess.STDOUT, timeout=timeout)
    if r.returncode != 0:
        tail = open(log).read()[-2000:]
        raise JobError(f"{' '.join(map(str, cmd))} failed (rc {r.returncode}):\n{tail}")


def optics_block(box, angpix, kv, cs, q0):
    cols = ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize", "rlnVoltage",
            "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize",
            "rlnImageDimensionality"]
    return format_block("optics", cols, [["opticsGroup1", 1, f"{angpix:.6f}", f"{kv:.6f}", f"{cs:.6f}", f"{q0:.6f}",
                              f"{angpix:.6f}", box, 2]])


ANG_COLS = ["rlnMicrographName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
            "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfBfactor",
            "rlnCtfScalefactor", "rlnPhaseShift", "rlnOpticsGroup"]


def _load_atoms(protein, rng):
    if protein["source"] == "pseudo":
        prng = np.random.default_rng(int(protein["seed"])) if "seed" in protein else rng
        return pseudo_model(protein["shape"], int(protein["n_res"]), prng)
    path = protein["path"]
    if path.endswith(".npz"):
        d = np.load(path)
        return d["xyz"], d["w"]
    return read_structure_atoms(path)


def fragment_atoms(xyz, w, rng, keep=(0.25, 0.65)):
    """A fragment of the complex: atoms on one side of a random plane, keeping a random
    fraction in ``keep`` of the atoms. Returns (xyz, w), not re-centred."""
    c = xyz - np.average(xyz, axis=0, weights=w)
    n = rng.normal(size=3)
    n /= np.linalg.norm(n)
    proj = c @ n
    q = rng.uniform(*keep)
    thr = np.quantile(proj, 1 - q)
    sel = proj >= thr
    return xyz[sel], w[sel]


def build_project(spec, proj_dir, log=print, relion_timeout=None, keep=False):
    """Simulate particles, run relion_refine Class2D and write the truth files in proj_dir.

    ``spec`` is a dict like DEFAULT_SPEC (lengths in A, box in px). proj_dir must not exist
    yet or be empty. keep=True keeps particle stacks, maps and all iterations (debugging).
    Returns the info dict that is also written to corpus_job.json."""
    t_start = time.time()
    s = dict(DEFAULT_SPEC)
    s.update(spec)
    s["junk"] = {k: int(v) for k, v in s["junk"].items() if int(v) > 0}
    for k in s["junk"]:
        if k not in JUNK_KINDS:
            raise ValueError(f"unknown junk kind {k}")
    os.makedirs(proj_dir, exist_ok=True)
    P = lambda *a: os.path.join(proj_dir, *a)  # noqa: E731
    os.makedirs(P("Simulated", "Particles"), exist_ok=True)
    rng = np.random.default_rng(int(s["seed"]))
    box, apix = int(s["box"]), float(s["angpix"])
    if box % 2:
        raise ValueError("box must be even")
    kv, cs, q0 = float(s["kv"]), float(s["cs"]), float(s["q0"])

    # ---- structure and maps
    t0 = time.time()
    xyz, w = _load_atoms(s["protein"], rng)
    rmax, r99 = structure_radius(xyz, w)
    prot_diam = 2 * r99
    mask_d = s["mask_diameter_A"] or min(0.95 * box * apix, 1.15 * prot_diam + 4 * apix)
    if mask_d >= box * apix:
        raise ValueError(f"mask diameter {mask_d:.0f} A does not fit the box {box * apix:.0f} A")
    vol = make_map(xyz, w, box, apix, float(s["blur_A"]), normalise=False)
    peak = float(vol.max())
    vol /= peak
    write_mrc(P("Simulated", f"ref_box{box}.mrc"), vol, apix)
    big = np.zeros((2 * box,) * 3, np.float32)
    q = box // 2
    big[q:q + box, q:q + box, q:q + box] = vol
    write_mrc(P("Simulated", f"ref_box{2 * box}.mrc"), big, apix)
    del big
    n_partial = s["junk"].get("partial", 0)
    frag_info = []
    if n_partial:
        for fi in range(2):
            fx, fw = fragment_atoms(xyz, w, rng)
            # re-centred on the fragment's own centroid, same density scale as the whole complex
            fvol = make_map(fx, fw, box, apix, float(s["blur_A"]), normalise=False) / peak
            write_mrc(P("Simulated", f"frag{fi + 1}_box{box}.mrc"), fvol, apix)
            frag_info.append(dict(n_atoms=int(len(fx)), mass_frac=round(float(fw.sum() / w.sum()), 3)))
    map_info = dict(protein=s["protein"], n_atoms=int(len(xyz)), approx_mass_kDa=round(float(w.sum()) / 7.0 * 14 / 1000, 1),
                    max_radius_A=round(rmax, 1), r99_A=round(r99, 1), protein_diameter_A=round(prot_diam, 1),
                    mask_diameter_A=round(mask_d, 1), fragments=frag_info, seconds=round(time.time() - t0, 1))
    log(f"  map: {map_info['n_atoms']} atoms, diameter {prot_diam:.0f} A, mask {mask_d:.0f} A, "
        f"box {box} x {apix:.2f} A = {box * apix:.0f} A ({time.time() - t0:.1f} s)")

    # ---- micrographs, orientations
    nm = int(s["n_mics"])
    d0, d1 = s["defocus_um"]
    mics = []
    for m in range(nm):
        dfm = rng.uniform(d0, d1) * 1e4
        ast = rng.uniform(*s["astig_A"])
        mics.append((f"Simulated/Micrographs/mic{m + 1:03d}.mrc", dfm + ast / 2, dfm - ast / 2,
                     float(rng.uniform(-180, 180))))

    def ang_rows(n, shift_sd_px, mic_idx=None):
        rot, tilt, psi, view = pref_euler(rng, n, int(s["n_views"]), float(s["view_spread_deg"]),
                                          float(s["frac_uniform"]))
        if mic_idx is None:
            mic_idx = rng.integers(0, nm, n)
        ox = rng.normal(0, shift_sd_px, n) * apix
        oy = rng.normal(0, shift_sd_px, n) * apix
        rows = []
        for i in range(n):
            m = mics[mic_idx[i]]
            rows.append([m[0], f"{rot[i]:.4f}", f"{tilt[i]:.4f}", f"{psi[i]:.4f}", f"{ox[i]:.4f}", f"{oy[i]:.4f}",
                         f"{m[1]:.2f}", f"{m[2]:.2f}", f"{m[3]:.2f}", "0.0", "1.0", "0.0", 1])
        return rows, np.asarray(mic_idx), view

    ng = int(s["n_good"])
    good_rows, good_mic, good_view = ang_rows(ng, float(s["shift_sd_px"]))
    write_star(P("Simulated", "good_ang.star"), [optics_block(box, apix, kv, cs, q0), format_block("particles", ANG_COLS, good_rows)])
    nsub = min(ng, 300)
    write_star(P("Simulated", "good_sub.star"), [optics_block(box, apix, kv, cs, q0), format_block("particles", ANG_COLS, good_rows[:nsub])])
    # aggregates: up to 4 members sharing a micrograph; off-centre: 1 projection; all in box 2N
    nag, noff = s["junk"].get("aggregate", 0), s["junk"].get("offcentre", 0)
    ag_mic = rng.integers(0, nm, nag)
    jm = np.concatenate([np.repeat(ag_mic, 4), rng.integers(0, nm, noff)]).astype(int)
    junk_rows, junk_mic, _ = ang_rows(4 * nag + noff, 0.0, jm)
    if len(junk_rows):
        write_star(P("Simulated", "junk_ang.star"),
                   [optics_block(2 * box, apix, kv, cs, q0), format_block("particles", ANG_COLS, junk_rows)])
    part_rows = []
    if n_partial:
        part_rows, part_mic, _ = ang_rows(n_partial, float(s["shift_sd_px"]) * 1.5)
        half = (n_partial + 1) // 2
        write_star(P("Simulated", "frag1_ang.star"), [optics_block(box, apix, kv, cs, q0), format_block("particles", ANG_COLS, part_rows[:half])])
        if n_partial > half:
            write_star(P("Simulated", "frag2_ang.star"), [optics_block(box, apix, kv, cs, q0), format_block("particles", ANG_COLS, part_rows[half:])])

    # ---- relion_project: noise level for the SNR, then noisy good particles and clean junk projections
    t0 = time.time()
    sim = P("Simulated")
    _run(["relion_project", "--i", f"ref_box{box}.mrc", "--ang", "good_sub.star", "--o", "good_sub_clean", "--ctf"],
         P("Simulated", "project_sub.log"), sim)
    clean = read_stack(P("Simulated", "good_sub_clean.mrcs")).astype(np.float64)
    cm = circle_mask(box, min(prot_diam, box * apix) / 2 / apix)
    sig_var = float(np.mean([im[cm].var() for im in clean]))
    sigma = math.sqrt(sig_var / float(s["snr"]))
    del clean
    _run(["relion_project", "--i", f"ref_box{box}.mrc", "--ang", "good_ang.star", "--o", "good_noisy", "--ctf",
          "--add_noise", "--white_noise", f"{sigma:.6g}"], P("Simulated", "project_noisy.log"), sim)
    if len(junk_rows):
        _run(["relion_project", "--i", f"ref_box{2 * box}.mrc", "--ang", "junk_ang.star", "--o", "junk_clean", "--ctf"],
             P("Simulated", "project_junk.log"), sim)
    for fi in (1, 2):
        if os.path.exists(P("Simulated", f"frag{fi}_ang.star")):
            _run(["relion_project", "--i", f"frag{fi}_box{box}.mrc", "--ang", f"frag{fi}_ang.star", "--o",
                  f"frag{fi}_clean", "--ctf"], P("Simulated", f"project_frag{fi}.log"), sim)
    t_project = time.time() - t0
    log(f"  relion_project: noise sd {sigma:.4g} for SNR {s['snr']} ({t_project:.1f} s)")

    # ---- assemble images
    good = read_stack(P("Simulated", "good_noisy.mrcs"))
    measured = float(np.mean([im[~circle_mask(box, box * 0.45)].std() for im in good[:200]]))
    jproj = read_stack(P("Simulated", "junk_clean.mrcs")) if len(junk_rows) else None
    fproj = []
    for fi in (1, 2):
        if os.path.exists(P("Simulated", f"frag{fi}_clean.mrcs")):
            fproj.append(read_stack(P("Simulated", f"frag{fi}_clean.mrcs")))
    fproj = np.concatenate(fproj) if fproj else None
    n = box
    sig_sd = math.sqrt(sig_var)
    jc = float(s["junk_contrast"])
    y, x = (np.indices((n, n)) - n // 2).astype(float)
    diam_px = prot_diam / apix
    ctf_cache = {}

    def ctf_for(mi):
        if mi not in ctf_cache:
            m = mics[mi]
            ctf_cache[mi] = ctf2d(2 * n, apix, m[1], m[2], m[3], kv, cs, q0)
        return ctf_cache[mi]

    def wn():
        return rng.normal(0, sigma, (n, n))

    def gradient(amp):
        t = rng.uniform(0, 2 * np.pi)
        return amp * sig_sd * (np.cos(t) * x + np.sin(t) * y) / n

    def crop_shift(img2n, dx, dy):
        return centre_window(np.roll(np.roll(img2n, int(round(dy)), axis=0), int(round(dx)), axis=1), n)

    from scipy.ndimage import gaussian_filter

    items = []  # (image, kind, mic index, extra)
    gcols = ANG_COLS
    for i in range(ng):
        r = dict(zip(gcols, good_rows[i]))
        img = good[i].astype(np.float64)
        if rng.uniform() < float(s["grad_frac"]):
            img = img + gradient(rng.uniform(0.1, 0.5))
        items.append((img, "good", int(good_mic[i]), dict(view=int(good_view[i]), rot=r["rlnAngleRot"],
                      tilt=r["rlnAngleTilt"], psi=r["rlnAnglePsi"], ox=r["rlnOriginXAngst"], oy=r["rlnOriginYAngst"])))
    del good
    J = s["junk"]
    for _ in range(J.get("noise", 0)):
        mi = int(rng.integers(nm))
        img = wn()
        extra = {}
        if rng.uniform() < 0.4:
            img += gradient(rng.uniform(0.2, 0.8))
        if rng.uniform() < 0.3:  # faint low-frequency ice-thickness texture
            tex = gaussian_filter(rng.normal(0, 1, (n, n)), n / 8)
            img += 0.5 * sig_sd * tex / max(tex.std(), 1e-9)
        items.append((img, "noise", mi, extra))
    for _ in range(J.get("ice", 0)):
        mi = int(rng.integers(nm))
        sig = np.zeros((n, n))
        nb = int(rng.integers(1, 4))
        for _b in range(nb):
            cx, cy = rng.uniform(-0.45, 0.45, 2) * n
            if rng.uniform() < 0.3:  # small dense sphere (ethane / crystalline ice particle)
                rx = ry = rng.uniform(0.05, 0.15) * n
                sharp = 12
            else:
                rx, ry = rng.uniform(0.08, 0.35, 2) * n
                sharp = rng.uniform(4, 10)
            th = rng.uniform(0, np.pi)
            xr = (x - cx) * np.cos(th) + (y - cy) * np.sin(th)
            yr = -(x - cx) * np.sin(th) + (y - cy) * np.cos(th)
            d = np.sqrt((xr / rx) ** 2 + (yr / ry) ** 2)
            blob = 1 / (1 + np.exp((d - 1) * sharp))
            sign = 1 if rng.uniform() < 0.8 else -1
            sig += sign * jc * rng.uniform(1.5, 4) * sig_sd * blob
        sig = 0.5 * sig + 0.5 * apply_ctf(sig, ctf_for(mi))
        items.append((sig + wn(), "ice", mi, dict(n_members=nb)))
    for _ in range(J.get("edge", 0)):
        mi = int(rng.integers(nm))
        t = rng.uniform(0, 2 * np.pi)
        off = rng.uniform(-0.35, 0.35) * n
        if rng.uniform() < 0.5:  # curved edge of a hole (radius 0.6-4 box)
            R = rng.uniform(0.6, 4.0) * n
            cx, cy = (R + off) * np.cos(t), (R + off) * np.sin(t)
            dist = R - np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        else:
            dist = np.cos(t) * x + np.sin(t) * y - off
        step = 1 / (1 + np.exp(-dist / rng.uniform(0.5, 1.5)))
        texture = gaussian_filter(rng.normal(0, 1, (n, n)), rng.uniform(1.0, 3.0))
        texture /= texture.std()
        sig = jc * rng.uniform(2, 5) * sig_sd * step * (1 + 0.3 * texture)
        sig = apply_ctf(sig, ctf_for(mi)) + 0.5 * sig
        items.append((sig + wn(), "edge", mi, {}))
    for k in range(nag):
        mi = int(junk_mic[4 * k])
        m = int(rng.choice([2, 2, 3, 3, 4]))
        cx, cy = rng.normal(0, 2, 2)
        sig = crop_shift(jproj[4 * k], cx, cy)
        for j in range(1, m):
            r = rng.uniform(0.35, 0.75) * diam_px
            t = rng.uniform(0, 2 * np.pi)
            sig = sig + crop_shift(jproj[4 * k + j], cx + r * np.cos(t), cy + r * np.sin(t))
        items.append((sig + wn(), "aggregate", mi, dict(n_members=m)))
    for k in range(noff):
        idx = 4 * nag + k
        mi = int(junk_mic[idx])
        r = rng.uniform(0.25, 0.5) * n
        t = rng.uniform(0, 2 * np.pi)
        sig = crop_shift(jproj[idx], r * np.cos(t), r * np.sin(t))
        items.append((sig + wn(), "offcentre", mi, dict(shift_px=round(float(r), 2))))
    for k in range(n_partial):
        mi = int(part_mic[k])
        items.append((fproj[k] + wn(), "partial", mi, dict(fragment=1 if k < (n_partial + 1) // 2 else 2)))
    del jproj, fproj

    # ---- normalise, write per-micrograph stacks and the shuffled STAR file
    bg_r = 0.75 * n / 2
    order = rng.permutation(len(items))
    per_mic = defaultdict(list)
    for o in order:
        per_mic[items[o][2]].append(o)
    name_of = {}
    for mi, lst in sorted(per_mic.items()):
        fn = f"Simulated/Particles/mic{mi + 1:03d}.mrcs"
        stack = np.stack([relion_normalise(items[o][0], bg_r) for o in lst]).astype(np.float32)
        write_mrc(P(fn), stack, apix)
        for j, o in enumerate(lst):
            name_of[o] = f"{j + 1:06d}@{fn}"
    pcols = ["rlnImageName", "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU",
             "rlnDefocusV", "rlnDefocusAngle", "rlnCtfBfactor", "rlnCtfScalefactor", "rlnPhaseShift",
             "rlnOpticsGroup"]
    rows, truth = [], []
    tkeys = ("view", "rot", "tilt", "psi", "ox", "oy", "n_members", "shift_px", "fragment")
    for o in order:
        img, kind, mi, extra = items[o]
        m = mics[mi]
        cx, cy = rng.uniform(100, 3900, 2)
        rows.append([name_of[o], m[0], f"{cx:.1f}", f"{cy:.1f}", f"{m[1]:.2f}", f"{m[2]:.2f}", f"{m[3]:.2f}",
                     "0.000000", "1.000000", "0.000000", 1])
        truth.append(dict(rlnImageName=name_of[o], kind=kind, rlnMicrographName=m[0],
                          **{k: extra.get(k, "") for k in tkeys}))
    del items
    os.makedirs(P("Import", "job001"), exist_ok=True)
    write_star(P("Import", "job001", "particles.star"), [optics_block(box, apix, kv, cs, q0), format_block("particles", pcols, rows)])
    with open(P("truth.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(truth[0].keys()))
        wr.writeheader()
        wr.writerows(truth)
    counts = dict(Counter(t["kind"] for t in truth))
    log(f"  particles: {len(truth)} {counts}; noise sd measured {measured:.4g}")

    # ---- 2D classification: real relion_refine, or the quick in-Python stand-in (quickclass)
    os.makedirs(P("Class2D", "job002"), exist_ok=True)
    K, it = int(s["K"]), int(s["n_iter"])
    if s["classifier"] not in ("relion", "quick"):
        raise ValueError(f"unknown classifier {s['classifier']!r} (relion or quick)")
    t0 = time.time()
    if s["classifier"] == "quick":
        cmd = [quick_class2d(proj_dir, s, mask_d, rng, log)]
    else:
        cmd = _relion_class2d(proj_dir, s, mask_d, relion_timeout)
    t_refine = time.time() - t0
    log(f"  {'relion_refine' if s['classifier'] == 'relion' else 'quickclass'} K={K} iter={it}: {t_refine:.0f} s")

    # ---- truth per class, montage, clean-up
    class_rows = analyse_class2d(proj_dir, it)
    try:
        montage(proj_dir, it, class_rows, P("classes_montage.png"))
    except Exception as e:  # matplotlib missing: not essential
        log(f"  montage skipped: {e}")
    if not keep:
        cleanup(proj_dir, it)
    strip_progress(P("Class2D", "job002", "run.out"))
    summ = class_summary(class_rows)
    info = dict(
        spec=s, split=s["split"], protein=s["protein"], map=map_info, box=box, angpix=apix,
        box_A=round(box * apix, 1), snr=float(s["snr"]), noise_sigma=sigma, signal_var=sig_var,
        noise_sigma_measured=measured, counts=counts, n_particles=len(truth),
        junk_fraction=round(1 - counts.get("good", 0) / len(truth), 4), K=K, n_iter=it,
        classifier=s["classifier"], relion_command=" ".join(cmd),
        relion_version=relion_version() if s["classifier"] == "relion" else "none (quickclass, not RELION)",
        seconds_project=round(t_project, 1), seconds_refine=round(t_refine, 1),
        seconds_total=round(time.time() - t_start, 1), class_summary=summ,
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        note=(("relion_refine was run directly from the project root (not through relion_pipeliner); "
               if s["classifier"] == "relion" else
               "classes made by ranker.develop.simulate.quickclass (in-Python stand-in, NOT relion_refine); ")
              + "Import/job001/particles.star is the simulated particle STAR file; particle stacks deleted"))
    with open(P("corpus_job.json"), "w") as f:
        json.dump(info, f, indent=1, default=json_default)
    return info


def _relion_class2d(proj_dir, s, mask_d, relion_timeout):
    """Run relion_refine 2D classification from the project root; returns the command (list)."""
    P = lambda *a: os.path.join(proj_dir, *a)  # noqa: E731
    K, it = int(s["K"]), int(s["n_iter"])
    cmd = ["relion_refine", "--o", "Class2D/job002/run", "--i", "Import/job001/particles.star",
           "--dont_combine_weights_via_disc", "--preread_images", "--pool", str(int(s["pool"])), "--pad", "2",
           "--ctf", "--iter", str(it), "--tau2_fudge", f"{float(s['tau2_fudge']):g}",
           "--particle_diameter", f"{mask_d:.0f}", "--K", str(K), "--flatten_solvent", "--zero_mask",
           "--oversampling", "1", "--psi_step", f"{float(s['psi_step']):g}", "--offset_range",
           f"{float(s['offset_range']):g}", "--offset_step", f"{float(s['offset_step']):g}",
           "--allow_coarser_sampling", "--norm", "--scale", "--j", str(int(s["threads"]))]
    with open(P("Class2D", "job002", "note.txt"), "w") as f:
        f.write(f" ++++ Executing new job on {time.ctime()}\n ++++ with the following command(s): \n"
                f"{' '.join(cmd)}\n ++++ \n")
    with open(P("Class2D", "job002", "run.out"), "w") as fo, open(P("Class2D", "job002", "run.err"), "w") as fe:
        try:
            r = subprocess.run(cmd, cwd=proj_dir, stdout=fo, stderr=fe, timeout=relion_timeout)
        except subprocess.TimeoutExpired:
            raise JobError(f"relion_refine exceeded {relion_timeout} s")
    final = P("Class2D", "job002", f"run_it{it:03d}_model.star")
    if r.returncode != 0 or not os.path.exists(final):
        err = open(P("Class2D", "job002", "run.err")).read()[-2000:]
        raise JobError(f"relion_refine failed (rc {r.returncode}): {err}")
    return cmd
