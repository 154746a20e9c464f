"""The job-context stage: score = sigmoid(a z + b (z - z_best) + c), z = logit(network score)."""
import numpy as np
import pytest

from ranker.develop.job_context import choose_lift, fit_job_context
from ranker.runtime.context import apply_job_context
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
    with pytest.raises(ModelError, match="job_context must be three or four finite numbers"):
        load_model(path, device="cpu")


def test_shipped_model_has_a_job_context():
    r = load_model(device="cpu")
    assert r.job_context is not None and len(r.job_context) == 4 and r.job_context[1] > 0
