"""python -m ranker.develop evaluate: the command whose figures the README and model card quote."""
import numpy as np
import pytest

from conftest import R5, ROOT, SIM
from ranker.develop.__main__ import main as develop
from ranker.develop.commands import evaluate as evalmod
from ranker.runtime.model import Ranker


def test_evaluate_shipped_model_on_fixtures(capsys):
    assert develop(["evaluate", SIM, R5]) == 0
    text = capsys.readouterr().out
    assert "Pooled AUC" in text and "Reliability" in text and "class2d_sim" in text
    r = evalmod.evaluate([SIM, R5], log=lambda *a: None)
    assert r["pooled_auc"] >= 0.95 and len(r["jobs"]) == 2
    assert abs(r["0.5"]["true_kept_vs_oracle"] - 1) < 0.05 and r["0.5"]["junk_removed_vs_oracle"] > 0.9
    assert 0.95 <= r["0.5"]["decision_agreement"] <= 1
    assert r["0.5"]["regret"] <= 0.01  # the target for simulated sets


def test_keeping_everything_is_scored_as_keeping_all_junk(monkeypatch):
    """Only the unscored classes (<= 10 particles) are dropped then."""
    monkeypatch.setattr(Ranker, "score_job", lambda self, v, i, use_context=True: np.full(len(v), 0.9, np.float32))
    r = evalmod.evaluate([SIM, R5], log=lambda *a: None)
    assert r["0.5"]["junk_removed_vs_oracle"] < 0.01 and r["0.5"]["true_kept_vs_oracle"] >= 1
    assert 0.5 < r["0.5"]["decision_agreement"] < 0.95  # the junk classes get the wrong decision
    assert r["junk_kept_by_kind"] and abs(sum(r["junk_kept_by_kind"].values()) - 1) < 1e-9
    assert max(r["junk_kept_by_kind"], key=r["junk_kept_by_kind"].get) == "noise"  # both fixtures' junk class
    assert "junk that threshold 0.5 keeps but the oracle removes, by kind: noise" in evalmod.to_markdown(r)
    by_kind = r["scores_by_kind"]  # every scored class kept at 0.9: each kind's classes all kept, mean 0.9
    assert list(by_kind)[0] == "real" and "noise" in by_kind
    assert all(f == 1.0 and m == pytest.approx(0.9) for _n, m, f in by_kind.values())
    assert sum(n for n, _m, _f in by_kind.values()) == 27  # of the 28 non-empty classes, one has <= 10 particles
    assert "noise " in evalmod.to_markdown(r).split("scores by the class's majority")[1]
    m = r["misses_by_purity"]  # the fixtures' junk classes are pure noise: all misses far from the cut
    assert m["junk_far"] > 0.99 and m["junk_near"] == 0 and m["true_near"] == m["true_far"] == 0
    # class2d_sim's only wrong decision is its junk class 7 (60 real of 1088): 968 of its 3850 particles
    sim = next(j for j in r["jobs"] if j["job"] == SIM)
    assert sim["0.5"]["regret"] == 1088 - 2 * 60 and evalmod.job_regret(sim["0.5"]) == pytest.approx(968 / 3850)
    assert f"| {100 * 968 / 3850:.2f} % |" in evalmod.to_markdown(r) and "Regret at 0.5" in evalmod.to_markdown(r)
    # class2d_relion5 (3850 particles too) regrets 988: resampling the two jobs spans 968 / 3850 (SIM twice) to 988 / 3850
    r5 = next(j for j in r["jobs"] if j["job"] == R5)
    assert r5["0.5"]["regret"] == 988 and r["0.5"]["regret"] == pytest.approx((968 + 988) / 7700)
    low, high = r["0.5"]["regret_ci95"]
    assert low == pytest.approx(968 / 3850) and high == pytest.approx(988 / 3850) and low < r["0.5"]["regret"] < high
    assert f"95 % over 2 jobs (rough) {100 * 968 / 3850:.2f}-{100 * 988 / 3850:.2f} %" in evalmod.to_markdown(r)


def test_regret_is_split_between_collapsed_and_other_classifications(monkeypatch):
    """A frozen held-out job whose RELION run put 99 % of its particles in one class (collapsed) and the fixture
    class2d_sim (largest class under half of its particles), everything kept: each group's regret is its own."""
    from ranker.develop.truth import class_truth_counts

    collapsed = f"{ROOT}/datasets/realism/corpus_r6/job0008"
    monkeypatch.setattr(Ranker, "score_job", lambda self, v, i, use_context=True: np.full(len(v), 0.9, np.float32))
    r = evalmod.evaluate([SIM, collapsed], log=lambda *a: None)
    counts = class_truth_counts(collapsed, (), "detail").values()
    n = sum(c[0] for c in counts)
    assert max(c[0] for c in counts) / n >= 0.99 and r["jobs"][1]["largest_class_share"] >= 0.99
    assert r["jobs"][0]["largest_class_share"] < evalmod.COLLAPSED
    groups = r["by_collapse"]
    assert groups["other"]["jobs"] == groups["collapsed"]["jobs"] == 1
    assert groups["other"]["regret"] == pytest.approx(968 / 3850)  # class2d_sim's junk class 7, kept
    regret = sum(abs(2 * c[1] - c[0]) for c in counts if c[1] < 0.5 * c[0] and c[0] > 10)  # its junk-majority classes
    assert groups["collapsed"]["regret"] == pytest.approx(regret / n) and regret > 0
    assert "in the 1 collapsed job (largest class >= 50 %" in evalmod.to_markdown(r)
    assert f"in the 1 other job {100 * 968 / 3850:.2f} %." in evalmod.to_markdown(r)


