"""Every STAR file the job writes, read again with the ``starfile`` package (an independent
reader, pandas-based) on both RELION projects: it must parse, hold the same blocks, labels and
values as our own reader sees, and agree with the job's inputs and with what RELION expects.

The job runs once per project (``--write_features true``, the shipped model, so that some classes
are kept and some rejected) as RELION runs it: the program in a subprocess, from the project root.
"""
import os
import subprocess
import sys

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from conftest import R5, R5_DATA, R5_REF, ROOT, SIM, SIM_DATA, SIM_REF, copy_project
from ranker.runtime.star import read_star

OUT = "External/job003/"
STAR_OUTPUTS = ["particles.star", "class_averages.star", "backup_selection.star", "rank_model.star",
                "rank_optimiser.star", "rank_data.star", "RELION_OUTPUT_NODES.star", "features.star"]
# project, data.star, RELION-5 reference, number of classes, particles, classes with > 10 particles
PROJECTS = {"class2d_sim": (SIM, SIM_DATA, SIM_REF, 20, 3850, 9),
            "class2d_relion5": (R5, R5_DATA, R5_REF, 20, 3850, 18)}


@pytest.fixture(scope="module", params=sorted(PROJECTS))
def run(request, tmp_path_factory):
    """(project root, data.star, reference folder, expected counts) after one job run."""
    src, data, ref, k, n, n_featured = PROJECTS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    copy_project(src, str(root))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "relion_external_rank.py"), "--o", OUT, "--in_parts", data,
                        "--write_features", "true", "--j", "1",
                        "--pipeline_control", OUT], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(root / OUT / "RELION_JOB_EXIT_SUCCESS")
    return {"root": root, "data": data, "ref": ref, "k": k, "n": n, "n_featured": n_featured}


def sf(run, name):
    """A STAR file of the project, read by starfile: {block name: DataFrame or dict}."""
    return starfile.read(run["root"] / name, always_dict=True)


def ours(run, name):
    return read_star(str(run["root"] / name))


def same_value(a, b):
    """Our token a (a string) and starfile's value b (numericised where it could be)."""
    if isinstance(b, (int, float, np.integer, np.floating)) and not isinstance(b, bool):
        return float(a) == float(b) or (np.isnan(float(a)) and np.isnan(float(b)))
    return a == str(b)


@pytest.mark.parametrize("name", STAR_OUTPUTS)
def test_starfile_reads_what_our_reader_reads(run, name):
    theirs, mine = sf(run, OUT + name), ours(run, OUT + name)
    assert list(theirs) == list(mine), name  # the same blocks, in order
    for block, tab in mine.items():
        t = theirs[block]
        if tab.is_loop:
            assert isinstance(t, pd.DataFrame), (name, block)
            assert list(t.columns) == tab.labels and len(t) == len(tab.rows), (name, block)
            for j, label in enumerate(tab.labels):
                col = t[label].tolist()
                bad = [i for i, row in enumerate(tab.rows) if not same_value(row[j], col[i])]
                assert not bad, (name, block, label, bad[:5])
        else:
            assert isinstance(t, dict) and list(t) == tab.labels, (name, block)
            for label, token in zip(tab.labels, tab.rows[0]):
                assert same_value(token, t[label]), (name, block, label)


def test_particles_star_is_the_kept_classes_rows_of_the_input(run):
    inp, out = sf(run, run["data"]), sf(run, OUT + "particles.star")
    assert list(out) == ["optics", "particles"]
    pd.testing.assert_frame_equal(out["optics"], inp["optics"])
    sel = sf(run, OUT + "backup_selection.star")[""]["rlnSelected"].tolist()
    kept = {i + 1 for i, s in enumerate(sel) if s == 1}
    assert 0 < len(kept) < run["n_featured"]  # a real selection: some classes kept, some not
    parts = inp["particles"]
    assert len(parts) == run["n"]
    counts = parts["rlnClassNumber"].value_counts()
    assert len(out["particles"]) == sum(int(counts.get(c, 0)) for c in kept)
    assert list(out["particles"].columns) == list(parts.columns)  # every column kept, in order
    expected = parts[parts["rlnClassNumber"].isin(kept)].reset_index(drop=True)
    pd.testing.assert_frame_equal(out["particles"], expected)


def test_class_averages_are_the_selected_classes_best_first(run):
    ca = sf(run, OUT + "class_averages.star")[""]
    sel = sf(run, OUT + "backup_selection.star")[""]
    model = sf(run, OUT + "rank_model.star")["model_classes"]
    assert len(sel) == run["k"] and set(sel["rlnSelected"]) <= {0, 1}
    classes = [int(r.split("@")[0]) for r in ca["rlnReferenceImage"]]
    assert sorted(classes) == [i + 1 for i, s in enumerate(sel["rlnSelected"]) if s == 1]
    scores = ca["rlnPredictedClassScore"].tolist()
    assert scores == sorted(scores, reverse=True)
    assert np.allclose(scores, [model["rlnClassScore"][c - 1] for c in classes], atol=1e-6)
    counts = sf(run, run["data"])["particles"]["rlnClassNumber"].value_counts()
    assert ca["rlnParticleNumber"].tolist() == [int(counts[c]) for c in classes]


