"""Compare the classes of a relion_refine corpus and a quickclass corpus of the same particles.

    python -m ranker.develop compare_classifiers RELION_CORPUS QUICK_CORPUS [--md OUT.md]

On the jobs finished in both (same seed = same particles): per-feature median [IQR] of good
(>= 80 % real) and junk (<= 20 %) classes under both classifiers, KS distance, class counts and
median classification time (:mod:`ranker.develop.simulate.compare`).
"""

from __future__ import annotations


def add_args(p) -> None:
    p.add_argument("relion_corpus")
    p.add_argument("quick_corpus")
    p.add_argument("--md", default="", help="also write the Markdown table here")


def main(a) -> int:
    from ranker.develop.simulate.compare import compare

    md = compare(a.relion_corpus, a.quick_corpus)
    print(md, end="")
    if a.md:
        with open(a.md, "w") as f:
            f.write(md)
    return 0
