"""python -m ranker.develop particle_stats: do RELION's per-particle columns tell real from junk inside mixed classes?"""
import os

import pytest

from conftest import DATA
from ranker.develop.__main__ import main as develop
from ranker.develop.commands import particle_stats as ps
from ranker.develop.truth import read_class_truth

REAL = os.path.join(DATA, "real_empiar10017")


def test_the_mixed_classes_of_a_real_job_and_their_purity():
    rows = ps.job_separation(REAL, min_particles=30, purity_range=(0.3, 0.7))
    expected = {r["class_number"]: r["frac_good"] for r in read_class_truth(REAL)
                if r["n_particles"] >= 30 and 0.3 <= r["frac_good"] <= 0.7}
    assert expected and {r["class_number"]: round(r["purity"], 4) for r in rows} == pytest.approx(expected, abs=1e-4)
    for r in rows:
        assert all(0.0 <= r[c] <= 1.0 for c in ps.COLUMNS + (ps.CHANCE,))
    # a narrower range keeps a subset, with the same figures
    narrow = ps.job_separation(REAL, 30, (0.45, 0.55))
    assert [r for r in rows if 0.45 <= r["purity"] <= 0.55] == narrow


def test_separation_is_direction_free_and_weighted_by_particles():
    rows = [dict(class_number=1, n_particles=100, purity=0.5, **{c: 0.2 for c in ps.COLUMNS + (ps.CHANCE,)}),
            dict(class_number=2, n_particles=300, purity=0.5, **{c: 0.9 for c in ps.COLUMNS + (ps.CHANCE,)})]
    s = ps.summary(rows)["rlnNormCorrection"]
    assert s["abs_auc"] == pytest.approx((100 * 0.8 + 300 * 0.9) / 400)
    assert s["median_abs_auc"] == pytest.approx(0.85) and s["strong"] == 1.0 and s["real_higher"] == 0.5


def test_command_prints_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "s.md"
    assert develop(["particle_stats", REAL, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    n = len(ps.job_separation(REAL))
    assert text.startswith(f"{n} classes 30-70 % real (") and "| rlnNormCorrection | " in text and "| random score | " in text
    assert out.read_text() == text.rstrip("\n") + "\n"


def test_command_refuses_a_job_without_particle_truth_and_a_bad_range(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        develop(["particle_stats", str(tmp_path)])
    assert e.value.code == 2 and f"{tmp_path}/truth.csv: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        develop(["particle_stats", REAL, "--purity_range", "0.7", "0.3"])
    assert e.value.code == 2 and "--purity_range" in capsys.readouterr().err
