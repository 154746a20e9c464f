"""--min_score auto and the quality metrics."""
import numpy as np
import pytest

from ranker.develop.metrics import best_job_threshold_regret, class_regret, roc_auc, selection_vs_oracle
from ranker.runtime.threshold import DEFAULT, auto_threshold


def test_auto_threshold_finds_the_gap():
    assert auto_threshold([0.05, 0.1, 0.12, 0.55, 0.6, 0.7]) == pytest.approx((0.12 + 0.55) / 2)


def test_auto_threshold_is_clamped_and_falls_back():
    assert auto_threshold([0.01, 0.02, 0.95, 0.97]) == pytest.approx(0.485)  # halfway, inside the clamp
    assert auto_threshold([0.01, 0.02, 0.03, 0.9]) == pytest.approx(0.465)
    assert auto_threshold([0.85, 0.88, 0.9, 0.99]) == DEFAULT  # no gap: all good
    assert auto_threshold([0.1, 0.2]) == DEFAULT  # too few classes
    assert auto_threshold([0.0, 0.01, 0.02, 0.99, 1.0]) <= 0.7


def test_roc_auc():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.9, 0.2, 0.8, 0.1], [0, 0, 1, 1]) == 0.25
    assert roc_auc([0.5, 0.5], [0, 1]) == 0.5
    assert np.isnan(roc_auc([0.1], [1]))


def test_selection_vs_oracle():
    m = selection_vs_oracle(keep=[True, False, False], n_particles=[100, 50, 200], n_true=[90, 30, 10])
    assert m["oracle_true_kept"] == 120 and m["true_kept"] == 90
    assert m["junk_removed"] == 20 + 190 and m["oracle_junk_removed"] == 190
    assert m["junk_unremovable"] == 10 + 20
    assert m["agreeing"] == 100 + 200  # class 2 (60 % real) is the one decided differently
    assert m["regret"] == 30 - 20  # dropping it loses 30 real and removes 20 junk: 10 particles worse off


def test_regret_counts_each_class_decided_unlike_the_oracle_by_its_majority_margin():
    n, t = [100, 50, 200, 40], [90, 30, 10, 20]  # 90 %, 60 %, 5 %, 50 % real (the oracle keeps 50 %)
    assert selection_vs_oracle([True, True, False, True], n, t)["regret"] == 0  # the oracle itself
    everything = selection_vs_oracle([True] * 4, n, t)["regret"]
    assert everything == 190 - 10  # keeping the 5 % class: 190 junk kept for 10 real saved
    nothing = selection_vs_oracle([False] * 4, n, t)["regret"]
    assert nothing == (90 - 10) + (30 - 20) + 0  # the 50 % class costs nothing either way


def test_decision_accuracy_uses_truth_or_the_users_selection():
    from ranker.develop.commands.train import decision_accuracy

    scores = [0.9, 0.3, 0.2]
    # truth counts known: class 2 (60 % real) is rejected against the oracle -> 300 of 350 agree
    assert decision_accuracy(scores, [100, 50, 200], [90, 30, 10], [0.9, 0.6, 0.05]) == pytest.approx(300 / 350)
    # a user's selection (no counts): its 0/1 targets are the oracle; threshold 0.25 keeps class 2 too
    nan = float("nan")
    assert decision_accuracy(scores, [100, 50, 200], [nan] * 3, [1.0, 1.0, 0.0], 0.25) == 1.0



def test_bootstrap_regret_brackets_the_pooled_figure_and_resamples_whole_jobs():
    from ranker.develop.metrics import bootstrap_regret, pooled_regret

    regret, total = [0, 100, 0, 300], [1000, 1000, 1000, 1000]  # pooled 400 / 4000 = 10 %
    low, high = bootstrap_regret(regret, total)
    assert 0 <= low < 0.10 < high <= 0.30  # 30 %: every draw the worst job; 0: never a job with regret
    assert bootstrap_regret(regret, total) == (low, high)  # seeded: the same interval each run
    assert bootstrap_regret([5, 5, 5], [100, 100, 100]) == pytest.approx((0.05, 0.05))  # no spread between jobs
    assert all(np.isnan(bootstrap_regret([5], [100])))  # one job: no interval


