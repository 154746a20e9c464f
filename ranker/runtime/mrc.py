"""MRC files: the one reader and writer of images, image stacks and maps in the project.

Arrays are numpy arrays in MRC order: an image is ``(y, x)``, a stack ``(n, y, x)`` (image
``k`` of a RELION ``k@stack.mrcs`` reference is ``stack[k - 1]``), a map ``(z, y, x)``.
Values are read and written as float32; pixel sizes are in Angstrom per pixel.

Every file is read strictly: an invalid header, a file shorter or longer than its header
says, or anything else ``mrcfile`` would only warn about raises :class:`MrcError` (a
ValueError) whose message says what is wrong; a missing file raises FileNotFoundError.

* :func:`read_mrc` -- the whole file as stored (2D or 3D), float32.
* :func:`read_stack` -- the whole file as a stack ``(n, y, x)``, float32 (a 2D file, as
  RELION writes a one-image stack, is a stack of one).
* :func:`mmap_stack` -- a memory-mapped stack, for reading a few images of a large file.
* :func:`write_mrc` -- write an image, a stack or a map, float32, with its pixel size.
"""

from __future__ import annotations

import os
import warnings

import numpy as np


class MrcError(ValueError):
    """An MRC file is not valid (bad header, wrong size, or something mrcfile warns about)."""


def _open(path: str | os.PathLike, mmap: bool):
    import mrcfile

    from .inputs import check_input

    check_input(path, "MRC file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            if mmap:
                return mrcfile.mmap(path, mode="r", permissive=False)
            return mrcfile.open(path, mode="r", permissive=False)
    except RuntimeWarning as exc:
        raise MrcError(str(exc)) from None
    except ValueError as exc:
        raise MrcError(str(exc)) from None


def read_mrc(path: str | os.PathLike) -> np.ndarray:
    """The data of an MRC file as stored (``(y, x)`` or ``(z|n, y, x)``), float32, in memory."""
    with _open(path, mmap=False) as mrc:
        return np.array(mrc.data, dtype=np.float32)


def read_stack(path: str | os.PathLike) -> np.ndarray:
    """An image stack ``(n, y, x)``, float32, in memory; a 2D file is a stack of one image."""
    data = read_mrc(path)
    return data[None] if data.ndim == 2 else data


class StackMap:
    """A stack mapped into memory: ``data`` is ``(n, y, x)`` in the file's own dtype and is
    valid until :meth:`close` (or the end of a ``with`` block)."""

    def __init__(self, mrc):
        self._mrc = mrc
        data = mrc.data
        self.data = data[None] if data.ndim == 2 else data

    def close(self) -> None:
        self._mrc.close()

    def __enter__(self) -> StackMap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def mmap_stack(path: str | os.PathLike) -> StackMap:
    """Map a stack (or a single 2D image, as a stack of one) without reading it all."""
    return StackMap(_open(path, mmap=True))


def write_mrc(path: str | os.PathLike, data: np.ndarray, pixel_size_A: float, stack: bool | None = None) -> None:
    """Write ``data`` as float32 with pixel size ``pixel_size_A`` (A/px) in x, y and z.

    ``stack``: write a 3D array as an image stack (MRC space group 0) rather than a map. The
    default, None, writes a stack when the array is 3D and the name ends in ``.mrcs``.
    An existing file is replaced.
    """
    import mrcfile

    data = np.ascontiguousarray(data, dtype=np.float32)
    if stack is None:
        stack = data.ndim == 3 and os.fspath(path).endswith(".mrcs")
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if stack:
            mrc.set_image_stack()
        mrc.voxel_size = pixel_size_A
