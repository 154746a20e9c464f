"""Our External job run by real RELION 3.1, the way users run it.

A tiny RELION project (simulated particles -> Import -> Class2D, all through
``relion_pipeliner``) is built once per test session (``tests/relion_project.py``); each test
works on its own copy and asserts on what RELION itself wrote: the process status and node
types in ``default_pipeline.star``, the ``RELION_JOB_EXIT_*`` files, ``pipeline_.log``, and the
outputs of the jobs that RELION ran after ours.

Tests marked ``relion`` need Debian's relion 3.1.3 (``run_tests.sh`` installs it in CI); they
are skipped, with the reason, only when ``relion_pipeliner`` is not on PATH. Deselect them
with ``-m "not relion"``. The job.star template tests need no RELION binaries.
"""
import os
import shlex
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT
import relion_project as rp
from ranker.runtime.options import SPEC, parse_options
from ranker.runtime.star import read_star

EXE = os.path.join(ROOT, "relion_external_rank.py")
SCHEMES = os.path.join(ROOT, "schemes")
JOB_TEMPLATE = os.path.join(SCHEMES, "external_rank", "job.star")
sys.path.insert(0, SCHEMES)
import relion_it_snippet as snippet  # noqa: E402

needs_relion = [pytest.mark.relion,
                pytest.mark.skipif(not rp.relion_available(),
                                   reason="relion_pipeliner not on PATH: install Debian's relion 3.1.3 "
                                          "(apt-get install relion; run_tests.sh does this in CI)")]

# What RELION must register for our job (node name in the job dir -> RELION-3.1 node type)
OUR_NODES = {"particles.star": 3, "class_averages.star": 5, "rank_optimiser.star": 9}


def relion(f):
    for mark in needs_relion:
        f = mark(f)
    return f


# ------------------------------------------------------------------------------------------
# fixtures: one real project per session, a copy per test
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def relion_base(tmp_path_factory):
    if not rp.relion_available():
        pytest.skip("relion_pipeliner not on PATH")
    root = str(tmp_path_factory.mktemp("relion_base") / "project")
    return rp.build_project(root, n_good=180, n_noise=60, n_blobs=60, n_classes=5, n_iter=4)


@pytest.fixture
def project(relion_base, tmp_path):
    """A private copy of the built project (Import job001 + Class2D job002 done)."""
    root = rp.copy_project(relion_base.root, str(tmp_path / "project"))
    return _moved(relion_base, root)


def _moved(base, root):
    return rp.Project(**{**base.__dict__, "root": root})


def external_options(test_model, wrapper, **params):
    """``--addJobOptions`` for our External job: fn_exe, params (label -> value), the test model."""
    opts = {"fn_exe": wrapper, "nr_threads": 1, "other_args": f"--model {test_model}"}
    for i, (label, value) in enumerate(params.items(), start=1):
        opts[f"param{i}_label"] = label
        opts[f"param{i}_value"] = value
    return opts


def assert_succeeded(root, jobdir):
    pipe = rp.read_pipeline(root)
    status = pipe["processes"][jobdir]["status"]
    assert status == 2, f"{jobdir} status {status} ({rp.STATUS.get(status)})\n{rp.job_log(root, jobdir)}"
    assert os.path.exists(os.path.join(root, jobdir, "RELION_JOB_EXIT_SUCCESS"))
    return pipe


def assert_our_nodes(root, jobdir, pipe):
    """RELION registered our outputs with the right 3.1 node types, as outputs of our job."""
    assert pipe["processes"][jobdir]["type"] == 99  # External
    alias = pipe["processes"][jobdir]["alias"]
    shown = jobdir if alias == "None" else alias  # .Nodes uses the alias when the job has one
    for name, node_type in OUR_NODES.items():
        node = jobdir + name
        assert pipe["nodes"].get(node) == node_type, (node, pipe["nodes"])
        assert (jobdir, node) in pipe["output_edges"]
        assert os.path.exists(os.path.join(root, node))
        # the GUI finds inputs for later jobs through .Nodes/<type>/<name>
        assert os.path.exists(os.path.join(root, ".Nodes", str(node_type), shown + name))
    # nothing registered under a name relative to the job dir (a classic External-job mistake)
    assert not [n for n in pipe["nodes"] if not n.startswith(("Import/", "Class2D/", "External/"))]


def command_of(root, jobdir):
    """The command RELION ran for a job (from note.txt)."""
    with open(os.path.join(root, jobdir, "note.txt")) as fh:
        lines = [l.strip() for l in fh if l.strip() and not l.startswith(" ++++")]
    return shlex.split(lines[0])


