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


def test_report_gets_the_counted_particles_in_either_pass(sim_project, test_model, capsys, monkeypatch, tmp_path):
    """The report is drawn while particles.star is written; the particles per class it labels
    its tiles with (and its summary's totals) are those data.star holds, whether they were
    counted before (--select_min_nr_particles) or by that very pass (handed over afterwards)."""
    import json
    from collections import Counter

    from ranker.runtime import report

    finish = report.ReportDraft.finish

    def recorded(self, pdf_path, png_path, counts=None, reason=None, **summary):  # runs in the report's process
        finish(self, pdf_path, png_path, counts=counts, reason=reason, **summary)
        with open(tmp_path / f"report_{len(os.listdir(tmp_path))}.json", "w") as fh:
            json.dump({"tiles": {e["class_number"]: e["count"] for e in self.entries},
                       "reasons": {e["class_number"]: e["reason"] for e in self.entries},
                       "in": self.summary["particles_in"], "kept": self.summary["particles_kept"]}, fh)

    monkeypatch.setattr(report.ReportDraft, "finish", recorded)
    labels, rows = [], []
    for line in open(SIM_DATA):
        if line.startswith("data_"):
            labels = []
        elif line.startswith("_rln"):
            labels.append(line.split()[0][1:])
        elif "@" in line:
            rows.append(line.split())
    truth = Counter(int(r[labels.index("rlnClassNumber")]) for r in rows)
    for extra in ([], ["--select_min_nr_particles", "1"]):
        out = _run(["--model", test_model, "--min_score", "0.5"] + extra, f"keep{len(extra)}", capsys)
        kept = int(next(line for line in out.splitlines() if line.startswith("Selected ")).split("; ")[1].split()[0])
        assert list(tmp_path.glob("report_*.json")), (os.listdir(tmp_path), out[-2000:])
        done = json.load(open(sorted(tmp_path.glob("report_*.json"))[-1]))
        assert {int(k): v for k, v in done["tiles"].items() if v} == dict(truth), extra
        assert done["in"] == len(rows) and done["kept"] == kept, extra
        assert all(r == "empty class" for k, r in done["reasons"].items() if int(k) not in truth)
