"""python -m ranker.develop oracle_precision: what a selector that knows each class's purity to within sigma reaches."""
import numpy as np
import pytest

from conftest import R5, SIM
from ranker.develop.__main__ import main as develop
from ranker.develop.commands import oracle_precision as op


def test_exact_purity_is_the_oracle_on_the_fixtures():
    row, = op.precision_table([SIM, R5], sigmas=[0.0], draws=5)
    assert row["kept_mean"] == row["removed_mean"] == row["both"] == 1.0
    assert row["regret_mean"] == row["regret_p95"] == 0.0 and row["regret_1pct"] == 1.0


def test_one_big_class_just_under_the_cut_decides_the_target():
    # a clean class, a 49 %-real class and a junk class of 1,000 particles each: keeping the 49 % class
    # removes only 1000 / 1510 of the oracle's junk, so both >= 95 % needs e < 0.01: P = Phi(0.01 / sigma)
    n, t = [1000, 1000, 1000], [1000, 490, 0]
    f = op.noisy_oracle(n, t, sigma=0.05, draws=4000, seed=1)
    kept, removed = f["true_kept_vs_oracle"], f["junk_removed_vs_oracle"]
    assert set(np.round(removed, 3)) == {1.0, round(1000 / 1510, 3)}
    assert np.all(kept >= 1.0)  # keeping the 49 % class only adds real particles
    assert ((kept >= 0.95) & (removed >= 0.95)).mean() == pytest.approx(0.579, abs=0.03)
    # regret: keeping the 49 % class costs |490 - 510| = 20 of 3,000 particles, nothing else ever goes wrong
    assert set(np.round(f["regret"], 6)) == {0.0, round(20 / 3000, 6)}
    # more error, fewer draws meet the target; none of the clear classes is ever wrong at sigma 0.05
    g = op.noisy_oracle(n, t, sigma=0.3, draws=4000, seed=1)
    assert ((g["true_kept_vs_oracle"] >= 0.95) & (g["junk_removed_vs_oracle"] >= 0.95)).mean() < 0.5


def test_command_prints_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "p.md"
    assert develop(["oracle_precision", SIM, R5, "--sigmas", "0,0.1", "--draws", "50", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| 0.00 | 100.0 % [100.0] | 100.0 % [100.0] | 100 % | 0.00 % [0.00] | 100 % |" in text and "| 0.10 |" in text
    assert out.read_text() == text.rstrip("\n") + "\n"


def test_command_names_a_job_without_class_truth(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        develop(["oracle_precision", str(tmp_path)])
    assert e.value.code == 2
    assert f"{tmp_path}/class_truth.csv: no such file" in capsys.readouterr().err

