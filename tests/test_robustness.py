"""Bad inputs end in one clear line + RELION_JOB_EXIT_FAILURE and no outputs; odd but valid
inputs work; the job never touches the network."""
import errno
import os
import socket
import subprocess
import sys

import mrcfile
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ROOT, SIM, SIM_DATA, SIM_OPT
from ranker.runtime import job as jobmod
from ranker.runtime.star import StarError, format_block, parse_star
from ranker.runtime.particles import scan_particles

OUT = "External/job009/"
MODEL = "Class2D/job002/run_it020_model.star"
STACK = "Class2D/job002/run_it020_classes.mrcs"


def run_job(args, capsys):
    rc = jobmod.main(["--o", OUT] + args)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def assert_failed(rc, err, *needles):
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("ERROR: "), err
    for n in needles:
        assert n in err[0], err[0]
    assert sorted(os.listdir(OUT)) == ["RELION_JOB_EXIT_FAILURE"]


def edit(path, old, new, count=1):
    text = open(path).read()
    assert old in text
    open(path, "w").write(text.replace(old, new, count))


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("missing,needle", [
    (SIM_OPT, "optimiser STAR not found"), (MODEL, "model STAR not found"),
    (SIM_DATA, "run_it020_data.star: file not found"), (STACK, "class-average stack not found")])
def test_missing_files(sim_project, test_model, capsys, missing, needle):
    os.remove(missing)
    rc, err = run_job(["--in_optimiser", SIM_OPT, "--model", test_model], capsys)
    assert_failed(rc, err, needle)


def test_truncated_model_star(sim_project, test_model, capsys):
    text = open(MODEL).read()
    open(MODEL, "w").write(text[: text.index("000010@")])
    rc, err = run_job(["--in_optimiser", SIM_OPT, "--model", test_model], capsys)
    assert_failed(rc, err, MODEL, "the file is cut short")


