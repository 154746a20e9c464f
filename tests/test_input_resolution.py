"""What a pipeline can name as input without knowing the Class2D iteration: the job directory."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from ranker.runtime.class2d import final_iteration, resolve_optimiser
from ranker.runtime.star import StarError

EXE = os.path.join(ROOT, "relion_external_rank.py")
JOB = "Class2D/job002"


@pytest.fixture
def project(tmp_path, monkeypatch):
    shutil.copytree(os.path.join(ROOT, "examples", "class2d_sim"), tmp_path / "p")
    monkeypatch.chdir(tmp_path / "p")
    return tmp_path / "p"


def add_iteration(it, complete=True):
    """A copy of iteration 20 named as iteration ``it`` (its STAR files point to themselves)."""
    for suffix in ("optimiser.star", "model.star", "data.star", "classes.mrcs"):
        if suffix == "classes.mrcs" and not complete:
            continue
        src = f"{JOB}/run_it020_{suffix}"
        data = open(src, "rb").read()
        if suffix.endswith(".star"):
            data = data.replace(b"run_it020_", f"run_it{it:03d}_".encode())
        open(f"{JOB}/run_it{it:03d}_{suffix}", "wb").write(data)


def test_directory_resolves_to_its_final_complete_iteration(project):
    add_iteration(5)
    add_iteration(25)
    add_iteration(30, complete=False)  # still being written: no class stack yet
    assert final_iteration(JOB) == f"{JOB}/run_it025_optimiser.star"
    assert resolve_optimiser(None, JOB + "/") == f"{JOB}/run_it025_optimiser.star"
    assert resolve_optimiser(JOB, None) == f"{JOB}/run_it025_optimiser.star"
    with pytest.raises(StarError, match="no complete Class2D iteration"):
        final_iteration("Import")


def run(*args):
    return subprocess.run([sys.executable, EXE, "--o", "External/job003/", *args], capture_output=True, text=True)


def test_job_on_a_class2d_directory_ranks_the_final_iteration_and_says_so(project):
    by_file = run("--in_parts", f"{JOB}/run_it020_data.star")
    assert by_file.returncode == 0, by_file.stderr
    expected = open("External/job003/particles.star").read()
    shutil.rmtree("External")
    by_dir = run("--in_parts", JOB + "/")
    assert by_dir.returncode == 0, by_dir.stderr
    assert open("External/job003/particles.star").read() == expected
    assert f"Class2D job directory {JOB}/: ranking its final iteration, 20" in by_dir.stdout
    # the example's Class2D directory has no exit file: said, as a warning, not refused
    assert "has no RELION_JOB_EXIT_SUCCESS" in by_dir.stdout
    open(f"{JOB}/RELION_JOB_EXIT_SUCCESS", "w").close()
    shutil.rmtree("External")
    assert "has no RELION_JOB_EXIT_SUCCESS" not in run("--in_parts", JOB).stdout


def test_empty_directory_is_refused_in_one_line(project):
    os.makedirs("Class2D/job009")
    r = run("--in_parts", "Class2D/job009/")
    assert r.returncode != 0 and os.path.exists("External/job003/RELION_JOB_EXIT_FAILURE")
    assert r.stderr.strip().splitlines() == [
        "ERROR: Class2D/job009/: no complete Class2D iteration in this directory "
        "(run_itNNN_optimiser.star, _model.star, _data.star and _classes.mrcs)"]