# ------------------------------------------------------------------------------------------
# the job.star template and the relion_it-style snippet (no RELION binaries needed)
# ------------------------------------------------------------------------------------------
def test_scheme_job_star_parses_and_names_valid_options():
    blocks = read_star(JOB_TEMPLATE)
    job = blocks["job"]
    assert job.value("rlnJobTypeLabel") == "relion.external"
    assert job.value("rlnJobIsContinue") == "0"
    values = blocks["joboptions_values"]
    opts = dict(zip(values.column("rlnJobOptionVariable"), values.column("rlnJobOptionValue")))
    assert opts["fn_exe"].endswith("/relion_external_rank.py")
    assert "in_optimiser" not in opts  # not a RELION job option (rejected: "Job does not contain label")
    labels = {opts[f"param{i}_label"]: opts[f"param{i}_value"] for i in range(1, 11) if opts[f"param{i}_label"]}
    assert {"min_score", "select_min_nr_particles"} <= set(labels)
    # the Class2D job directory of RELION's proc Scheme, never an iteration (4/5 VDAM writes run_it200),
    # as a param: RELION cannot register a directory given as in_part as a pipeline node
    assert opts["in_part"] == "" and labels["in_optimiser"] == "Schemes/proc/class2d/"
    assert "run_it" not in open(JOB_TEMPLATE).read()
    assert set(labels) <= set(SPEC) - {"o", "j", "pipeline_control", "in_parts"}
    for label, value in labels.items():
        # RELION passes an empty value as a bare flag: only flags may be empty
        assert value != "" or SPEC[label][1] == "flag", label
    # the command RELION builds from this job.star is accepted by our parser
    argv = ["--o", "External/job012/"]
    for label, value in labels.items():
        argv += [f"--{label}"] + ([value] if value != "" else [])
    argv += ["--j", opts["nr_threads"]] + shlex.split(opts["other_args"]) + ["--pipeline_control", "External/job012/"]
    parsed = parse_options(argv)
    assert parsed.in_optimiser == "Schemes/proc/class2d/" and parsed.in_parts is None
    assert parsed.threads == int(opts["nr_threads"])
    assert parsed.min_score == float(labels["min_score"])
    assert parsed.select_min_nr_particles == int(labels["select_min_nr_particles"])
    assert parsed.relative_thresholds is False


@pytest.mark.parametrize("major", [3, 5])
def test_snippet_job_star_for_each_relion_version(tmp_path, major):
    text = snippet.rank_job_star("Class2D/job008/run_it025_data.star",
                                 {"rank_exe": "/opt/rank/relion_external_rank.py", "rank_min_score": "auto",
                                  "rank_select_min_nr_particles": 3000, "rank_nr_threads": 4,
                                  "rank_other_args": "--model /opt/w.pt --write_features"}, relion_major=major)
    path = tmp_path / "job.star"
    path.write_text(text)
    blocks = read_star(path)
    if major == 3:
        assert blocks["job"].value("rlnJobType") == "99" and not blocks["job"].has("rlnJobTypeLabel")
    else:
        assert blocks["job"].value("rlnJobTypeLabel") == "relion.external"
    values = blocks["joboptions_values"]
    opts = dict(zip(values.column("rlnJobOptionVariable"), values.column("rlnJobOptionValue")))
    assert opts["fn_exe"] == "/opt/rank/relion_external_rank.py"
    assert opts["in_part"] == "Class2D/job008/run_it025_data.star"
    assert opts["other_args"] == "--model /opt/w.pt --write_features" and opts["nr_threads"] == "4"
    labels = {opts[f"param{i}_label"]: opts[f"param{i}_value"] for i in range(1, 11) if opts[f"param{i}_label"]}
    assert labels["min_score"] == "auto" and labels["select_min_nr_particles"] == "3000"
    assert "in_optimiser" not in labels  # the template's Scheme directory is dropped for a data.star input
    # same template options otherwise
    _h, template = snippet.read_job_star(JOB_TEMPLATE)
    assert set(opts) == set(template)


