"""What RELION 3.1.3's own ``relion_display`` shows of our outputs, on a virtual screen.

Each test runs the real ``relion_display`` (Debian's relion-gui) on an Xvfb server whose frame
buffer is a file (``-fbdir``), reads the screen back, and finds where each class average of the
Class2D job was drawn (normalised cross-correlation with the image as relion_display scales it
to 8 bits). The classes in screen reading order are what a user sees.

Marked ``relion``; ``run_tests.sh`` installs relion-gui and xvfb in CI. Outside CI they are
skipped, with the reason, when ``relion_display`` or ``Xvfb`` is missing.
"""
import os
import shutil
import struct
import subprocess
import tempfile
import time

import numpy as np
import pytest

from conftest import SIM_OPT
from ranker.runtime import job as jobmod
from ranker.runtime.star import read_star
from test_job import OUT, fake_scores

HAVE_DISPLAY = bool(shutil.which("relion_display") and shutil.which("Xvfb"))
pytestmark = [pytest.mark.relion,
              pytest.mark.skipif(not HAVE_DISPLAY and os.environ.get("CI") != "true",
                                 reason="relion_display (Debian relion-gui) or Xvfb (xvfb) not installed")]
STACK = "Class2D/job002/run_it020_classes.mrcs"
SCORES = [0.9, 0.2, 0.95, 0.6, 0.7, 0.1, 0.8, 0.55, 0.65]  # for the 9 scored classes, in class order


@pytest.fixture(scope="module")
def screen():
    """An Xvfb server writing its screen to a file: (DISPLAY value, frame buffer path)."""
    fbdir = tempfile.mkdtemp(prefix="xvfb_")
    for number in range(90, 200):
        if not (os.path.exists(f"/tmp/.X{number}-lock") or os.path.exists(f"/tmp/.X11-unix/X{number}")):
            break
    proc = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1200x900x24", "-fbdir", fbdir,
                             "-nolisten", "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not os.path.exists(f"/tmp/.X11-unix/X{number}") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    if proc.poll() is not None:
        pytest.fail(f"Xvfb :{number} did not start: {proc.stderr.read()}")
    yield f":{number}", os.path.join(fbdir, "Xvfb_screen0")
    proc.terminate()
    proc.wait()
    shutil.rmtree(fbdir, ignore_errors=True)


def read_screen(fb_path):
    """The screen as a (height, width) uint8 grey image (relion_display draws grey levels)."""
    raw = open(fb_path, "rb").read()
    header = struct.unpack(">25I", raw[:100])
    header_size, width, height, bytes_per_line, ncolors = header[0], header[4], header[5], header[12], header[19]
    pixels = np.frombuffer(raw, np.uint8, count=height * bytes_per_line, offset=header_size + 12 * ncolors)
    return pixels.reshape(height, bytes_per_line // 4, 4)[:, :width, 1]


def display(screen, args, ready=None, timeout=30.0):
    """Run relion_display with args until ``ready(screen image)`` holds, it exits, or ``timeout``
    seconds pass. Returns (still running, its output, last screen image or None)."""
    env = dict(os.environ, DISPLAY=screen[0])
    proc = subprocess.Popen(["relion_display"] + args, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline, shot = time.time() + timeout, None
    while proc.poll() is None and time.time() < deadline:
        time.sleep(1.0)
        shot = read_screen(screen[1])
        if ready is not None and ready(shot):
            break
    alive = proc.poll() is None
    proc.terminate()
    return alive, proc.communicate()[0], shot if alive else None


def shown_classes(shot):
    """Class numbers of the class averages found on the screen, in reading order."""
    import mrcfile
    from scipy.signal import fftconvolve

    stack = mrcfile.read(STACK).astype(float)
    shot = shot.astype(float)
    box = stack.shape[-1]
    inner = box - 4  # relion_display draws each tile's frame over its outer pixels
    ones = np.ones((inner, inner))
    local_sum = fftconvolve(shot, ones, mode="valid")
    local_var = np.maximum(fftconvolve(shot ** 2, ones, mode="valid") - local_sum ** 2 / inner ** 2, 1e-9)
    found = []
    for k, img in enumerate(stack, start=1):
        if np.ptp(img) == 0:
            continue
        tile = np.floor((img - img.min()) / (np.ptp(img) / 255))[2:-2, 2:-2]  # relion_display's 8 bits
        tile -= tile.mean()
        ncc = fftconvolve(shot, tile[::-1, ::-1], mode="valid") / np.sqrt(local_var * (tile ** 2).sum())
        y, x = np.unravel_index(np.argmax(ncc), ncc.shape)
        if ncc[y, x] > 0.99:
            found.append((y // box, x, k))
    return [k for _row, _x, k in sorted(found)]


@pytest.fixture
def ranked(sim_project, test_model, monkeypatch):
    """Our job's outputs on the class2d_sim project, with fixed scores for the 9 scored classes."""
    fake_scores(monkeypatch, lambda k: np.array(SCORES)[:k])
    assert jobmod.main(["--o", OUT, "--in_optimiser", SIM_OPT, "--model", test_model]) == 0
    model = read_star(OUT + "rank_model.star")["model_classes"]
    scores = {int(ref.split("@")[0]): s for ref, s in zip(model.column("rlnReferenceImage"),
                                                          model.float_column("rlnClassScore"))}
    return scores


def test_class_averages_display_best_first(screen, ranked):
    selected = [k for k, s in ranked.items() if s >= 0.5]
    alive, out, shot = display(screen, ["--i", OUT + "class_averages.star", "--display", "rlnReferenceImage"],
                               ready=lambda shot: len(shown_classes(shot)) >= len(selected))
    assert alive, out
    assert shown_classes(shot) == sorted(selected, key=lambda k: -ranked[k]) and len(selected) == 7


def test_select_job_opens_rank_model_with_particles(screen, ranked):
    """RELION 3.1's Select job runs ``relion_display --class`` on a *_model.star and reads the
    particles from the *_data.star beside it: rank_data.star must exist (RELION 4/5 do the same
    for rank_optimiser.star). Classes show in class order, as --class numbers them by row."""
    args = ["--i", OUT + "rank_model.star", "--class", "--display", "rlnReferenceImage"]
    scored = {k for k, s in ranked.items() if s != -999}
    alive, out, shot = display(screen, args, ready=lambda shot: scored <= set(shown_classes(shot)))
    assert alive, out
    shown = shown_classes(shot)
    assert shown == sorted(shown) and scored <= set(shown)
    os.remove(OUT + "rank_data.star")
    alive, out, _ = display(screen, args, timeout=20)
    assert not alive and "rank_data.star does not exist" in out