def test_truncated_data_star_mid_row(sim_project, test_model, capsys):
    text = open(SIM_DATA).read()
    open(SIM_DATA, "w").write(text[: len(text) // 2 - 7])
    rc, err = run_job(["--in_optimiser", SIM_OPT, "--model", test_model], capsys)
    assert_failed(rc, err, SIM_DATA, "values but table data_particles has")


def test_garbled_optimiser(sim_project, test_model, capsys):
    open(SIM_OPT, "wb").write(b"\x00\xffPK garbage\n" * 20)
    rc, err = run_job(["--in_optimiser", SIM_OPT, "--model", test_model], capsys)
    assert_failed(rc, err, SIM_OPT)


def test_missing_required_column(sim_project, test_model, capsys):
    edit(MODEL, "_rlnAccuracyRotations #3", "_rlnSomethingElse #3")
    rc, err = run_job(["--in_optimiser", SIM_OPT, "--model", test_model], capsys)
    assert_failed(rc, err, MODEL, "_rlnAccuracyRotations")


def test_particles_in_unknown_class(sim_project, test_model, capsys):
    lines = open(SIM_DATA).read().splitlines()
    labels = [l for l in lines if l.startswith("_rln")]
    ci = [l.split()[0] for l in labels[9:]].index("_rlnClassNumber")  # 9 optics labels first
    last = lines[-2].split()
    last[ci] = "42"
    lines[-2] = " ".join(last)
    open(SIM_DATA, "w").write("\n".join(lines) + "\n")
    rc, err = run_job(["--in_optimiser", SIM_OPT, "--model", test_model], capsys)
    assert_failed(rc, err, "[42]", "does not have (20 classes)")


@pytest.mark.parametrize("damage", ["truncate", "header", "nan", "size"])
def test_bad_class_stack(sim_project, test_model, capsys, damage):
    data = open(STACK, "rb").read()
    if damage == "truncate":
        open(STACK, "wb").write(data[: len(data) - 5000])
    elif damage == "header":
        open(STACK, "wb").write(b"\x00" * 1024 + data[1024:])
    elif damage == "nan":
        arr = mrcfile.read(STACK).copy()
        arr[4, 10, 10] = np.nan
        mrcfile.write(STACK, arr, overwrite=True)
    else:
        mrcfile.write(STACK, np.zeros((20, 64, 64), np.float32), overwrite=True)
    rc, err = run_job(["--in_optimiser", SIM_OPT, "--model", test_model], capsys)
    assert_failed(rc, err, STACK, {"truncate": "not a readable MRC", "header": "not a readable MRC",
                                   "nan": "NaN or Inf", "size": "64x64 px but"}[damage])


def test_zero_particles(sim_project, test_model, capsys):
    text = open(SIM_DATA).read()
    head = text[: text.index("_rlnClassNumber")]
    open(SIM_DATA, "w").write(head + text[text.index("_rlnClassNumber"):].split("\n", 1)[0] + "\n")
    edit(SIM_DATA, "_rlnClassNumber", "_rlnClassNumber")
    lines = [l for l in open(SIM_DATA).read().splitlines()]
    open(SIM_DATA, "w").write("\n".join(l for l in lines if not l[:1].isdigit() or "opticsGroup" in l) + "\n")
    rc, err = run_job(["--in_optimiser", SIM_OPT, "--model", test_model], capsys)
    assert_failed(rc, err, "zero particles")


def test_unwritable_output_dir(sim_project, test_model, capsys, monkeypatch):
    real_open = open

    def deny(path, mode="r", *a, **kw):
        if "w" in str(mode) and OUT in str(path) and ".part" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr("builtins.open", deny)
    rc, err = run_job(["--in_optimiser", SIM_OPT, "--model", test_model], capsys)
    assert_failed(rc, err, "Permission denied", OUT)


def test_disk_full_while_writing_particles(sim_project, test_model, capsys, monkeypatch):
    import ranker.runtime.particles as particles

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", OUT + ".particles.star.part")

    monkeypatch.setattr(particles, "write_selected", full)
    rc, err = run_job(["--in_optimiser", SIM_OPT, "--model", test_model], capsys)
    assert_failed(rc, err, "No space left on device")


# ---------------------------------------------------------------- odd but valid
def test_one_class_job(tmp_path, test_model, monkeypatch, capsys):
    """A K=1 job: local features are 0, as in RELION."""
    from conftest import SIM, copy_project
    copy_project(SIM, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    lines = open(MODEL).read().splitlines()
    keep, in_classes = [], False
    for l in lines:
        if l.startswith("data_model_classes"):
            in_classes = True
        elif l.startswith("data_"):
            in_classes = False
        if in_classes and l.startswith("0000") and not l.startswith("000007@"):
            continue
        keep.append(l)
    text = "\n".join(keep).replace("000007@", "000001@").replace("_rlnNrClasses                                     20",
                                                                  "_rlnNrClasses                                      1")
    text = text.replace("     0.282944 ", "     1.000000 ", 1)
    open(MODEL, "w").write(text)
    arr = mrcfile.read(STACK)[6:7].copy()
    mrcfile.write(STACK, arr, overwrite=True)
    d = open(SIM_DATA).read().splitlines()
    ci = int(d[[i for i, l in enumerate(d) if l.startswith("_rlnClassNumber")][0]].split("#")[1]) - 1
    out = [l if not l.startswith(("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")) or "opticsGroup" in l
           else " ".join(l.split()[:ci] + ["1"] + l.split()[ci + 1:]) for l in d]
    open(SIM_DATA, "w").write("\n".join(out) + "\n")
    assert jobmod.main(["--o", OUT, "--in_optimiser", SIM_OPT, "--model", test_model]) == 0
    assert "1 classes with more than 10 particles" in capsys.readouterr().out


def test_all_zero_class_image(sim_project, test_model, capsys):
    arr = mrcfile.read(STACK).copy()
    arr[2] = 0  # class 3 has 315 particles: scored with an empty image
    mrcfile.write(STACK, arr, overwrite=True)
    assert jobmod.main(["--o", OUT, "--in_optimiser", SIM_OPT, "--model", test_model]) == 0


def test_no_ctf_correction_ranks_with_warning(sim_project, test_model, capsys):
    text = open(SIM_OPT).read()
    import re
    text2 = re.sub(r"(_rlnDoCorrectCtf\s+)1", r"\g<1>0", text)
    assert text2 != text
    open(SIM_OPT, "w").write(text2)
    assert jobmod.main(["--o", OUT, "--in_optimiser", SIM_OPT, "--model", test_model]) == 0
    assert "without CTF correction" in capsys.readouterr().out


def test_job_still_running_uses_latest_complete_iteration(sim_project, test_model, capsys):
    rc = jobmod.main(["--o", OUT, "--in_parts", "Class2D/job002/run_it025_data.star", "--model", test_model])
    assert rc == 0
    out = capsys.readouterr().out
    assert "still running" in out and "run_it020_optimiser.star" in out


def test_relative_paths_with_dotdot_and_spaces(tmp_path, test_model, monkeypatch):
    from conftest import SIM, copy_project
    proj = tmp_path / "my project"
    copy_project(SIM, str(proj))
    os.makedirs(proj / "sub dir")
    monkeypatch.chdir(proj / "sub dir")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "relion_external_rank.py"), "--o", "../External/job 5",
                        "--in_optimiser", "../" + SIM_OPT, "--model", test_model], capture_output=True, text=True)
    # STAR files name their partners relative to the project root, so run from the root:
    assert r.returncode == 1 and "not found" in r.stderr
    monkeypatch.chdir(proj)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "relion_external_rank.py"), "--o", "External/job 5/",
                        "--in_optimiser", "./Class2D/../" + SIM_OPT, "--model", test_model], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(proj / "External/job 5/RELION_JOB_EXIT_SUCCESS")


