"""The job-context stage: score = sigmoid(a z + b (z - z_best) + c), z = logit(network score)."""
import os

import numpy as np
import pytest

from ranker.develop.job_context import choose_lift, fit_job_context
from ranker.runtime.context import (N_LIKENESS, N_SIGNAL, SIGNAL_FEATURE, apply_job_context, likeness_inputs,
                                    likeness_matrix)
from ranker.runtime.features import FEATURE_NAMES
from ranker.runtime.model import ModelError, build_net, load_model, save_model


def test_formula_and_order_within_a_job():
    s = np.array([0.9, 0.6, 0.1])
    out = apply_job_context(s, [0.5, 0.6, 0.8])
    z = np.log(s / (1 - s))
    assert out == pytest.approx(1 / (1 + np.exp(-(0.5 * z + 0.6 * (z - z[0]) + 0.8))), rel=1e-5)
    assert list(np.argsort(-out)) == [0, 1, 2]  # a, b > 0: the order within the job is kept
    assert apply_job_context(np.zeros(0), [1, 0, 0]).shape == (0,)
    assert apply_job_context(s, [1, 0, 0]) == pytest.approx(s, abs=1e-4)  # (1, 0, 0) is no change


def test_lift_limits_how_far_a_class_is_raised_never_how_far_it_is_lowered():
    s = np.array([0.3, 0.1, 0.05])  # a low-SNR job: the context lifts its best class, lowers the others
    full = apply_job_context(s, [0.5, 0.6, 0.8, 1.0], logit_shift=-0.2)
    own = 1 / (1 + np.exp(-(np.log(s / (1 - s)) - 0.2)))
    none = apply_job_context(s, [0.5, 0.6, 0.8, 0.0], logit_shift=-0.2)
    half = apply_job_context(s, [0.5, 0.6, 0.8, 0.5], logit_shift=-0.2)
    assert full[0] > own[0] and none[0] == pytest.approx(own[0], rel=1e-5)
    z = lambda p: np.log(p / (1 - p))  # noqa: E731
    assert z(half[0]) == pytest.approx((z(own[0]) + z(full[0])) / 2, rel=1e-4)
    s2 = np.array([0.95, 0.3])  # a clear best class: the second is lowered, whatever the lift
    full2, none2 = (apply_job_context(s2, [0.5, 0.6, 0.8, lift], logit_shift=-0.2) for lift in (1.0, 0.0))
    assert full2[1] < 1 / (1 + np.exp(-(np.log(0.3 / 0.7) - 0.2))) and none2[1] == pytest.approx(full2[1])


def test_choose_lift_picks_the_best_agreement():
    # one job whose best class is real but scores low: the smallest lift that keeps it (0.5 and less do not)
    assert choose_lift([0.3, 0.05], ["j", "j"], [100, 100], [0.9, 0.0], [0.5, 0.6, 0.8]) == 0.75
    # one job whose best class is junk: no lift
    assert choose_lift([0.3, 0.05], ["j", "j"], [100, 100], [0.1, 0.0], [0.5, 0.6, 0.8]) == 0.0


def test_fit_recovers_the_context_it_was_made_with():
    """Jobs whose purity depends on the class's score relative to the job's best are fitted
    with b > 0 (and the fit is deterministic)."""
    rng = np.random.default_rng(0)
    scores, job, n, purity = [], [], [], []
    for j in range(60):
        offset = rng.normal(0, 1.5)  # job-to-job shift of the network's scores
        truth_z = rng.normal(0, 2, 8)
        z = truth_z + offset
        scores += list(1 / (1 + np.exp(-z)))
        purity += list(1 / (1 + np.exp(-(truth_z - truth_z.max() + 2))))
        job += [f"job{j}"] * 8
        n += list(rng.integers(20, 400, 8))
    coef = fit_job_context(scores, job, n, purity)
    assert coef == fit_job_context(scores, job, n, purity)
    assert coef[1] > 0.5 and abs(coef[0]) < coef[1]


