"""A fast in-Python stand-in for ``relion_refine`` 2D classification of a simulated project.

Used for volume (``--classifier quick`` of ``python -m ranker.simulate job/spec/many``); it is
**not RELION** and its classes must be checked against RELION-classified jobs before they are
trusted (``python -m ranker.simulate compare``; table in models/MODEL_CARD.md).

What it does, per job (about 5-20 s where relion_refine takes minutes):

1. **Membership** is drawn from each particle's truth, as RELION 3.1's classes look in our
   corpus: particles are grouped by what they are (junk kind; good particles by preferred view),
   the K classes are shared out over the groups (bigger groups get more classes; small groups
   none, their particles are absorbed), a random part of the classes stays empty, and a
   job-level fraction of particles (more at low SNR) lands in a class of another group.
2. **Alignment** is a real search: a class of mostly good particles starts from its members'
   in-plane truth-aligned average, any other class from one low-pass filtered member (as a
   reference-free start would); then three rounds align every member to the class average
   (in-plane rotation in 10 deg steps x translations within ``offset_range``, by FFT
   cross-correlation of phase-flipped images at <= 48 px).
3. **Averaging** is CTF-corrected (sum CTF x image / sum CTF^2) and regularised as a MAP
   estimate: SSNR = ``tau2_fudge`` x tau2 x CTF^2 / sigma2 with tau2 re-estimated from the
   regularised average's own power for ``n_iter`` rounds (so, as in relion_refine, classes whose
   members agree keep their signal and unaligned noise fades), nothing beyond the job's current
   image size (best half-set FRC resolution of any class + 10 shells), masked with a soft circle of
   the particle diameter (zero outside), as RELION's references are.
4. **Metadata**: ``rlnEstimatedResolution`` is the shell before that SSNR drops below 1
   (RELION's rule), written with ``data_model_class_<k>`` SSNR tables;
   ``rlnAccuracyRotations`` / ``rlnAccuracyTranslationsAngst`` are the rotation (deg) / shift (A)
   at which the class average changes by more than the noise of ``ACCURACY_PARTICLES`` particles
   (a chi-square of 1 over the CTF-weighted spectrum; the constant sets the scale only);
   ``rlnClassDistribution`` is the member fraction.

Output: ``Class2D/job002/run_itNNN_{optimiser,model,data}.star`` and ``run_itNNN_classes.mrcs`` in
RELION 3.1's layout, so everything downstream (truth, features, training, evaluation) reads it
like a relion_refine job. Units: pixel size and resolutions in A, angles in deg.
"""
from __future__ import annotations

import math
import os
import numpy as np
from scipy import ndimage

from ranker.develop.simulate.optics import ctf2d
from ranker.develop.truth import read_particle_truth
from ranker.runtime.fourier import resize_map
from ranker.runtime.geometry import soft_circle_mask
from ranker.runtime.mrc import read_stack, write_mrc
from ranker.runtime.star import format_block, read_star, write_star

ALIGN_PX = 48              # alignment search box (px); bigger boxes are Fourier-cropped to this
ROT_STEP_DEG = 10.0
ALIGN_ROUNDS = 3
ACCURACY_PARTICLES = 3.0   # noise of this many particles sets the accuracy scale (see module doc)
MIX_AT_SNR_0_1 = (0.05, 0.30)  # job-level fraction of particles put in another group's class


MASK_EDGE_PX = 5           # soft edge of the class-average mask, as RELION's --width_mask_edge


def _shell_index(n):
    f = np.fft.fftfreq(n) * n
    return np.rint(np.hypot(*np.meshgrid(f, f))).astype(int)


