"""The RELION 4/5 Scheme ``schemes/clean2d`` (cleaning rounds) and the ranker's Scheme job,
checked against RELION-5's Schemer source (tests/scheme_check.py lists the facts) and run in an
emulator of the Schemer's loop. No RELION 4/5 binaries: what only they can show is listed in
schemes/README.md."""
import os
import re
import shutil
import sys

import pytest

from conftest import ROOT
import scheme_check as sc
from ranker.runtime.options import SPEC, parse_options

SCHEMES = os.path.join(ROOT, "schemes")
CLEAN2D = os.path.join(SCHEMES, "clean2d")
sys.path.insert(0, SCHEMES)
import cleaning_rounds as cr  # noqa: E402
import relion_it_snippet as snippet  # noqa: E402

INPUT = "Select/job005/particles.star"


def test_clean2d_scheme_follows_relion5_schemer():
    assert sc.check(CLEAN2D) == []


def test_clean2d_scheme_never_names_an_iteration():
    for base, _dirs, files in os.walk(CLEAN2D):
        for name in files:
            assert "run_it" not in open(os.path.join(base, name)).read(), name


def test_rank_job_of_the_scheme_is_a_valid_ranker_command():
    """The command RELION 4/5 builds from rank/job.star (getCommandsExternalJob: params in order as
    --label value, then --j, other_args), after the Schemer's $$ and job-name replacement."""
    run = sc.Emulated(CLEAN2D, {INPUT: 1000}, keep=lambda r, n: n).run()
    job, name, opts = run.runs[1]
    assert (job, name) == ("rank", "External/job002/")
    argv = ["--o", name]
    for i in range(1, 11):
        if opts[f"param{i}_label"]:
            argv += [f"--{opts[f'param{i}_label']}"] + ([opts[f"param{i}_value"]] if opts[f"param{i}_value"] else [])
    argv += ["--j", opts["nr_threads"]]
    parsed = parse_options(argv)
    assert parsed.in_optimiser == "Class2D/job001/" and parsed.in_parts is None and opts["in_part"] == ""
    assert parsed.min_score == 0.5 and parsed.threads == 4
    labels = {opts[f"param{i}_label"] for i in range(1, 11)} - {""}
    assert labels <= set(SPEC)


@pytest.mark.parametrize("fractions, rounds, why", [
    ([0.6, 0.99], 2, "converged"),          # round 2 keeps >= 98 %: stop
    ([0.5, 0.5, 0.5, 0.5], 3, "at_max_rounds"),  # max_rounds 3
    ([1.0], 1, "converged"),
    ([0.05], 1, "too_few"),                 # 50 of 1000 < min_nr_parts 100
])
def test_emulated_rounds_stop_as_designed(fractions, rounds, why):
    run = sc.Emulated(CLEAN2D, {INPUT: 1000}, keep=lambda r, n: int(round(n * fractions[r - 1]))).run()
    done = run.rounds()
    assert len(done) == rounds
    assert done[0]["input"] == INPUT and done[0]["particles_in"] == 1000
    for previous, this in zip(done, done[1:]):  # each round classifies what the previous one kept
        assert this["input"] == previous["rank_job"] + "particles.star"
        assert this["particles_in"] == previous["kept"]
    assert run.bools[why] and run.bools["stop"]
    assert run.floats["round"] == rounds
    assert run.floats["kept_fraction"] == pytest.approx(done[-1]["kept"] / done[-1]["particles_in"])
    # every rank job ranked the Class2D job of its round, by directory
    for job, name, opts in run.runs:
        if job == "rank":
            assert opts["param7_label"] == "in_optimiser" and opts["param7_value"].startswith("Class2D/job")