def test_rerun_in_same_dir_replaces_outputs(sim_project, test_model):
    assert jobmod.main(["--o", OUT, "--in_optimiser", SIM_OPT, "--model", test_model, "--write_features"]) == 0
    assert os.path.exists(OUT + "features.star")
    assert jobmod.main(["--o", OUT, "--in_optimiser", SIM_OPT, "--model", test_model]) == 0
    assert not os.path.exists(OUT + "features.star")  # not asked for this time: the old one is gone
    assert os.path.exists(OUT + "RELION_JOB_EXIT_SUCCESS")


def test_no_network_access(sim_project, test_model, monkeypatch):
    def no_network(*a, **kw):
        raise AssertionError("the job tried to open a network socket")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert jobmod.main(["--o", OUT, "--in_parts", SIM_DATA, "--model", test_model, "--device", "auto"]) == 0


# ---------------------------------------------------------------- fuzzing the STAR reader
labels = st.lists(st.from_regex(r"rln[A-Z][A-Za-z]{1,12}", fullmatch=True), min_size=1, max_size=6, unique=True)
cells = st.one_of(st.integers(-10**6, 10**6), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
                  st.from_regex(r"[A-Za-z0-9@/._-]{1,12}", fullmatch=True))


@settings(max_examples=80, deadline=None)
@given(labels, st.data())
def test_random_valid_star_round_trips(labs, data):
    rows = data.draw(st.lists(st.lists(cells, min_size=len(labs), max_size=len(labs)), max_size=8))
    text = format_block("t", labs, rows) + format_block("kv", labs, [rows[0]] if rows else [[1] * len(labs)], loop=False)
    blocks = parse_star(text, "x.star")
    assert blocks["t"].labels == labs and len(blocks["t"].rows) == len(rows)
    for r_in, r_out in zip(rows, blocks["t"].rows):
        for a, b in zip(r_in, r_out):
            if isinstance(a, str):
                assert a == b
            else:
                assert float(b) == pytest.approx(a, rel=1e-5, abs=1e-5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.integers(0, 2000))
def test_corrupted_star_gives_our_error_never_a_traceback(tmp_path, junk, where):
    text = open(os.path.join(SIM, SIM_OPT), "rb").read()
    where = min(where, len(text))
    bad = text[:where] + junk + text[where + len(junk) // 2:]
    try:
        parse_star(bad.decode("utf-8", errors="replace"), "opt.star")
    except StarError as exc:
        assert str(exc).startswith("opt.star")
    p = tmp_path / "data.star"
    p.write_bytes(b"data_particles\nloop_\n_rlnImageName\n_rlnClassNumber\n1@a 2\n" + junk)
    try:
        scan_particles(str(p))
    except StarError as exc:
        assert str(exc).startswith(str(p))
