"""The RELION data kept in the repository (examples/class2d_sim, tests/data) are unchanged copies
of the team's shared fixtures. The copies are what the suite reads; ``../shared`` is optional, and
the byte-for-byte check against it runs only when it is beside the checkout."""
import filecmp
import os

from conftest import DATA, R5, R5_REF, ROOT, SHARED, SIM, SIM_REF, needs_shared

# each in-repo folder and where it came from in shared/fixtures
ORIGIN = [(SIM, "class2d_sim"), (SIM_REF, "class2d_sim/relion5_reference"),
          (R5, "class2d_relion5"), (R5_REF, "class2d_relion5/relion5_reference")]


def data_files():
    """(in-repo path, path relative to shared/fixtures) of every data file (READMEs are ours)."""
    out = []
    for folder, origin in ORIGIN:
        for base, dirs, files in os.walk(folder):
            if base == R5 and "relion5_reference" in dirs:
                dirs.remove("relion5_reference")  # listed on its own
            for f in files:
                if f != "README.md":
                    p = os.path.join(base, f)
                    out.append((p, os.path.join(origin, os.path.relpath(p, folder))))
    return out


def test_data_is_small_and_documented():
    files = data_files()
    assert len(files) > 40
    assert sum(os.path.getsize(p) for p, _o in files) < 6 * 1024 * 1024
    for folder in (DATA, os.path.join(ROOT, "examples", "class2d_sim")):
        assert os.path.isfile(os.path.join(folder, "README.md"))


@needs_shared
def test_data_files_are_identical_to_shared_fixtures():
    fixtures = os.path.join(SHARED, "fixtures")
    differ = [o for p, o in data_files() if not filecmp.cmp(p, os.path.join(fixtures, o), shallow=False)]
    assert not differ, f"differ from {fixtures}: {differ}"
