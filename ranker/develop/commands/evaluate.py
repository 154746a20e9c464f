"""Measure a model on labelled RELION jobs (never used in training).

Usage::

    python -m ranker.develop evaluate JOB_DIR [JOB_DIR ...] [--model PATH] [--baseline PATH] [--out report.md]

Each JOB_DIR is a RELION project with a Class2D job and ``class_truth.csv`` (as the shared
fixtures and :mod:`ranker.develop.simulate` make them). Prints, per job and pooled:

* ROC-AUC separating good classes (>= 80 % true particles) from bad ones (<= 20 %);
* the regret at 0.5: particles whose fate differs from the class-level oracle's beyond what the
  oracle gets wrong anyway (each class decided unlike the oracle costs |true - junk| particles),
  as a fraction of all particles, per job and pooled (:func:`ranker.develop.metrics.selection_vs_oracle`),
  the pooled figure with a 95 % bootstrap interval over jobs (:func:`ranker.develop.metrics.bootstrap_regret`);
* with ``--baseline``: the same jobs scored by a second model, and the pooled regret difference with a
  paired bootstrap interval over jobs (:func:`ranker.develop.metrics.paired_regret_difference`): whether
  a new model is better beyond what the choice of jobs can explain;
* at ``--min_score 0.5`` and ``auto``: true particles kept and junk particles removed,
  as fractions of what the oracle achieves (the oracle keeps exactly the classes with
  >= 50 % true particles), and the junk inside majority-true classes that no class
  selection can remove;
* where 0.5 misses: the oracle's junk it keeps and real particles it loses, split into classes
  within ``NEAR_CUT`` of the 50 % cut and classes farther from it;
* the model's error (score - purity, particle-weighted RMS) on classes within ``NEAR_CUT`` of the
  cut, to set beside ``python -m ranker.develop oracle_precision`` (what that much error costs);
* where the regret at 0.5 comes from: by the purity of the classes decided unlike the oracle
  (:data:`PURITY_BANDS`), and the share from classes the model scored within ``MARGIN`` of 0.5
  (a model unsure of classes whose purity is far from 50 % shows up here, not in the near-cut RMS);
* the regret a per-job threshold could reach at best (each job cut where its truth says, the model's
  ranking within the job kept): the part of the regret that ranking the classes better must remove,
  against the part that placing each job's cut better could;
* a reliability table: predicted score bins against the observed purity.
"""

from __future__ import annotations

import numpy as np

from ranker.develop.dataset import from_truth_job
from ranker.develop.metrics import (best_job_threshold_regret, bootstrap_regret, class_regret,
                                    paired_regret_difference, pooled_regret, roc_auc, selection_vs_oracle)
from ranker.develop.truth import JUNK_KINDS, TARGETS, class_truth_counts
from ranker.runtime.threshold import auto_threshold


NEAR_CUT = 0.15  # a class within 15 points of the oracle's 50 % cut counts as "near the cut"
#: a job whose largest class holds at least this fraction of its particles is a collapsed classification:
#: the keep/reject decision on that one class weighs at least as much as all its other classes together
#: (101 of the 130 frozen realism jobs classified with --ctf, 2 of 35 without; real jobs not measured)
COLLAPSED = 0.5
#: purity bands of the regret's breakdown (fraction of real particles; the last band includes 1)
PURITY_BANDS = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)
MARGIN = 0.1  # a class scored within this of the 0.5 threshold counts as "scored near the threshold"


def evaluate(projects, model_path=None, tta=None, ignore_kinds=(), log=print, use_context=True,
             target: str = "detail") -> dict:
    """Score every job once, then the figures under ``target`` (:data:`ranker.develop.truth.TARGETS`)
    and, beside them, the purity-only AUC and regret."""
    from ranker.runtime.model import load_model

    ranker = load_model(model_path, device="cpu")
    if tta is not None:
        ranker.tta = tta
    scored = {}
    for project in projects:
        data = from_truth_job(project)
        scored[project] = dict(zip(data.class_number, ranker.score_job(data.vectors, data.images, use_context)))
    result = figures(scored, ignore_kinds, target)
    result.update(model=ranker.path, tta=ranker.tta, job_context=ranker.job_context if use_context else None)
    if target != "purity":
        purity = figures(scored, ignore_kinds, "purity")
        result["purity_only"] = {"pooled_auc": purity["pooled_auc"], "regret": purity["0.5"]["regret"]}
    return result