def test_checker_finds_what_relion_would_refuse(tmp_path):
    """The checks are not vacuous: each breakage is reported."""
    def broken(edit):
        target = tmp_path / f"b{len(list(tmp_path.iterdir()))}" / "clean2d"
        shutil.copytree(CLEAN2D, target)
        path = target / "scheme.star"
        path.write_text(edit(path.read_text()))
        return sc.check(str(target))

    assert any("unknown type" in p for p in broken(lambda t: t.replace("bool=ge ", "bool=gte")))
    assert any("input2 '1' is not a float" in p
               for p in broken(lambda t: t.replace("round           one", "round           1  ")))
    assert any("no job or operator" in p for p in broken(lambda t: t.replace("SET_parts_in     class2d",
                                                                             "SET_parts_in     class3d")))
    assert any("two edges leave" in p for p in broken(lambda t: t.replace(
        "SET_parts_in     class2d           0", "SET_parts_in     class2d           0  undefined  undefined \n"
        "SET_parts_in     rank              0")))
    assert any("mode" in p for p in broken(lambda t: t.replace("class2d    class2d    new", "class2d    class2d    overwrite")))
    assert any("not Schemes/clean2d/" in p for p in broken(lambda t: t.replace("Schemes/clean2d/\n", "Schemes/proc/\n")))
    assert any("never reaches an exit" in p or "no exit operator" in p
               for p in broken(lambda t: t.replace("CHECK_stop       SET_parts_in      1  EXIT",
                                                   "CHECK_stop       SET_parts_in      1  SET_parts_in")))
    # a directory in an input-node option
    target = tmp_path / "dir" / "clean2d"
    shutil.copytree(CLEAN2D, target)
    rank = target / "rank" / "job.star"
    rank.write_text(rank.read_text().replace('   in_part         "" ', "   in_part Schemes/clean2d/class2d/ "))
    assert any("is a directory" in p for p in sc.check(str(target)))


def test_proc_scheme_template_job():
    """schemes/external_rank/job.star, put into RELION's proc Scheme as rank_parts (schemes/README.md)."""
    header, opts = snippet.read_job_star(os.path.join(SCHEMES, "external_rank", "job.star"))
    assert header["rlnJobTypeLabel"] == "relion.external"
    assert set(opts) <= sc.JOB_OPTIONS["relion.external"]
    assert opts["in_part"] == "" and opts["param7_value"] == "Schemes/proc/class2d/"


def test_write_scheme_fills_the_variables(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cr.main(["--write_scheme", "--in_parts", "Extract/job007/particles.star", "--K", "20", "--rounds", "4",
                    "--stop_fraction", "0.95", "--min_score", "0.4", "--algorithm", "vdam", "--iter", "100",
                    "--particle_diameter", "160", "--threads", "8", "--fn_exe", "/opt/rank/relion_external_rank.py"]) == 0
    target = tmp_path / "Schemes" / "clean2d"
    assert sc.check(str(target)) == []
    s = sc.load(str(target))
    assert s["strings"]["parts_in"] == ("Extract/job007/particles.star",) * 2
    for var, value in {"nr_classes": 20, "max_rounds": 4, "stop_fraction": 0.95, "min_score": 0.4,
                       "nr_iter_grad": 100, "mask_diameter": 160, "nr_threads": 8}.items():
        assert s["floats"][var] == (value, value), var
    _h, rank = snippet.read_job_star(str(target / "rank" / "job.star"))
    assert rank["fn_exe"] == "/opt/rank/relion_external_rank.py"
    run = sc.Emulated(str(target), {"Extract/job007/particles.star": 500}, keep=lambda r, n: n // 2).run()
    assert [r["kept"] for r in run.rounds()] == [250, 125, 62]  # 62 < min_nr_parts 100: stop before round 4
    assert run.bools["too_few"] and not run.bools["at_max_rounds"]
    # another name: every Schemes/clean2d/ becomes Schemes/NAME/
    assert cr.main(["--write_scheme", "clean_b", "--in_parts", "Extract/job007/particles.star"]) == 0
    assert sc.check(str(tmp_path / "Schemes" / "clean_b")) == []
    assert "Schemes/clean2d/" not in re.sub(r"\s+", " ", (tmp_path / "Schemes" / "clean_b" / "scheme.star").read_text())
