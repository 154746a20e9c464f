"""What the simulator shares: a STAR loop reader, JSON of numpy values, the RELION version.
STAR files are written with :mod:`ranker.runtime.star`, MRC files read and written with
:mod:`ranker.runtime.mrc`."""
from __future__ import annotations

import subprocess

import numpy as np


def read_star_loop(path, block):
    """The loop of ``data_<block>``: (column labels without '_', rows as lists of str)."""
    from ranker.runtime.star import read_star

    tab = read_star(path)[block]
    return tab.labels, tab.rows


def json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


_RELION_VERSION = None


def relion_version():
    global _RELION_VERSION
    if _RELION_VERSION is None:
        try:
            out = subprocess.run(["relion_refine", "--version"], capture_output=True, text=True).stdout
            _RELION_VERSION = " ".join(out.split())
        except OSError:
            _RELION_VERSION = "unknown"
    return _RELION_VERSION
