"""Training data that look real: the simulator's realism options do what they claim, leave earlier
specs' particles unchanged, and ``python -m ranker.develop realism`` measures simulated vs real boxes."""
import csv
import glob
import hashlib
import io
import json
import math
import os
from contextlib import redirect_stdout
from types import SimpleNamespace

import numpy as np
import pytest

from ranker.develop import realism as R
from ranker.develop.simulate import project as sp
from ranker.develop.simulate.corpus import sample_spec
from ranker.develop.simulate.noise import coloured_noise, real_spectrum
from ranker.develop.truth import read_class_truth
from ranker.runtime.mrc import read_stack, write_mrc
from ranker.runtime.star import format_block, read_star, write_star

# A spec written before the realism options, and what the simulator made of it then (commit 653d32c):
# per micrograph stack, the number of particles, sum of squares and sum of absolute values.
OLD_SPEC = {"protein": {"source": "pseudo", "shape": "dumbbell", "n_res": 800, "seed": 5, "name": "x"},
            "box": 32, "angpix": 5.0, "snr": 0.2, "n_good": 60,
            "junk": {"noise": 10, "ice": 8, "edge": 8, "aggregate": 8, "offcentre": 8, "partial": 8},
            "n_mics": 5, "K": 3, "n_iter": 3, "seed": 11, "classifier": "quick", "grad_frac": 0.3}
OLD_STACKS = {"mic001.mrcs": (18, 19188.659, 14984.26), "mic002.mrcs": (25, 27359.288, 21028.168),
              "mic003.mrcs": (27, 29101.576, 22647.255), "mic004.mrcs": (21, 22478.769, 17503.693),
              "mic005.mrcs": (19, 21154.922, 16107.407)}
OLD_TRUTH_SHA256 = "288fe5cf80a4b3f79923b4c2dac6111d874a8f79ab55607f6ec18a073898fb61"
# sha256 of json.dumps([sample_spec(i, 7, {}, budget=130) for i in 1..29], sort_keys=True) before the recipes
OLD_SAMPLE_SPEC_SHA256 = "f153b19289d1f3dad2e3b0d5f97bb33cb2bd2d99d93135a90b5d2f2dd68b661a"


def _stacks(proj):
    return {os.path.basename(f): read_stack(f) for f in sorted(glob.glob(os.path.join(proj, "Simulated/Particles/*.mrcs")))}


@pytest.fixture(scope="module")
def old_job(tmp_path_factory):
    proj = str(tmp_path_factory.mktemp("old") / "job")
    sp.build_project(OLD_SPEC, proj, log=lambda m: None, keep=True)
    return proj


def test_old_spec_gives_the_same_particles(old_job, tmp_path):
    stacks = _stacks(old_job)
    assert sorted(stacks) == sorted(OLD_STACKS)
    for name, (n, sq, ab) in OLD_STACKS.items():
        s = stacks[name].astype(np.float64)
        assert s.shape[0] == n
        assert float((s ** 2).sum()) == pytest.approx(sq, rel=1e-6)
        assert float(np.abs(s).sum()) == pytest.approx(ab, rel=1e-6)
    assert hashlib.sha256(open(os.path.join(old_job, "truth.csv"), "rb").read()).hexdigest() == OLD_TRUTH_SHA256
    # the new options at their defaults, written out, change nothing either
    explicit = dict(OLD_SPEC, noise_model="white", noise_colour=1.0, noise_stretch=1.0, ice_gradient=0.0,
                    crowd_frac=0.0, ctf_correct=True)
    again = str(tmp_path / "again")
    sp.build_project(explicit, again, log=lambda m: None, keep=True)
    for name, s in _stacks(again).items():
        assert np.array_equal(s, stacks[name])
    # class_truth.csv gains n_blob; a file written before it still reads (missing column = 0)
    rows = read_class_truth(old_job)
    assert all(r["n_blob"] == 0 and r["n_patch"] == 0 for r in rows)
    text = open(os.path.join(old_job, "class_truth.csv")).read().splitlines()
    header = text[0].split(",")
    i = header.index("n_blob")
    old = tmp_path / "oldcsv"
    old.mkdir()
    (old / "class_truth.csv").write_text("\n".join(",".join(v for j, v in enumerate(line.split(",")) if j != i)
                                                   for line in text) + "\n")
    assert [r["n_blob"] for r in read_class_truth(str(old))] == [0] * len(rows)


