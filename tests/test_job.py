"""The External job end to end on copies of the real RELION projects (conftest: SIM, R5)."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SIM_DATA, SIM_OPT, SIM_REF, R5_DATA
from ranker.runtime import job as jobmod
from ranker.runtime.model import Ranker
from ranker.runtime.star import read_star

EXE = os.path.join(ROOT, "relion_external_rank.py")
OUT = "External/job003/"


def run_exe(args, **kw):
    return subprocess.run([sys.executable, EXE] + args, capture_output=True, text=True, **kw)


def data_rows(path):
    """Particle rows (lines) of a data.star, in order, as bytes."""
    rows, in_particles = [], False
    for line in open(path, "rb"):
        s = line.strip()
        if s.startswith(b"data_"):
            in_particles = s == b"data_particles"
        elif in_particles and s and not s.startswith((b"_", b"loop_", b"#")):
            rows.append(line)
    return rows


def fake_scores(monkeypatch, fn):
    """Make the model return fn(K) for K scored classes (to test selection and outputs)."""
    monkeypatch.setattr(Ranker, "score_job", lambda self, v, i, use_context=True: np.asarray(fn(len(v)), np.float32))


def test_full_job_writes_every_output(sim_project, test_model):
    r = run_exe(["--o", OUT, "--in_parts", SIM_DATA, "--model", test_model, "--j", "2",
                 "--pipeline_control", OUT])
    assert r.returncode == 0, r.stderr
    files = set(os.listdir(OUT))
    for name in ("particles.star", "class_averages.star", "backup_selection.star", "rank_model.star",
                 "rank_optimiser.star", "rank_data.star", "RELION_OUTPUT_NODES.star", "RELION_JOB_EXIT_SUCCESS",
                 "logfile.pdf", "logfile.png"):
        assert name in files
    assert not [f for f in files if f.endswith(".part")]
    assert "3850 particles" in r.stdout and "Selected" in r.stdout and "pixel size 3 A" in r.stdout
    nodes = read_star(OUT + "RELION_OUTPUT_NODES.star")["output_nodes"]
    assert nodes.column("rlnPipeLineNodeName") == [OUT + "particles.star", OUT + "class_averages.star",
                                                   OUT + "rank_optimiser.star", OUT + "logfile.pdf"]
    assert nodes.column("rlnPipeLineNodeType") == ["3", "5", "9", "13"]
    assert nodes.column("rlnPipeLineNodeTypeLabel") == [
        "ParticleGroupMetadata.star.relion", "Image2DGroupMetadata.star.relion.classaverages",
        "OptimiserData.star.relion.select", "LogFile.pdf.relion"]
    assert open(OUT + "logfile.pdf", "rb").read(4) == b"%PDF"
    model = read_star(OUT + "rank_model.star")["model_classes"]
    assert len(model.rows) == 20
    scores = model.float_column("rlnClassScore")
    assert sum(s == -999 for s in scores) == 11 and all(0 <= s <= 1 for s in scores if s != -999)
    opt = read_star(OUT + "rank_optimiser.star")["optimiser_general"]
    assert opt.value("rlnModelStarFile") == OUT + "rank_model.star"
    assert opt.value("rlnExperimentalDataStarFile") == OUT + "rank_data.star"
    assert open(OUT + "rank_data.star", "rb").read() == open(SIM_DATA, "rb").read()


def test_particles_star_rows_are_byte_identical_and_in_order(sim_project, test_model, monkeypatch):
    fake_scores(monkeypatch, lambda k: (np.arange(k) + 0.5) / k)
    assert jobmod.main(["--o", OUT, "--in_optimiser", SIM_OPT, "--model", test_model]) == 0
    sel = read_star(OUT + "backup_selection.star")[""].column("rlnSelected")
    chosen = {str(i + 1) for i, s in enumerate(sel) if s == "1"}
    src = open(SIM_DATA, "rb").read()
    out = open(OUT + "particles.star", "rb").read()
    # header (everything before the first particle row) is unchanged
    first_row = data_rows(SIM_DATA)[0]
    assert out[:out.index(data_rows(OUT + "particles.star")[0])] == src[:src.index(first_row)]
    labels = read_star(SIM_DATA)["particles"].labels
    ci = labels.index("rlnClassNumber")
    expected = [row for row in data_rows(SIM_DATA) if row.split()[ci].decode() in chosen]
    assert data_rows(OUT + "particles.star") == expected
    # RELION-5 auto-select with the same fake scores selected the same particle rows
    rowcount = int(open(os.path.join(SIM_REF, "autoselect/particles.star.rowcount")).read().split()[0])
    assert len(expected) == rowcount


def test_outputs_match_relion5_autoselect(sim_project, test_model, monkeypatch):
    """Same scores as RELION's reference run ((i+0.5)/K) -> same selection and tables."""
    fake_scores(monkeypatch, lambda k: (np.arange(k) + 0.5) / k)
    assert jobmod.main(["--o", OUT, "--in_optimiser", SIM_OPT, "--model", test_model]) == 0
    ref = os.path.join(SIM_REF, "autoselect")
    for name, block in (("backup_selection.star", ""), ("class_averages.star", ""), ("rank_model.star", "model_classes")):
        ours = read_star(OUT + name)[block]
        theirs = read_star(os.path.join(ref, name))[block]
        if name == "class_averages.star":  # ours lists the best first, RELION's in class order
            theirs.rows.sort(key=lambda r: -float(r[theirs.labels.index("rlnPredictedClassScore")]))
        for label in theirs.labels:
            a, b = ours.column(label), theirs.column(label)
            if label == "rlnReferenceImage":
                assert a == b
            else:
                assert np.allclose([float(x) for x in a], [float(x) for x in b], atol=1e-5), (name, label)
    ca = read_star(OUT + "class_averages.star")[""]
    import csv
    truth = {int(r["class_number"]): int(r["n_particles"]) for r in csv.DictReader(open("class_truth.csv"))}
    assert [int(x) for x in ca.column("rlnParticleNumber")] == [truth[k] for k in (18, 15, 14, 13, 11)]