def figures(scored: dict, ignore_kinds=(), target: str = "detail") -> dict:
    """The evaluation figures of scores already made, {project: {class number: score}}."""
    per_job, pooled_scores, pooled_purity, pooled_n = [], [], [], []
    sums = {"0.5": {}, "auto": {}}
    missed = dict.fromkeys(JUNK_KINDS, 0.0)  # junk in classes the oracle removes but 0.5 keeps
    near = dict.fromkeys(("junk_near", "junk_far", "true_near", "true_far"), 0.0)  # misses at 0.5 by purity
    by_kind: dict = {}  # majority kind ("real" for classes >= 50 % real) -> scores of its classes
    costs = []  # (purity, score, particles a decision unlike the oracle's costs, 0 if decided alike) per class
    for project, by_class in scored.items():
        classes = class_truth_counts(project, ignore_kinds, target)
        numbers = sorted(classes)
        n = np.array([classes[k][0] for k in numbers])
        t = np.array([classes[k][1] for k in numbers])
        purity = t / n
        s = np.array([by_class.get(k, -999.0) for k in numbers])
        for k, keep, pure, n_k, t_k in zip(numbers, s >= 0.5, purity, n, t):
            if keep and pure < 0.5:
                for kind, count in classes[k][2].items():
                    missed[kind] = missed.get(kind, 0.0) + count
                near["junk_near" if pure >= 0.5 - NEAR_CUT else "junk_far"] += n_k - t_k
            elif not keep and pure >= 0.5:
                near["true_near" if pure < 0.5 + NEAR_CUT else "true_far"] += t_k
        scored = s > -999
        costs += list(zip(purity, s, class_regret(scored & (s >= 0.5), n, t)))
        for k, score, pure, done in zip(numbers, s, purity, scored):
            if done:
                kinds = classes[k][2]
                kind = "real" if pure >= 0.5 or not kinds else max(kinds, key=kinds.get)
                by_kind.setdefault(kind, []).append(float(score))
        clear = scored & ((purity >= 0.8) | (purity <= 0.2))
        auc = roc_auc(s[clear], purity[clear] >= 0.8)
        row = {"job": project, "auc": auc, "n_good": int((clear & (purity >= 0.8)).sum()),
               "n_bad": int((clear & (purity <= 0.2)).sum()), "n_classes": len(numbers),
               "largest_class_share": float(n.max() / n.sum()) if n.sum() else float("nan"),
               "best_threshold_regret": best_job_threshold_regret(np.where(scored, s, -np.inf), n, t)}
        for name, thr in (("0.5", 0.5), ("auto", auto_threshold(s[scored]))):
            m = selection_vs_oracle(scored & (s >= thr), n, t)
            row[name] = dict(m, threshold=thr)
            for k, v in m.items():
                sums[name][k] = sums[name].get(k, 0.0) + v
        per_job.append(row)
        pooled_scores += list(s[scored])
        pooled_purity += list(purity[scored])
        pooled_n += list(n[scored])
    ps, pp, pn = map(np.array, (pooled_scores, pooled_purity, pooled_n))
    clear = (pp >= 0.8) | (pp <= 0.2)
    result = {"jobs": per_job, "pooled_auc": roc_auc(ps[clear], pp[clear] >= 0.8), "ignored": list(ignore_kinds),
              "target": target}
    for name in sums:
        tot = sums[name]
        result[name] = {"true_kept_vs_oracle": tot["true_kept"] / max(tot["oracle_true_kept"], 1),
                        "junk_removed_vs_oracle": tot["junk_removed"] / max(tot["oracle_junk_removed"], 1),
                        "junk_unremovable_fraction": tot["junk_unremovable"] / max(tot["junk_total"], 1),
                        "decision_agreement": tot["agreeing"] / max(tot["true_total"] + tot["junk_total"], 1),
                        "regret": tot["regret"] / max(tot["true_total"] + tot["junk_total"], 1),
                        "regret_ci95": bootstrap_regret([j[name]["regret"] for j in per_job], job_particles(per_job, name)),
                        "jobs": len(per_job),
                        "oracle_misplaced": (tot["junk_unremovable"] + tot["true_total"] - tot["oracle_true_kept"])
                        / max(tot["true_total"] + tot["junk_total"], 1)}
    result["by_collapse"] = {}
    for group, inside in (("collapsed", lambda f: f >= COLLAPSED), ("other", lambda f: not f >= COLLAPSED)):
        rows = [j for j in per_job if inside(j["largest_class_share"])]
        if rows:
            regret, total = [j["0.5"]["regret"] for j in rows], job_particles(rows)
            result["by_collapse"][group] = {"jobs": len(rows), "regret": pooled_regret(regret, total),
                                            "regret_ci95": bootstrap_regret(regret, total)}
    bins = np.linspace(0, 1, 6)
    table = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        inside = (ps >= lo) & ((ps < hi) | (hi == 1))
        if inside.any():
            table.append((lo, hi, int(inside.sum()), float(pp[inside].mean()),
                          float((pp[inside] * pn[inside]).sum() / pn[inside].sum())))
    result["reliability"] = table
    cp, cs, cc = np.array(costs, float).reshape(-1, 3).T
    everyone = max(sums["0.5"].get("true_total", 0) + sums["0.5"].get("junk_total", 0), 1)
    bands = []
    for lo, hi in zip(PURITY_BANDS[:-1], PURITY_BANDS[1:]):
        inside = (cp >= lo) & ((cp < hi) | (hi == PURITY_BANDS[-1]))
        bands.append((lo, hi, int(inside.sum()), int((inside & (cc > 0)).sum()), float(cc[inside].sum() / everyone)))
    result["regret_by_purity"] = bands
    result["best_threshold_regret"] = pooled_regret([j["best_threshold_regret"] for j in per_job], job_particles(per_job))
    result["regret_near_threshold"] = float(cc[np.abs(cs - 0.5) < MARGIN].sum() / cc.sum()) if cc.sum() else float("nan")
    near_cut = np.abs(pp - 0.5) <= NEAR_CUT
    result["near_cut_error"] = {"classes": int(near_cut.sum()), "rms_weighted": float(
        np.sqrt(np.average((ps[near_cut] - pp[near_cut]) ** 2, weights=pn[near_cut]))) if near_cut.any() else float("nan")}
    total_missed = sum(missed.values())
    result["junk_kept_by_kind"] = {k: v / total_missed for k, v in missed.items() if v}
    result["scores_by_kind"] = {k: (len(v), float(np.mean(v)), float(np.mean(np.array(v) >= 0.5)))
                                for k, v in sorted(by_kind.items(), key=lambda kv: (kv[0] != "real", kv[0]))}
    oracle_junk, oracle_true = sums["0.5"]["oracle_junk_removed"], sums["0.5"]["oracle_true_kept"]
    result["misses_by_purity"] = {k: v / max(oracle_junk if k.startswith("junk") else oracle_true, 1)
                                  for k, v in near.items()}
    return result