def test_keeping_nothing_loses_the_real_particles_in_clean_classes(monkeypatch):
    monkeypatch.setattr(Ranker, "score_job", lambda self, v, i, use_context=True: np.full(len(v), 0.1, np.float32))
    r = evalmod.evaluate([SIM, R5], log=lambda *a: None)
    m = r["misses_by_purity"]
    assert r["0.5"]["true_kept_vs_oracle"] == 0 and m["junk_near"] == m["junk_far"] == 0
    # every real particle the oracle keeps is lost, most of them in clean (>= 65 % real) classes
    assert abs(m["true_near"] + m["true_far"] - 1) < 1e-9 and m["true_far"] > 0.9
    assert "real lost in classes 50-65 % real" in evalmod.to_markdown(r)


def test_evaluate_reports_the_models_error_near_the_cut(monkeypatch):
    # constant 0.5: the error is the distance of class2d_relion5's one 35-65 % class (88 of 157 real) from 0.5
    monkeypatch.setattr(Ranker, "score_job", lambda self, v, i, use_context=True: np.full(len(v), 0.5, np.float32))
    r = evalmod.evaluate([SIM, R5], log=lambda *a: None)
    assert r["near_cut_error"]["classes"] == 1
    assert r["near_cut_error"]["rms_weighted"] == pytest.approx(88 / 157 - 0.5, abs=1e-4)
    assert "score - purity on classes 35-65 % real (1): RMS 0.061" in evalmod.to_markdown(r)


def test_detail_target_counts_a_featureless_class_of_real_particles_as_junk(tmp_path, monkeypatch):
    """A 95 %-real class whose resolution is 3x worse than the job's best real class: junk for the
    'detail' oracle (and a training target near 0), real for the purity-only one."""
    import shutil
    from ranker.develop.dataset import from_truth_job
    from ranker.develop.truth import class_truth_counts, detail, read_class_truth, write_class_truth

    proj = tmp_path / "p"
    shutil.copytree(SIM, proj)
    rows = read_class_truth(str(proj))
    blurry = next(r for r in rows if r["class_number"] == 11)  # 250 of 262 real
    blurry["rlnEstimatedResolution"] = 3 * 12.631579  # the best real class (5) is at 12.63 A
    write_class_truth(str(proj), rows)
    d = detail(read_class_truth(str(proj)))
    assert d[5] == 1.0 and d[11] == 0.0 and d[18] == 1.0  # class 18 at 15 A: ratio 0.84, fully detailed
    assert class_truth_counts(str(proj), target="detail")[11][1] == 0
    assert class_truth_counts(str(proj), target="purity")[11][1] == 250
    assert class_truth_counts(str(proj), target="detail")[11][2]["featureless real"] == 250
    labelled = from_truth_job(str(proj), target="detail")
    i = list(labelled.class_number).index(11)
    assert labelled.targets[i] == 0 and labelled.n_true[i] == 0
    assert from_truth_job(str(proj)).targets[i] == pytest.approx(250 / 262, abs=1e-4)
    # keeping every scored class: the blurry class now costs all its 262 particles (all junk to a user)
    monkeypatch.setattr(Ranker, "score_job", lambda self, v, i, use_context=True: np.full(len(v), 0.9, np.float32))
    r = evalmod.evaluate([str(proj)], log=lambda *a: None)
    assert r["0.5"]["regret"] == pytest.approx((1088 - 120 + 262) / 3850)
    assert r["purity_only"]["regret"] == pytest.approx((1088 - 120) / 3850)
    assert "Purity only" in evalmod.to_markdown(r)


def test_baseline_gives_the_paired_difference_between_two_models(monkeypatch, capsys):
    """--baseline scores the same jobs with a second model. The monkeypatched scorer keeps every class for v4's
    weights and none for the shipped model's, so the report must show the two evaluations' own regrets."""
    keep_all_for_v4 = lambda self, v, i, use_context=True: np.full(len(v), 0.9 if "_v4" in self.path else 0.1,
                                                                   np.float32)
    monkeypatch.setattr(Ranker, "score_job", keep_all_for_v4)
    v4 = f"{ROOT}/models/relion_external_rank_v4.npz"
    keep_all = evalmod.evaluate([SIM, R5], model_path=v4, log=lambda *a: None)
    keep_none = evalmod.evaluate([SIM, R5], log=lambda *a: None)
    assert keep_all["0.5"]["regret"] == pytest.approx((968 + 988) / 7700) and keep_none["0.5"]["regret"] > 0
    c = evalmod.compare(keep_none, keep_all)
    assert c["difference"] == pytest.approx(keep_all["0.5"]["regret"] - keep_none["0.5"]["regret"])
    assert c["baseline_regret"] == keep_none["0.5"]["regret"]
    with pytest.raises(ValueError, match="not of the same jobs"):
        evalmod.compare(keep_all, evalmod.evaluate([SIM], log=lambda *a: None))
    assert develop(["evaluate", SIM, R5, "--model", v4, "--baseline", "shipped"]) == 0
    text = capsys.readouterr().out
    assert f"(regret at 0.5 {100 * keep_none['0.5']['regret']:.2f} %): difference **{100 * c['difference']:+.2f} points**" in text
    assert "With 2 jobs the interval itself is rough" in text


