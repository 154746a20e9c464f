"""Training mechanics: labelled sources, job-wise split, reproducibility, fine-tuning."""
import os

import mrcfile
import numpy as np
import pytest
import torch

from conftest import R5, SIM, SIM_OPT, copy_project
from ranker.develop.__main__ import main as develop
from ranker.develop.commands import train as trainmod
from ranker.develop.dataset import LabelledClasses, from_relion_training_star, from_selection, from_truth_job
from ranker.runtime.model import load_model


@pytest.fixture(scope="module")
def fixture_data():
    return LabelledClasses.concat([from_truth_job(SIM), from_truth_job(R5)])


def test_truth_job_targets_are_purity(fixture_data):
    d = fixture_data
    assert len(d) == 9 + 18 and d.vectors.shape == (27, 24) and d.images.shape == (27, 64, 64)
    i = d.class_number.index(7)  # class2d_sim's catch-all junk class: 5.5 % good
    assert d.targets[i] == pytest.approx(0.0551, abs=1e-3)
    assert set(d.split) == {""}  # no corpus_job.json: split by --val_fraction


def test_split_is_by_job(fixture_data):
    tr, va = trainmod.split_data(fixture_data, 0.5, seed=0)
    jobs_tr = {j for j, m in zip(fixture_data.job, tr) if m}
    jobs_va = {j for j, m in zip(fixture_data.job, va) if m}
    assert jobs_tr.isdisjoint(jobs_va) and jobs_tr | jobs_va == set(fixture_data.job)


def test_training_is_reproducible_with_a_seed(fixture_data):
    tr = np.array([j.endswith("class2d_sim") for j in fixture_data.job])
    a, _ = trainmod.train(fixture_data, tr, ~tr, epochs=2, seed=5, threads=1, log=lambda *_: None)
    b, _ = trainmod.train(fixture_data, tr, ~tr, epochs=2, seed=5, threads=1, log=lambda *_: None)
    c, _ = trainmod.train(fixture_data, tr, ~tr, epochs=2, seed=6, threads=1, log=lambda *_: None)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.allclose(sa[k].numpy(), sb[k].numpy(), atol=1e-6) for k in sa)
    assert not all(np.allclose(sa[k].numpy(), sc[k].numpy()) for k in sa)


def test_train_command_writes_weights_and_card(tmp_path):
    out = str(tmp_path / "m.pt")
    assert develop(["train", "--jobs", SIM, R5, "--out", out, "--epochs", "3", "--val_fraction", "0.5",
                          "--threads", "1", "--loss", "regret", "--weight_by_particles"]) == 0
    r = load_model(out, device="cpu")
    assert r.card["loss"] == "regret" and "| loss | regret |" in open(tmp_path / "m.md").read()
    assert r.card["epochs"] == 3 and r.card["n_train_jobs"] == 1 and r.card["n_val_jobs"] == 1
    assert os.path.exists(tmp_path / "m.json") and "Model card" in open(tmp_path / "m.md").read()


