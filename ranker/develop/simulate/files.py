"""What the simulator shares: a STAR loop reader, MRC helpers, JSON of numpy values, the RELION
version. STAR files are written with :mod:`ranker.runtime.star`."""
from __future__ import annotations

import subprocess

import numpy as np


def read_star_loop(path, block):
    """The loop of ``data_<block>``: (column labels without '_', rows as lists of str)."""
    from ranker.runtime.star import read_star

    tab = read_star(path)[block]
    return tab.labels, tab.rows


def save_mrc(path, data, angpix):
    """Write float32 MRC (a 3D array to ``*.mrcs`` is written as an image stack); angpix in A."""
    import mrcfile

    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.ascontiguousarray(data, dtype=np.float32))
        m.voxel_size = angpix
        if data.ndim == 3 and path.endswith(".mrcs"):
            m.set_image_stack()


def load_mrc(path):
    import mrcfile

    with mrcfile.open(path, permissive=True) as m:
        data = np.asarray(m.data, dtype=np.float32).copy()
    # a one-image stack reads as 2D: keep stacks (N, y, x), so that stack[i] is an image
    return data[None] if path.endswith(".mrcs") and data.ndim == 2 else data


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