def job_particles(per_job: list, name: str = "0.5") -> list:
    """Particles of each job of a :func:`figures` result's ``jobs`` (true + junk)."""
    return [j[name]["true_total"] + j[name]["junk_total"] for j in per_job]


def compare(baseline: dict, candidate: dict, threshold: str = "0.5") -> dict:
    """Pooled regret of ``candidate`` minus ``baseline`` (two :func:`evaluate` results on the same jobs, in the
    same order), with its paired bootstrap interval over jobs and the fraction of resamples the candidate wins."""
    jobs_a, jobs_b = baseline["jobs"], candidate["jobs"]
    if [j["job"] for j in jobs_a] != [j["job"] for j in jobs_b]:
        raise ValueError("compare: the two evaluations are not of the same jobs")
    return dict(paired_regret_difference([j[threshold]["regret"] for j in jobs_a], [j[threshold]["regret"] for j in jobs_b],
                                         job_particles(jobs_a, threshold)),
                baseline_model=baseline["model"], baseline_regret=baseline[threshold]["regret"], threshold=threshold)


def job_regret(m: dict) -> float:
    """Regret of one job's selection (a :func:`selection_vs_oracle` result) as a fraction of its particles."""
    return m["regret"] / max(m["true_total"] + m["junk_total"], 1)