def test_display_order_is_by_score(sim_project, test_model, monkeypatch):
    """What relion_display reads: class_averages.star rows are best-first (any RELION version).
    rank_optimiser.star, as RELION 4/5's relion_display follows it (displayer.cpp): the classes from
    the model_classes table of its rlnModelStarFile, in class order (``--class`` numbers classes by
    row), sortable on rlnClassScore; the particles from the file named X_data.star beside
    X_optimiser.star (RELION 3.1 does the same for X_model.star)."""
    fake_scores(monkeypatch, lambda k: np.array([0.9, 0.2, 0.95, 0.6, 0.7, 0.1, 0.8, 0.55, 0.65])[:k])
    assert jobmod.main(["--o", OUT, "--in_optimiser", SIM_OPT, "--model", test_model]) == 0
    ca = read_star(OUT + "class_averages.star")[""]
    scores = [float(s) for s in ca.column("rlnPredictedClassScore")]
    assert scores == sorted(scores, reverse=True) and len(scores) == 7
    opt_path = OUT + "rank_optimiser.star"
    model_path = read_star(opt_path)["optimiser_general"].value("rlnModelStarFile")
    rm = read_star(model_path)["model_classes"]
    assert [int(r.split("@")[0]) for r in rm.column("rlnReferenceImage")] == list(range(1, 21))
    by_score = sorted(zip(rm.float_column("rlnClassScore"), rm.column("rlnReferenceImage")), reverse=True)
    assert [r for _s, r in by_score[:7]] == ca.column("rlnReferenceImage")
    for name in (opt_path.replace("_optimiser.star", "_data.star"), model_path.replace("_model.star", "_data.star")):
        assert read_star(name)["particles"].column("rlnImageName") == read_star(SIM_DATA)["particles"].column(
            "rlnImageName")


def test_relion5_vdam_job(r5_project, test_model):
    r = run_exe(["--o", OUT, "--in_parts", R5_DATA, "--model", test_model, "--j", "1"])
    assert r.returncode == 0, r.stderr
    assert "(VDAM)" in r.stdout and "18 classes with more than 10 particles" in r.stdout
    assert os.path.exists(OUT + "RELION_JOB_EXIT_SUCCESS")


