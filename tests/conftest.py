"""Shared test fixtures: copies of the real RELION projects in ../shared and a test model."""
import os
import shutil
import stat
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "fixtures")
SIM = os.path.join(SHARED, "class2d_sim")
R5 = os.path.join(SHARED, "class2d_relion5")
SIM_OPT = "Class2D/job002/run_it020_optimiser.star"
SIM_DATA = "Class2D/job002/run_it020_data.star"
R5_OPT = "Class2D/job002/run_it100_optimiser.star"
R5_DATA = "Class2D/job002/run_it100_data.star"
sys.path.insert(0, ROOT)


def copy_project(src, dst, with_reference=False):
    """Copy a shared RELION project (Class2D/ and Import/) into dst, writable."""
    for sub in ("Class2D", "Import"):
        shutil.copytree(os.path.join(src, sub), os.path.join(dst, sub))
    for name in ("default_pipeline.star", "class_truth.csv"):
        shutil.copy(os.path.join(src, name), dst)
    if with_reference:
        shutil.copytree(os.path.join(src, "relion5_reference"), os.path.join(dst, "relion5_reference"))
    for base, dirs, files in os.walk(dst):
        for f in dirs + files:
            p = os.path.join(base, f)
            os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR)
    return dst


@pytest.fixture
def sim_project(tmp_path, monkeypatch):
    """A writable copy of class2d_sim; the working directory is its project root."""
    copy_project(SIM, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def r5_project(tmp_path, monkeypatch):
    copy_project(R5, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def test_model(tmp_path_factory):
    """A weights file in our format with fixed random weights: for testing the mechanics
    (loading, scoring, outputs), not quality."""
    import torch
    from ranker.runtime.model import build_net, save_model

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("model") / "test_model.npz")
    save_model(build_net(), path, card={"purpose": "tests only: random weights"})
    return path
