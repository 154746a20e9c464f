"""STAR reading/writing and streaming particle selection on all RELION variants."""

import os

import pytest
from hypothesis import given, settings, strategies as st

from ranker.runtime.particles import scan_particles, write_selected
from ranker.runtime.star import StarError, format_value, parse_star, read_star, tokenize

HEADER31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnVoltage #3
opticsGroup1 1 300.0


# version 30001

data_particles

loop_
_rlnImageName #1
_rlnClassNumber #2
_rlnMicrographName #3
"""


def test_format_value_like_relion():
    assert format_value(1.5) == "    1.500000"
    assert format_value(-1.0) == "    -1.00000"
    assert format_value(0.0004361726) == "4.361726e-04"
    assert format_value(-0.000371135) == "-3.71135e-04"
    assert format_value(123456.0) == "1.234560e+05"
    assert format_value(7) == "           7"
    assert format_value("") == '""' and format_value("a b") == '"a b"'


def test_tokenize_quotes():
    assert tokenize('1@a.mrcs "my file.mrc" 3') == ["1@a.mrcs", "my file.mrc", "3"]
    assert tokenize("x 'y z' \"\"") == ["x", "y z", ""]


def test_inf_nan_read_as_zero_like_relion():
    b = parse_star("data_t\nloop_\n_rlnA\n_rlnB\ninf 1\n-nan 2\n")["t"]
    assert b.float_column("rlnA") == [0.0, 0.0]


def test_garbled_row_names_file_and_line(tmp_path):
    p = tmp_path / "bad.star"
    p.write_text("data_t\nloop_\n_rlnA\n_rlnB\n1 2\n3\n")
    with pytest.raises(StarError, match=r"bad.star: line 6: .*1 values but 2 columns"):
        read_star(p)


def _write(tmp_path, text, name="d.star"):
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(p)


def test_stream_selection_31_crlf_quotes_blank_lines(tmp_path):
    rows = ['1@a.mrcs 3 "mic one.mrc"', "2@a.mrcs   1   mic2.mrc", "", "3@a.mrcs 3 'mic 3.mrc'",
            "4@a.mrcs 2 mic4.mrc"]
    text = (HEADER31 + "\n".join(rows) + "\n \n").replace("\n", "\r\n")
    src = _write(tmp_path, text)
    s = scan_particles(src)
    assert s.counts == {3: 2, 1: 1, 2: 1} and s.n_particles == 4 and s.optics.rows == [["opticsGroup1", "1", "300.0"]]
    out = str(tmp_path / "out.star")
    counts = {}
    assert write_selected(src, out, [3], counts=counts) == 2 and counts == s.counts
    expected = (HEADER31 + "\n".join([rows[0], "", rows[3]]) + "\n \n").replace("\n", "\r\n")
    assert open(out, "rb").read() == expected.encode()
    quick = scan_particles(src, per_class=False)
    assert (quick.n_particles, quick.last_row, quick.counts) == (4, s.last_row, {})


def test_counting_rows_only_sees_what_the_full_scan_sees(tmp_path):
    """Comments, a blank line, indented rows and a second table among the rows (rows counted by
    their newlines must not count those), with chunks small enough for both paths."""
    import ranker.runtime.particles as particles

    rows = ["1@a.mrcs 3 m1.mrc", "# a comment", "  2@a.mrcs 1 m2.mrc", "", "3@a.mrcs 3 m3.mrc"] * 5
    tail = "\n\ndata_other\n\nloop_\n_rlnFoo #1\n_rlnBar #2\n1 2\n3 4\n \n"
    saved = particles.CHUNK_BYTES
    try:
        for text in (HEADER31 + "\n".join(rows) + "\n", HEADER31 + "\n".join(rows) + tail):
            src = _write(tmp_path, text)
            for chunk in (saved, 64, 23):
                particles.CHUNK_BYTES = chunk
                full, quick = scan_particles(src), scan_particles(src, per_class=False)
                assert (quick.n_particles, quick.last_row) == (full.n_particles, full.last_row)
        # a last row without its line end (a file cut short): both passes refuse it the same way
        src = _write(tmp_path, HEADER31 + "\n".join(rows[:3]) + "\n4@a.mrcs 2 m4.mrc")
        for chunk in (saved, 64, 23):
            particles.CHUNK_BYTES = chunk
            messages = set()
            for per_class in (True, False):
                with pytest.raises(StarError, match="does not end with a line end") as err:
                    scan_particles(src, per_class=per_class)
                messages.add(str(err.value))
            assert len(messages) == 1
    finally:
        particles.CHUNK_BYTES = saved


def test_given_row_count_reads_only_the_header(tmp_path):
    """With the model's particle count, the first pass reads the header, the optics table and
    the first row; a file cut short in a value (no final line end) is still refused at once,
    and a table without rows is still empty."""
    rows = ["1@a.mrcs 3 m1.mrc", "2@a.mrcs 1 m2.mrc", "3@a.mrcs 3 m3.mrc"]
    src = _write(tmp_path, HEADER31 + "\n".join(rows) + "\n \n")
    full, given = scan_particles(src), scan_particles(src, per_class=False, n_rows=3)
    assert (given.n_particles, given.rows_counted, given.counts) == (3, False, {})
    assert given.optics.rows == full.optics.rows and given.labels == full.labels
    assert given.last_row == dict(zip(full.labels, rows[0].split()))  # the first row: only the header was read
    assert scan_particles(src, per_class=False).rows_counted
    cut = _write(tmp_path, HEADER31 + "\n".join(rows) + "7")
    with pytest.raises(StarError, match="does not end with a line end"):
        scan_particles(cut, per_class=False, n_rows=3)
    empty = _write(tmp_path, HEADER31 + " \n")
    with pytest.raises(StarError, match="has no rows"):
        scan_particles(empty, per_class=False, n_rows=3)


def test_stream_selection_relion30(tmp_path):
    text = "\ndata_\n\nloop_\n_rlnImageName #1\n_rlnClassNumber #2\n1@a 2\n2@a 1\n3@a 2\n"
    src = _write(tmp_path, text)
    assert scan_particles(src).counts == {2: 2, 1: 1}
    out = str(tmp_path / "o.star")
    write_selected(src, out, {1})
    assert open(out).read() == "\ndata_\n\nloop_\n_rlnImageName #1\n_rlnClassNumber #2\n2@a 1\n"


def test_missing_class_column_and_empty_table(tmp_path):
    with pytest.raises(StarError, match="no _rlnClassNumber"):
        scan_particles(_write(tmp_path, "data_particles\nloop_\n_rlnImageName\n1@a\n"))
    with pytest.raises(StarError, match="zero particles"):
        scan_particles(_write(tmp_path, HEADER31))
    with pytest.raises(StarError, match="not found"):
        scan_particles(str(tmp_path / "nope.star"))


def _reference_select(text: str, selected: set) -> str:
    """Plain reference: keep every line except particle rows of unselected classes."""
    out, in_table, labels, idx = [], False, [], None
    for line in text.splitlines(keepends=True):
        s = line.strip()
        if s.startswith("data_"):
            in_table, labels = s == "data_particles", []
        elif s.startswith("_"):
            labels.append(s[1:].split()[0])
        elif in_table and s and not s.startswith(("#", "loop_")):
            idx = labels.index("rlnClassNumber")
            if int(s.split()[idx]) not in selected:
                continue
        out.append(line)
    return "".join(out)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.sampled_from(["", "  ", "\t"]),
                          st.floats(-1e4, 1e4, allow_nan=False).map(lambda f: f"{f:.6f}")), min_size=1, max_size=40),
       st.sets(st.integers(1, 6)), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_streamed_selection_equals_reference(tmp_path_factory, rows, selected, eol, class_last):
    """Class column near the start (rows split from the left) or last (split from the right)."""
    if class_last:
        body = "".join(f"{i}@stack.mrcs{pad} {v} {k}{eol}" for i, (k, pad, v) in enumerate(rows, 1))
        header = HEADER31.replace("_rlnClassNumber #2\n_rlnMicrographName #3", "_rlnDefocusU #2\n_rlnClassNumber #3")
    else:
        body = "".join(f"{i}@stack.mrcs{pad} {k} {v}{eol}" for i, (k, pad, v) in enumerate(rows, 1))
        header = HEADER31.replace("_rlnMicrographName #3", "_rlnDefocusU #3")
    text = header.replace("\n", eol) + body
    d = tmp_path_factory.mktemp("p")
    src = _write(d, text)
    out = str(d / "out.star")
    import ranker.runtime.particles as particles
    saved, saved_min = particles.CHUNK_BYTES, particles.PARALLEL_MIN_BYTES
    try:
        particles.PARALLEL_MIN_BYTES = 0
        # one chunk (careful path at the end) and many (fast path); one process, or ranges in three
        for chunk, workers in ((saved, 1), (200, 1), (37, 1), (saved, 3), (37, 3)):
            particles.CHUNK_BYTES = chunk
            counts = {}
            n = write_selected(src, out, selected, counts=counts, workers=workers)
            assert open(out, "rb").read().decode() == _reference_select(text, selected)
            assert n == sum(1 for k, _, _ in rows if k in selected)
            summary = scan_particles(src)
            assert summary.n_particles == len(rows) and counts == summary.counts
            assert summary.last_row["rlnImageName"] == f"{len(rows)}@stack.mrcs"
            quick = scan_particles(src, per_class=False)
            assert (quick.n_particles, quick.last_row) == (summary.n_particles, summary.last_row)
    finally:
        particles.CHUNK_BYTES, particles.PARALLEL_MIN_BYTES = saved, saved_min


OPTICS_HEADER = ("\ndata_optics\n\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\nopticsGroup1 1\nopticsGroup2 2\n \n\n"
                 "data_particles\n\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n_rlnDefocusU #3\n_rlnClassNumber #4\n"
                 "_rlnMicrographName #5\n")


def _mixed_rows(n=400, eol="\n"):
    rows = []
    for i in range(1, n + 1):
        row = f"{i:06d}@Extract/job005/stack.mrcs {1 + i % 2} {10000 + i:.6f} {1 + (i * 7) % 9} mic{i % 13}.mrc"
        rows.append(row)
        if i % 97 == 0:
            rows.append("# a comment among the rows")
        if i % 131 == 0:
            rows.append("")
        if i % 151 == 0:
            rows[-1] = rows[-1].replace(f"mic{i % 13}.mrc", f'"mic {i}.mrc"')
    return eol.join(rows) + eol


@pytest.mark.parametrize("case", ["plain", "crlf", "table after the rows", "bad class token", "short row",
                                  "undefined optics group", "second particle table"])
def test_ranges_in_several_processes_give_what_one_gives(tmp_path, case, monkeypatch):
    """particles.star, the counts and every error (its line number too) are the same whether one
    process filters the rows or several filter ranges of them (chunks small enough for every
    range to mix the fast and the careful path; ranges cut anywhere)."""
    import ranker.runtime.particles as particles

    eol = "\r\n" if case == "crlf" else "\n"
    text = OPTICS_HEADER + _mixed_rows(eol=eol)
    lines = text.split(eol)
    if case == "table after the rows":
        text += "\ndata_other\n\nloop_\n_rlnFoo #1\n_rlnBar #2\n1 2\n3 4\n \n"
    elif case == "second particle table":
        text += "\ndata_more\n\nloop_\n_rlnImageName #1\n_rlnClassNumber #2\n1@a 2\n"
    elif case in ("bad class token", "short row", "undefined optics group"):
        row = next(i for i, line in enumerate(lines) if line.startswith("000300@"))
        values = lines[row].split()
        if case == "bad class token":
            values[3] = "x"
        elif case == "short row":
            values = values[:-1]
        else:
            values[1] = "7"
        lines[row] = " ".join(values)
        text = eol.join(lines)
    src = _write(tmp_path, text)
    monkeypatch.setattr(particles, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(particles, "CHUNK_BYTES", 1500)
    marks = tmp_path / "ranges"
    marks.mkdir()
    filter_range = particles._filter_range

    def marked(rows, path_in, start, size, out_fd):  # in the forked process: leaves a mark per range
        done = filter_range(rows, path_in, start, size, out_fd)
        (marks / f"{start}_{'filtered' if done else 'redone in order'}").touch()
        return done

    monkeypatch.setattr(particles, "_filter_range", marked)
    results = {}
    for workers in (1, 2, 3, 7):
        out = str(tmp_path / f"out{workers}.star")
        counts = {}
        try:
            n = write_selected(src, out, {2, 3, 5}, counts=counts, workers=workers)
            results[workers] = ("ok", n, counts, open(out, "rb").read())
        except StarError as exc:
            results[workers] = ("error", str(exc))
    assert results[2] == results[1] and results[3] == results[1] and results[7] == results[1], case
    ranges = os.listdir(marks)
    assert len(ranges) >= 6 and any(r.endswith("_filtered") for r in ranges), ranges  # other processes did work
    if case in ("table after the rows", "bad class token", "short row", "second particle table"):
        assert any(r.endswith("_redone in order") for r in ranges), ranges
    if case in ("plain", "crlf", "table after the rows"):
        assert results[1][0] == "ok" and results[1][3].decode() == _reference_select(text, {2, 3, 5})
    else:
        assert results[1][0] == "error"
        if case in ("bad class token", "short row"):
            assert "line " in results[1][1]


def test_ranges_leave_no_file_behind(tmp_path, monkeypatch):
    """The other processes' pieces are unnamed temporary files: after a run, or a failure in a
    range, the output's directory holds only the output."""
    import ranker.runtime.particles as particles

    monkeypatch.setattr(particles, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(particles, "CHUNK_BYTES", 1500)
    src = _write(tmp_path, OPTICS_HEADER + _mixed_rows())
    outdir = tmp_path / "out"
    outdir.mkdir()
    assert write_selected(src, str(outdir / "p.star"), {1, 2}, counts={}, workers=3) > 0
    assert os.listdir(outdir) == ["p.star"]
    bad = _write(tmp_path, OPTICS_HEADER + _mixed_rows().replace("000390@Extract/job005/stack.mrcs 1",
                                                                  "000390@Extract/job005/stack.mrcs 9"))
    with pytest.raises(StarError, match="optics group"):
        write_selected(bad, str(outdir / "q.star"), {1, 2}, counts={}, workers=3)
    assert sorted(os.listdir(outdir)) == ["p.star", "q.star"]  # (the caller removes its temporary output)


@pytest.mark.parametrize("token", ["inf", "nan", "2.5", "x"])
def test_bad_class_number_is_our_error(tmp_path, token):
    src = _write(tmp_path, HEADER31 + f"1@a.mrcs {token} m.mrc\n")
    with pytest.raises(StarError, match="rlnClassNumber .* is not a whole number"):
        scan_particles(src)
    with pytest.raises(StarError, match="is not a whole number"):
        write_selected(src, str(tmp_path / "o.star"), [1])