def test_fine_tune_from_user_selection(tmp_path, monkeypatch):
    copy_project(SIM, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    os.makedirs("Select/job004")
    sel = ["1" if k in (3, 4, 5, 11, 13, 14, 15, 18) else "0" for k in range(1, 21)]
    open("Select/job004/backup_selection.star", "w").write("\ndata_\n\nloop_\n_rlnSelected #1\n" + "\n".join(sel) + "\n")
    d = from_selection(SIM_OPT, "Select/job004/backup_selection.star")
    assert len(d) == 9 and d.targets[d.class_number.index(7)] == 0 and d.targets[d.class_number.index(3)] == 1
    base = str(tmp_path / "base.pt")
    develop(["train", "--jobs", SIM, "--out", base, "--epochs", "1", "--threads", "1", "--val_fraction", "0"])
    open("past.txt", "w").write(f"# facility history\n{SIM_OPT}:Select/job004/backup_selection.star\n")
    out = str(tmp_path / "tuned.pt")
    r = load_model(base, device="cpu")  # give the starting model a job context: fine-tuning keeps it
    from ranker.runtime.model import save_model
    save_model(r.members, base, r.card, image_norm=r.image_norm, job_context=[0.5, 0.6, 0.8], logit_shift=-0.25)
    assert develop(["train", "--init", base, "--selection_list", "past.txt", "--out", out, "--epochs", "2",
                          "--threads", "1"]) == 0
    tuned = load_model(out, device="cpu")
    assert tuned.card["init"] == base and tuned.job_context == [0.5, 0.6, 0.8] and tuned.logit_shift == -0.25
    # --train_layers head: the convolutions stay the starting model's, the image vector and classifier learn
    head = str(tmp_path / "head.pt")
    assert develop(["train", "--init", base, "--selection_list", "past.txt", "--out", head, "--epochs", "2",
                    "--threads", "1", "--train_layers", "head", "--lr", "0.01"]) == 0
    before, after = load_model(base, device="cpu").members[0].state_dict(), \
        load_model(head, device="cpu").members[0].state_dict()
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same == name.startswith("cnn_layers."), name
    assert load_model(head, device="cpu").card["train_layers"] == "head"


def test_job_context_fit_uses_the_users_selection_where_counts_are_unknown():
    """Selections have no particle truth: their 0/1 targets are the purity the context is fitted to."""
    rng = np.random.default_rng(0)
    k = 200
    job = [f"job{i // 8}" for i in range(k)]
    targets = (rng.uniform(size=k) < 0.5).astype(np.float32)
    d = LabelledClasses(np.zeros((k, 24), np.float32), np.zeros((k, 64, 64), np.float32), targets, job,
                        list(range(k)), rng.integers(20, 300, k).astype(float), np.full(k, np.nan))
    oof = np.clip(targets * 0.6 + rng.uniform(0, 0.4, k), 0.01, 0.99)
    coef = trainmod.fit_context_from_oof(d, oof, np.ones(k, bool))
    assert np.all(np.isfinite(coef)) and coef[0] + coef[1] > 0.5  # higher network score, higher purity


def test_relion_training_layout(tmp_path):
    """A small STAR in RELION's own training layout (as for EMPIAR-10812)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        mrcfile.write(str(tmp_path / f"subimages_class{i + 1:08d}.mrcs"), rng.normal(size=(1, 64, 64)).astype(np.float32))
        vec = "[" + ",".join(f"{v:.6g}" for v in rng.normal(size=24)) + "]"
        rows.append(f"{i + 1:06d}@Class2D/job1/run_it025_classes.mrcs {i / 5:.6f} subimages_class{i + 1:08d}.mrcs {vec}")
    text = ("\ndata_normalized_class_features\n\nloop_\n_rlnReferenceImage #1\n_rlnClassScore #2\n"
            "_rlnSubImageStack #3\n_rlnNormalizedFeatureVector #4\n" + "\n".join(rows) + "\n")
    (tmp_path / "features_normalized.star").write_text(text)
    d = from_relion_training_star("features_normalized.star", str(tmp_path))
    assert len(d) == 6 and d.images.shape == (6, 64, 64) and d.targets[-1] == pytest.approx(1.0)
    out = str(tmp_path / "m.pt")
    assert develop(["train", "--relion_star", "features_normalized.star", "--project", str(tmp_path), "--out", out,
                          "--epochs", "1", "--threads", "1", "--val_fraction", "0"]) == 0


def test_sample_weights():
    d = LabelledClasses(np.zeros((4, 24)), np.zeros((4, 64, 64)), np.zeros(4), ["j"] * 4, [1, 2, 3, 4],
                        np.array([100.0, 400.0, 100.0, 100.0]), np.full(4, np.nan), [""] * 4,
                        ["good", "good", "good", "partial"])
    assert np.allclose(trainmod.sample_weights(d, False), 1)
    w = trainmod.sample_weights(d, True)
    assert w[1] == pytest.approx(2 * w[0]) and w.mean() == pytest.approx(1)
    k = trainmod.sample_weights(d, False, balance_kinds=True)
    assert k[3] == pytest.approx(np.sqrt(3) * k[0])  # the rare kind counts sqrt(3) times more


def test_regret_loss_labels_the_oracle_decision_weighted_by_its_cost():
    # classes of 100, 400, 100, 100 particles, 90 %, 60 %, 50 % and 20 % real; one user-selected class (no counts)
    d = LabelledClasses(np.zeros((5, 24)), np.zeros((5, 64, 64)), np.array([0.9, 0.45, 0.5, 0.2, 1.0]),
                        ["j"] * 5, [1, 2, 3, 4, 5], np.array([100.0, 400.0, 100.0, 100.0, np.nan]),
                        np.array([90.0, 240.0, 50.0, 20.0, np.nan]), [""] * 5)
    y, w = trainmod.loss_labels(d, "target", False)
    assert np.allclose(y, d.targets) and np.allclose(w, 1)
    y, w = trainmod.loss_labels(d, "regret", False)
    assert y.tolist() == [1, 1, 1, 0, 1]  # the oracle keeps a class with >= 50 % real particles
    assert w[2] == 0 and w.mean() == pytest.approx(1)  # a 50 % class costs nothing whichever way it goes
    assert w[0] / w[1] == pytest.approx(0.8 / 0.2) and w[3] / w[0] == pytest.approx(0.6 / 0.8)
    assert w[4] / w[0] == pytest.approx(1 / 0.8)  # a user's selection: the full cost
    y, w = trainmod.loss_labels(d, "regret", True)  # with sqrt(particles): the 400-particle class x 2
    assert w[1] / w[3] == pytest.approx(2 * 0.2 / 0.6)
    with pytest.raises(ValueError, match="one of"):
        trainmod.loss_labels(d, "mse", False)


def test_ensemble_of_networks_is_saved_and_averaged(tmp_path):
    out = str(tmp_path / "ens.pt")
    assert develop(["train", "--jobs", SIM, R5, "--out", out, "--epochs", "2", "--val_fraction", "0.5",
                          "--threads", "1", "--ensemble", "2", "--image_norm", "per_image"]) == 0
    r = load_model(out, device="cpu")
    assert len(r.members) == 2 and r.image_norm == "per_image" and r.card["ensemble"] == 2
    sa, sb = r.members[0].state_dict(), r.members[1].state_dict()
    assert not all(torch.equal(sa[k], sb[k]) for k in sa)  # seeds differ
    rng = np.random.default_rng(1)
    v, im = rng.normal(size=(4, 24)).astype(np.float32), rng.normal(size=(4, 64, 64)).astype(np.float32)
    singles = []
    for net in r.members:
        one = load_model(out, device="cpu")
        one.members = [net]
        singles.append(one.score(v, im))
    assert np.allclose(r.score(v, im), np.mean(singles, axis=0), atol=1e-6)
    # fine-tuning an ensemble keeps its image normalisation and its members, each from its own start
    tuned = str(tmp_path / "tuned.pt")
    assert develop(["train", "--jobs", SIM, "--init", out, "--out", tuned, "--epochs", "1", "--val_fraction", "0",
                          "--threads", "1", "--lr", "1e-9"]) == 0
    t = load_model(tuned, device="cpu")
    assert t.image_norm == "per_image" and len(t.members) == 2
    for before, after in zip(r.members, t.members):
        assert all(torch.allclose(before.state_dict()[k], after.state_dict()[k], atol=1e-5) for k in sa)


def test_calibration_puts_the_best_out_of_fold_threshold_at_half(tmp_path):
    out = str(tmp_path / "cal.pt")
    assert develop(["train", "--jobs", SIM, R5, "--out", out, "--epochs", "2", "--val_fraction", "0",
                          "--threads", "1", "--calibrate_folds", "2", "--oof_out", str(tmp_path / "oof.npz"),
                          "--job_context"]) == 0
    r = load_model(out, device="cpu")
    cal = r.card["calibration"]
    oof = np.load(tmp_path / "oof.npz")
    assert set(oof["job"]) == {os.path.abspath(SIM), os.path.abspath(R5)}  # each job scored by the other's network
    assert len(oof["score"]) == len(oof["class_number"]) == 9 + 18 and np.all((oof["score"] >= 0) & (oof["score"] <= 1))
    assert cal["folds"] == 2 and 0.2 <= cal["threshold"] <= 0.8
    assert np.isclose(r.logit_shift, -np.log(cal["threshold"] / (1 - cal["threshold"])))
    assert cal["oof_decision_at_threshold"] >= cal["oof_decision_at_0.5"]
    # the job-context stage is fitted on those same out-of-fold scores (the fit_context command gives the same)
    assert r.job_context is not None and r.card["job_context"] == r.job_context
    assert develop(["fit_context", "--oof", str(tmp_path / "oof.npz"), "--model", out, "--out", str(tmp_path / "c.pt")]) == 0
    assert np.allclose(load_model(str(tmp_path / "c.pt"), device="cpu").job_context, r.job_context, atol=1e-4)
    # --likeness: the stage that also reads the likeness of the jobs' class images, which the model then needs
    assert develop(["fit_context", "--oof", str(tmp_path / "oof.npz"), "--model", out, "--out", str(tmp_path / "l.pt"),
                    "--likeness"]) == 0
    lk = load_model(str(tmp_path / "l.pt"), device="cpu")
    assert len(lk.job_context) == 9 and lk.card["job_context"]["coef"] == lk.job_context
    d = from_truth_job(SIM)
    assert lk.score_job(d.vectors, d.images).shape == (len(d),)
    # --signal (only with --likeness): also each class's RelativeSignalIntensity
    assert develop(["fit_context", "--oof", str(tmp_path / "oof.npz"), "--model", out, "--out", str(tmp_path / "s.pt"),
                    "--likeness", "--signal"]) == 0
    sg = load_model(str(tmp_path / "s.pt"), device="cpu")
    assert len(sg.job_context) == 11 and sg.job_context[:9] != lk.job_context
    assert sg.score_job(d.vectors, d.images).shape == (len(d),)
    with pytest.raises(SystemExit):
        develop(["fit_context", "--oof", str(tmp_path / "oof.npz"), "--model", out, "--out", str(tmp_path / "x.pt"),
                 "--signal"])
    # it needs out-of-fold scores
    with pytest.raises(SystemExit):
        develop(["train", "--jobs", SIM, "--out", str(tmp_path / "x.pt"), "--job_context"])


def test_best_threshold_maximises_particle_weighted_agreement():
    n, n_true = np.array([100.0, 100, 100, 100]), np.array([90.0, 80, 30, 10])
    d = LabelledClasses(np.zeros((4, 24), np.float32), np.zeros((4, 64, 64), np.float32), n_true / n, ["a"] * 4,
                        [1, 2, 3, 4], n, n_true)
    assert trainmod.best_threshold(np.array([0.9, 0.7, 0.65, 0.2]), d, np.ones(4, bool)) == 0.675
    assert trainmod.best_threshold(np.array([0.9, 0.8, 0.3, 0.1]), d, np.ones(4, bool)) == 0.5  # ties: nearest 0.5