def test_write_features(sim_project, test_model):
    import mrcfile
    r = run_exe(["--o", OUT.rstrip("/"), "--in_optimiser", SIM_OPT, "--model", test_model, "--write_features"])
    assert r.returncode == 0, r.stderr
    feats = read_star(OUT + "features.star")["class_features"]
    assert len(feats.rows) == 9
    stack = feats.column("rlnSubImageStack")[2]
    assert stack == "000003@External/job003/features_images.mrcs"
    images = mrcfile.read(OUT + "features_images.mrcs")
    assert images.shape == (9, 64, 64) and images.dtype == np.float32
    vec = [float(x) for x in feats.column("rlnNormalizedFeatureVector")[0].strip("[]").split(",")]
    assert len(vec) == 24


@pytest.mark.parametrize("extra", [["--relative_thresholds"], ["--relative_thresholds", "true"],
                                   ["--relative_thresholds", "yes"], ["--relative_thresholds", "1"]])
def test_empty_value_flags_and_relative_thresholds(sim_project, test_model, monkeypatch, extra):
    fake_scores(monkeypatch, lambda k: np.linspace(0.1, 0.4, k))
    args = ["--o", OUT, "--in_optimiser", SIM_OPT, "--model", test_model, "--min_score", "0.95"] + extra
    assert jobmod.main(args) == 0
    ca = read_star(OUT + "class_averages.star")[""]
    # scores >= 0.95 x best (0.4) = 0.38: only the best class
    assert [float(s) for s in ca.column("rlnPredictedClassScore")] == pytest.approx([0.4])


def test_relative_thresholds_false_value(sim_project, test_model, monkeypatch):
    fake_scores(monkeypatch, lambda k: np.linspace(0.1, 0.4, k))
    assert jobmod.main(["--o", OUT, "--in_optimiser", SIM_OPT, "--model", test_model,
                        "--relative_thresholds", "false", "--min_score", "0.9"]) == 0
    assert len(read_star(OUT + "class_averages.star")[""].rows) == 0


def test_unknown_option_is_a_clear_failure(sim_project, test_model):
    r = run_exe(["--o", OUT, "--in_optimiser", SIM_OPT, "--model", test_model, "--min_scor", "0.3"])
    assert r.returncode != 0
    first = r.stderr.splitlines()[0]
    assert "unknown option --min_scor" in first and "--min_score" in first
    assert os.path.exists(OUT + "RELION_JOB_EXIT_FAILURE")


def test_ignored_relion_inputs_are_noted(sim_project, test_model):
    r = run_exe(["--o", OUT, "--in_optimiser", SIM_OPT, "--model", test_model, "--in_mics", "x.star", "--in_mask"])
    assert r.returncode == 0, r.stderr
    assert "ignoring --in_mics x.star" in r.stdout and "ignoring --in_mask" in r.stdout


def test_missing_default_model_is_a_clear_error(sim_project, monkeypatch):
    monkeypatch.setattr("ranker.runtime.model.DEFAULT_MODEL", str(sim_project / "nope.pt"))
    r = jobmod.main(["--o", OUT, "--in_optimiser", SIM_OPT])
    assert r == 1 and os.path.exists(OUT + "RELION_JOB_EXIT_FAILURE")
    assert not os.path.exists(OUT + "particles.star")


