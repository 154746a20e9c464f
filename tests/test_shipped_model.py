"""The model shipped in models/: it exists, loads without flags, and ranks the evaluation
fixtures well (never trained on); the README's example run works with it."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np

from conftest import R5, ROOT, SIM
from ranker.develop.dataset import from_truth_job
from ranker.develop.metrics import roc_auc
from ranker.runtime.model import DEFAULT_MODEL, load_model


def test_default_model_is_shipped_small_and_documented():
    assert os.path.isfile(DEFAULT_MODEL), "models/ must hold the default weights"
    assert os.path.getsize(DEFAULT_MODEL) < 10 * 1024 * 1024
    card = load_model(DEFAULT_MODEL, device="cpu").card
    assert card["seed"] is not None and card["n_train_jobs"] > 0
    assert os.path.isfile(os.path.join(ROOT, "models", "MODEL_CARD.md"))
    train_jobs = json.load(open(os.path.splitext(DEFAULT_MODEL)[0] + ".json"))["train_jobs"]
    assert not any("class2d_sim" in j or "class2d_relion5" in j for j in train_jobs)  # evaluation only


def test_shipped_model_auc_on_fixtures():
    ranker = load_model(None, device="cpu")
    scores, purity = [], []
    for root in (SIM, R5):
        d = from_truth_job(root)
        scores += list(ranker.score_job(d.vectors, d.images))  # each fixture is one job, as the job scores it
        purity += list(d.n_true / d.n_particles)
    s, p = np.array(scores), np.array(purity)
    clear = (p >= 0.8) | (p <= 0.2)
    auc = roc_auc(s[clear], p[clear] >= 0.8)
    print(f"shipped model AUC on the two fixtures: {auc:.3f}")
    assert auc >= 0.95


def test_example_project_runs_with_the_default_model(tmp_path):
    proj = tmp_path / "project"
    shutil.copytree(os.path.join(ROOT, "examples", "class2d_sim"), proj)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "relion_external_rank.py"), "--o", "External/job003/",
                        "--in_parts", "Class2D/job002/run_it020_data.star", "--j", "2"],
                       cwd=proj, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = proj / "External" / "job003"
    for name in ("particles.star", "class_averages.star", "logfile.pdf", "RELION_JOB_EXIT_SUCCESS"):
        assert (out / name).exists()
    # the catch-all junk class (#7, 5.5 % real particles) is rejected, the 7 good ones kept
    sel = [l.strip() for l in open(out / "backup_selection.star") if l.strip() in ("0", "1")]
    assert sel[6] == "0" and sum(s == "1" for s in sel) >= 7