def test_v3_recipe_is_unchanged_and_realism_draws_the_options():
    a = [sample_spec(i, 7, {}, budget=130) for i in range(1, 30)]
    assert hashlib.sha256(json.dumps(a, sort_keys=True).encode()).hexdigest() == OLD_SAMPLE_SPEC_SHA256
    r = [sample_spec(i, 9, {}, budget=400, recipe="realism") for i in range(1, 201)]
    frac = lambda f: np.mean([bool(f(s)) for s in r])  # noqa: E731
    assert 0.7 < frac(lambda s: s["noise_model"] == "real") < 0.9
    assert 0.15 < frac(lambda s: not s["ctf_correct"]) < 0.35
    assert 0.35 < frac(lambda s: s["crowd_frac"] > 0) < 0.65
    assert 0.35 < frac(lambda s: s["ice_gradient"] > 0) < 0.65
    assert frac(lambda s: "blob" in s["junk"]) > 0.7
    shapes = [s["protein"]["shape"] for s in r]
    assert np.mean([sh in ("elongated", "multidomain", "dumbbell", "bent") for sh in shapes]) > 0.6
    n = [s["n_good"] + sum(s["junk"].values()) for s in r]
    assert np.median(n) > 1800  # larger jobs than v3's median (~1,500 before the budget)
    with pytest.raises(ValueError):
        sample_spec(1, 1, {}, recipe="v9")


def test_coloured_noise_has_the_measured_spectrum():
    freq, power = real_spectrum()
    sel = (freq >= 0.1) & (freq <= 0.9)
    measured_slope = np.polyfit(np.log(freq[sel]), np.log(power[sel]), 1)[0]
    assert measured_slope < -0.5  # the real background is far from white
    rng = np.random.default_rng(0)
    boxes = [coloured_noise(rng, 64, 2.0) for _ in range(200)]
    assert np.mean([b.std() for b in boxes]) == pytest.approx(2.0, rel=0.1)   # SNR keeps its meaning
    slopes = [R.box_stats(R.to_grid(b, 64))["slope"] for b in boxes]
    assert np.median(slopes) == pytest.approx(measured_slope, abs=0.12)
    white = [R.box_stats(R.to_grid(rng.normal(0, 1, (64, 64)), 64))["slope"] for _ in range(50)]
    assert abs(np.median(white)) < 0.1


def _canvas(noise_model="white", n=64, apix=4.0):
    optics = sp.Optics(n, apix, 300.0, 2.7, 0.1)
    mics = [("m1", 15000.0, 14000.0, 10.0), ("m2", 20000.0, 19500.0, -30.0)]
    xyz = np.random.default_rng(1).normal(0, 30, (2000, 3))
    maps = SimpleNamespace(xyz=xyz, w=np.ones(len(xyz)), protein_diameter_A=150.0)
    spec = dict(sp.DEFAULT_SPEC, noise_model=noise_model)
    return sp._Canvas(optics, mics, sp.Noise(1.0, 0.1, 0.0), 1.0, np.random.default_rng(2), spec, maps)


def _hf_fraction(img):
    p = np.abs(np.fft.fft2(img - img.mean())) ** 2
    f = np.fft.fftfreq(img.shape[0])
    r = np.hypot(*np.meshgrid(f, f)) / 0.5
    return p[r > 0.5].sum() / p.sum()


def test_blob_junk_is_featureless():
    c = _canvas()
    c.noise = lambda: np.zeros((c.n, c.n))   # the signal alone
    seen = set()
    blob_hf = []
    for _ in range(30):
        img, extra = sp.blob_junk(c, 0)
        seen.add(extra["variant"])
        blob_hf.append(_hf_fraction(img))
    assert seen == set(sp.BLOB_VARIANTS)
    particle = sp.apply_ctf(sp.centre_window(c.projection(1.3), c.n), c.ctf(0))
    assert max(blob_hf) < 0.01 < _hf_fraction(particle)


