"""Installing the package: pip into a fresh environment, install.sh into an existing one, and the top-level
relion_external_rank.py started by a Python that lacks the dependencies (as RELION starts it).

Each test installs a copy of the repository's tracked files (so the checkout is never touched). The fresh
environments borrow the already-installed dependencies (torch, numpy, ...) through a .pth line instead of
downloading them again; pip runs offline (--no-index) with the environment's own setuptools (no build
isolation), so what is tested is our package: its metadata, its files, its command and its weights.
The full dependency install from pyproject.toml is what ./install.sh does on every CI run.
"""
import os
import shutil
import site
import subprocess
import sys
import sysconfig

import pytest

from conftest import ROOT
from ranker.runtime.model import SHIPPED_MODEL

pytestmark = pytest.mark.slow
OFFLINE = dict(os.environ, PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
OFFLINE.pop("RELION_EXTERNAL_RANK_PYTHON", None)
EXAMPLE_ARGS = ["--o", "External/job003/", "--in_parts", "Class2D/job002/run_it020_data.star", "--j", "1"]


def tracked_copy(dst):
    """The repository's tracked files (what a clone has), copied to dst."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dst, rel))
    return str(dst)


def fresh_env(path, with_pip=True):
    """A new venv whose sys.path also reaches this environment's packages (dependencies only)."""
    subprocess.run([sys.executable, "-m", "venv"] + ([] if with_pip else ["--without-pip"]) + [str(path)],
                   check=True)
    py = os.path.join(path, "bin", "python")
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    if with_pip:  # its own (older) setuptools gives way to this environment's, as the dependencies do
        subprocess.run([py, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], capture_output=True, check=True)
        with open(os.path.join(purelib, "_deps_from_test_env.pth"), "w") as fh:
            fh.write("\n".join(dict.fromkeys(site.getsitepackages() + [sysconfig.get_paths()["purelib"]])) + "\n")
    return py, purelib


def example_project(tmp_path):
    proj = tmp_path / "project"
    shutil.copytree(os.path.join(ROOT, "examples", "class2d_sim"), proj)
    return proj


def assert_example_ran(proj, r):
    assert r.returncode == 0, r.stdout + r.stderr
    out = proj / "External" / "job003"
    for name in ("particles.star", "class_averages.star", "logfile.pdf", "RELION_JOB_EXIT_SUCCESS"):
        assert (out / name).exists(), name


def test_pip_install_into_a_fresh_venv_gives_a_command_with_the_shipped_weights(tmp_path):
    repo = tracked_copy(tmp_path / "clone")
    py, purelib = fresh_env(tmp_path / "venv")
    r = subprocess.run([py, "-m", "pip", "install", "-q", repo], env=OFFLINE, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    shutil.rmtree(repo)  # the installed command must not need the source tree
    pkg = os.path.join(purelib, "ranker")
    for rel in (f"models/{SHIPPED_MODEL}", "models/MODEL_CARD.md", "runtime/job.py",
                "develop/simulate/project.py", "develop/commands/train.py",
                "develop/simulate/data/real_noise_spectrum.csv", "develop/simulate/data/real_junk_patches.npz",
                "develop/simulate/data/LICENSE_Magellon"):
        assert os.path.isfile(os.path.join(pkg, rel)), rel
    meta = subprocess.run([py, "-m", "pip", "show", "relion_external_rank"], capture_output=True, text=True).stdout
    for dep in ("numpy", "scipy", "mrcfile", "Pillow", "torch"):
        assert dep in meta.split("Requires:")[1].splitlines()[0], dep
    exe = os.path.join(tmp_path, "venv", "bin", "relion_external_rank")
    v = subprocess.run([exe, "--version"], capture_output=True, text=True)
    import ranker
    assert v.returncode == 0 and v.stdout.strip() == f"relion_external_rank {ranker.__version__}"
    proj = example_project(tmp_path)
    r = subprocess.run([exe] + EXAMPLE_ARGS, cwd=proj, capture_output=True, text=True)
    assert_example_ran(proj, r)
    run_out = (proj / "External" / "job003" / "run.out").read_text() if (proj / "External/job003/run.out").exists() \
        else r.stdout
    assert os.path.join(pkg, "models", SHIPPED_MODEL) in run_out


def test_install_sh_into_an_existing_python_and_relion_starting_the_entry_with_a_bare_python(tmp_path):
    """install.sh --python installs into that environment and records it; the top-level
    relion_external_rank.py, started by a Python without numpy/torch (RELION's python3), runs the job
    with the recorded one."""
    repo = tracked_copy(tmp_path / "clone")
    py, purelib = fresh_env(tmp_path / "env")
    r = subprocess.run(["bash", os.path.join(repo, "install.sh"), "--python", py, "--no-example"],
                       env=OFFLINE, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.path.join(repo, "relion_external_rank.py") in r.stdout
    assert open(os.path.join(repo, ".installed_python")).read().strip() == py
    assert os.path.isdir(os.path.join(purelib, "ranker", "models"))
    bare, _ = fresh_env(tmp_path / "bare", with_pip=False)
    assert subprocess.run([bare, "-c", "import numpy"], capture_output=True).returncode != 0
    proj = example_project(tmp_path)
    r = subprocess.run([bare, os.path.join(repo, "relion_external_rank.py")] + EXAMPLE_ARGS, cwd=proj,
                       env=OFFLINE, capture_output=True, text=True)
    assert_example_ran(proj, r)


def test_entry_without_any_environment_fails_in_one_line_with_an_exit_file(tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(os.path.join(ROOT, "relion_external_rank.py"), lone)
    bare, _ = fresh_env(tmp_path / "bare", with_pip=False)
    proj = example_project(tmp_path)
    (proj / "External" / "job003").mkdir(parents=True)
    r = subprocess.run([bare, str(lone / "relion_external_rank.py")] + EXAMPLE_ARGS, cwd=proj, env=OFFLINE,
                       capture_output=True, text=True)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "lacks numpy" in lines[0] and "install.sh" in lines[0], r.stderr
    assert (proj / "External" / "job003" / "RELION_JOB_EXIT_FAILURE").exists()