def test_verdict_counts_an_interval_ending_at_zero_as_undecided():
    assert evalmod.verdict(dict(low=-0.02, high=-0.01), 50).startswith("better")
    assert evalmod.verdict(dict(low=0.01, high=0.02), 50).startswith("worse")
    assert evalmod.verdict(dict(low=-0.027, high=0.0), 50).startswith("the interval reaches 0")  # a tie at the top
    assert evalmod.verdict(dict(low=0.0, high=0.01), 50).startswith("the interval reaches 0")
    assert "rough" not in evalmod.verdict(dict(low=-0.01, high=0.01), 10)
    assert evalmod.verdict(dict(low=float("nan"), high=float("nan")), 1) == "with 1 job there is no interval."
    assert evalmod.count_jobs(1, "other") == "1 other job" and evalmod.count_jobs(3) == "3 jobs"


def test_shipped_model_on_the_real_micrograph_jobs():
    """The three real EMPIAR-10017 jobs (evaluation only): the issue's AUC target (>= 0.95) and regret target
    (<= 2 %) are met by v7 at 0.5 (0.68 % pooled: 0.22 %, 1.79 % and 0.07 % per job) and with ``--min_score auto``
    (0.96 %). A guard against a model that does worse, with the figures README.md and the model card quote
    (v6: 0.38 % at 0.5 (0.22 / 0.85 / 0.07 %), 1.14 % auto, near-cut RMS 0.061; v5: 0.57 % at 0.5 (0.00 / 1.67 /
    0.07 %), 1.14 % auto, RMS 0.068; v4: 2.60 %, 1.14 % auto, RMS 0.073; v3: 7.35 %, near-cut RMS 0.232)."""
    from conftest import DATA

    jobs = [f"{DATA}/real_empiar10017", f"{DATA}/real_empiar10017_b", f"{DATA}/real_empiar10017_c"]
    r = evalmod.evaluate(jobs, log=lambda *a: None)
    assert r["pooled_auc"] >= 0.95
    assert r["0.5"]["regret"] <= 0.0069 and r["auto"]["regret"] <= 0.0097
    assert r["near_cut_error"]["rms_weighted"] <= 0.048
    # per job, so that one job's regression is not hidden by the others: (regret at 0.5, with auto) today
    assert [row["job"] for row in r["jobs"]] == jobs
    for row, (at_half, auto) in zip(r["jobs"], ((0.0022, 0.0105), (0.0179, 0.0179), (0.0007, 0.0007))):
        n = row["0.5"]["true_total"] + row["0.5"]["junk_total"]  # a job's regret is in particles
        assert row["0.5"]["regret"] / n <= at_half + 0.0005 and row["auto"]["regret"] / n <= auto + 0.0005, row["job"]


def test_regret_breakdown_by_purity_adds_up_to_the_regret(monkeypatch):
    # every class scored 0.55: all junk-majority classes are kept, each costing junk - real particles
    monkeypatch.setattr(Ranker, "score_job", lambda self, v, i, use_context=True: np.full(len(v), 0.55, np.float32))
    r = evalmod.evaluate([SIM, R5], log=lambda *a: None)
    bands = r["regret_by_purity"]
    assert [b[0] for b in bands] == list(evalmod.PURITY_BANDS[:-1])
    assert sum(b[4] for b in bands) == pytest.approx(r["0.5"]["regret"]) and r["0.5"]["regret"] > 0
    assert all(b[3] == 0 for b in bands if b[0] >= 0.5)  # nothing real-majority is lost when all is kept
    assert r["regret_near_threshold"] == pytest.approx(1.0)  # every wrong class scored 0.55
    assert "% of it from classes scored within 0.1 of 0.5" in evalmod.to_markdown(r)
    # tied scores leave two cuts per job, keep all or keep none: the best per job is the smaller regret
    jobs = r["jobs"]
    keep_none = [j["0.5"]["oracle_true_kept"] - j["0.5"]["junk_unremovable"] for j in jobs]
    best = [min(j["0.5"]["regret"], none) for j, none in zip(jobs, keep_none)]
    assert [j["best_threshold_regret"] for j in jobs] == pytest.approx(best)
    everyone = sum(j["0.5"]["true_total"] + j["0.5"]["junk_total"] for j in jobs)
    assert r["best_threshold_regret"] == pytest.approx(sum(best) / everyone)
    assert r["best_threshold_regret"] <= r["0.5"]["regret"]
    assert "only the cut moved): regret" in evalmod.to_markdown(r)
