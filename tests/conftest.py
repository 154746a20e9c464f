"""Shared test fixtures: copies of the real RELION projects kept in the repository and a test model.

The two RELION projects are data only, copied from the team's ``shared/fixtures`` (provenance in
tests/data/README.md): SIM is the RELION-3.1.3 project of examples/class2d_sim (the example is the
test fixture: one copy in the repository), R5 the RELION-5.0.1 VDAM project in tests/data. Their
RELION-5 ``relion_class_ranker`` reference outputs are SIM_REF and R5_REF. ``../shared`` beside the
checkout (SHARED) is optional: only the checks marked ``needs_shared`` read it.
"""
import os
import shutil
import stat
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
SIM = os.path.join(ROOT, "examples", "class2d_sim")
R5 = os.path.join(DATA, "class2d_relion5")
SIM_REF = os.path.join(DATA, "class2d_sim", "relion5_reference")
R5_REF = os.path.join(R5, "relion5_reference")
REFERENCE = {SIM: SIM_REF, R5: R5_REF}
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
needs_shared = pytest.mark.skipif(
    not os.path.isdir(os.path.join(SHARED, "fixtures")),
    reason=f"../shared not beside the checkout ({SHARED}): optional check against the team's shared data")
SIM_OPT = "Class2D/job002/run_it020_optimiser.star"
SIM_DATA = "Class2D/job002/run_it020_data.star"
R5_OPT = "Class2D/job002/run_it100_optimiser.star"
R5_DATA = "Class2D/job002/run_it100_data.star"
sys.path.insert(0, ROOT)


def copy_project(src, dst, with_reference=False):
    """Copy a RELION project (SIM or R5: Class2D/, Import/ if any, default_pipeline.star,
    class_truth.csv) into dst, writable; with_reference adds its relion5_reference/."""
    for sub in ("Class2D", "Import"):
        if os.path.isdir(os.path.join(src, sub)):
            shutil.copytree(os.path.join(src, sub), os.path.join(dst, sub))
    for name in ("default_pipeline.star", "class_truth.csv"):
        shutil.copy(os.path.join(src, name), dst)
    if with_reference:
        shutil.copytree(REFERENCE[src], os.path.join(dst, "relion5_reference"))
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
