"""Particles counted per class while particles.star is written (one full pass over data.star)
give the same outputs as counting them first (the minimum-particle rule needs that)."""
import os
import shutil

from conftest import SIM_DATA
from ranker.runtime import job as jobmod

OUT = "External/job005/"
SAME = ("particles.star", "class_averages.star", "backup_selection.star", "rank_model.star", "rank_optimiser.star",
        "rank_data.star", "RELION_OUTPUT_NODES.star")


def _run(extra, keep, capsys):
    shutil.rmtree("External", ignore_errors=True)
    assert jobmod.main(["--o", OUT, "--in_parts", SIM_DATA] + extra) == 0
    out = capsys.readouterr().out
    shutil.copytree(OUT, keep)
    return out


def test_counting_while_writing_gives_the_same_outputs(sim_project, test_model, capsys):
    one = _run(["--model", test_model, "--min_score", "0"], "one_pass", capsys)
    two = _run(["--model", test_model, "--min_score", "0", "--select_min_nr_particles", "1"], "two_passes", capsys)
    assert " + read data.star's header and optics table (particles counted while particles.star is written): " in one
    assert " + count particles per class: " in two
    for name in SAME:
        assert open(os.path.join("one_pass", name), "rb").read() == open(os.path.join("two_passes", name), "rb").read()
    scores_line = [line for line in one.splitlines() if line.startswith("Selected ")]
    assert scores_line == [line for line in two.splitlines() if line.startswith("Selected ")]


def test_unknown_class_found_while_writing_fails_the_job_without_outputs(sim_project, test_model, capsys):
    lines = open(SIM_DATA).read().splitlines(keepends=True)
    table = max(i for i, line in enumerate(lines) if line.startswith("data_particles"))
    labels = [line.split()[0][1:] for line in lines[table:] if line.startswith("_")]
    row = max(i for i, line in enumerate(lines) if line.strip())
    values = lines[row].split()
    values[labels.index("rlnClassNumber")] = "77"
    lines[row] = " ".join(values) + "\n"
    open(SIM_DATA, "w").write("".join(lines))
    assert jobmod.main(["--o", OUT, "--in_parts", SIM_DATA, "--model", test_model]) == 1
    assert "particles belong to class(es) [77]" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(OUT, "particles.star"))


def test_particles_star_written_by_several_processes_is_the_same(sim_project, test_model, capsys, monkeypatch):
    """--j 3 with every data.star large enough to be cut into ranges: the same outputs as --j 1."""
    import ranker.runtime.particles as particles

    one = _run(["--model", test_model, "--min_score", "0.3", "--j", "1"], "one_process", capsys)
    monkeypatch.setattr(particles, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(particles, "CHUNK_BYTES", 4096)
    three = _run(["--model", test_model, "--min_score", "0.3", "--j", "3"], "three_processes", capsys)
    for name in SAME:
        assert open(os.path.join("one_process", name), "rb").read() == \
            open(os.path.join("three_processes", name), "rb").read(), name
    assert [l for l in one.splitlines() if l.startswith("Selected ")] == \
        [l for l in three.splitlines() if l.startswith("Selected ")]