def assign_classes(groups, K, snr, rng):
    """Class number (1..K) per particle from its group label (list of str), as RELION 3.1's
    classes of our corpus look: classes shared out by group size, some empty, some mixing.
    Returns (class numbers int array, mixing fraction used)."""
    labels = sorted(set(groups))
    idx = {g: np.where(np.asarray(groups) == g)[0] for g in labels}
    n_empty = int(rng.binomial(K, rng.uniform(0.1, 0.7)))  # RELION 3.1 left 41 % of corpus6's classes empty
    k_used = max(1, K - n_empty)
    w = np.array([len(idx[g]) ** 0.7 for g in labels], float)
    share = k_used * w / w.sum()
    n_cls = np.floor(share).astype(int)
    for j in np.argsort(-(share - n_cls))[:k_used - n_cls.sum()]:
        n_cls[j] += 1
    cls = np.zeros(len(groups), int)
    slots = rng.permutation(K) + 1
    nxt = 0
    owned = []
    for g, nc in zip(labels, n_cls):
        if nc == 0:
            continue
        mine = slots[nxt:nxt + nc]
        nxt += nc
        p = rng.dirichlet(np.full(nc, 2.0))
        cls[idx[g]] = rng.choice(mine, size=len(idx[g]), p=p)
        owned.extend(mine)
    orphans = np.where(cls == 0)[0]
    sizes = np.bincount(cls, minlength=K + 1)[1:].astype(float)
    if len(orphans):
        cls[orphans] = rng.choice(np.arange(1, K + 1), size=len(orphans), p=sizes / sizes.sum())
    lo, hi = MIX_AT_SNR_0_1
    mix = min(0.6, rng.uniform(lo, hi) * math.sqrt(0.1 / max(snr, 1e-3)))
    sizes = np.bincount(cls, minlength=K + 1)[1:].astype(float)
    moved = np.where(rng.uniform(size=len(cls)) < mix)[0]
    if len(moved) and sizes.sum():
        cls[moved] = rng.choice(np.arange(1, K + 1), size=len(moved), p=sizes / sizes.sum())
    return cls, mix


class _Particles:
    """The job's particle images (N, n, n), their CTFs and truth, read from the project."""

    def __init__(self, proj_dir, ctf_correct=True):
        self.ctf_correct = bool(ctf_correct)
        self.whiten = None          # set by quick_class2d for coloured noise: 1 / sqrt(noise power) (FFT layout)
        star = read_star(os.path.join(proj_dir, "Import", "job001", "particles.star"))
        self.optics_cols, self.optics_rows = star["optics"].labels, star["optics"].rows
        o = dict(zip(self.optics_cols, self.optics_rows[0]))
        self.pixel_size_A = float(o["rlnImagePixelSize"])
        self.kv, self.cs, self.q0 = (float(o[k]) for k in ("rlnVoltage", "rlnSphericalAberration",
                                                             "rlnAmplitudeContrast"))
        self.cols, self.rows = star["particles"].labels, star["particles"].rows
        truth = {r["rlnImageName"]: r for r in read_particle_truth(proj_dir)}
        c = {k: i for i, k in enumerate(self.cols)}
        stacks, imgs = {}, []
        for r in self.rows:
            i, path = r[c["rlnImageName"]].split("@", 1)
            if path not in stacks:
                stacks[path] = read_stack(os.path.join(proj_dir, path))
            imgs.append(stacks[path][int(i) - 1])
        self.images = np.asarray(imgs, np.float32)
        self._ctf = {}
        self.truth = [truth[r[c["rlnImageName"]]] for r in self.rows]
        self.defocus = np.array([[float(r[c["rlnDefocusU"]]), float(r[c["rlnDefocusV"]]),
                                  float(r[c["rlnDefocusAngle"]])] for r in self.rows])

    def ctf(self, i, n=None, round_=False):
        """CTF of particle i on an n x n un-shifted FFT grid (astigmatism averaged when round_);
        cached per defocus (particles of one micrograph share it). Without CTF correction (spec
        ``ctf_correct`` false, as relion_refine without --ctf) it is 1 everywhere: no phase flip for
        the alignment, plain averages."""
        if not self.ctf_correct:
            m = n or self.images.shape[-1]
            return np.ones((m, m))
        du, dv, da = self.defocus[i]
        if round_:
            du = dv = 0.5 * (du + dv)
        key = (n, round_, du, dv, da)
        if key not in self._ctf:
            self._ctf[key] = ctf2d(n or self.images.shape[-1], self.pixel_size_A, du, dv, da, self.kv, self.cs, self.q0)
        return self._ctf[key]


