"""python -m ranker.develop freeze: a labelled job kept without its particles reads as the job itself."""
import json
import os

import numpy as np
import pytest

from conftest import DATA, R5, SIM
from ranker.develop import dataset
from ranker.develop.__main__ import main as develop
from ranker.develop.commands import evaluate as evalmod
from ranker.develop.commands import oracle_precision as op
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
        assert sorted(os.listdir(dst)) == sorted(["frozen_classes.npz"] + [
            n for n in dataset.FROZEN_COPIES if os.path.exists(os.path.join(src, n))])
        for target in ("purity", "detail"):
            _same_classes(dataset.from_truth_job(dst, target), dataset.from_truth_job(src, target))
        assert os.path.getsize(os.path.join(dst, "frozen_classes.npz")) < 25_000 * len(
            dataset.from_truth_job(src).class_number)
    a = evalmod.evaluate([SIM, R5, REAL], log=lambda *x: None)
    b = evalmod.evaluate(frozen, log=lambda *x: None)
    for key in ("pooled_auc", "0.5", "auto", "purity_only", "near_cut_error", "scores_by_kind", "reliability"):
        assert a[key] == b[key], key
    assert op.precision_table(frozen, sigmas=[0.1], draws=50, truth="detail") == \
        op.precision_table([SIM, R5, REAL], sigmas=[0.1], draws=50, truth="detail")


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


def test_freezing_a_job_into_itself_is_refused():
    with pytest.raises(StarError, match="into itself"):
        dataset.freeze_job(SIM, SIM)