def to_markdown(r: dict) -> str:
    out = [f"Model: `{r['model']}`" + (" (scores averaged over 8 rotations/flips)" if r.get("tta") else "")
           + (" with its job-context stage" if r.get("job_context") else ""), "",
           "| job | classes | good / bad | AUC | regret at 0.5 | thr 0.5: true kept / junk removed (vs oracle) | auto thr | auto: true kept / junk removed |",
           "|---|---|---|---|---|---|---|---|"]
    for j in r["jobs"]:
        a, b = j["0.5"], j["auto"]
        out.append(f"| {'/'.join(j['job'].rstrip('/').split('/')[-2:])} | {j['n_classes']} | {j['n_good']} / {j['n_bad']} | "
                   f"{j['auc']:.3f} | {100 * job_regret(a):.2f} % | {a['true_kept_vs_oracle']:.3f} / {a['junk_removed_vs_oracle']:.3f} | "
                   f"{b['threshold']:.2f} | {b['true_kept_vs_oracle']:.3f} / {b['junk_removed_vs_oracle']:.3f} |")
    if r.get("ignored"):
        out += ["", f"Particles of kind {', '.join(r['ignored'])} are left out of every count and purity."]
    if r.get("target") == "detail":
        out += ["", "Target `detail` (ranker.develop.truth): a class counts as real only if its particles are real "
                "AND its average shows the detail this job reaches (resolution within 2x of the job's best real "
                "class); the real particles of a featureless class count as junk, for the oracle too."]
        if r.get("purity_only"):
            p = r["purity_only"]
            out += [f"Purity only (every real particle counts as real, the target up to v3): pooled AUC "
                    f"{p['pooled_auc']:.3f}, regret at 0.5 {100 * p['regret']:.2f} %."]
    out += ["", f"Pooled AUC (good >= 80 % vs bad <= 20 % true particles): **{r['pooled_auc']:.3f}**", "",
            f"Regret at 0.5 (particles decided unlike the class-level oracle beyond its own misplaced ones, "
            f"|true - junk| per class decided otherwise, over all particles): **{100 * r['0.5']['regret']:.2f} %** "
            f"pooled{ci(r['0.5'])} (auto threshold: {100 * r['auto']['regret']:.2f} %{ci(r['auto'])}); the oracle itself misplaces "
            f"{100 * r['0.5']['oracle_misplaced']:.1f} % (junk in kept classes + real particles in removed ones).", ""]
    groups = r.get("by_collapse", {})
    if len(groups) == 2:
        c, v = groups["collapsed"], groups["other"]
        out += [f"Regret at 0.5 in the {count_jobs(c['jobs'], 'collapsed')} (largest class >= {100 * COLLAPSED:.0f} % of the "
                f"job's particles: the decision on that class weighs more than all the others) {100 * c['regret']:.2f} %"
                f"{ci(c)}; in the "
                f"{count_jobs(v['jobs'], 'other')} {100 * v['regret']:.2f} %{ci(v)}.", ""]
    if r.get("baseline"):
        b = r["baseline"]
        out += [f"Against the baseline `{b['baseline_model']}` on the same jobs (regret at {b['threshold']} "
                f"{100 * b['baseline_regret']:.2f} %): difference **{100 * b['difference']:+.2f} points** (paired "
                f"bootstrap over jobs, 95 %: {100 * b['low']:+.2f} to {100 * b['high']:+.2f}; this model regrets less in "
                f"{100 * b['b_better']:.0f} % of the resamples, more in {100 * b['b_worse']:.0f} %, equally in the "
                f"rest): " + verdict(b, len(r["jobs"])), ""]
    for name in ("0.5", "auto"):
        m = r[name]
        out.append(f"- threshold {name}: true particles kept {100 * m['true_kept_vs_oracle']:.1f} % of the oracle's, "
                   f"junk removed {100 * m['junk_removed_vs_oracle']:.1f} % of the oracle's; junk no class "
                   f"selection can remove (inside majority-true classes): {100 * m['junk_unremovable_fraction']:.1f} % of all "
                   f"junk; particles whose class gets the oracle's keep/reject decision: {100 * m['decision_agreement']:.1f} %")
    if r.get("junk_kept_by_kind"):
        out.append("- junk that threshold 0.5 keeps but the oracle removes, by kind: " + ", ".join(
            f"{k} {100 * v:.0f} %" for k, v in sorted(r["junk_kept_by_kind"].items(), key=lambda kv: -kv[1])))
    if r.get("misses_by_purity"):
        m, lo, hi = r["misses_by_purity"], int(100 * (0.5 - NEAR_CUT)), int(100 * (0.5 + NEAR_CUT))
        out.append(f"- where threshold 0.5 misses, as % of the oracle's removed junk / kept real particles: junk kept in "
                   f"classes {lo}-50 % real (near the cut) {100 * m['junk_near']:.1f} %, in classes < {lo} % real "
                   f"{100 * m['junk_far']:.1f} %; real lost in classes 50-{hi} % real {100 * m['true_near']:.1f} %, in "
                   f"classes >= {hi} % real {100 * m['true_far']:.1f} %")
    if r.get("scores_by_kind"):
        out.append("- scores by the class's majority (real: >= 50 % real particles, else its commonest junk kind): "
                   + "; ".join(f"{k} {n} classes, mean {m:.2f}, {100 * f:.0f} % kept at 0.5"
                               for k, (n, m, f) in r["scores_by_kind"].items()))
    e = r.get("near_cut_error")
    if e and e["classes"]:
        out.append(f"- score - purity on classes {int(100 * (0.5 - NEAR_CUT))}-{int(100 * (0.5 + NEAR_CUT))} % real "
                   f"({e['classes']}): RMS {e['rms_weighted']:.3f} (particle-weighted); `python -m ranker.develop oracle_precision` shows "
                   "what a selector with that purity error could reach on these jobs")
    if r.get("regret_by_purity") and r["0.5"]["regret"] > 0:
        out.append("- the regret at 0.5 by the purity of the classes decided unlike the oracle: " + "; ".join(
            f"{100 * lo:.0f}-{100 * hi:.0f} % real {100 * v:.2f} % ({w} of {n} classes)"
            for lo, hi, n, w, v in r["regret_by_purity"] if n)
            + f"; {100 * r['regret_near_threshold']:.0f} % of it from classes scored within {MARGIN} of 0.5")
    if "best_threshold_regret" in r:
        out.append(f"- with each job's threshold on these scores chosen knowing the truth (the ranking within jobs "
                   f"kept, only the cut moved): regret {100 * r['best_threshold_regret']:.2f} %; the rest of the regret "
                   f"at 0.5 is where the cut falls, job by job")
    out += ["", "Reliability (scored classes pooled):", "", "| score bin | classes | mean purity | particle-weighted purity |",
            "|---|---|---|---|"]
    out += [f"| {lo:.1f}-{hi:.1f} | {n} | {p:.2f} | {w:.2f} |" for lo, hi, n, p, w in r["reliability"]]
    return "\n".join(out) + "\n"