def _groups(P):
    """Group label per particle: junk kind, or good_<view> (uniform views: nearest preferred view)."""
    kinds = [t["kind"] for t in P.truth]
    views = np.array([int(t["view"]) if t["kind"] == "good" and t["view"] not in ("", None) else -2
                      for t in P.truth])
    dirs = {}
    for v in sorted(set(views[views >= 0])):
        m = views == v
        rot = np.deg2rad([float(P.truth[i]["rot"]) for i in np.where(m)[0]])
        tilt = np.deg2rad([float(P.truth[i]["tilt"]) for i in np.where(m)[0]])
        d = np.stack([np.sin(tilt) * np.cos(rot), np.sin(tilt) * np.sin(rot), np.cos(tilt)], 1).mean(0)
        dirs[v] = d / max(np.linalg.norm(d), 1e-9)
    out = []
    for i, k in enumerate(kinds):
        if k != "good":
            out.append(k)
            continue
        v = views[i]
        if v < 0 and dirs:
            rot, tilt = np.deg2rad(float(P.truth[i]["rot"])), np.deg2rad(float(P.truth[i]["tilt"]))
            d = np.array([np.sin(tilt) * np.cos(rot), np.sin(tilt) * np.sin(rot), np.cos(tilt)])
            v = max(dirs, key=lambda u: abs(dirs[u] @ d))
        out.append(f"good_{v}")
    return out


def _flip(P, members, m):
    """Phase-flipped, Fourier-cropped (m px) images of the members (whitened first when the job's
    noise is coloured, as relion_refine weights every frequency by its noise power)."""
    out = np.empty((len(members), m, m))
    w = 1.0 if P.whiten is None else P.whiten
    for j, i in enumerate(members):
        f = np.real(np.fft.ifft2(np.fft.fft2(P.images[i]) * np.sign(P.ctf(i)) * w))
        out[j] = resize_map(f, m) if m < f.shape[-1] else f
    return out


