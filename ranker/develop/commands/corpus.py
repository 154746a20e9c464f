"""Make a corpus of varied labelled jobs (restartable), or show a corpus's progress.

    python -m ranker.develop corpus CORPUS --n 60 [--structures DIR] [--seed 1] [--classifier quick] [--recipe realism]
    python -m ranker.develop corpus CORPUS --summary [--jobs]

Jobs CORPUS/job0001 ... are made as by the ``simulate`` command with parameters drawn per job
(:mod:`ranker.develop.simulate.corpus`); finished jobs are skipped, a crashed job is removed and
logged in CORPUS/failed/. ``tools/make_corpus.sh`` runs this with the structures fetched first.
With ``--freeze DIR`` each finished job is also frozen (the ``freeze`` command) as soon as it is made.
"""

from __future__ import annotations

from ranker.develop.commands import UsageError


def add_args(p) -> None:
    from ranker.develop.truth import JUNK_KINDS

    p.add_argument("corpus")
    p.add_argument("--summary", action="store_true", help="only print the corpus's progress and class counts")
    p.add_argument("--jobs", action="store_true", help="with --summary: one line per job")
    p.add_argument("--n", type=int, default=60, help="number of jobs (job0001..)")
    p.add_argument("--only", default="",
                   help="comma-separated job numbers to build, e.g. 1,13,21 (default all of 1..N): jobs are drawn "
                        "from (seed, job number) alone, so this rebuilds chosen jobs of a corpus with the same spec "
                        "(relion_refine's own random seed is not fixed: classes differ in detail)")
    p.add_argument("--structures", default="", help="directory made by the 'structures' command")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--heldout", default="8,28,48", help="job numbers that use 4JSV (split heldout)")
    p.add_argument("--budget", type=float, default=None,
                   help="max estimated relion_refine seconds per job (relion_seconds()); sizes shrink to fit")
    p.add_argument("--relion_timeout", type=float, default=900, help="s; a slower relion_refine fails the job")
    p.add_argument("--retry_failed", action="store_true")
    p.add_argument("--stop_after_hours", type=float, default=None)
    p.add_argument("--snr_range", type=float, nargs=2, default=[0.03, 0.3], metavar=("LOW", "HIGH"),
                   help="log-uniform SNR range of the jobs")
    p.add_argument("--junk_kinds", default="", help="comma-separated junk kinds jobs draw from (default all: "
                   + ",".join(JUNK_KINDS) + ")")
    p.add_argument("--classifier", default="relion", choices=["relion", "quick"],
                   help="relion_refine, or the fast in-Python stand-in (quickclass; not RELION)")
    p.add_argument("--freeze", default="", metavar="DIR",
                   help="freeze each finished job to DIR/<corpus name>/jobNNNN as it is made (python -m "
                   "ranker.develop freeze; e.g. --freeze datasets/realism): its labelled classes outlive the corpus")
    p.add_argument("--keep", action="store_true",
                   help="keep particle stacks and all iterations (to measure them: python -m ranker.develop realism)")
    p.add_argument("--recipe", default="v3", choices=["v3", "realism"],
                   help="v3: the parameters of v3's corpora (reproduced exactly); realism: coloured real noise, "
                        "ice gradients, crowded fields, blurry blob junk, no CTF correction in part, more elongated / "
                        "multi-domain shapes, larger jobs (ranker.develop.simulate.corpus.sample_spec)")
    p.add_argument("--ctf_intact_first_peak", action="store_true",
                   help="classify the CTF-corrected jobs with relion_refine --ctf --ctf_intact_first_peak (without "
                        "it most CTF-corrected simulated jobs end in one class: MODEL_CARD)")


def main(a) -> int:
    from ranker.develop.simulate.corpus import run_many, summarise
    from ranker.develop.truth import JUNK_KINDS

    if a.summary:
        summarise(a.corpus, a.jobs)
        return 0
    kinds = [k for k in a.junk_kinds.split(",") if k]
    bad = [k for k in kinds if k not in JUNK_KINDS]
    if bad:
        raise UsageError(f"--junk_kinds: unknown kind(s) {','.join(bad)}; known: {','.join(JUNK_KINDS)}")
    if a.ctf_intact_first_peak and a.classifier == "quick":
        raise UsageError("--ctf_intact_first_peak needs --classifier relion (the quick classifier does not model it)")
    held = tuple(int(v) for v in a.heldout.split(",") if v)
    try:
        only = [int(v) for v in a.only.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--only: expected comma-separated job numbers, got {a.only!r}") from None
    if any(v < 1 for v in only):
        raise UsageError(f"--only: job numbers start at 1, got {a.only!r}")
    run_many(a.corpus, a.n, a.structures or None, a.seed, held, a.budget, a.relion_timeout,
             a.retry_failed, a.stop_after_hours * 3600 if a.stop_after_hours else None,
             log=lambda m: print(m, flush=True), snr_range=tuple(a.snr_range),
             junk_kinds=kinds or None, classifier=a.classifier, recipe=a.recipe, keep=a.keep,
             only=only or None, freeze_to=a.freeze or None, ctf_intact_first_peak=a.ctf_intact_first_peak)
    return 0