def test_pooled_regret_is_a_ratio_of_sums_so_large_jobs_weigh_more():
    from ranker.develop.metrics import bootstrap_regret, pooled_regret

    regret, total = [90, 1], [100, 10000]  # per job 90 % and 0.01 %: their mean would be 45 %
    assert pooled_regret(regret, total) == pytest.approx(91 / 10100)
    low, high = bootstrap_regret(regret, total, draws=4000)
    # resamples: the large job twice (0.01 %), once each (91 / 10100), the small job twice (90 %)
    assert low == pytest.approx(1 / 10000) and high == pytest.approx(0.9)
    assert pooled_regret([0], [0]) == 0  # no particles: no division by zero


def test_paired_regret_difference_tells_a_consistent_gain_from_one_lucky_job():
    from ranker.develop.metrics import paired_regret_difference

    total = [1000] * 10
    a = [50] * 10
    better = paired_regret_difference(a, [40] * 10, total)  # 10 particles fewer in every job
    assert better["difference"] == pytest.approx(-0.01) and better["high"] < 0 and better["b_better"] == 1
    lucky = paired_regret_difference(a, [0] + [55] * 9, total)  # one job much better, nine a little worse
    assert lucky["difference"] == pytest.approx((0 + 9 * 55 - 500) / 10000)
    assert lucky["low"] < 0 < lucky["high"] and 0 < lucky["b_better"] < 1 and 0 < lucky["b_worse"] < 1
    same = paired_regret_difference(a, a, total)
    assert same["difference"] == same["low"] == same["high"] == 0 and same["b_better"] == same["b_worse"] == 0
    one = paired_regret_difference([5], [3], [100])
    assert one["difference"] == pytest.approx(-0.02) and np.isnan(one["low"]) and np.isnan(one["b_better"])


def test_paired_regret_difference_pairs_the_jobs():
    """A's regret varies widely between jobs; B is A minus 1 particle in every job. Resampled in pairs, B is better
    in every draw; resampled independently, the spread between jobs would swamp the 1-particle gain."""
    from ranker.develop.metrics import paired_regret_difference

    a = np.array([0, 400, 10, 900, 50, 700, 5, 300, 20, 600]) + 1
    d = paired_regret_difference(a, a - 1, [1000] * 10)
    assert d["difference"] == pytest.approx(-10 / 10000)
    assert d["b_better"] == 1 and d["high"] < 0 and d["low"] > -0.0011


def test_best_job_threshold_keeps_the_ranking_and_moves_only_the_cut():
    n = np.array([100.0, 100.0, 100.0, 100.0])
    t = np.array([90.0, 70.0, 30.0, 10.0])  # the oracle keeps the first two
    costs = class_regret([True, False, True, False], n, t)
    assert costs.tolist() == [0, 40, 40, 0]
    assert costs.sum() == selection_vs_oracle([True, False, True, False], n, t)["regret"]
    # ranked right but all scored low (a job whose scores sit below 0.5): 0.5 drops both good classes
    low = np.array([0.45, 0.40, 0.20, 0.10])
    assert class_regret(low >= 0.5, n, t).sum() == 120 and best_job_threshold_regret(low, n, t) == 0
    # ranked wrong (the 70 % class below a 30 % one): no cut avoids every cost
    mixed = np.array([0.9, 0.3, 0.4, 0.1])
    assert best_job_threshold_regret(mixed, n, t) == 40
    # a class not scored (-inf) is never kept, even by the lowest cut
    assert best_job_threshold_regret(np.array([-np.inf, 0.9, 0.2, 0.1]), n, t) == 80