def _align(small, ref, max_shift_px):
    """Best (angle deg, dy, dx) per image: image ~ shift(rotate(ref, angle), (dy, dx))."""
    m = ref.shape[0]
    angles = np.arange(0, 360, ROT_STEP_DEG)
    R = np.conj(np.fft.rfft2(np.stack([ndimage.rotate(ref, a, reshape=False, order=1) for a in angles])))
    f = np.fft.fftfreq(m) * m
    ok = np.hypot(*np.meshgrid(f, f)) <= max_shift_px
    Fi = np.fft.rfft2(small)
    best = np.full(len(small), -np.inf)
    out = np.zeros((len(small), 3))
    for a0 in range(0, len(angles), 12):
        cc = np.fft.irfft2(Fi[:, None] * R[None, a0:a0 + 12], s=(m, m))
        cc[..., ~ok] = -np.inf
        flat = cc.reshape(len(small), -1)
        k = flat.argmax(1)
        v = flat[np.arange(len(small)), k]
        a_i, yx = np.divmod(k, m * m)
        dy, dx = np.divmod(yx, m)
        better = v > best
        best[better] = v[better]
        out[better, 0] = angles[a0 + a_i[better]]
        out[better, 1] = np.where(dy > m // 2, dy - m, dy)[better]
        out[better, 2] = np.where(dx > m // 2, dx - m, dx)[better]
    return out, best


def _unalign(img, angle, dy, dx):
    """Undo image ~ shift(rotate(ref, angle), (dy, dx)): back to the reference frame."""
    return ndimage.rotate(ndimage.shift(img, (-dy, -dx), order=1, mode="wrap"), -angle, reshape=False, order=1)


def _wiener(P, members, poses, scale):
    """CTF-corrected average (n x n) of members in the class frame, and sum of CTF^2 (FFT layout)."""
    n = P.images.shape[-1]
    num = np.zeros((n, n))
    den = np.zeros((n, n))
    for i, (a, dy, dx) in zip(members, poses):
        c = P.ctf(i)
        x = np.real(np.fft.ifft2(np.fft.fft2(P.images[i]) * c))
        num += _unalign(x, a, dy * scale, dx * scale)
        den += P.ctf(i, round_=True) ** 2
    return num, den


def _shell_mean(values, shells, nsh):
    return (np.bincount(shells.ravel(), values.ravel(), nsh + shells.shape[0])[:nsh]
            / np.maximum(np.bincount(shells.ravel(), None, nsh + shells.shape[0])[:nsh], 1))


def _raw_average(P, members, poses, scale):
    """Unregularised CTF-corrected average (FFT, n x n), its sum of CTF^2, and the shell where
    the half-set FRC (smoothed over 3 shells) first gives SSNR = 2 FRC / (1 - FRC) < 1."""
    n = P.images.shape[-1]
    nums, dens = [], []
    for h in (0, 1):
        sel = np.arange(len(members)) % 2 == h
        a, b = _wiener(P, [members[j] for j in np.where(sel)[0]], poses[sel], scale)
        nums.append(np.fft.fft2(a))
        dens.append(b)
    shells = _shell_index(n)
    nsh = n // 2 + 1
    H = [nu / (de + 1.0) for nu, de in zip(nums, dens)]
    cross = _shell_mean(np.real(H[0] * np.conj(H[1])), shells, nsh)
    p01 = _shell_mean(np.abs(H[0]) ** 2, shells, nsh) * _shell_mean(np.abs(H[1]) ** 2, shells, nsh)
    frc = np.nan_to_num(cross / np.sqrt(np.maximum(p01, 1e-30)))
    frc = np.clip(np.convolve(np.pad(frc, 1, mode="edge"), np.ones(3) / 3, mode="valid"), 0.0, 0.999)
    honest = 2 * frc / (1 - frc)
    shell = next((j - 1 for j in range(2, nsh) if honest[j] < 1), nsh - 1)
    den = dens[0] + dens[1]
    raw = (nums[0] + nums[1]) / np.maximum(den, 1e-3 * den.max())
    return raw, den, shell


def _map_average(raw, den, noise_F, tau2_fudge, n_iter, limit_shell, mask):
    """RELION-like MAP class average: tau2 is re-estimated from the regularised average's own
    power for n_iter iterations at fixed alignment (SSNR = fudge x tau2 x CTF^2 / sigma2), so
    classes whose aligned members agree (signal, or noise aligned to itself) keep a high SSNR,
    as relion_refine's do; nothing beyond ``limit_shell`` (the job's current image size).
    Returns (image n x n, SSNR per shell)."""
    n = raw.shape[0]
    shells = _shell_index(n)
    nsh = n // 2 + 1
    power = _shell_mean(np.abs(raw) ** 2, shells, nsh)
    weight = _shell_mean(den, shells, nsh) / noise_F      # CTF^2 / sigma2 per shell
    ssnr = tau2_fudge * power * weight                     # first guess: the raw average's power
    for _ in range(max(int(n_iter), 1)):
        ssnr = tau2_fudge * power * (ssnr / (1 + ssnr)) ** 2 * weight
    ssnr[limit_shell + 1:] = 0.0
    filt = ssnr / (1 + ssnr)
    img = np.real(np.fft.ifft2(raw * filt[np.minimum(shells, nsh - 1)] * (shells < nsh)))
    return img * mask, ssnr


def _accuracies(avg, ctf2_sum, n_members, pixel_size_A, noise_var):
    """(rotation deg, translation A): smallest change of the class average whose CTF-weighted
    power exceeds the noise of ACCURACY_PARTICLES particles (999 when none does)."""
    n = avg.shape[0]
    F = np.fft.fft2(avg)
    w = ctf2_sum / max(n_members, 1) / (noise_var * n * n * ACCURACY_PARTICLES)

    def chi2(G):
        return float((np.abs(F - G) ** 2 * w).sum())

    rot = 999.0
    for a in np.arange(0.5, 90.01, 0.5):
        if chi2(np.fft.fft2(ndimage.rotate(avg, a, reshape=False, order=1))) > 1:
            rot = float(a)
            break
    f = np.fft.fftfreq(n)
    FX, FY = np.meshgrid(f, f)
    tr = 999.0
    for d in np.arange(0.1, 20.01, 0.1):
        if 0.5 * (chi2(F * np.exp(-2j * np.pi * FX * d)) + chi2(F * np.exp(-2j * np.pi * FY * d))) > 1:
            tr = float(d) * pixel_size_A
            break
    return rot, tr


def _optimiser_general(it, mask_d_A, acc_rot, acc_tr, ctf_correct=True):
    return dict(rlnOutputRootName="Class2D/job002/run", rlnModelStarFile=f"Class2D/job002/run_it{it:03d}_model.star",
                rlnExperimentalDataStarFile=f"Class2D/job002/run_it{it:03d}_data.star",
                rlnOrientSamplingStarFile="None", rlnCurrentIteration=it, rlnNumberOfIterations=it,
                rlnDoSplitRandomHalves=0, rlnParticleDiameter=float(mask_d_A), rlnWidthMaskEdge=MASK_EDGE_PX,
                rlnDoZeroMask=1, rlnDoSolventFlattening=1, rlnDoAutoRefine=0, rlnDoSkipAlign=0,
                rlnOverallAccuracyRotations=float(acc_rot), rlnOverallAccuracyTranslationsAngst=float(acc_tr),
                rlnDoCorrectNorm=1, rlnDoCorrectScale=1, rlnDoCorrectCtf=int(bool(ctf_correct)), rlnDoIgnoreCtfUntilFirstPeak=0,
                rlnCtfDataArePhaseFlipped=0, rlnDoGradientRefine=0)


def _general_block(name, values):
    return format_block(name, list(values), [list(values.values())], loop=False)


def quick_class2d(proj_dir, s, mask_d_A, rng, log=print):
    """Classify the project's Import/job001/particles.star into Class2D/job002/run_itNNN_*
    (RELION 3.1 layout) as described in the module docstring. ``s`` is the job spec (K, n_iter,
    snr, tau2_fudge, offset_range). Returns a one-line description of what was run."""
    P = _Particles(proj_dir, s.get("ctf_correct", True))
    N, n = P.images.shape[0], P.images.shape[-1]
    K, it = int(s["K"]), int(s["n_iter"])
    groups = _groups(P)
    cls, mix = assign_classes(groups, K, float(s["snr"]), rng)
    m = min(n, ALIGN_PX)
    m -= m % 2
    scale = n / m
    max_shift = float(s["offset_range"]) / scale + 1
    mask = soft_circle_mask(n, mask_d_A / 2 / P.pixel_size_A, MASK_EDGE_PX)
    mask_m = soft_circle_mask(m, mask_d_A / 2 / P.pixel_size_A / scale, MASK_EDGE_PX)
    psi = np.array([float(t["psi"]) if t["kind"] == "good" and t["psi"] not in ("", None) else np.nan
                    for t in P.truth])
    # which sense of psi undoes the in-plane rotation (checked on the biggest good group)
    good_groups = [g for g in set(groups) if g.startswith("good")]
    sign = 1.0
    if good_groups:
        big = max(good_groups, key=groups.count)
        sel = [i for i, g in enumerate(groups) if g == big][:200]
        small = _flip(P, sel, m)
        power = [np.var(np.mean([ndimage.rotate(im, sg * psi[i], reshape=False, order=1)
                                 for im, i in zip(small, sel)], 0) * mask_m) for sg in (1.0, -1.0)]
        sign = 1.0 if power[0] >= power[1] else -1.0
    images = np.zeros((K, n, n))
    poses = np.zeros((N, 3))
    loglik = np.zeros(N)
    background = soft_circle_mask(n, 0.45 * n, 1) < 0.5
    noise_var = float(np.mean([im[background].var() for im in P.images[:200]]))
    noise_F = noise_var * n * n                 # white noise: the same power in every shell
    shells_n = _shell_index(n)
    if s.get("noise_model", "white") != "white":
        # coloured noise: its power per shell (the mean image power; signal is a small part at
        # these SNRs), used to whiten the alignment and to weight the MAP average, as RELION's sigma2
        power = _shell_mean(np.mean([np.abs(np.fft.fft2(im)) ** 2 for im in P.images[:500]], 0),
                            shells_n, n // 2 + 1)
        noise_F = power * (noise_F / power[1:].mean())
        P.whiten = 1 / np.sqrt(np.maximum(noise_F[np.minimum(shells_n, n // 2)], 1e-30) / noise_F[1:].mean())
    rows_classes, ssnr_tabs, acc_all, raws = [], {}, [], {}
    for k in range(1, K + 1):
        members = np.where(cls == k)[0]
        if len(members) == 0:
            continue
        small = _flip(P, members, m)
        init = np.where(np.isnan(psi[members]), 0.0, -sign * psi[members])
        p = np.stack([init, np.zeros(len(members)), np.zeros(len(members))], 1)
        best = np.zeros(len(members))
        if np.isnan(psi[members]).mean() > 0.5:
            # mostly junk: no pose to start from; like a reference-free start, the first reference
            # is one member, low-pass filtered, which breaks the rotational symmetry of the mean
            ref = ndimage.gaussian_filter(small[rng.integers(len(members))], 2.0) * mask_m
            p, best = _align(small, ref, max_shift)
        for _ in range(ALIGN_ROUNDS):
            ref = np.mean([_unalign(im, a, dy, dx) for im, (a, dy, dx) in zip(small, p)], 0) * mask_m
            p, best = _align(small, ref, max_shift)
        loglik[members] = best
        poses[members] = p
        raws[k] = _raw_average(P, list(members), p, scale)
    # the job's current resolution: the best half-set resolution of a class with >= 20 members;
    # RELION's current image size reaches 10 Fourier shells beyond it (rlnIncrementImageSize)
    nsh = n // 2 + 1
    big = [r[2] for k, r in raws.items() if (cls == k).sum() >= 20] or [r[2] for r in raws.values()] or [nsh - 1]
    limit = min(max(big) + 10, nsh - 1)
    for k in range(1, K + 1):
        if k not in raws:
            rows_classes.append((k, 0.0, 999.0, 999.0, 999.0))
            continue
        raw, den, _shell = raws[k]
        nk = int((cls == k).sum())
        avg, ssnr = _map_average(raw, den, noise_F, float(s["tau2_fudge"]), it, limit, mask)
        images[k - 1] = avg
        ssnr_tabs[k] = ssnr
        res_shell = next((j - 1 for j in range(1, len(ssnr)) if ssnr[j] < 1), len(ssnr) - 1)
        res_A = n * P.pixel_size_A / res_shell if res_shell > 0 else 999.0
        acc_rot, acc_tr = _accuracies(avg, den, nk, P.pixel_size_A, noise_var)
        acc_all.append((nk, acc_rot, acc_tr))
        rows_classes.append((k, nk / N, acc_rot, acc_tr, res_A))
    write_outputs(proj_dir, P, it, K, cls, poses * [1, scale, scale], loglik, images, rows_classes, ssnr_tabs,
                  mask_d_A, float(s["tau2_fudge"]), acc_all)
    desc = (f"quick in-Python 2D classification (ranker.develop.simulate.quickclass, not RELION): K={K}, "
            f"mixing {mix:.3f}, psi sense {sign:+.0f}, {ALIGN_ROUNDS} alignment rounds")
    log(f"  {desc}")
    return desc


def write_outputs(proj_dir, P, it, K, cls, poses, loglik, images, rows_classes, ssnr_tabs, mask_d_A,
                  tau2_fudge, acc_all):
    """Class2D/job002/run_itNNN_{classes.mrcs, model.star, data.star, optimiser.star}."""
    d = os.path.join(proj_dir, "Class2D", "job002")
    os.makedirs(d, exist_ok=True)
    root = os.path.join(d, f"run_it{it:03d}")
    n = images.shape[-1]
    write_mrc(root + "_classes.mrcs", images.astype(np.float32), P.pixel_size_A)
    wsum = sum(c for c, _, _ in acc_all) or 1
    acc_rot = sum(c * min(r, 999) for c, r, _ in acc_all) / wsum
    acc_tr = sum(c * min(t, 999) for c, _, t in acc_all) / wsum
    blocks = [_general_block("model_general", dict(
        rlnReferenceDimensionality=2, rlnDataDimensionality=2, rlnOriginalImageSize=n,
        rlnCurrentResolution=float(min(r[4] for r in rows_classes)), rlnCurrentImageSize=n, rlnPaddingFactor=2.0,
        rlnIsHelix=0, rlnPixelSize=float(P.pixel_size_A), rlnNrClasses=K, rlnNrBodies=1, rlnNrGroups=1,
        rlnTau2FudgeFactor=float(tau2_fudge)))]
    mc = ["rlnReferenceImage", "rlnClassDistribution", "rlnAccuracyRotations", "rlnAccuracyTranslationsAngst",
          "rlnEstimatedResolution", "rlnOverallFourierCompleteness", "rlnClassPriorOffsetX", "rlnClassPriorOffsetY"]
    blocks.append(format_block("model_classes", mc, [
        [f"{k:06d}@Class2D/job002/run_it{it:03d}_classes.mrcs", float(dist), float(ar), float(at), float(res),
         1.0, 0.0, 0.0] for k, dist, ar, at, res in rows_classes]))
    nsh = n // 2 + 1
    for k in range(1, K + 1):
        ssnr = ssnr_tabs.get(k, np.zeros(nsh))
        blocks.append(format_block(f"model_class_{k}", ["rlnSpectralIndex", "rlnResolution", "rlnAngstromResolution",
                                                        "rlnSsnrMap"],
                                   [[j, j / (n * P.pixel_size_A), (n * P.pixel_size_A / j) if j else 999.0,
                                     float(ssnr[j])] for j in range(nsh)]))
    # the one group's table and noise spectrum, as RELION writes them (the ranker refuses a model.star
    # without them: it would be one cut short)
    blocks.append(format_block("model_groups", ["rlnGroupNumber", "rlnGroupName", "rlnGroupNrParticles",
                                                "rlnGroupScaleCorrection"], [[1, "group_1", len(P.rows), 1.0]]))
    blocks.append(format_block("model_group_1", ["rlnSpectralIndex", "rlnResolution", "rlnSigma2Noise"],
                               [[j, j / (n * P.pixel_size_A), 1.0] for j in range(nsh)]))
    write_star(root + "_model.star", blocks)
    pcols = list(P.cols) + ["rlnGroupNumber", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                            "rlnOriginYAngst", "rlnClassNumber", "rlnNormCorrection", "rlnLogLikeliContribution",
                            "rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples"]
    prow = []
    for i, r in enumerate(P.rows):
        a, dy, dx = poses[i]
        prow.append(list(r) + [1, "0.000000", "0.000000", f"{a:.6f}", f"{dx * P.pixel_size_A:.6f}",
                               f"{dy * P.pixel_size_A:.6f}", int(cls[i]), "1.000000", f"{loglik[i]:.6e}",
                               "1.000000", 1])
    write_star(root + "_data.star", [format_block("optics", P.optics_cols, P.optics_rows),
                                     format_block("particles", pcols, prow)])
    write_star(root + "_optimiser.star",
               [_general_block("optimiser_general", _optimiser_general(it, mask_d_A, acc_rot, acc_tr, P.ctf_correct))])