def test_ice_gradient_and_crowding():
    c = _canvas()
    items = [(np.zeros((c.n, c.n)), "good", i % 2, {}) for i in range(300)]
    out = sp.ice_fields(c, dict(sp.DEFAULT_SPEC, ice_gradient=0.6), items)
    yy, xx = np.indices((c.n, c.n)) - c.n // 2
    A = np.stack([np.ones(c.n * c.n), xx.ravel(), yy.ravel()], 1)
    ramps = [2 * math.hypot(*np.linalg.lstsq(A, im.ravel(), rcond=None)[0][1:]) * c.n for im, *_ in out]
    assert np.median(ramps) == pytest.approx(0.6, rel=0.35)   # in noise sd (sigma 1 here)
    # neighbours: density near the box edges, none at the centre
    y2, x2 = np.indices((2 * c.n, 2 * c.n)) - c.n
    disc = ((x2 ** 2 + y2 ** 2) < (0.4 * c.diameter_px) ** 2).astype(float)   # a particle at the 2N centre
    nb = sp.crowd_neighbours(c, np.stack([disc] * 3), 0, 3)
    centre = (xx ** 2 + yy ** 2) < (0.3 * c.diameter_px) ** 2
    assert nb[centre].max() == 0 and nb.max() > 0


def test_real_noise_crowded_job_without_ctf_correction(tmp_path, monkeypatch):
    spec = dict(OLD_SPEC, junk={"noise": 10, "blob": 20, "patch": 10}, noise_model="real", ice_gradient=0.3, crowd_frac=0.5,
                ctf_correct=False)
    proj = str(tmp_path / "job")
    info = sp.build_project(spec, proj, log=lambda m: None, keep=True)
    assert info["counts"] == {"good": 60, "noise": 10, "blob": 20, "patch": 10}
    assert os.path.exists(os.path.join(proj, "Simulated", "crowd_clean.mrcs"))
    opt = read_star(os.path.join(proj, "Class2D/job002/run_it003_optimiser.star"))["optimiser_general"]
    assert int(float(opt.value("rlnDoCorrectCtf"))) == 0
    truth = list(csv.DictReader(open(os.path.join(proj, "truth.csv"))))
    assert {r["variant"] for r in truth if r["kind"] == "blob"} <= set(sp.BLOB_VARIANTS)
    assert all(r["variant"].startswith("patch") for r in truth if r["kind"] == "patch")
    assert sum(r["n_blob"] for r in read_class_truth(proj)) == 20
    assert sum(r["n_patch"] for r in read_class_truth(proj)) == 10
    # relion_refine is asked for no CTF correction (command captured, not run)
    seen = {}

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        raise sp.JobError("not run")

    monkeypatch.setattr(sp.subprocess, "run", fake_run)
    with pytest.raises(sp.JobError):
        sp._relion_class2d(proj, sp.resolve_spec(spec), 120.0, None)
    assert "--ctf" not in seen["cmd"] and "--K" in seen["cmd"]


def _fake_realdata(root):
    """A tiny stand-in for shared/realdata: a noisy micrograph with a dense disc, its junk mask, picks
    and one PNG per graded folder."""
    from PIL import Image

    rng = np.random.default_rng(5)
    d = root / R.CONTAMINATION
    for sub in ("mics", "masks", "inCoords/relion"):
        (d / sub).mkdir(parents=True)
    img = 100 + coloured_noise(rng, 320, 1.0)
    yy, xx = np.indices(img.shape)
    disc = (xx - 260) ** 2 + (yy - 60) ** 2 < 45 ** 2
    img[disc] -= 5
    write_mrc(str(d / "mics" / "m.mrc"), img.astype(np.float32), 1.0)
    write_mrc(str(d / "masks" / "m.mrc"), disc.astype(np.float32), 1.0)
    picks = [(60, 60), (160, 160), (100, 240), (240, 220), (215, 60), (255, 110)]
    write_star(str(d / "inCoords" / "relion" / "m_autopick.star"),
               [format_block("", ["rlnCoordinateX", "rlnCoordinateY"], [[x, y] for x, y in picks])])
    for folder in R.GRADED_BACKGROUND + R.GRADED_JUNK:
        (root / R.GRADED / folder).mkdir(parents=True)
        a = np.clip(128 + 20 * rng.normal(size=(128, 128)), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(root / R.GRADED / folder / "x.png")
    return str(root)


def test_realism_command_on_a_tiny_input(old_job, tmp_path):
    from ranker.develop.__main__ import main

    realdata = _fake_realdata(tmp_path / "realdata")
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["realism", "--sim", old_job, "--realdata", realdata, "--per_kind", "10", "--n_background", "20",
                   "--md", str(tmp_path / "out.md")])
    assert rc == 0
    text = buf.getvalue()
    assert "| slope |" in text and "sim empty vs real background" in text and "| **median** |" in text
    assert open(tmp_path / "out.md").read().strip() == text.strip()
    spec_csv = tmp_path / "spec.csv"
    with redirect_stdout(io.StringIO()):
        assert main(["realism", "--realdata", realdata, "--write_noise_spectrum", str(spec_csv)]) == 0
    freq, power = real_spectrum(str(spec_csv))
    assert len(freq) == 65 and power[1:].mean() == pytest.approx(1.0, rel=1e-3)