@pytest.mark.parametrize("given", ["Class2D/job008/", "Class2D/job008"])
def test_snippet_puts_a_class2d_directory_in_a_param(tmp_path, given):
    """A job directory is passed as the param in_optimiser (the job ranks its final iteration), with
    in_part empty: RELION touches .Nodes/<type>/<in_part> for input nodes, which fails for a directory."""
    path = tmp_path / "job.star"
    path.write_text(snippet.rank_job_star(given, {"rank_exe": "/opt/rank/relion_external_rank.py"}, relion_major=3))
    _h, opts = snippet.read_job_star(str(path))
    labels = {opts[f"param{i}_label"]: opts[f"param{i}_value"] for i in range(1, 11) if opts[f"param{i}_label"]}
    assert opts["in_part"] == "" and labels["in_optimiser"] == "Class2D/job008/"
    assert parse_options(["--o", "External/job009/", "--in_optimiser", labels["in_optimiser"]]).in_optimiser \
        == "Class2D/job008/"


def test_snippet_prepares_a_scheme_job(tmp_path, monkeypatch, capsys):
    path = snippet.prepare_scheme_job("proc", "rank_parts", project=str(tmp_path))
    assert path == str(tmp_path / "Schemes" / "proc" / "rank_parts" / "job.star")
    _h, opts = snippet.read_job_star(path)
    assert opts["in_part"] == "" and (opts["param7_label"], opts["param7_value"]) == ("in_optimiser",
                                                                                    "Schemes/proc/class2d/")
    assert opts["fn_exe"] == snippet.DEFAULT_EXE and os.path.exists(snippet.DEFAULT_EXE)
    # the command-line form, into another Scheme
    monkeypatch.chdir(tmp_path)
    assert snippet.main(["--scheme", "auto2d", "--scheme_job", "rank", "--min_score", "0.4"]) == 0
    header, opts = snippet.read_job_star("Schemes/auto2d/rank/job.star")
    assert header["rlnJobTypeLabel"] == "relion.external"
    assert opts["in_part"] == "" and opts["param7_value"] == "Schemes/auto2d/class2d/"
    assert (opts["param1_label"], opts["param1_value"]) == ("min_score", "0.4")
    out = capsys.readouterr().out
    assert "Schemes/auto2d/rank/job.star" in out and "relion_schemer --scheme auto2d --reset" in out
    assert "addJobFromStar" not in out  # not needed in a Scheme (RELION 5.0.x ran a one-job Scheme without it)


# ------------------------------------------------------------------------------------------
# relion_pipeliner runs our job both ways
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ranked(relion_base, tmp_path_factory, test_model):
    """A project where the pipeliner ran our job on the Class2D data.star (in_part): External/job003/.

    min_score 0.99 with select_min_nr_particles 100: the test model's random weights score
    below 0.99, so the best classes are added until at least 100 particles are selected."""
    root = rp.copy_project(relion_base.root, str(tmp_path_factory.mktemp("ranked") / "project"))
    proj = _moved(relion_base, root)
    wrapper = rp.write_wrapper(root, EXE)
    opts = external_options(test_model, wrapper, min_score=0.99, select_min_nr_particles=100)
    opts["in_part"] = proj.data_star
    jobdir = rp.add_job(root, "External", opts)
    rp.run_job(root, jobdir, timeout=300)
    return proj, jobdir


@relion
def test_pipeliner_runs_job_on_class2d_particles(ranked):
    proj, jobdir = ranked
    root = proj.root
    assert jobdir == "External/job003/"
    pipe = assert_succeeded(root, jobdir)
    assert_our_nodes(root, jobdir, pipe)
    # in_part gives --in_parts and an input edge from the Class2D node
    assert (proj.data_star, jobdir) in pipe["input_edges"]
    cmd = command_of(root, jobdir)
    assert cmd[0].endswith("relion_external_rank_wrapper.sh")
    assert cmd[1:5] == ["--o", jobdir, "--in_parts", proj.data_star]
    assert cmd[-2:] == ["--pipeline_control", jobdir]  # RELION added it: "relion_" in the command
    assert cmd[cmd.index("--min_score") + 1] == "0.99" and cmd[cmd.index("--j") + 1] == "1"
    with open(os.path.join(root, jobdir, "run.err")) as fh:
        assert fh.read().strip() == ""
    with open(os.path.join(root, jobdir, "run.out")) as fh:
        out = fh.read()
    assert f"{proj.n_particles} particles" in out and "Selected" in out
    # particles.star holds exactly the Class2D particles of the classes in class_averages.star,
    # which name RELION's class images
    ca = read_star(os.path.join(root, jobdir, "class_averages.star"))[""]
    refs = ca.column("rlnReferenceImage")
    assert refs and all(ref.endswith(f"@{proj.class2d_job}run_it{proj.iteration:03d}_classes.mrcs") for ref in refs)
    chosen = {str(int(ref.split("@")[0])) for ref in refs}
    labels, rows = rp.read_star_tables(os.path.join(root, proj.data_star))["particles"]
    expected = [r[0] for r in rows if r[labels.index("rlnClassNumber")] in chosen]
    got = [r[0] for r in rp.read_star_tables(os.path.join(root, jobdir, "particles.star"))["particles"][1]]
    assert got == expected and len(got) >= 100  # select_min_nr_particles 100 (by fallback)
    assert f"{len(got)} of {proj.n_particles} particles" in out
    opt = read_star(os.path.join(root, jobdir, "rank_optimiser.star"))["optimiser_general"]
    assert opt.value("rlnModelStarFile") == jobdir + "rank_model.star"
    assert "Stopping pipeliner due to" not in open(os.path.join(root, "pipeline_.log")).read()


