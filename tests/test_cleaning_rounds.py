"""schemes/cleaning_rounds.py: Class2D -> rank -> Class2D on the kept particles -> rank ...

The end-to-end tests (marked ``relion``) run the script, as a user would, with the system's
python3 in a small real RELION 3.1.3 project (300 simulated particles with known truth, imported
by relion_pipeliner): real Class2D jobs (relion_refine, K=3, 3 EM iterations, one thread) and our
job with the shipped model, all added and run by relion_pipeliner. The other tests need no RELION.
"""
import ast
import csv
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT
import relion_project as rp
import scheme_check as sc

SCHEMES = os.path.join(ROOT, "schemes")
SCRIPT = os.path.join(SCHEMES, "cleaning_rounds.py")
EXE = os.path.join(ROOT, "relion_external_rank.py")
sys.path.insert(0, SCHEMES)
import cleaning_rounds as cr  # noqa: E402

relion = [pytest.mark.relion,
          pytest.mark.skipif(not rp.relion_available(), reason="relion_pipeliner not on PATH: install Debian's "
                                                                "relion 3.1.3 (run_tests.sh does this in CI)")]

# every Class2D option RELION 3.1.3 writes into a job's job.star (Class2D/job002/job.star of a test project)
RELION31_CLASS2D = {"allow_coarser", "ctf_intact_first_peak", "do_bimodal_psi", "do_combine_thru_disc",
                    "do_ctf_correction", "do_fast_subsets", "do_helix", "do_parallel_discio", "do_preread_images",
                    "do_queue", "do_restrict_xoff", "do_zero_mask", "dont_skip_align", "fn_cont", "fn_img", "gpu_ids",
                    "helical_rise", "helical_tube_outer_diameter", "highres_limit", "min_dedicated", "nr_classes",
                    "nr_iter", "nr_mpi", "nr_pool", "nr_threads", "offset_range", "offset_step", "other_args",
                    "particle_diameter", "psi_sampling", "qsub", "qsubscript", "queuename", "range_psi",
                    "scratch_dir", "tau_fudge", "use_gpu"}


