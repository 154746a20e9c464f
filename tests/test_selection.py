"""RELION's selection rules, with working relative thresholds."""
import pytest

from ranker.runtime.selection import near_threshold, select_classes


def test_threshold_window_is_inclusive():
    s = select_classes({1: 0.5, 2: 0.49, 3: 0.9}, {1: 10, 2: 10, 3: 10}, 0.5, 0.9)
    assert s.selected == [1, 3] and s.n_particles == 20
    assert "0.490 < 0.500" in s.reasons[2]


def test_min_classes_fallback_as_relion_toy_job():
    """RELION-5 checked on a toy job: featured classes 1,2,4,5,6 scored 0.1..0.9 and
    --select_min_nr_classes 4 selected 4, 5, 6, then 2."""
    scores = {1: 0.1, 2: 0.3, 4: 0.5, 5: 0.7, 6: 0.9}
    s = select_classes(scores, {k: 100 for k in scores}, 0.5, 999, -1, 4)
    assert s.selected == [4, 5, 6, 2] and s.by_fallback == [2]


def test_min_particles_fallback_adds_best_until_reached():
    scores = {1: 0.2, 2: 0.4, 3: 0.3, 4: 0.9}
    counts = {1: 500, 2: 100, 3: 300, 4: 50}
    s = select_classes(scores, counts, 0.5, 999, min_particles=400)
    assert s.selected == [4, 2, 3] and s.n_particles == 450


def test_fallback_ties_take_higher_class_number_first():
    s = select_classes({1: 0.3, 2: 0.3, 3: 0.3}, {1: 1, 2: 1, 3: 1}, 0.5, 999, -1, 2)
    assert s.selected == [3, 2]


def test_relative_thresholds_use_best_score():
    scores = {1: 0.2, 2: 0.15, 3: 0.1}
    s = select_classes(scores, {1: 1, 2: 1, 3: 1}, 0.7, 999, relative=True)
    assert s.min_score == pytest.approx(0.14) and s.selected == [1, 2]
    # RELION's broken version would select nothing here
    assert select_classes(scores, {1: 1, 2: 1, 3: 1}, 0.7, 999).selected == []


def test_max_score_excludes():
    s = select_classes({1: 0.95, 2: 0.6}, {1: 1, 2: 1}, 0.5, 0.9)
    assert s.selected == [2] and "> 0.900" in s.reasons[1]


def test_nothing_scored():
    s = select_classes({}, {1: 5}, 0.5, 999, 100, 3)
    assert s.selected == [] and s.n_particles == 0


def test_near_threshold_names_the_classes_a_small_score_error_would_flip():
    scores = {1: 0.9, 2: 0.54, 3: 0.497, 4: 0.44, 5: 0.2, 6: 0.56}
    assert near_threshold(scores, 0.5) == [2, 3]  # highest score first; 0.44 and 0.56 lie 0.06 away
    assert near_threshold(scores, 0.3, margin=0.11) == [5]
    assert near_threshold({}, 0.5) == [] and near_threshold({1: 0.9}, 0.5) == []
