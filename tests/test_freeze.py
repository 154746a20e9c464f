"""python -m ranker.develop freeze: a labelled job kept without its particles reads as the job itself."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import DATA, R5, SIM
from ranker.develop import dataset
from ranker.develop.__main__ import main as develop
from ranker.develop.commands import evaluate as evalmod
from ranker.runtime.star import StarError

REAL = os.path.join(DATA, "real_empiar10017")


def _same_classes(a, b):
    assert a.class_number == b.class_number and a.split == b.split and a.kind == b.kind
    for field in ("vectors", "images", "targets", "n_particles", "n_true"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_a_frozen_job_gives_the_same_classes_scores_and_figures(tmp_path, capsys):
    assert develop(["freeze", SIM, R5, REAL, "--dest", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    frozen = [str(tmp_path / "examples" / "class2d_sim"), str(tmp_path / "data" / "class2d_relion5"),
              str(tmp_path / "data" / "real_empiar10017")]
    assert all(f"-> {f}" in out for f in frozen)
    for src, dst in zip((SIM, R5, REAL), frozen):
        assert "frozen_classes.npz" in os.listdir(dst) and "class_truth.csv" in os.listdir(dst)
        assert dataset.from_truth_job(dst).job == [os.path.abspath(dst)] * len(dataset.from_truth_job(src))
        for target in ("purity", "detail"):
            _same_classes(dataset.from_truth_job(dst, target), dataset.from_truth_job(src, target))
        assert os.path.getsize(os.path.join(dst, "frozen_classes.npz")) < 25_000 * len(
            dataset.from_truth_job(src).class_number)
    a = evalmod.evaluate([SIM, R5, REAL], log=lambda *x: None)
    b = evalmod.evaluate(frozen, log=lambda *x: None)
    for key in ("pooled_auc", "0.5", "auto", "purity_only", "near_cut_error", "scores_by_kind", "reliability"):
        assert a[key] == b[key], key


def test_freeze_names_a_job_without_truth_and_fails(tmp_path, capsys):
    assert develop(["freeze", os.path.join(DATA, "class2d_sim"), "--dest", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "class_truth.csv: no such file" in err[0] and "class2d_sim" in err[0]
    assert not any(files for _d, _s, files in os.walk(tmp_path))  # nothing half-written


def test_freeze_refuses_two_jobs_to_one_place(tmp_path, capsys):
    with pytest.raises(SystemExit):
        develop(["freeze", SIM, SIM, "--dest", str(tmp_path)])
    assert "same place" in capsys.readouterr().err


def test_frozen_by_other_feature_code_is_noted_and_other_formats_refused(tmp_path, capsys, monkeypatch):
    dst = dataset.freeze_job(SIM, str(tmp_path / "sim"))
    monkeypatch.setattr(dataset, "feature_fingerprint", lambda: "0123456789abcdef")
    monkeypatch.setattr(dataset, "_warned_fingerprints", set())
    dataset.from_truth_job(dst)
    dataset.from_truth_job(dst)
    err = capsys.readouterr().err
    assert err.count("features frozen by other feature code") == 1 and "frozen_classes.npz" in err
    path = os.path.join(dst, dataset.FROZEN_FILENAME)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.array(json.dumps(dict(json.loads(str(arrays["meta"])), format=99)))
    np.savez_compressed(path, **arrays)
    with pytest.raises(StarError, match="frozen format 99"):
        dataset.from_truth_job(dst)


def _copy_job(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.mrcs"))
    for root, _dirs, files in os.walk(src):  # the particle stacks as links: the copy reads as the job
        for name in files:
            if name.endswith(".mrcs"):
                rel = os.path.relpath(os.path.join(root, name), src)
                os.symlink(os.path.join(root, name), os.path.join(dst, rel))
    return str(dst)


def _tree(path):
    return sorted((os.path.relpath(os.path.join(r, f), path), os.path.getsize(os.path.join(r, f)))
                  for r, _d, files in os.walk(path) for f in files)


def test_the_split_of_corpus_job_json_is_kept(tmp_path):
    job = _copy_job(SIM, tmp_path / "corpus" / "job0001")
    with open(os.path.join(job, "corpus_job.json"), "w") as fh:
        json.dump({"split": "val", "protein": "test"}, fh)
    dst = dataset.freeze_job(job, str(tmp_path / "frozen" / "job0001"))
    assert set(dataset.from_truth_job(dst).split) == {"val"}
    assert json.load(open(os.path.join(dst, "corpus_job.json")))["protein"] == "test"


def test_train_reads_frozen_jobs(tmp_path):
    frozen = [dataset.freeze_job(src, str(tmp_path / name)) for src, name in ((SIM, "a"), (R5, "b"), (REAL, "c"))]
    models = [str(tmp_path / "frozen.npz"), str(tmp_path / "sources.npz")]
    # (frozen names a < b < c sort as their sources do: the folds are the same)
    for jobs, model in ((frozen, models[0]), ([SIM, R5, REAL], models[1])):
        assert develop(["train", "--jobs", *jobs, "--epochs", "2", "--out", model, "--seed", "0"]) == 0
    with np.load(models[0]) as a, np.load(models[1]) as b:
        weights = [k for k in a.files if a[k].dtype.kind == "f"]
        assert len(weights) > 4
        for k in weights:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("where", ["itself", "inside", "alias", "parent"])
def test_a_destination_in_or_around_the_job_is_refused_and_the_job_untouched(tmp_path, where):
    job = _copy_job(SIM, tmp_path / "proj" / "job")
    before = _tree(job)
    os.symlink(job, tmp_path / "alias")
    dest = {"itself": job, "inside": os.path.join(job, "frozen"), "alias": str(tmp_path / "alias"),
            "parent": str(tmp_path / "proj")}[where]
    with pytest.raises(StarError, match="(inside|holds) the job|symbolic link"):
        dataset.freeze_job(job, dest)
    assert _tree(job) == before and not os.path.exists(os.path.join(job, "frozen"))


def test_refreezing_replaces_the_frozen_job_of_the_same_project_but_nothing_else(tmp_path):
    dst = dataset.freeze_job(SIM, str(tmp_path / "sim"))
    assert sorted(os.listdir(dst)) == ["class_truth.csv", "frozen_classes.npz"]  # no README, no particles
    first, inode = _tree(dst), os.stat(dst).st_ino
    dataset.freeze_job(SIM, dst + os.sep)  # the same project's frozen job is replaced, complete
    assert _tree(dst) == first and os.stat(dst).st_ino != inode and sorted(os.listdir(tmp_path)) == ["sim"]
    with pytest.raises(StarError, match="already frozen"):
        dataset.freeze_job(dst, str(tmp_path / "again"))
    other = _copy_job(SIM, tmp_path / "elsewhere" / "class2d_sim")  # another project of the same name
    with pytest.raises(StarError, match="holds the frozen job of .*remove it first"):
        dataset.freeze_job(other, dst)
    project = _copy_job(R5, tmp_path / "r5")
    before = _tree(project)
    with pytest.raises(StarError, match="exists and is not a frozen job"):
        dataset.freeze_job(SIM, project)  # a real project at the destination: refused, untouched
    assert _tree(project) == before
    for bad in (".", "..", "/"):
        with pytest.raises(StarError, match="name the frozen job's own directory"):
            dataset.freeze_job(SIM, bad)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n or ".old-" in n]


@pytest.mark.parametrize("fault", ["writing", "swapping"])
def test_a_fault_leaves_nothing_half_written_and_the_old_frozen_job_in_place(tmp_path, monkeypatch, fault):
    dst = dataset.freeze_job(SIM, str(tmp_path / "sim"))
    first = _tree(dst)
    if fault == "writing":
        def boom(*a, **k):
            raise OSError("disk full")
        monkeypatch.setattr(dataset.np, "savez_compressed", boom)
    else:
        real_rename, calls = os.rename, []

        def rename(a, b):  # the old job moves aside, then the new one fails to move in
            calls.append(a)
            if len(calls) == 2:
                raise OSError("rename failed")
            real_rename(a, b)
        monkeypatch.setattr(dataset.os, "rename", rename)
    with pytest.raises(OSError):
        dataset.freeze_job(SIM, dst)
    monkeypatch.undo()
    assert _tree(dst) == first and sorted(os.listdir(tmp_path)) == ["sim"]
    with pytest.raises(OSError):  # and a new destination: nothing at all
        monkeypatch.setattr(dataset.np, "savez_compressed", lambda *a, **k: (_ for _ in ()).throw(OSError("x")))
        dataset.freeze_job(SIM, str(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path)) == ["sim"]


def test_a_destination_through_a_link_is_checked_where_it_is_written(tmp_path, capsys):
    job = _copy_job(SIM, tmp_path / "proj" / "job")
    os.makedirs(tmp_path / "elsewhere" / "deep")
    os.symlink(tmp_path / "elsewhere" / "deep", os.path.join(job, "link"))  # job/link/.. is elsewhere/
    dataset.freeze_job(job, os.path.join(job, "link", os.pardir, "frozen"))
    assert os.path.isdir(tmp_path / "elsewhere" / "frozen") and not os.path.exists(os.path.join(job, "frozen"))
    os.symlink(tmp_path / "elsewhere" / "frozen", tmp_path / "flink")
    for given in (str(tmp_path / "flink"), str(tmp_path / "flink") + os.sep):
        with pytest.raises(StarError, match="symbolic link"):
            dataset.freeze_job(job, given)
    # one command: no destination may lie inside another of its jobs
    other = _copy_job(R5, tmp_path / "proj" / "other")
    before = _tree(other)
    with pytest.raises(SystemExit):
        develop(["freeze", job, other, "--dest", os.path.join(other, "x")])
    assert "inside or hold" in capsys.readouterr().err and _tree(other) == before


def test_a_damaged_frozen_job_is_one_error_naming_the_file(tmp_path, capsys):
    dst = dataset.freeze_job(SIM, str(tmp_path / "sim"))
    path = os.path.join(dst, dataset.FROZEN_FILENAME)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    with pytest.raises(StarError, match="frozen_classes.npz: not a readable frozen job"):
        dataset.from_truth_job(dst)
    assert develop(["evaluate", dst]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "frozen_classes.npz" in err[0]