def test_weights_file_carries_the_context(tmp_path, sim_project):
    path = str(tmp_path / "m.pt")
    save_model(build_net(), path, card={}, job_context=[0.5, 0.6, 0.8])
    r = load_model(path, device="cpu")
    assert r.job_context == [0.5, 0.6, 0.8]
    v = np.random.default_rng(1).normal(size=(5, 24)).astype(np.float32)
    im = np.random.default_rng(2).normal(size=(5, 64, 64)).astype(np.float32)
    assert r.score_job(v, im) == pytest.approx(apply_job_context(r.network_scores(v, im), [0.5, 0.6, 0.8]))
    assert r.score_job(v, im, use_context=False) == pytest.approx(r.score(v, im))
    import torch
    obj = torch.load(path, weights_only=True)
    obj["job_context"] = [1.0, float("nan"), 0.0]
    torch.save(obj, path)
    with pytest.raises(ModelError, match="job_context must be three, four, 9 or 11 finite numbers"):
        load_model(path, device="cpu")


def test_shipped_model_has_a_job_context():
    r = load_model(device="cpu")
    # v7: v5's networks with the stage that reads the classes' likeness and each class's signal (11 numbers); b > 0,
    # e > 0 (alike jobs purer), g < 0 (a class brighter than its job's average lowered)
    assert r.job_context is not None and len(r.job_context) == N_SIGNAL and r.job_context[1] > 0
    assert r.job_context[5] > 0 and r.job_context[9] < 0


def _blobs(seed: int, n: int) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(seed)
    return np.stack([gaussian_filter(rng.normal(size=(64, 64)), 3) for _ in range(n)])


def test_likeness_finds_a_class_again_rotated_or_mirrored():
    from scipy.ndimage import rotate
    a, other = _blobs(0, 2)
    like = likeness_matrix(np.stack([a, rotate(a, 40, reshape=False, order=1), a[:, ::-1], other]))
    assert np.allclose(like, like.T, atol=1e-6) and np.all(np.diag(like) == 0)
    assert like[0, 1] > 0.95 and like[0, 2] > 0.95 and like[1, 2] > 0.95  # rotated, mirrored: the same class
    assert like[0, 3] < 0.6  # an unrelated class
    big_l, own = likeness_inputs([0.9, 0.9, 0.9, 0.1], np.stack([a, a, a, other]))
    unrelated = likeness_matrix(np.stack([a, other]))[0, 1]
    # each copy: its two twins (likeness 1, score 0.9) and the unrelated class (score 0.1), weighted by score
    assert own[:3] == pytest.approx([(1.8 + 0.1 * unrelated) / 1.9] * 3, abs=1e-6)
    assert own[3] == pytest.approx(unrelated) and big_l == pytest.approx((6 + 6 * unrelated) / 12)


def test_likeness_context_reduces_to_the_plain_one_and_needs_the_images():
    scores = np.array([0.9, 0.6, 0.3, 0.2])
    images = _blobs(1, 4)
    plain = [0.7, 0.4, 0.5, 0.0]
    assert apply_job_context(scores, plain + [0.0, 0.0, 0.0, 0.5, 0.5], 0.1, images) == pytest.approx(
        apply_job_context(scores, plain, 0.1))
    big_l, own = likeness_inputs(scores, images)
    z = np.log(scores / (1 - scores))
    coef = plain + [0.3, 2.0, 1.5, 0.4, 0.45]
    z_ctx = 0.7 * z + 0.4 * (z - z.max()) + 0.5 + 0.3 * z.mean() + 2.0 * (big_l - 0.4) + 1.5 * (own - 0.45)
    expected = 1 / (1 + np.exp(-np.minimum(z_ctx, z + 0.1)))  # lift 0: lowered only
    assert apply_job_context(scores, coef, 0.1, images) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="give the images"):
        apply_job_context(scores, coef, 0.1)


def test_fit_with_likeness_finds_that_alike_jobs_are_purer(tmp_path):
    """Jobs whose classes are copies of one image (views of one protein) are pure; jobs of unrelated
    images are junk; the network's scores alone cannot tell them apart."""
    rng = np.random.default_rng(3)
    scores, job, n, purity, images = [], [], [], [], []
    for j in range(40):
        alike = j % 2 == 0
        base = _blobs(100 + j, 1)[0]
        imgs = np.stack([np.rot90(base, k % 4) for k in range(5)]) if alike else _blobs(200 + j, 5)
        scores += list(rng.uniform(0.35, 0.65, 5))
        purity += [0.9 if alike else 0.1] * 5
        job += [f"job{j}"] * 5
        n += [100] * 5
        images += list(imgs)
    coef = fit_job_context(scores, job, n, purity, 0.0, np.stack(images))
    assert len(coef) == N_LIKENESS and coef[5] > 1  # e: the job's likeness raises the score
    assert coef[7] == pytest.approx(np.mean([likeness_inputs(scores[i:i + 5], np.stack(images[i:i + 5]))[0]
                                             for i in range(0, 200, 5)]))
    path = str(tmp_path / "m.pt")
    save_model(build_net(), path, card={}, job_context=coef)
    r = load_model(path, device="cpu")
    assert r.job_context == pytest.approx(coef)
    v = np.zeros((5, 24), np.float32)
    alike_job, unlike_job = np.stack(images[:5]).astype(np.float32), np.stack(images[5:10]).astype(np.float32)
    assert r.score_job(v, alike_job).mean() > r.score_job(v, unlike_job).mean() + 0.2