@relion
def test_pipeliner_runs_job_with_in_optimiser_param(project, test_model):
    root = project.root
    wrapper = rp.write_wrapper(root, EXE)
    opts = external_options(test_model, wrapper, in_optimiser=project.optimiser_star, min_score=0)
    jobdir = rp.add_job(root, "External", opts)
    rp.run_job(root, jobdir, timeout=300)
    pipe = assert_succeeded(root, jobdir)
    assert_our_nodes(root, jobdir, pipe)
    # a param is passed through but is no input edge (3.1 has no optimiser input for External)
    assert not [e for e in pipe["input_edges"] if e[1] == jobdir]
    cmd = command_of(root, jobdir)
    assert cmd[1:5] == ["--o", jobdir, "--in_optimiser", project.optimiser_star]
    assert "--in_parts" not in cmd and cmd[-2:] == ["--pipeline_control", jobdir]
    # min_score 0: every class with a score is kept
    n = rp.count_particles(os.path.join(root, jobdir, "particles.star"))
    assert 0 < n <= project.n_particles


# ------------------------------------------------------------------------------------------
# the next job on our particles.star
# ------------------------------------------------------------------------------------------
@relion
def test_downstream_class2d_on_our_particles(ranked, tmp_path):
    base, ext = ranked
    root = rp.copy_project(base.root, str(tmp_path / "project"))
    ours = ext + "particles.star"
    n_ours = rp.count_particles(os.path.join(root, ours))
    jobdir = rp.add_job(root, "Class2D", {
        "fn_img": ours, "nr_classes": 2, "nr_iter": 2, "particle_diameter": base.mask_diameter_A,
        "do_ctf_correction": "Yes", "psi_sampling": 10, "offset_range": 3, "offset_step": 1,
        "allow_coarser": "Yes", "do_preread_images": "Yes", "nr_pool": 30, "nr_mpi": 1, "nr_threads": 1,
        "use_gpu": "No", "scratch_dir": ""})
    assert jobdir == "Class2D/job004/"
    rp.run_job(root, jobdir, timeout=600)
    pipe = assert_succeeded(root, jobdir)
    # RELION used our particles.star as the job's input node ...
    assert (ours, jobdir) in pipe["input_edges"]
    assert f"--i {ours}" in " ".join(command_of(root, jobdir))
    # ... and classified exactly the particles we selected
    data = os.path.join(root, jobdir, "run_it002_data.star")
    assert os.path.exists(data), rp.job_log(root, jobdir)
    assert pipe["nodes"].get(jobdir + "run_it002_data.star") == 3
    assert rp.count_particles(data) == n_ours
    ours_names = {r[0] for r in rp.read_star_tables(os.path.join(root, ours))["particles"][1]}
    theirs = {r[0] for r in rp.read_star_tables(data)["particles"][1]}
    assert theirs == ours_names