def count_jobs(n: int, kind: str = "") -> str:
    """``"3 collapsed jobs"``, ``"1 other job"``: a count of jobs in words."""
    return f"{n} {kind + ' ' if kind else ''}job{'s' * (n != 1)}"


def verdict(c: dict, n_jobs: int) -> str:
    """One sentence on a :func:`compare` result: better or worse beyond what the choice of jobs explains, or neither.
    An interval that ends exactly at 0 (the models tie on the jobs that decide it) counts as reaching 0."""
    if not np.isfinite(c["low"]):
        return f"with {count_jobs(n_jobs)} there is no interval."
    if c["high"] < 0:
        text = "better than the baseline beyond what the choice of jobs explains."
    elif c["low"] > 0:
        text = "worse than the baseline beyond what the choice of jobs explains."
    else:
        text = "the interval reaches 0: these jobs cannot tell the two models apart."
    return text + (f" With {count_jobs(n_jobs)} the interval itself is rough." if n_jobs < 10 else "")


def ci(m: dict) -> str:
    """``", 95 % over N jobs a-b %"`` for a pooled figure ``m`` whose ``regret_ci95`` (fractions) is finite, in
    percent, marked rough under 10 jobs (there it is little more than the range of the per-job regrets); else ``""``."""
    low, high = m.get("regret_ci95", (float("nan"),) * 2)
    if not np.isfinite(low):
        return ""
    return f", 95 % over {count_jobs(m['jobs'])}{' (rough)' * (m['jobs'] < 10)} {100 * low:.2f}-{100 * high:.2f} %"


def add_args(p) -> None:
    p.add_argument("jobs", nargs="+", help="RELION projects with a Class2D job and class_truth.csv")
    p.add_argument("--model", default=None, help="weights (default: the shipped model)")
    p.add_argument("--baseline", default=None, help="also score the jobs with these weights and report the "
                   "pooled regret difference with a paired bootstrap interval over jobs ('shipped': the default model)")
    p.add_argument("--out", help="also write the Markdown report here")
    p.add_argument("--tta", choices=["model", "on", "off"], default="model",
                   help="test-time averaging over 8 rotations/flips: as stored in the model, or forced on/off")
    p.add_argument("--ignore_kinds", default="", help="comma-separated junk kinds to leave out of the counts "
                   "(e.g. partial: fragments of the complex, which no per-class ranker can tell from a small protein)")
    p.add_argument("--no_job_context", action="store_true", help="score each class alone (the model's "
                   "job-context stage off, as the job's --job_context false)")
    p.add_argument("--target", choices=TARGETS, default="detail",
                   help="what a good class is: real particles AND detail the job reaches (default, as a user "
                        "judges), or purity alone (the fraction of real particles); the other is printed beside")


def main(args) -> int:
    kinds = tuple(k for k in args.ignore_kinds.split(",") if k)
    options = dict(tta={"model": None, "on": True, "off": False}[args.tta], ignore_kinds=kinds,
                   use_context=not args.no_job_context, target=args.target)
    result = evaluate(args.jobs, args.model, **options)
    if args.baseline:
        base = evaluate(args.jobs, None if args.baseline == "shipped" else args.baseline, log=lambda *a: None, **options)
        result["baseline"] = compare(base, result)
    report = to_markdown(result)
    print(report)
    if args.out:
        open(args.out, "w").write(report)
    return 0