def test_failure_leaves_no_outputs_and_clears_stale_exit_files(sim_project, test_model, capsys):
    os.makedirs(OUT)
    open(OUT + "RELION_JOB_EXIT_SUCCESS", "w").close()
    assert jobmod.main(["--o", OUT, "--in_parts", "Class2D/job002/run_it019_data.star", "--model", test_model]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run_it019_optimiser.star" in err[0] and "not found" in err[0]
    assert sorted(os.listdir(OUT)) == ["RELION_JOB_EXIT_FAILURE"]


def test_abort_between_stages(sim_project, test_model, monkeypatch):
    from ranker.runtime import features
    real = features.compute_features

    def compute_then_abort(*a, **kw):
        out = real(*a, **kw)
        open(OUT + "RELION_JOB_ABORT_NOW", "w").close()
        return out

    monkeypatch.setattr(features, "compute_features", compute_then_abort)
    assert jobmod.main(["--o", OUT, "--in_optimiser", SIM_OPT, "--model", test_model]) == 1
    assert sorted(os.listdir(OUT)) == ["RELION_JOB_EXIT_ABORTED"]


def test_abort_while_streaming_particles(sim_project, test_model, monkeypatch):
    """The abort file is polled inside the particle loop too (every chunk)."""
    monkeypatch.setattr("ranker.runtime.particles.CHUNK_BYTES", 4096)
    from ranker.runtime import particles
    real = particles.write_selected

    def write_with_abort(*a, **kw):
        open(OUT + "RELION_JOB_ABORT_NOW", "w").close()
        return real(*a, **kw)

    monkeypatch.setattr(particles, "write_selected", write_with_abort)
    assert jobmod.main(["--o", OUT, "--in_optimiser", SIM_OPT, "--model", test_model]) == 1
    assert sorted(os.listdir(OUT)) == ["RELION_JOB_EXIT_ABORTED"]


def test_relion30_single_table_data_star(sim_project, test_model):
    """A RELION 3.0 data.star (one table, optics columns in every row) works the same."""
    src = read_star(SIM_DATA)
    optics, parts = src["optics"], src["particles"]
    extra = [l for l in optics.labels if l not in parts.labels and l not in ("rlnOpticsGroupName", "rlnOpticsGroup")]
    lines = ["", "data_", "", "loop_"] + [f"_{l}" for l in parts.labels + extra]
    ovals = [optics.rows[0][optics.labels.index(l)] for l in extra]
    lines += [" ".join(row + ovals) for row in parts.rows]
    old = "Class2D/job002/run_it020_data30.star"
    open(old, "w").write("\n".join(lines) + "\n")
    opt = open(SIM_OPT).read().replace("run_it020_data.star", "run_it020_data30.star")
    open("Class2D/job002/run_it020_optimiser30.star", "w").write(opt)
    r = run_exe(["--o", OUT, "--in_optimiser", "Class2D/job002/run_it020_optimiser30.star", "--model", test_model])
    assert r.returncode == 0, r.stderr
    assert "3850 particles" in r.stdout
    out = open(OUT + "particles.star").read()
    assert out.startswith("\ndata_\n") and "data_optics" not in out


def test_inputs_are_not_modified(sim_project, test_model):
    def digest():
        h = {}
        for base, _d, files in os.walk("Class2D"):
            for f in files:
                h[os.path.join(base, f)] = hashlib.md5(open(os.path.join(base, f), "rb").read()).hexdigest()
        return h
    before = digest()
    assert run_exe(["--o", OUT, "--in_parts", SIM_DATA, "--model", test_model]).returncode == 0
    assert digest() == before


def test_3d_classification_is_refused(sim_project, test_model):
    model = open("Class2D/job002/run_it020_model.star").read().replace(
        "_rlnReferenceDimensionality                        2", "_rlnReferenceDimensionality                        3")
    open("Class2D/job002/run_it020_model.star", "w").write(model)
    r = run_exe(["--o", OUT, "--in_optimiser", SIM_OPT, "--model", test_model])
    assert r.returncode == 1 and "3D classification" in r.stderr
    assert os.path.exists(OUT + "RELION_JOB_EXIT_FAILURE")


def test_help(capsys):
    assert jobmod.main(["--help"]) == 0
    assert "--min_score" in capsys.readouterr().out


def test_job_context_is_applied_and_can_be_turned_off(sim_project, tmp_path, capsys):
    """The job scores all classes of the Class2D job together with the model's job-context stage;
    --job_context false gives each class's own score (as RELION's ranker)."""
    from ranker.runtime.context import apply_job_context
    from ranker.runtime.model import build_net, save_model

    import torch
    torch.manual_seed(1)
    path = str(tmp_path / "ctx.pt")
    save_model(build_net(), path, card={}, job_context=[0.5, 2.0, 1.0])
    runs = {}
    for flag in ("true", "false"):
        out = f"External/ctx_{flag}/"
        assert jobmod.main(["--o", out, "--in_optimiser", SIM_OPT, "--model", path, "--job_context", flag]) == 0
        scores = read_star(out + "rank_model.star")["model_classes"].float_column("rlnClassScore")
        assert ("job context" in capsys.readouterr().out) == (flag == "true")  # stdout = RELION's run.out
        runs[flag] = np.array([s for s in scores if s != -999])
    assert np.allclose(runs["true"], apply_job_context(runs["false"], [0.5, 2.0, 1.0]), atol=1e-5)
    assert not np.allclose(runs["true"], runs["false"], atol=1e-3)