# ------------------------------------------------------------------------------------------
# relion_pipeliner --addJobFromStar (the Schemes way) with the shipped template, via the snippet
# ------------------------------------------------------------------------------------------
@relion
def test_snippet_adds_template_job_from_star_and_runs_it(project, test_model):
    root = project.root
    wrapper = rp.write_wrapper(root, EXE)
    assert snippet.relion_major_version() == 3
    jobdir = snippet.add_rank_job(project.data_star, {"rank_exe": wrapper, "rank_min_score": 0,
                                                      "rank_nr_threads": 1,
                                                      "rank_other_args": f"--model {test_model}"},
                                  project=root, alias="ranked_classes")
    assert jobdir == "External/job003/"
    assert snippet.pipeline_processes(root)[jobdir] == "Scheduled"
    assert rp.read_pipeline(root)["processes"][jobdir]["alias"] == "External/ranked_classes/"
    rp.run_job(root, jobdir, timeout=300)
    pipe = assert_succeeded(root, jobdir)
    assert_our_nodes(root, jobdir, pipe)
    assert snippet.pipeline_processes(root)[jobdir] == "Succeeded"
    cmd = command_of(root, jobdir)
    # the template's params arrive in order, then --j, other_args, --pipeline_control
    assert cmd[1:] == ["--o", jobdir, "--in_parts", project.data_star, "--min_score", "0", "--max_score", "999",
                       "--select_min_nr_particles", "-1", "--select_min_nr_classes", "-1",
                       "--relative_thresholds", "false", "--device", "auto", "--j", "1",
                       "--model", test_model, "--pipeline_control", jobdir]


@relion
def test_snippet_runs_the_job_on_a_class2d_directory(project, test_model):
    """The iteration-free form Schemes and scripts use: the Class2D job directory, as param in_optimiser."""
    root = project.root
    wrapper = rp.write_wrapper(root, EXE)
    jobdir = snippet.add_rank_job(project.class2d_job, {"rank_exe": wrapper, "rank_min_score": 0,
                                                        "rank_nr_threads": 1,
                                                        "rank_other_args": f"--model {test_model}"}, project=root)
    rp.run_job(root, jobdir, timeout=300)
    pipe = assert_succeeded(root, jobdir)
    assert_our_nodes(root, jobdir, pipe)
    cmd = command_of(root, jobdir)
    assert "--in_parts" not in cmd and cmd[cmd.index("--in_optimiser") + 1] == project.class2d_job
    with open(os.path.join(root, jobdir, "run.out")) as fh:
        out = fh.read()
    assert f"Class2D job directory {project.class2d_job}: ranking its final iteration, {project.iteration}" in out
    assert not [e for e in pipe["input_edges"] if e[1] == jobdir]  # a param is no input edge


@relion
def test_relion_cannot_take_a_directory_as_in_part(project):
    """Why the directory goes into a param: RELION 3.1.3 registers in_part as a node and touches
    .Nodes/3/<in_part>, which fails for an existing directory (RELION 4/5: same addNode code)."""
    root = project.root
    header, options = snippet.read_job_star(JOB_TEMPLATE)
    options["in_part"] = project.class2d_job
    text = snippet.write_job_star({"rlnJobType": "99", "rlnJobIsContinue": "0"}, options)
    with pytest.raises(RuntimeError, match="Filename::touch ERROR: Cannot open file: .Nodes/3/" + project.class2d_job):
        snippet.add_job_from_star(text, project=root)
    assert not os.path.exists(os.path.join(root, ".relion_lock"))  # cleared, the next call does not wait


# ------------------------------------------------------------------------------------------
# RELION 3.1's scheduler (relion_scheduler) runs a schedule holding our job
# ------------------------------------------------------------------------------------------
def scheduler(root, args, timeout=60):
    try:
        return rp.run_program(["relion_scheduler"] + args, root, timeout)
    except rp.RelionError:
        # a failed call leaves .relion_lock_schedule_NAME, which blocks the next one for 2 minutes
        for name in os.listdir(root):
            if name.startswith(".relion_lock_schedule_"):
                subprocess.run(["rm", "-rf", os.path.join(root, name)])
        raise


