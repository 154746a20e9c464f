"""--version, the version in run.out, and run.out's stage timings (start-up, the scorer in the
background process, each stage) adding up to the job's wall time."""
import os
import re
import subprocess
import sys
import time

from conftest import ROOT, SIM_DATA
from ranker import __version__
from ranker.runtime import job as jobmod

EXE = os.path.join(ROOT, "relion_external_rank.py")
OUT = "External/job003/"
STAGE = re.compile(r"^ \+ (.+): (\d+\.\d\d) s$")


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


def test_run_out_has_version_and_stage_timings_that_add_up_to_the_wall_time(sim_project, test_model):
    t = time.perf_counter()
    r = subprocess.run([sys.executable, EXE, "--o", OUT, "--in_parts", SIM_DATA, "--model", test_model, "--j", "2"],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"relion_external_rank {__version__} (Python ") and lines[0].endswith(
        f"; model {test_model}")
    assert lines[1] == f"relion_external_rank: --o {OUT} --in_parts {SIM_DATA} --model {test_model} --j 2"
    stages = [(m.group(1), float(m.group(2))) for m in map(STAGE.match, lines) if m]
    names = [name for name, _s in stages]
    assert names[0].startswith("start-up (Python start-up and imports before main(), since the process started")
    assert names[1].startswith("imports (numpy, scipy")
    for name in ("read optimiser and model", "read data.star's header and optics table (particles counted while particles.star is written)",
                 "features and network images", "rank_data.star (a copy of data.star), while the scorer finishes",
                 "scores", "selection", "write STAR outputs", "move outputs into place"):
        assert name in names
    assert stages[0][1] > 0  # the interpreter's own start-up takes some time
    model_line = next(l for l in lines if l.startswith("  model loaded in "))
    assert "(torch not imported)" in model_line and "background process" in model_line
    assert model_line.endswith("9 of the 9 scored classes among them")  # the CNN ran while data.star was read
    total = float(re.match(r"Total time: (\d+\.\d\d) s \(since the process started", lines[-1]).group(1))
    # the + lines add up to the total (each is rounded to 10 ms) ...
    assert abs(sum(s for _n, s in stages) - total) <= 0.005 * (len(stages) + 1)
    # ... and the total is the job's wall time as seen from outside (from fork to exit; generous margin
    # for a loaded test machine: on an idle one they agree within a few ms)
    assert total <= wall + 0.02 and wall - total < 0.15, (total, wall)


def test_torch_weights_import_torch_only_in_the_background_process(sim_project, tmp_path):
    """A torch weights file (.pt) loads in the scorer's process, which imports torch; its results come
    back as plain values: the job's own process never imports torch (a second of CPU, ~50 ms at exit)."""
    from ranker.runtime.model import load_model, save_model

    pt = str(tmp_path / "m.pt")
    r = load_model(None, device="cpu")
    save_model(r.states, pt, r.card, image_norm=r.image_norm, logit_shift=r.logit_shift, job_context=r.job_context)
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); "
            f"sys.argv = ['x', '--o', {OUT!r}, '--in_parts', {SIM_DATA!r}, '--model', {pt!r}, '--device', 'cpu']; "
            "from ranker.runtime import job; rc = job.main(); print('torch in the job process:', 'torch' in sys.modules); "
            "sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "torch in the job process: False" in r.stdout
    line = next(l for l in r.stdout.splitlines() if l.startswith("  model loaded in "))
    assert "(torch " in line and " imported)" in line and "9 of the 9 scored classes among them" in line
