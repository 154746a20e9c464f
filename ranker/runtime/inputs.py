"""The one gate every input file of the job passes: :func:`check_input`.

* Only a regular file is read. A FIFO named as a STAR file would block the job for ever on
  ``open``, a device (``/dev/zero``) never ends, a directory is not a file: each is refused at
  once with one line naming the path (``os.stat`` itself never blocks).
* Every input read is remembered (:data:`OPENED`, by real path), so that the job never removes
  or replaces a file it read: an earlier run's ``rank_data.star`` given as input inside ``--o``
  stays as it is whatever happens (:meth:`ranker.runtime.protocol.JobDir.commit` and the
  cleanup after a failure consult :func:`is_input`).
"""

from __future__ import annotations

import os
import stat


class InputError(ValueError):
    """An input path is not a readable regular file: the message names it."""


OPENED: set[str] = set()  # real paths of the inputs this process has read (one job per process)


def check_input(path: str | os.PathLike, what: str = "file") -> str:
    """``path`` (as a str) if it is an existing regular file; remembers it as an input.

    Raises FileNotFoundError for a missing path (callers say which input was missing) and
    InputError for anything that is not a regular file."""
    path = os.fspath(path)
    try:
        st = os.stat(path)  # FileNotFoundError / PermissionError go to the caller
    except ValueError:  # a NUL byte, e.g. in a path read from a damaged STAR file
        raise InputError(f"{path!r}: not a usable path (it holds a NUL byte)") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise InputError(f"{path}: is {kind}, not a {what}")
    OPENED.add(os.path.realpath(path))
    return path


def declare(path: str | os.PathLike | None) -> None:
    """Count ``path`` as an input before it is read (named on the command line, or by another
    input), so that a failure before it is read cannot remove it either."""
    if path:
        try:
            OPENED.add(os.path.realpath(os.fspath(path)))
        except ValueError:  # a NUL byte: no file can have that name, so none needs protecting
            pass


def reset() -> None:
    """Forget the inputs of an earlier job run in this process (tests run many)."""
    OPENED.clear()


def is_input(path: str | os.PathLike) -> bool:
    """Whether ``path`` is (the same file as) an input this process has read."""
    try:
        return os.path.realpath(os.fspath(path)) in OPENED
    except ValueError:
        return False