@relion
def test_scheduler_runs_a_schedule_with_our_job(project, test_model):
    root = project.root
    wrapper = rp.write_wrapper(root, EXE)
    # the schedule's job is our template (RELION-3.1 header), in a directory named like the node
    os.makedirs(os.path.join(root, "rank"))
    with open(os.path.join(root, "rank", "job.star"), "w") as fh:
        fh.write(snippet.rank_job_star(project.data_star, {"rank_exe": wrapper, "rank_min_score": 0,
                                                           "rank_nr_threads": 1,
                                                           "rank_other_args": f"--model {test_model}"},
                                       relion_major=3))
    # 3.1.3: --schedule NAME means Schedules/NAME/; "--add job --i DIR/" reads DIR/job.star and names
    # the node "DIR/"; the exit node is an operator (--add job --i exit is not accepted by 3.1.3)
    scheduler(root, ["--schedule", "ranking", "--add", "job", "--i", "rank/", "--mode", "new"])
    scheduler(root, ["--schedule", "ranking", "--add", "operator", "--type", "exit"])
    scheduler(root, ["--schedule", "ranking", "--add", "edge", "--i", "rank/", "--o", "EXIT"])
    result = scheduler(root, ["--schedule", "ranking", "--run", "--verb", "1"], timeout=300)
    assert "Executing Job: External/job003/" in result.stdout, result.stdout + result.stderr
    assert "reached an exit point" in result.stdout
    pipe = assert_succeeded(root, "External/job003/")
    assert_our_nodes(root, "External/job003/", pipe)
    assert (project.data_star, "External/job003/") in pipe["input_edges"]
    general = rp.read_star_tables(os.path.join(root, "Schedules", "ranking", "schedule.star"))
    labels, rows = general["schedule_general"]
    assert dict(zip(labels, rows[0]))["rlnScheduleCurrentNodeName"] == "EXIT"
    labels, rows = general["schedule_jobs"]
    job = dict(zip(labels, rows[0]))
    assert job["rlnScheduleJobName"] == "External/job003/" and job["rlnScheduleJobHasStarted"] == "1"


# ------------------------------------------------------------------------------------------
# failure and abort, as RELION sees them
# ------------------------------------------------------------------------------------------
@relion
def test_bad_input_is_a_failed_job(project, test_model):
    """Import particles instead of a Class2D data.star (a user mistake): RELION marks the job failed."""
    root = project.root
    wrapper = rp.write_wrapper(root, EXE)
    opts = external_options(test_model, wrapper)
    opts["in_part"] = "Import/job001/particles.star"
    jobdir = rp.add_job(root, "External", opts)
    call = rp.run_job(root, jobdir, timeout=300)
    assert call.returncode == 0  # the pipeliner stops and exits normally
    pipe = rp.read_pipeline(root)
    assert pipe["processes"][jobdir]["status"] == 3, rp.job_log(root, jobdir)
    files = sorted(os.listdir(os.path.join(root, jobdir)))
    assert "RELION_JOB_EXIT_FAILURE" in files
    assert not {"RELION_JOB_EXIT_SUCCESS", "particles.star", "RELION_OUTPUT_NODES.star"} & set(files)
    assert not [n for n in pipe["nodes"] if n.startswith(jobdir)]
    with open(os.path.join(root, jobdir, "run.err")) as fh:
        err = fh.read().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR: Import/job001/particles.star:"), err
    assert "Stopping pipeliner due to a job that failed" in open(os.path.join(root, "pipeline_.log")).read()


@relion
def test_abort_leaves_an_aborted_job(project, test_model):
    """Abort as the GUI does it: touch RELION_JOB_ABORT_NOW in the job dir while the job runs.

    The wrapper holds the job back until the abort file exists (at most 60 s), so the
    test does not race a job that takes two seconds."""
    root = project.root
    wait = ('n=0; while [ ! -e "${JOBDIR}RELION_JOB_ABORT_NOW" ] && [ $n -lt 600 ]; '
            'do sleep 0.1; n=$((n+1)); done')
    wrapper = rp.write_wrapper(root, EXE, before=wait)
    opts = external_options(test_model, wrapper)
    opts["in_part"] = project.data_star
    jobdir = rp.add_job(root, "External", opts)
    abort_file = os.path.join(root, jobdir, "RELION_JOB_ABORT_NOW")

    def press_abort():  # once RELION has started the job (it clears old exit/abort files first)
        for _ in range(600):
            if os.path.exists(os.path.join(root, jobdir, "run.out")):
                open(abort_file, "w").close()
                return
            time.sleep(0.1)

    presser = threading.Thread(target=press_abort)
    presser.start()
    try:
        rp.run_job(root, jobdir, timeout=300)
    finally:
        presser.join()
    pipe = rp.read_pipeline(root)
    assert pipe["processes"][jobdir]["status"] == 4, rp.job_log(root, jobdir)
    files = set(os.listdir(os.path.join(root, jobdir)))
    assert "RELION_JOB_EXIT_ABORTED" in files
    assert not {"RELION_JOB_ABORT_NOW", "RELION_JOB_EXIT_SUCCESS", "RELION_JOB_EXIT_FAILURE",
                "particles.star"} & files
    assert not [n for n in pipe["nodes"] if n.startswith(jobdir)]
    assert "Aborted by the user" in open(os.path.join(root, jobdir, "run.out")).read()
    assert "Stopping pipeliner due to user abort" in open(os.path.join(root, "pipeline_.log")).read()
