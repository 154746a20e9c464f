"""The frozen evaluation sets in ``datasets/realism`` (``datasets/README.md``): every frozen job is listed
in the set of its split and nowhere else, the sets stay small, and the shipped model's figures on them
are the ones ``models/MODEL_CARD.md`` quotes (its top section, for the default model v7). A change to the model or to
the evaluation that moves them must update the model card with it."""
import json
import os

import pytest

from conftest import ROOT
from ranker.develop import dataset
from ranker.develop.commands import evaluate as evalmod

SETS = os.path.join(ROOT, "datasets", "realism")
# set file (datasets/realism/NAME.txt) -> the split its jobs carry in corpus_job.json
SETS_SPLIT = {"val": "val", "heldout": "heldout", "heldout_r7": "heldout", "val_r8": "val", "val_r8b": "val",
              "train": "train"}

# v7 (the default model) on the frozen sets: pooled ROC-AUC (class-level, `detail` truth), regret at 0.5
# and with --min_score auto, in % of particles; `python -m ranker.develop evaluate $(cat datasets/realism/SET.txt)`
# (the 6 held-out jobs hold no class <= 20 % real, so their AUC is undefined: nan)
# heldout_r7: the 30 held-out jobs of corpus r7 (4JSV; the CTF-corrected ones classified with --ctf_intact_first_peak)
# val_r8: the 47 validation jobs of corpus r8 (every `val` job number up to 200; first peak intact, none collapsed)
# val_r8b: r8's 43 `val` job numbers 201-400 (made 2026-12-08 after v6, to decide v7: models/MODEL_CARD.md)
V7 = {"val": (0.99283, 3.0569, 4.3909), "heldout": (float("nan"), 5.7192, 5.7192),
      "heldout_r7": (0.96471, 5.7754, 5.6902), "val_r8": (0.95474, 7.5022, 6.7946),
      "val_r8b": (0.96972, 3.6069, 4.2884)}
# v6 (v7's networks and likeness stage; the previous default): val (0.98704, 3.3719, 5.0785), heldout (nan, 5.7556,
# 5.7556), heldout_r7 (0.93955, 7.6965, 7.6182), val_r8 (0.95034, 6.9991, 7.0106), val_r8b (0.96598, 4.4110, 4.9459)
# v5 (its networks): val (0.98097, 4.1617, 5.3012), heldout (nan, 5.6647, 5.6647),
# heldout_r7 (0.93920, 8.0559, 7.9213), val_r8 (0.94678, 7.5479, 7.4056), val_r8b (0.96289, 4.7890, 5.4888)
# v4 (the previous default): val (0.95560, 7.3174, 7.3957), heldout (nan, 6.3102, 6.3102),
# heldout_r7 (0.88924, 10.3721, 10.8422), val_r8 (0.93175, 7.4171, 9.2831); v3 on heldout_r7 (0.81901, 15.3589, 17.4538)


def listed(name):
    path = os.path.join(SETS, f"{name}.txt")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [line.strip() for line in fh if line.strip() and not line.startswith("#")]


def frozen_dirs():
    return sorted(os.path.relpath(base, ROOT) for base, _dirs, files in os.walk(SETS)
                  if dataset.FROZEN_FILENAME in files)


def test_every_frozen_job_is_listed_once_in_the_set_of_its_split():
    jobs = frozen_dirs()
    assert len(listed("val")) == 50 and len(listed("heldout")) == 6 and len(listed("heldout_r7")) == 30
    assert len(listed("val_r8")) == 47 and len(listed("val_r8b")) == 43
    sets = {name: listed(name) for name in SETS_SPLIT}
    everywhere = sum(sets.values(), [])
    assert sorted(everywhere) == jobs, "datasets/realism/*.txt must list every frozen job once"
    for name, paths in sets.items():
        split = SETS_SPLIT[name]
        for rel in paths:
            with open(os.path.join(ROOT, rel, "corpus_job.json")) as fh:
                assert json.load(fh)["split"] == split, rel
            assert os.path.isfile(os.path.join(ROOT, rel, "class_truth.csv")), rel


def test_the_sets_are_small_and_documented():
    size = sum(os.path.getsize(os.path.join(b, f)) for b, _d, files in os.walk(SETS) for f in files)
    # ~13 KB per class (64x64 float32 images hardly compress): the old 16 MiB limit held r1-r6's 165 jobs (13.5 MB),
    # most of them collapsed into a few classes; r7 / r8's jobs spread over all their classes (~140 KB each);
    # r8's 121 jobs (51 more training jobs, 2026-12-08) took the sets to 35.6 MiB, and val_r8b's 43 jobs (2026-12-08:
    # the 47 of val_r8 could not tell candidates apart) to 42.5 MiB: the limit is 45 MiB; raise it with the next
    # corpus, not silently (a clone of the repository carries all of it)
    assert size < 45 * 1024 * 1024
    assert os.path.isfile(os.path.join(ROOT, "datasets", "README.md"))


@pytest.mark.parametrize("split", sorted(V7))
def test_the_default_model_on_the_frozen_sets_is_what_the_model_card_says(split):
    auc, regret_05, regret_auto = V7[split]
    r = evalmod.evaluate([os.path.join(ROOT, p) for p in listed(split)], log=lambda *a: None)
    assert r["pooled_auc"] == pytest.approx(auc, abs=6e-4, nan_ok=True)
    assert 100 * r["0.5"]["regret"] == pytest.approx(regret_05, abs=6e-3)
    assert 100 * r["auto"]["regret"] == pytest.approx(regret_auto, abs=6e-3)