def test_signal_context_adds_the_class_signal_to_the_likeness_one():
    scores = np.array([0.9, 0.6, 0.3, 0.2])
    images = _blobs(1, 4)
    vectors = np.random.default_rng(4).normal(size=(4, 24))
    like = [0.7, 0.4, 0.5, 0.0, 0.3, 2.0, 1.5, 0.4, 0.45]
    assert apply_job_context(scores, like + [0.0, 0.2], 0.1, images, vectors) == pytest.approx(
        apply_job_context(scores, like, 0.1, images))  # g = 0: the likeness stage
    signal = vectors[:, FEATURE_NAMES.index(SIGNAL_FEATURE)]
    z_like = np.log(apply_job_context(scores, like[:3] + [1.0] + like[4:], 0.1, images) /
                    (1 - apply_job_context(scores, like[:3] + [1.0] + like[4:], 0.1, images)))
    out = apply_job_context(scores, like[:3] + [1.0] + like[4:] + [-0.5, 0.2], 0.1, images, vectors)
    assert np.log(out / (1 - out)) == pytest.approx(z_like - 0.5 * (signal - 0.2), abs=1e-4)  # lift 1: z_ctx itself
    with pytest.raises(ValueError, match="give both"):
        apply_job_context(scores, like + [-0.5, 0.2], 0.1, images)


def test_fit_with_signal_finds_that_bright_classes_are_junk(tmp_path):
    """Classes whose RelativeSignalIntensity is high are junk at the same network score: g < 0, S0 its mean."""
    rng = np.random.default_rng(5)
    scores, job, n, purity, images, vectors = [], [], [], [], [], []
    col = FEATURE_NAMES.index(SIGNAL_FEATURE)
    for j in range(30):
        v = rng.normal(size=(5, 24))
        scores += list(rng.uniform(0.35, 0.65, 5))
        purity += list(np.where(v[:, col] > 0, 0.1, 0.9))
        job += [f"job{j}"] * 5
        n += [100] * 5
        images += list(_blobs(300 + j, 5))
        vectors += list(v)
    coef = fit_job_context(scores, job, n, purity, 0.0, np.stack(images), np.stack(vectors))
    assert len(coef) == N_SIGNAL and coef[9] < -1
    assert coef[10] == pytest.approx(np.mean(np.stack(vectors)[:, col]))
    path = str(tmp_path / "m.pt")
    save_model(build_net(), path, card={}, job_context=coef)
    assert load_model(path, device="cpu").job_context == pytest.approx(coef)


def test_shipped_stage_is_refitted_exactly_from_the_scores_in_the_repository(monkeypatch, tmp_path):
    """v7's stage (and v6's, without --signal) comes back to the last digit from the 1,220 scores it was fitted on
    (datasets/stage_fits/v5_unseen_scores.npz) by the command datasets/README.md gives."""
    from conftest import ROOT
    from ranker.develop.__main__ import main as develop

    monkeypatch.chdir(ROOT)  # the file names its jobs relative to the repository
    d = np.load("datasets/stage_fits/v5_unseen_scores.npz")
    assert len(d["score"]) == 1220 and len(set(d["job"])) == 183
    for shipped, extra in (("relion_external_rank_v7.npz", ["--signal"]), ("relion_external_rank_v6.npz", [])):
        out = str(tmp_path / shipped)
        assert develop(["fit_context", "--oof", "datasets/stage_fits/v5_unseen_scores.npz", "--model",
                        "models/relion_external_rank_v5.npz", "--out", out, "--likeness"] + extra) == 0
        expected = load_model(os.path.join(ROOT, "models", shipped), device="cpu").job_context
        assert load_model(out, device="cpu").job_context == pytest.approx(expected, rel=1e-6, abs=1e-9)
