#!/usr/bin/env python3
"""RELION External job: rank 2D class averages and select the good ones.

Paste this file's path into RELION's External tab ("External executable"), or run

    relion_external_rank.py --o External/job012/ --in_parts Class2D/job008/run_it025_data.star --j 4

from the RELION project directory. ``--help`` lists the options; README.md explains them.

RELION starts this file with whatever ``python3`` is first on its PATH, which usually lacks the
job's dependencies. Then this file runs itself again with the Python the project was installed
into: ``$RELION_EXTERNAL_RANK_PYTHON`` if set, else the one ``install.sh`` recorded in
``.installed_python`` beside this file, else ``.venv/bin/python`` beside it. (Kept to plain
Python 3 syntax on purpose: an old system python3 must be able to read it.)
"""
import os
import signal


def _record(signum, frame):
    """Until the job installs its own handlers: remember a stop signal (the job then ends at once with
    RELION_JOB_EXIT_FAILURE, instead of dying here without an exit file)."""
    _record.received.append(signum)


_record.received = [int(s) for s in os.environ.pop("RELION_EXTERNAL_RANK_SIGNALS", "").split() if s.isdigit()]
for _name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGXCPU"):
    _sig = getattr(signal, _name, None)
    if _sig is not None and signal.getsignal(_sig) is not signal.SIG_IGN:
        signal.signal(_sig, _record)

import importlib.util  # noqa: E402
import sys  # noqa: E402

HERE = os.path.dirname(os.path.realpath(__file__))
NEEDED = ("numpy", "scipy", "mrcfile", "PIL", "torch")
REEXEC_MARK = "RELION_EXTERNAL_RANK_REEXEC"


def missing_modules():
    return [m for m in NEEDED if importlib.util.find_spec(m) is None]


def installed_python():
    """The Python the project was installed into, or None."""
    candidates = [os.environ.get("RELION_EXTERNAL_RANK_PYTHON", "")]
    record = os.path.join(HERE, ".installed_python")
    if os.path.isfile(record):
        with open(record) as fh:
            candidates.append(fh.readline().strip())
    candidates.append(os.path.join(HERE, ".venv", "bin", "python"))
    for py in candidates:
        if py and os.path.isfile(py) and os.access(py, os.X_OK):
            return py
    return None


def fail_without_environment(missing):
    """One line on stderr and RELION's exit file, so that RELION does not wait for ever."""
    sys.stderr.write("ERROR: %s: the Python running it (%s) lacks %s, and no installed environment was found; "
                     "run install.sh in %s (or set RELION_EXTERNAL_RANK_PYTHON)\n"
                     % (os.path.realpath(__file__), sys.executable, ", ".join(missing), HERE))
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        outdir = arg[4:] if arg.startswith("--o=") else argv[i + 1] if arg == "--o" and i + 1 < len(argv) else None
        if outdir and os.path.isdir(outdir):
            open(os.path.join(outdir, "RELION_JOB_EXIT_FAILURE"), "a").close()
            break
    return 1


def main():
    missing = missing_modules()
    if missing:
        py = installed_python()
        if py is None or os.environ.get(REEXEC_MARK):
            return fail_without_environment(missing)
        os.environ[REEXEC_MARK] = "1"
        if _record.received:  # a signal that came meanwhile: the job in the new process replays it
            os.environ["RELION_EXTERNAL_RANK_SIGNALS"] = " ".join(map(str, _record.received))
        os.execv(py, [py, os.path.realpath(__file__)] + sys.argv[1:])
    sys.path.insert(0, HERE)
    from ranker.runtime.job import program

    program()  # runs the job and exits with its status


if __name__ == "__main__":
    sys.exit(main())
