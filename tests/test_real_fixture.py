"""The real-image evaluation fixtures ``tests/data/real_empiar10017``, ``..._b`` and ``..._c`` are consistent
and the job runs on them.

Each fixture is a relion_refine Class2D job of real EMPIAR-10017 particles (evaluation data only: see its
README.md) with a truth by pick provenance; ``python -m ranker.develop evaluate`` reads it. These tests
check that each one's truth agrees with the Class2D job it describes and that the External job runs on it
without the particle stacks (which are not shipped).
"""
import csv
import glob
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from conftest import ROOT
from ranker.develop.truth import KINDS, read_class_truth
from ranker.runtime.star import read_star

FIXTURES = [os.path.join(ROOT, "tests", "data", name)
            for name in ("real_empiar10017", "real_empiar10017_b", "real_empiar10017_c")]


@pytest.fixture(params=FIXTURES, ids=os.path.basename)
def fixture_dir(request):
    if not os.path.isdir(request.param):
        pytest.fail(f"{request.param} missing (built by python -m ranker.develop real_fixture; see its README)")
    return request.param


def _data_star(fixture):
    found = sorted(glob.glob(os.path.join(fixture, "Class2D", "job002", "run_it*_data.star")))
    assert len(found) == 1, f"expected one final iteration in the fixture, found {found}"
    return found[0]


def test_class_truth_counts_equal_data_star(fixture_dir):
    particles = read_star(_data_star(fixture_dir))["particles"]
    per_class = Counter(int(c) for c in particles.column("rlnClassNumber"))
    rows = read_class_truth(fixture_dir)
    model = read_star(_data_star(fixture_dir).replace("_data.star", "_model.star"))["model_classes"]
    assert [r["class_number"] for r in rows] == list(range(1, len(model.rows) + 1))
    for r in rows:
        assert r["n_particles"] == per_class.get(r["class_number"], 0)
        assert r["n_good"] + sum(r[f"n_{k}"] for k in KINDS[1:]) == r["n_particles"]
    # every particle of data.star has a kind in truth.csv, and the kinds add up
    with open(os.path.join(fixture_dir, "truth.csv"), newline="") as fh:
        truth = {r["rlnImageName"]: r["kind"] for r in csv.DictReader(fh)}
    names = particles.column("rlnImageName")
    assert len(truth) == len(names) and set(names) == set(truth)
    assert set(truth.values()) <= set(KINDS)
    kinds = Counter(truth.values())
    assert kinds["good"] == sum(r["n_good"] for r in rows)
    for k in KINDS[1:]:
        assert kinds[k] == sum(r[f"n_{k}"] for r in rows)


def test_job_runs_and_writes_particles_star(tmp_path, fixture_dir):
    proj = tmp_path / "proj"
    shutil.copytree(fixture_dir, proj)
    data = os.path.relpath(_data_star(fixture_dir), fixture_dir)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "relion_external_rank.py"), "--o", "External/job003/",
                        "--in_parts", data], cwd=proj, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    if fixture_dir.endswith("real_empiar10017"):  # its largest class (558 particles, 66 % real) scores 0.567 (v7 and
        # v6; v5: 0.518, v4: 0.497); class 6 (110 particles) at 0.545 (v6: 0.529) is the one reported as near the threshold
        assert "20: 0.567 (558)" in r.stdout
        assert "within 0.05 of the threshold 0.500" in r.stdout and "6 (0.545, kept)" in r.stdout
    out = proj / "External" / "job003"
    assert (out / "RELION_JOB_EXIT_SUCCESS").exists()
    kept = set(read_star(str(out / "particles.star"))["particles"].column("rlnImageName"))
    data = read_star(_data_star(fixture_dir))["particles"]
    assert kept <= set(data.column("rlnImageName"))
    scores = read_star(str(out / "rank_model.star"))["model_classes"].float_column("rlnClassScore")
    rows = read_class_truth(fixture_dir)
    assert len(scores) == len(rows)
    # the shipped model keeps every clean class (>= 80 % real, scored: more than 10 particles) of these real jobs,
    # and particles.star holds all their particles
    clean = {r["class_number"] for r in rows if r["n_particles"] > 10 and r["n_good"] >= 0.8 * r["n_particles"]}
    assert clean and all(scores[c - 1] >= 0.5 for c in clean)
    in_clean = {name for name, c in zip(data.column("rlnImageName"), data.column("rlnClassNumber"))
                if int(c) in clean}
    assert in_clean <= kept


def test_pick_centres_recovers_overlapping_discs():
    import numpy as np
    from ranker.develop.realdata import compare_with_coords, pick_centres

    truth = np.array([[100, 100], [160, 110], [300, 300], [340, 330], [370, 300], [100, 400]], float)
    yy, xx = np.mgrid[:512, :512]
    mask = np.zeros((512, 512), bool)
    for x, y in truth:
        mask |= (xx - x) ** 2 + (yy - y) ** 2 <= 54 ** 2
    check = compare_with_coords(pick_centres(mask), truth)
    assert check["n_found"] == len(truth) and check["list_matched"] == len(truth) and check["max_error_px"] <= 1


@pytest.mark.skipif(not os.path.isdir(os.path.join(os.path.dirname(ROOT), "shared", "realdata", "empiar10017_betagal")),
                    reason="../shared/realdata (the redistributed EMPIAR-10017 micrographs) not here")
def test_pick_centres_match_the_shipped_pick_list():
    from ranker.develop import realdata

    first = [m for m in realdata.list_micrographs(os.path.join(os.path.dirname(ROOT), "shared", "realdata"))
             if m["coords"]][0]
    centres = realdata.pick_centres(realdata.read_mask(first["mask"]))
    check = realdata.compare_with_coords(centres, realdata.read_coords_csv(first["coords"]))
    assert check["n_found"] == check["n_list"] == check["list_matched"] and check["max_error_px"] <= 1.5