def test_rank_model_scores_every_class(run):
    model = sf(run, OUT + "rank_model.star")
    assert list(model) == ["model_classes"]
    tab = model["model_classes"]
    assert len(tab) == run["k"] and "rlnClassScore" in tab.columns
    scores = tab["rlnClassScore"]
    assert (scores == -999).sum() == run["k"] - run["n_featured"]
    assert ((scores[scores != -999] >= 0) & (scores[scores != -999] <= 1)).all()
    # the class averages as the Class2D job wrote them, in class order
    opt = sf(run, run["data"].replace("_data.star", "_optimiser.star"))["optimiser_general"]
    inp = sf(run, opt["rlnModelStarFile"])["model_classes"]
    assert tab["rlnReferenceImage"].tolist() == inp["rlnReferenceImage"].tolist()
    for label in ("rlnClassDistribution", "rlnAccuracyRotations", "rlnEstimatedResolution"):
        assert np.allclose(tab[label], inp[label], atol=1e-6), label


def test_rank_optimiser_and_rank_data(run):
    opt = sf(run, OUT + "rank_optimiser.star")
    assert list(opt) == ["optimiser_general"]
    general = opt["optimiser_general"]
    assert general["rlnModelStarFile"] == OUT + "rank_model.star"
    assert general["rlnExperimentalDataStarFile"] == OUT + "rank_data.star"
    inp = sf(run, run["data"].replace("_data.star", "_optimiser.star"))["optimiser_general"]
    assert set(general) == set(inp)
    changed = {k for k in inp if general[k] != inp[k]}
    assert changed == {"rlnModelStarFile", "rlnExperimentalDataStarFile"}
    data, src = sf(run, OUT + "rank_data.star"), sf(run, run["data"])
    assert list(data) == list(src)
    for block in src:
        pd.testing.assert_frame_equal(data[block], src[block])


def test_output_nodes_name_files_of_the_job(run):
    nodes = sf(run, OUT + "RELION_OUTPUT_NODES.star")
    assert list(nodes) == ["output_nodes"]
    tab = nodes["output_nodes"]
    assert list(tab.columns) == ["rlnPipeLineNodeName", "rlnPipeLineNodeType", "rlnPipeLineNodeTypeLabel"]
    assert tab["rlnPipeLineNodeName"].tolist() == [OUT + f for f in ("particles.star", "class_averages.star",
                                                                     "rank_optimiser.star", "logfile.pdf")]
    assert tab["rlnPipeLineNodeType"].tolist() == [3, 5, 9, 13]  # RELION 3.1's integer node types
    assert tab["rlnPipeLineNodeTypeLabel"].tolist() == [  # RELION 4/5's labels
        "ParticleGroupMetadata.star.relion", "Image2DGroupMetadata.star.relion.classaverages",
        "OptimiserData.star.relion.select", "LogFile.pdf.relion"]
    for path in tab["rlnPipeLineNodeName"]:  # relative to the project root
        assert os.path.isfile(run["root"] / path), path


def test_features_star_rows_images_and_relion_values(run):
    feats = sf(run, OUT + "features.star")
    assert list(feats) == ["class_features"]
    tab = feats["class_features"]
    assert len(tab) == run["n_featured"]
    classes = [int(r.split("@")[0]) for r in tab["rlnReferenceImage"]]
    assert classes == sorted(classes)
    model = sf(run, OUT + "rank_model.star")["model_classes"]
    assert np.allclose(tab["rlnClassScore"], [model["rlnClassScore"][c - 1] for c in classes], atol=1e-6)
    vectors = [[float(x) for x in v.strip("[]").split(",")] for v in tab["rlnNormalizedFeatureVector"]]
    assert all(len(v) == 24 for v in vectors)
    stacks = [s.split("@") for s in tab["rlnSubImageStack"]]
    assert [int(i) for i, _p in stacks] == list(range(1, len(tab) + 1))
    assert {p for _i, p in stacks} == {OUT + "features_images.mrcs"}
    images = mrcfile.read(run["root"] / OUT / "features_images.mrcs")
    assert images.shape == (len(tab), 64, 64)
    # the same classes and raw values as RELION-5's relion_class_ranker wrote (read by starfile too)
    relion = starfile.read(os.path.join(run["ref"], "features.star"), always_dict=True)["class_features"]
    assert tab["rlnReferenceImage"].tolist() == relion["rlnReferenceImage"].tolist()
    for label in ("rlnParticleNr", "rlnClassDistribution", "rlnAccuracyRotations", "rlnAccuracyTranslations",
                  "rlnEstimatedResolution", "rlnRingMean", "rlnProteinArea", "rlnSolventMean", "rlnProteinCAR",
                  "rlnLowpassFilteredImageMax"):
        assert np.allclose(tab[label], relion[label], rtol=5e-5, atol=2e-5), label