# ------------------------------------------------------------------------------------------
# no RELION needed
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [SCRIPT, os.path.join(SCHEMES, "relion_it_snippet.py")])
def test_scripts_need_only_the_standard_library(path):
    tree = ast.parse(open(path).read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert imported - set(sys.stdlib_module_names) - {"relion_it_snippet"} == set()


def test_class2d_job_star_for_relion31(tmp_path):
    path = tmp_path / "job.star"
    path.write_text(cr.class2d_job_star("External/job004/particles.star", 3, 7, 3, particle_diameter=190,
                                        threads=2, options={"psi_sampling": 10}, other_args="--random_seed 1"))
    header, opts = cr.snippet.read_job_star(str(path))
    assert header == {"rlnJobType": "8", "rlnJobIsContinue": "0"}  # 3.1 reads only the integer type
    assert set(opts) <= RELION31_CLASS2D
    assert (opts["fn_img"], opts["nr_classes"], opts["nr_iter"], opts["particle_diameter"], opts["nr_threads"],
            opts["psi_sampling"], opts["other_args"], opts["use_gpu"]) == (
        "External/job004/particles.star", "3", "7", "190", "2", "10", "--random_seed 1", "No")
    assert not [v for v in opts.values() if "$$" in v]
    with pytest.raises(ValueError, match="only the EM algorithm"):
        cr.class2d_job_star("p.star", 3, 7, 3, algorithm="vdam")


@pytest.mark.parametrize("algorithm, expected", [("em", {"do_em": "Yes", "do_grad": "No", "nr_iter_em": "30"}),
                                                 ("vdam", {"do_em": "No", "do_grad": "Yes", "nr_iter_grad": "30"})])
def test_class2d_job_star_for_relion5(tmp_path, algorithm, expected):
    path = tmp_path / "job.star"
    path.write_text(cr.class2d_job_star("Select/job005/particles.star", 50, 30, 5, algorithm=algorithm,
                                        options={"use_gpu": "Yes", "gpu_ids": "0"}))
    header, opts = cr.snippet.read_job_star(str(path))
    assert header["rlnJobTypeLabel"] == "relion.class2d"
    assert set(opts) <= sc.JOB_OPTIONS["relion.class2d"]
    assert {k: opts[k] for k in expected} == expected
    assert opts["use_gpu"] == "Yes" and opts["gpu_ids"] == "0" and opts["nr_classes"] == "50"


def test_count_particles(tmp_path):
    v31 = tmp_path / "p31.star"
    v31.write_text("\n# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImageSize #2\n1 64\n\n"
                   "# version 30001\n\ndata_particles\n\nloop_\n_rlnImageName #1\n_rlnClassNumber #2\n"
                   "000001@a.mrcs 1\n000002@a.mrcs 2\n\n000003@a.mrcs 2\n \n")
    assert cr.count_particles(str(v31)) == 3
    v30 = tmp_path / "p30.star"
    v30.write_text("data_\nloop_\n_rlnImageName\n1@a.mrcs\n2@a.mrcs\n")
    assert cr.count_particles(str(v30)) == 2
    empty = tmp_path / "empty.star"
    empty.write_text("data_optics\nloop_\n_rlnOpticsGroup\n1\ndata_particles\nloop_\n_rlnImageName #1\n")
    assert cr.count_particles(str(empty)) == 0


def fake_round(root, class2d, rank, fn_img, n_in, kept, classes=(2, 10), iteration=25):
    os.makedirs(os.path.join(root, class2d), exist_ok=True)
    with open(os.path.join(root, class2d, "job.star"), "w") as fh:
        fh.write(cr.class2d_job_star(fn_img, classes[1], iteration, 3))
    os.makedirs(os.path.join(root, rank), exist_ok=True)
    with open(os.path.join(root, rank, "run.out"), "w") as fh:
        fh.write(f"relion_external_rank: --o {rank} --in_optimiser {class2d} --j 1\n"
                 f"Class2D job directory {class2d}: ranking its final iteration, {iteration}\n"
                 f"Selected {classes[0]} of {classes[1]} classes (1, 4); {kept} of {n_in} particles "
                 f"({100 * kept / n_in:.1f} %) written to {rank}particles.star\n")


def test_rank_job_numbers_stop_rule_and_table(tmp_path):
    fake_round(str(tmp_path), "Class2D/job002/", "External/job003/", "Import/job001/particles.star", 300, 173)
    r = dict(cr.read_rank_job("External/job003/", str(tmp_path)), round=1)
    assert (r["class2d_job"], r["iteration"], r["particles_in"], r["kept"], r["classes_kept"], r["classes"]) == (
        "Class2D/job002/", 25, 300, 173, 2, 10)
    assert r["fraction"] == pytest.approx(173 / 300) and r["particles"] == "External/job003/particles.star"
    assert cr.stop_reason(r, 1, 3, 0.98, 100) is None
    assert cr.stop_reason(r, 3, 3, 0.98, 100) == "reached 3 rounds (--rounds)"
    assert cr.stop_reason(r, 1, 3, 0.5, 100).startswith("round 1 kept 57.7 % of its particles (>= 50.0 %)")
    assert "fewer than 200" in cr.stop_reason(r, 1, 3, 0.98, 200)
    assert cr.stop_reason(dict(r, kept=0, fraction=0.0), 1, 3, 0.98, 0) == "round 1 kept no particles"
    lines = cr.table([r]).splitlines()
    assert lines[0].split() == ["round", "Class2D", "job", "rank", "job", "particles", "in", "kept", "fraction",
                                "classes", "kept"]
    assert lines[1].split() == ["1", "Class2D/job002/", "External/job003/", "300", "173", "0.577", "2", "of", "10"]
    os.makedirs(tmp_path / "External" / "job009")
    (tmp_path / "External" / "job009" / "run.out").write_text("something else\n")
    with pytest.raises(ValueError, match="not a finished ranker job"):
        cr.read_rank_job("External/job009/", str(tmp_path))


def test_summary_links_rounds_through_their_particles(tmp_path, capsys, monkeypatch):
    root = str(tmp_path)
    fake_round(root, "Class2D/job002/", "External/job003/", "Import/job001/particles.star", 300, 173)
    fake_round(root, "Class2D/job004/", "External/job005/", "External/job003/particles.star", 173, 170)
    fake_round(root, "Class2D/job006/", "External/job007/", "Import/job001/particles.star", 300, 120)  # a 2nd chain
    chains = cr.summarize(root)
    assert [[(r["round"], r["class2d_job"], r["rank_job"]) for r in c] for c in chains] == [
        [(1, "Class2D/job002/", "External/job003/"), (2, "Class2D/job004/", "External/job005/")],
        [(1, "Class2D/job006/", "External/job007/")]]
    monkeypatch.chdir(tmp_path)
    assert cr.main(["--summary", "--summary_tsv", "rounds.tsv"]) == 0
    out = capsys.readouterr().out
    assert out.count("rounds starting from Import/job001/particles.star") == 2
    assert "2      Class2D/job004/  External/job005/  173           170   0.983     2 of 10" in out
    rows = list(csv.DictReader(open(tmp_path / "rounds.tsv"), delimiter="\t"))
    assert [(r["round"], r["kept"], r["classes"]) for r in rows] == [("1", "173", "10"), ("2", "170", "10"),
                                                                     ("1", "120", "10")]


def test_refuses_to_run_outside_a_project(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cr.main(["--in_parts", "p.star"]) == 1
    assert "has no default_pipeline.star" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# with real RELION 3.1
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    if not rp.relion_available():
        pytest.skip("relion_pipeliner not on PATH")
    root = str(tmp_path_factory.mktemp("rounds_base") / "project")
    return rp.build_project(root, classify=False)  # Simulated/ + Import/job001/ (300 particles)


def run_script(root, *args, timeout=600):
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable  # no venv: stdlib only
    wrapper = rp.write_wrapper(root, EXE)
    cmd = [python, SCRIPT, "--in_parts", "Import/job001/particles.star", "--K", "3", "--iter", "3",
           "--particle_diameter", "190", "--threads", "1", "--fn_exe", wrapper, "--sec_wait_after", "1",
           "--class2d_option", "psi_sampling=10", "--class2d_option", "offset_range=3",
           "--class2d_option", "allow_coarser=Yes", "--class2d_option", "do_preread_images=Yes",
           "--class2d_option", "nr_pool=30", "--class2d_other_args", "--random_seed 1", *args]
    t0 = time.perf_counter()
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
    return result, time.perf_counter() - t0


def truth_fraction(root, star):
    truth = {r["rlnImageName"]: r["kind"] for r in csv.DictReader(open(os.path.join(root, "Simulated", "truth.csv")))}
    labels, rows = rp.read_star_tables(os.path.join(root, star))["particles"]
    kinds = [truth[row[labels.index("rlnImageName")]] for row in rows]
    return kinds.count("good") / len(kinds)


@pytest.mark.relion
@pytest.mark.skipif(not rp.relion_available(), reason="relion_pipeliner not on PATH")
def test_two_cleaning_rounds_end_to_end(imported, tmp_path):
    root = rp.copy_project(imported.root, str(tmp_path / "project"))
    result, seconds = run_script(root, "--rounds", "2", "--stop_fraction", "0.98", "--summary_tsv", "rounds.tsv")
    print(f"2 rounds (2 Class2D + 2 rank jobs) in {seconds:.0f} s\n{result.stdout}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = list(csv.DictReader(open(os.path.join(root, "rounds.tsv")), delimiter="\t"))
    assert [r["round"] for r in records] == ["1", "2"]
    pipe = rp.read_pipeline(root)
    expected_in = "Import/job001/particles.star"
    for r in records:
        c2d, rank = r["Class2D_job"], r["rank_job"]
        for job in (c2d, rank):  # RELION ran both to success
            assert pipe["processes"][job]["status"] == 2, rp.job_log(root, job)
        # the Class2D job classified the previous round's kept particles (an input edge in the pipeline)
        assert (expected_in, c2d) in pipe["input_edges"]
        assert int(r["particles_in"]) == rp.count_particles(os.path.join(root, expected_in))
        # the rank job was given the Class2D job directory and says which iteration it ranked
        note = open(os.path.join(root, rank, "note.txt")).read()
        assert f"--in_optimiser {c2d}" in note and "--in_parts" not in note
        out = open(os.path.join(root, rank, "run.out")).read()
        assert f"Class2D job directory {c2d}: ranking its final iteration, 3" in out
        assert int(r["kept"]) == rp.count_particles(os.path.join(root, rank, "particles.star"))
        assert float(r["fraction"]) == pytest.approx(int(r["kept"]) / int(r["particles_in"]), abs=1e-4)
        expected_in = rank + "particles.star"
    # round 1 drops the junk (the simulated set is 60 % good); the rounds only ever remove particles
    assert int(records[0]["kept"]) < int(records[0]["particles_in"])
    assert int(records[1]["kept"]) <= int(records[1]["particles_in"]) == int(records[0]["kept"])
    assert truth_fraction(root, records[-1]["particles"]) >= 0.9 > truth_fraction(root, "Import/job001/particles.star")
    last = float(records[-1]["fraction"])
    reason = "round 2 kept" if last >= 0.98 else "stopped: reached 2 rounds (--rounds)"
    assert reason in result.stdout
    assert f"final particles: {records[-1]['particles']} ({records[-1]['kept']})" in result.stdout
    # --summary finds the same rounds from the job directories
    summary = subprocess.run([sys.executable, SCRIPT, "--summary"], cwd=root, capture_output=True, text=True)
    table = result.stdout[result.stdout.index("round  Class2D job"):].split("\nstopped:")[0]
    assert table in summary.stdout


@pytest.mark.relion
@pytest.mark.skipif(not rp.relion_available(), reason="relion_pipeliner not on PATH")
def test_rounds_stop_when_a_round_keeps_almost_everything(imported, tmp_path):
    root = rp.copy_project(imported.root, str(tmp_path / "project"))
    # min_score 0 keeps every class with a score: (almost) all particles, so round 1 is the last
    result, seconds = run_script(root, "--rounds", "3", "--stop_fraction", "0.9", "--min_score", "0")
    print(f"1 round in {seconds:.0f} s\n{result.stdout}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stopped: round 1 kept" in result.stdout and "(>= 90.0 %)" in result.stdout
    assert "Class2D/job004/" not in rp.read_pipeline(root)["processes"]  # no second round was started
