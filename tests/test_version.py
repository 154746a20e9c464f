"""--version and the version in run.out."""
import os
import subprocess
import sys

from conftest import ROOT, SIM_DATA
from ranker import __version__
from ranker.runtime import job as jobmod

EXE = os.path.join(ROOT, "relion_external_rank.py")
OUT = "External/job003/"


def test_version_option(tmp_path):
    r = subprocess.run([sys.executable, EXE, "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == f"relion_external_rank {__version__}\n" and r.stderr == ""
    # anywhere on a job's command line: prints the version, runs nothing
    r = subprocess.run([sys.executable, EXE, "--o", OUT, "--version", "--in_parts", SIM_DATA],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"relion_external_rank {__version__}"
    assert not os.path.exists(tmp_path / "External")


def test_version_in_python(capsys):
    assert jobmod.main(["--version"]) == 0
    assert capsys.readouterr().out == f"relion_external_rank {__version__}\n"
    assert jobmod.main(["--help"]) == 0
    assert "--version" in capsys.readouterr().out


def test_run_out_starts_with_the_version_and_model(sim_project, test_model):
    r = subprocess.run([sys.executable, EXE, "--o", OUT, "--in_parts", SIM_DATA, "--model", test_model, "--j", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"relion_external_rank {__version__} (Python ") and lines[0].endswith(
        f"; model {test_model}")
    assert lines[1] == f"relion_external_rank: --o {OUT} --in_parts {SIM_DATA} --model {test_model} --j 2"
