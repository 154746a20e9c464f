"""The training-data generator: corpus parameters, and one tiny project classified by real
relion_refine (RELION 3.1.3) whose truth files agree with RELION's own class assignments."""
import argparse
import csv
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from conftest import ROOT
from ranker.develop.simulate.corpus import sample_spec
from ranker.develop.truth import JUNK_KINDS
from ranker.develop.simulate.project import build_project, fragment_atoms
from ranker.develop.simulate.structures import PSEUDO_SHAPES, pseudo_model, structure_radius
from ranker.runtime.star import read_star


def test_sample_spec_is_deterministic_and_fits_the_budget():
    a = [sample_spec(i, 7, {}, budget=130) for i in range(1, 30)]
    b = [sample_spec(i, 7, {}, budget=130) for i in range(1, 30)]
    assert a == b
    assert len({json.dumps(s, sort_keys=True) for s in a}) == len(a)
    for s in a:
        assert s["est_refine_seconds"] <= 130 + 1e-6 or s["K"] == 4
        assert 0.03 <= s["snr"] <= 0.3 and set(s["junk"]) <= set(JUNK_KINDS)
        assert s["box"] % 2 == 0 and s["split"] in ("train", "val")


def test_sample_spec_snr_range_and_junk_kinds():
    specs = [sample_spec(i, 4, {}, budget=130, snr_range=(0.02, 0.06), junk_kinds=["partial", "offcentre"])
             for i in range(1, 40)]
    assert all(0.02 <= s["snr"] <= 0.06 for s in specs)
    assert all(set(s["junk"]) <= {"partial", "offcentre"} for s in specs)
    assert any("partial" in s["junk"] for s in specs) and any("offcentre" in s["junk"] for s in specs)


