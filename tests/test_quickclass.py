"""The quick in-Python stand-in for relion_refine (ranker.develop.simulate.quickclass) and the
RELION-vs-quick feature comparison (ranker.develop.simulate.compare)."""
import csv
import json
import os
from collections import Counter

import numpy as np
import pytest

from ranker.runtime.class2d import read_class2d
from ranker.develop.dataset import from_truth_job
from ranker.develop.simulate.compare import compare
from ranker.develop.simulate.project import build_project
from ranker.develop.simulate.quickclass import assign_classes
from ranker.runtime.star import read_star


def _groups():
    return ["good_0"] * 600 + ["good_1"] * 300 + ["noise"] * 200 + ["ice"] * 100


def test_assign_classes_follows_the_groups():
    groups = _groups()
    cls, mix = assign_classes(groups, 8, snr=5.0, rng=np.random.default_rng(3))
    assert cls.min() >= 1 and cls.max() <= 8
    assert mix < 0.05  # high SNR: little mixing
    # every class is dominated by one group, and the biggest group has a class of its own
    for k in set(cls):
        c = Counter(g for g, ck in zip(groups, cls) if ck == k)
        assert c.most_common(1)[0][1] / sum(c.values()) > 0.8
    assert any(Counter(g for g, ck in zip(groups, cls) if ck == k).most_common(1)[0][0] == "good_0" for k in set(cls))
    again, _ = assign_classes(groups, 8, snr=5.0, rng=np.random.default_rng(3))
    assert (again == cls).all()


def test_low_snr_mixes_more():
    groups = _groups()
    mixes = [assign_classes(groups, 8, snr, np.random.default_rng(s))[1] for s in range(5) for snr in (0.03, 1.0)]
    assert np.mean(mixes[0::2]) > 3 * np.mean(mixes[1::2])


@pytest.fixture(scope="module")
def quick_project(tmp_path_factory):
    proj = tmp_path_factory.mktemp("quick") / "job0001"
    spec = {"protein": {"source": "pseudo", "shape": "dumbbell", "n_res": 2500, "seed": 5,
                        "name": "pseudo-dumbbell-2500"},
            "box": 48, "angpix": 4.0, "snr": 0.3, "n_good": 300, "junk": {"noise": 100, "partial": 60},
            "n_mics": 6, "K": 4, "n_iter": 4, "seed": 11, "classifier": "quick"}
    info = build_project(spec, str(proj), log=lambda m: None)
    return proj, info


def test_quick_project_is_a_class2d_job_with_true_counts(quick_project, monkeypatch):
    """The quick job reads like a relion_refine job (model, optimiser, data, classes) and its
    class_truth.csv counts the particles the data.star puts in each class."""
    proj, info = quick_project
    monkeypatch.chdir(proj)
    assert info["classifier"] == "quick" and "not RELION" in info["relion_version"]
    job = read_class2d(str(proj / "Class2D/job002/run_it004_optimiser.star"))
    assert job.nr_classes == 4 and job.box_px == 48 and job.pixel_size_A == pytest.approx(4.0)
    data = read_star(str(proj / "Class2D/job002/run_it004_data.star"))["particles"]
    truth = {r["rlnImageName"]: r["kind"] for r in csv.DictReader(open(proj / "truth.csv"))}
    by_class = Counter(int(k) for k in data.column("rlnClassNumber"))
    good = Counter(int(k) for n, k in zip(data.column("rlnImageName"), data.column("rlnClassNumber"))
                   if truth[n] == "good")
    assert sum(by_class.values()) == 460
    for r in csv.DictReader(open(proj / "class_truth.csv")):
        k = int(r["class_number"])
        assert int(r["n_particles"]) == by_class.get(k, 0)
        assert int(r["n_good"]) == good.get(k, 0)
    for c in job.classes:
        assert c.distribution == pytest.approx(by_class.get(c.class_number, 0) / 460, abs=1e-5)
        if by_class.get(c.class_number):
            assert 0 < c.estimated_resolution_A <= 999 and 0 < c.accuracy_rotation_deg <= 999
    assert json.load(open(proj / "corpus_job.json"))["spec"]["classifier"] == "quick"


def test_quick_good_class_is_aligned_not_a_rotational_blur(quick_project, monkeypatch):
    """The purest good class shows the dumbbell (the in-plane alignment worked): it differs from
    itself turned by 90 deg much more than a rotationally blurred average would."""
    proj, _ = quick_project
    monkeypatch.chdir(proj)
    rows = list(csv.DictReader(open(proj / "class_truth.csv")))
    best = max((r for r in rows if r["frac_good"] not in ("", "nan")), key=lambda r: float(r["frac_good"]))
    assert float(best["frac_good"]) > 0.8
    job = read_class2d(str(proj / "Class2D/job002/run_it004_optimiser.star"))
    img = job.load_images()[[c.class_number for c in job.classes].index(int(best["class_number"]))]
    turned = np.rot90(img)
    cc = np.corrcoef(img.ravel(), turned.ravel())[0, 1]
    assert cc < 0.7


def test_quick_project_trains_and_compares(quick_project, tmp_path):
    """The training reader takes a quick job; comparing a corpus with itself gives D = 0."""
    proj, _ = quick_project
    d = from_truth_job(str(proj))
    assert len(d) >= 2 and np.isfinite(d.vectors).all()
    for name in ("a", "b"):
        os.makedirs(tmp_path / name)
        os.symlink(proj, tmp_path / name / "job0001")
    md = compare(str(tmp_path / "a"), str(tmp_path / "b"))
    assert "1 jobs classified both ways" in md
    assert "Median D: good 0.00," in md  # this tiny job has good classes only