def test_real_patch_junk_is_real_and_resized():
    from ranker.develop.simulate.noise import real_patches

    patches = real_patches()
    assert patches.shape[1:] == (64, 64) and len(patches) > 100
    prov = list(csv.DictReader(open(os.path.join(os.path.dirname(sp.__file__), "data", "real_junk_patches.csv"))))
    assert len(prov) == len(patches)
    assert not [r for r in prov if "empiar" in r["source"].lower() or "10017" in r["source"]]  # evaluation only
    for n in (48, 96):
        c = _canvas(n=n)
        c.noise = lambda: np.zeros((c.n, c.n))
        img, extra = sp.real_patch_junk(c, 0)
        assert img.shape == (n, n) and extra["variant"].startswith("patch")
        assert img.std() == pytest.approx(c.signal_sd * c.junk_contrast * 2, rel=0.55)


def test_realism_job_classified_by_relion_refine(tmp_path):
    """Every training class still comes from real relion_refine: a job with every realism option
    (coloured noise, ice field, crowding, blob and patch junk, no CTF correction) runs through it."""
    spec = {"protein": {"source": "pseudo", "shape": "dumbbell", "n_res": 2500, "seed": 5, "name": "x"},
            "box": 48, "angpix": 4.0, "snr": 0.2, "n_good": 200, "junk": {"noise": 40, "blob": 40, "patch": 40},
            "n_mics": 6, "K": 3, "n_iter": 4, "seed": 11, "noise_model": "real", "ice_gradient": 0.4,
            "crowd_frac": 0.3, "ctf_correct": False}
    proj = str(tmp_path / "job")
    info = sp.build_project(spec, proj, log=lambda m: None)
    assert "3.1" in info["relion_version"] and "--ctf" not in info["relion_command"].split()
    opt = read_star(os.path.join(proj, "Class2D/job002/run_it004_optimiser.star"))["optimiser_general"]
    assert int(float(opt.value("rlnDoCorrectCtf"))) == 0
    rows = read_class_truth(proj)
    assert sum(r["n_particles"] for r in rows) == 320
    assert sum(r["n_blob"] for r in rows) == 40 and sum(r["n_patch"] for r in rows) == 40


def test_intact_first_peak_job_classified_by_relion_refine_is_read_as_relion_would(tmp_path, monkeypatch):
    """A job classified with --ctf --ctf_intact_first_peak (spec key ctf_intact_first_peak): RELION records
    it in the optimiser, and the features see the class images first-peak corrected (features doc, section 8)."""
    from ranker.develop.dataset import featurise
    from ranker.runtime.features import compute_features

    spec = {"protein": {"source": "pseudo", "shape": "multidomain", "n_res": 2500, "seed": 5, "name": "x"},
            "box": 48, "angpix": 4.0, "snr": 0.2, "n_good": 200, "junk": {"noise": 40, "blob": 40},
            "n_mics": 6, "K": 3, "n_iter": 4, "seed": 11, "ctf_intact_first_peak": True}
    proj = str(tmp_path / "job")
    info = sp.build_project(spec, proj, log=lambda m: None)
    assert {"--ctf", "--ctf_intact_first_peak"} <= set(info["relion_command"].split())
    opt_rel = "Class2D/job002/run_it004_optimiser.star"
    opt = read_star(os.path.join(proj, opt_rel))["optimiser_general"]
    assert int(float(opt.value("rlnDoIgnoreCtfUntilFirstPeak"))) == 1
    job, parts, fs = featurise(opt_rel, proj)
    assert job.ignore_ctf_until_first_peak and any("first peak" in n for n in fs.notes)
    assert np.isfinite(fs.vectors).all() and len(fs.rows) >= 1
    # the same class images without the correction give other features
    job.ignore_ctf_until_first_peak = False
    monkeypatch.chdir(proj)  # the job's paths are relative to the project
    plain = compute_features(job, job.load_images(), parts.n_particles, parts.optics, parts.last_row)
    assert not np.allclose(plain.vectors, fs.vectors)