def test_unknown_junk_kind_is_refused():
    r = subprocess.run([sys.executable, "-m", "ranker.develop", "corpus", "/nonexistent", "--junk_kinds", "dust"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "unknown kind(s) dust" in r.stderr
    assert not os.path.exists("/nonexistent")


def _record_builds(corpus, monkeypatch):
    """Replace build_project by a stand-in that records each spec and makes an empty job: returns the list."""
    built = []

    def fake_build(spec, tmp, log=print, relion_timeout=900, keep=False):
        built.append(spec)
        os.makedirs(tmp)
        return {"class_summary": dict(good=0, bad=0, mixed=0, empty=0), "seconds_total": 0.0}

    monkeypatch.setattr(corpus, "build_project", fake_build)
    return built


def test_only_rebuilds_the_named_jobs_with_their_specs(tmp_path, monkeypatch):
    import ranker.develop.simulate.corpus as corpus

    built = _record_builds(corpus, monkeypatch)
    corpus.run_many(str(tmp_path / "c"), 40, None, 7, (), 130, only=[13, 3, 13], log=lambda m: None)
    assert [s["seed"] for s in built] == [sample_spec(i, 7, {}, budget=130)["seed"] for i in (3, 13)]
    assert built == [dict(sample_spec(i, 7, {}, budget=130), classifier="relion") for i in (3, 13)]
    assert sorted(os.listdir(tmp_path / "c")) == ["failed", "job0003", "job0013"]


def test_bad_only_is_refused():
    r = subprocess.run([sys.executable, "-m", "ranker.develop", "corpus", "/nonexistent", "--only", "3,x"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "--only" in r.stderr
    assert not os.path.exists("/nonexistent")


@pytest.mark.parametrize("shape", PSEUDO_SHAPES)
def test_pseudo_models_have_their_size(shape):
    xyz, w = pseudo_model(shape, 1500, np.random.default_rng(3))
    assert xyz.shape == (len(w), 3) and np.all(w > 0)
    # ~110 Da per residue, weights are atomic numbers (~7 per heavy atom of ~14 Da)
    mass_kDa = w.sum() / 7.0 * 14 / 1000
    assert 100 < mass_kDa < 260
    rmax, r99 = structure_radius(xyz, w)
    assert 15 < r99 <= rmax < 200


def test_fragment_is_one_side_of_a_plane():
    xyz, w = pseudo_model("globular", 2000, np.random.default_rng(0))
    fx, fw = fragment_atoms(xyz, w, np.random.default_rng(1), keep=(0.3, 0.3))
    assert abs(len(fx) / len(xyz) - 0.3) < 0.01
    c = np.average(xyz, axis=0, weights=w)
    # some normal separates the fragment: its centroid lies away from the complex's centre
    assert np.linalg.norm(fx.mean(axis=0) - c) > 5


def test_tiny_project_truth_matches_relion(tmp_path):
    """A 320-particle project, classified by real relion_refine (K 3, 4 iterations, ~10 s):
    class_truth.csv must count exactly the particles RELION put in each class."""
    proj = tmp_path / "proj"
    spec = {"protein": {"source": "pseudo", "shape": "dumbbell", "n_res": 2500, "seed": 5,
                        "name": "pseudo-dumbbell-2500"},
            "box": 48, "angpix": 4.0, "snr": 0.2, "n_good": 200, "junk": {"noise": 60, "partial": 60},
            "n_mics": 6, "K": 3, "n_iter": 4, "seed": 11}
    info = build_project(spec, str(proj), log=lambda m: None)
    assert info["counts"] == {"good": 200, "noise": 60, "partial": 60}
    assert "3.1" in info["relion_version"]
    data = read_star(str(proj / "Class2D/job002/run_it004_data.star"))["particles"]
    truth = {r["rlnImageName"]: r["kind"] for r in csv.DictReader(open(proj / "truth.csv"))}
    assert len(truth) == len(data.rows) == 320
    by_class = {}
    for name, k in zip(data.column("rlnImageName"), data.column("rlnClassNumber")):
        by_class.setdefault(int(k), Counter())[truth[name]] += 1
    rows = list(csv.DictReader(open(proj / "class_truth.csv")))
    assert [int(r["class_number"]) for r in rows] == [1, 2, 3]
    for r in rows:
        c = by_class.get(int(r["class_number"]), Counter())
        assert int(r["n_particles"]) == sum(c.values())
        for kind in ("good", "noise", "partial"):
            assert int(r["n_" + kind]) == c[kind]
        if c:
            assert float(r["frac_good"]) == pytest.approx(c["good"] / sum(c.values()), abs=1e-4)
    # stacks are deleted, the final iteration stays, and corpus_job.json holds the whole spec
    assert not list((proj / "Simulated" / "Particles").glob("*.mrcs"))
    assert (proj / "Class2D/job002/run_it004_classes.mrcs").exists()
    assert json.load(open(proj / "corpus_job.json"))["spec"]["seed"] == 11


def test_one_image_stack_reads_as_a_stack(tmp_path):
    """relion_project writes a one-particle stack as nz = 1: it must still index as a stack
    (a job with a single off-centre particle once failed on it)."""
    from ranker.runtime.mrc import read_mrc, read_stack, write_mrc

    write_mrc(str(tmp_path / "one.mrcs"), np.ones((1, 8, 8), np.float32), 2.0)
    assert read_stack(str(tmp_path / "one.mrcs")).shape == (1, 8, 8)
    write_mrc(str(tmp_path / "map.mrc"), np.ones((8, 8), np.float32), 2.0)
    assert read_mrc(str(tmp_path / "map.mrc")).shape == (8, 8)


def test_freeze_to_freezes_each_job_as_it_is_made_and_a_failure_keeps_the_job(tmp_path, monkeypatch):
    import shutil

    import ranker.develop.simulate.corpus as corpus
    from conftest import SIM
    from ranker.develop import dataset

    def fake_build(spec, tmp, log=print, relion_timeout=900, keep=False):
        if spec["seed"] == sample_spec(3, 7, {}, budget=130)["seed"]:
            shutil.copytree(SIM, tmp)  # a labelled RELION project
        else:
            os.makedirs(tmp)  # no Class2D job: cannot be frozen
        return {"class_summary": dict(good=0, bad=0, mixed=0, empty=0), "seconds_total": 0.0}

    monkeypatch.setattr(corpus, "build_project", fake_build)
    logged = []
    corpus.run_many(str(tmp_path / "c"), 40, None, 7, (), 130, only=[3, 5], log=logged.append,
                    freeze_to=str(tmp_path / "frozen"))
    assert sorted(os.listdir(tmp_path / "c")) == ["failed", "job0003", "job0005"]
    assert sorted(os.listdir(tmp_path / "frozen" / "c")) == ["job0003"]
    got = dataset.from_truth_job(str(tmp_path / "frozen" / "c" / "job0003"))
    assert got.class_number == dataset.from_truth_job(SIM).class_number
    assert any("freeze to" in m and "job0005" in m and "FAILED" in m for m in logged)


def test_freeze_to_also_freezes_jobs_made_before_it_was_given(tmp_path, monkeypatch):
    import shutil

    import ranker.develop.simulate.corpus as corpus
    from conftest import SIM

    os.makedirs(tmp_path / "c")
    shutil.copytree(SIM, tmp_path / "c" / "job0003")
    with open(tmp_path / "c" / "job0003" / "corpus_job.json", "w") as fh:
        fh.write("{}")
    monkeypatch.setattr(corpus, "build_project", lambda *a, **k: pytest.fail("a finished job was rebuilt"))
    corpus.run_many(str(tmp_path / "c"), 40, None, 7, (), 130, only=[3], log=lambda m: None,
                    freeze_to=str(tmp_path / "frozen"))
    assert os.listdir(tmp_path / "frozen" / "c" / "job0003")


def test_ctf_intact_first_peak_marks_only_the_ctf_corrected_jobs_and_changes_no_draw():
    plain = [sample_spec(i, 9, {}, budget=400, recipe="realism") for i in range(1, 41)]
    intact = [sample_spec(i, 9, {}, budget=400, recipe="realism", ctf_intact_first_peak=True) for i in range(1, 41)]
    for a, b in zip(plain, intact):
        b = dict(b)
        assert b.pop("ctf_intact_first_peak", False) == a["ctf_correct"]
        assert a == b
    assert {s["ctf_correct"] for s in plain} == {True, False}
    v3 = sample_spec(3, 7, {}, budget=130, ctf_intact_first_peak=True)  # v3 specs are all CTF-corrected
    assert v3.pop("ctf_intact_first_peak") is True and v3 == sample_spec(3, 7, {}, budget=130)


def test_ctf_intact_first_peak_reaches_relion_refine_and_is_refused_where_it_cannot_apply(tmp_path, monkeypatch):
    from ranker.develop.simulate import project as sp

    (tmp_path / "Class2D" / "job002").mkdir(parents=True)
    seen = []

    def fake_run(cmd, **kw):
        seen.append(cmd)
        raise sp.JobError("not run")

    monkeypatch.setattr(sp.subprocess, "run", fake_run)
    for spec in ({}, {"ctf_intact_first_peak": True}):
        with pytest.raises(sp.JobError):
            sp._relion_class2d(str(tmp_path), sp.resolve_spec(spec), 120.0, None)
    assert "--ctf" in seen[0] and "--ctf_intact_first_peak" not in seen[0]
    assert "--ctf" in seen[1] and "--ctf_intact_first_peak" in seen[1]
    with pytest.raises(ValueError, match="needs ctf_correct"):
        sp.resolve_spec({"ctf_intact_first_peak": True, "ctf_correct": False})
    with pytest.raises(ValueError, match="quick classifier"):
        sp.resolve_spec({"ctf_intact_first_peak": True, "classifier": "quick"})
    monkeypatch.undo()  # sp.subprocess is the subprocess module
    r = subprocess.run([sys.executable, "-m", "ranker.develop", "corpus", "/nonexistent", "--classifier", "quick",
                        "--ctf_intact_first_peak"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "--ctf_intact_first_peak needs --classifier relion" in r.stderr
    assert not os.path.exists("/nonexistent")
    r = subprocess.run([sys.executable, "-m", "ranker.develop", "simulate", str(tmp_path / "s"), "--no_ctf_correct",
                        "--ctf_intact_first_peak"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "options: ctf_intact_first_peak needs ctf_correct" in r.stderr
    assert "Traceback" not in r.stderr and not os.path.exists(tmp_path / "s")


def test_corpus_command_passes_ctf_intact_first_peak_to_the_specs(tmp_path, monkeypatch):
    import ranker.develop.simulate.corpus as corpus
    from ranker.develop.commands import corpus as corpus_cmd

    built = _record_builds(corpus, monkeypatch)
    p = argparse.ArgumentParser()
    corpus_cmd.add_args(p)
    a = p.parse_args([str(tmp_path / "c"), "--seed", "7", "--budget", "130", "--only", "3",
                      "--ctf_intact_first_peak"])
    corpus_cmd.main(a)
    assert built == [dict(sample_spec(3, 7, {}, budget=130, ctf_intact_first_peak=True), classifier="relion")]
    assert built[0]["ctf_intact_first_peak"] is True
