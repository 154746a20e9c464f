"""Streaming access to a particle STAR file (``run_itNNN_data.star``).

A facility data.star holds millions of rows, so nothing here loads the table: both
functions read the file line by line, in bytes, and keep memory flat in particle count.

* :func:`scan_particles` counts particles per class (``rlnClassNumber``) and keeps the
  optics table and the last particle row; with ``per_class=False`` it only counts the rows
  (a few numpy passes over the bytes: 6x less CPU), or, given the number of rows from the
  model, reads only the header and the first row, leaving the classes to
* :func:`write_selected`, which copies the file, keeping every header, comment, optics row
  and blank line as it is, and only those particle rows whose class is selected, byte for
  byte and in input order, and can count the particles per class as it goes.

Both RELION 3.1+ files (``data_optics`` + ``data_particles``) and RELION 3.0 files (one
table, usually ``data_`` or ``data_images``) are handled, as are quoted strings, blank lines
and CRLF line ends.
"""

from __future__ import annotations

import io
import itertools
import math
import operator
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .star import StarBlock, StarError, tokenize

CHUNK_BYTES = 8 << 20  # particle rows are processed this many bytes at a time (memory stays flat)


@dataclass
class ParticleSummary:
    """What a pass over data.star learnt.

    ``counts[k]`` is the number of rows with ``rlnClassNumber == k``; ``optics`` is the
    optics table (None for a RELION 3.0 file); ``last_row`` maps label -> value of the last
    particle row (RELION's first-peak CTF correction uses its defocus).
    """

    path: str
    n_particles: int
    counts: dict[int, int]
    labels: list[str]
    optics: StarBlock | None
    last_row: dict[str, str] = field(default_factory=dict)
    per_class: bool = True  # False: ``counts`` is empty until write_selected(..., counts=) fills it
    rows_counted: bool = True  # False: ``n_particles`` was given (the model's count), only the header was read

    @property
    def n_optics_groups(self) -> int:
        return max(1, len(self.optics.rows)) if self.optics is not None else 1


def _is_particle_table(name: str, labels: list[str]) -> bool:
    return name == "particles" or (name != "optics" and "rlnImageName" in labels)


def _class_of(token: bytes, path: str, lineno: int = 0) -> int:
    """A class number token as int, or a StarError naming the file (and line, if known)."""
    try:
        return int(token)
    except ValueError:
        pass
    where = f"{path}: line {lineno}" if lineno else path
    text = token.decode(errors="replace")
    try:
        value = float(token)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value):
        raise StarError(f"{where}: rlnClassNumber {text!r} is not a whole number")
    return int(value)


def _split(line: bytes) -> list[bytes]:
    if b'"' in line or b"'" in line:
        return [t.encode(errors="surrogateescape") for t in tokenize(line.decode("utf-8", errors="surrogateescape"))]
    return line.split()


def _end_of_rows(data, cut: int) -> int:
    """``cut`` less the whitespace-only lines that end ``data[:cut]``."""
    end = cut
    while end:
        start = data.rfind(b"\n", 0, end - 1) + 1
        if data[start:end].strip():
            break
        end = start
    return end


_STAR_WORDS = np.frombuffer(b"data_loop_", np.uint8).reshape(2, 5)


def _count_plain(data, size: int) -> tuple[int, int] | None:
    """(lines, where the last starts) of ``data[:size]`` (whole lines) if none of them can be
    anything but a particle row: no '#', no blank line, no line starting (after indentation)
    with ``data_``, ``loop_`` or ``_``; else None. numpy: the newlines and the first byte of
    each line; only indented lines are looked at one by one."""
    if data.find(b"#", 0, size) >= 0:
        return None
    a = np.frombuffer(data, np.uint8, count=size)
    ends = np.flatnonzero(a == 10)
    starts = np.concatenate(([0], ends[:-1] + 1))
    first = a[starts]
    if (first == ord("_")).any():
        return None
    maybe = starts[(first == ord("d")) | (first == ord("l"))]
    if len(maybe) and (a[np.minimum(maybe[:, None] + np.arange(5), size - 1)][:, None, :] == _STAR_WORDS).all(
            axis=2).any():
        return None
    for i in np.flatnonzero(first <= 32).tolist():  # indented, or blank
        line = bytes(data[starts[i]:ends[i]]).strip()
        if not line or line.startswith((b"data_", b"loop_", b"_")):
            return None
    return len(ends), int(starts[-1])


class _Walker:
    """STAR state machine over a data.star, fast on the particle rows.

    ``walk(fh)`` yields ``(lines, tokens)`` pairs: ``tokens`` is None for lines to pass
    through unchanged (headers, comments, optics rows, blank lines), else the list of class
    tokens (bytes) of the particle rows ``lines``. Plain particle rows are handled a chunk
    at a time (``CHUNK_BYTES``); a chunk holding anything unusual (quotes, comments, another
    block, a short row) is walked line by line with full checks.
    """

    def __init__(self, path: str, abort: Callable[[], None] | None, with_optics: bool = False):
        self.path = path
        self.abort = abort
        self.with_optics = with_optics  # tokens are (class, optics group) pairs (scan_particles checks them)
        self.optics_index = -1
        self.block = ""
        self.labels: list[str] = []
        self.state = "none"
        self.found_table = False
        self.class_index = -1
        self.optics = None
        self.lineno = 0

    def _token(self, tokens):
        if self.optics_index >= 0:
            return tokens[self.class_index], tokens[self.optics_index]
        return tokens[self.class_index]

    def walk(self, fh):
        """Every line of ``fh``: the header line by line (:meth:`walk_header`), then the rows
        from the first particle row on, a chunk at a time (:meth:`walk_rows`)."""
        yield from self.walk_header(fh)
        if self.in_particle_rows():
            yield from self.walk_rows(fh)

    def walk_header(self, fh):
        """The lines up to and including the first particle row, one at a time (all of
        ``fh``'s lines if it has no particle row)."""
        while True:
            line = fh.readline()  # (not iteration: fh.tell() stays exact for walk_rows' ranges)
            if not line:
                return
            tokens = self.feed(line)
            yield [line], None if tokens is None else [self._token(tokens)]
            if self.in_particle_rows():
                return  # first particle row seen: the rest goes in chunks

    def in_particle_rows(self) -> bool:
        """Whether the last line fed was a particle row (or a line among them)."""
        return self.class_index >= 0 and self.state == "rows"

    def in_rows_of(self, block: str) -> bool:
        """Whether the last line fed was a particle row of the data block named ``block`` (a
        range of rows walked from there has not left that block's particle table)."""
        return self.in_particle_rows() and self.block == block

    def walk_rows(self, fh, size: int | None = None):
        """The lines from ``fh``'s position on (``size``: only that many bytes, ending at a
        line end), plain particle rows a chunk at a time, anything else line by line."""
        ncol = len(self.labels)
        ci = self.class_index
        wanted = [ci] if self.optics_index < 0 else [ci, self.optics_index]
        lo, hi = min(wanted), max(wanted)
        if ncol - lo < hi + 1:  # split from the side nearer the wanted columns: fewer splits
            split = operator.methodcaller("rsplit", None, ncol - lo)
            column = operator.itemgetter(*[1 + i - lo for i in wanted])
        else:
            split = operator.methodcaller("split", None, hi + 1)
            column = operator.itemgetter(*wanted)
        left = size
        while True:
            if left is None:
                lines = fh.readlines(CHUNK_BYTES)
            else:  # the range ends at a line end; readlines(hint) stops once it has read MORE than hint
                lines = fh.readlines(min(CHUNK_BYTES, left - 1)) if left > 1 else [fh.readline()] if left else []
                left -= sum(map(len, lines))
                if left < 0:
                    raise StarError(f"{self.path}: line {self.lineno}: the file changed while it was read")
            if not lines:
                return
            if self.abort is not None:
                self.abort()
            tail = []  # blank lines ending the file (RELION writes " \n") need not spoil the chunk
            while lines and not lines[-1].strip():
                tail.append(lines.pop())
            tail.reverse()
            if lines and self.class_index >= 0 and self.state == "rows" and self._plain(lines, ncol):
                try:  # C-level iteration: about twice as fast as a comprehension
                    tokens = list(map(column, map(split, lines)))
                except IndexError:
                    tokens = None
                if tokens is not None:
                    self.lineno += len(lines)
                    yield lines, tokens
                    lines = []
            for line in lines + tail:  # careful path
                tokens = self.feed(line)
                yield [line], None if tokens is None or self.class_index < 0 else [self._token(tokens)]

    def count_rows(self, fh) -> tuple[int, bytes | None]:
        """(number of particle rows, the last one) without splitting rows into values: the
        header as :meth:`walk`, then chunks of plain lines counted by their newlines
        (:func:`_count_plain`); anything unusual goes through :meth:`feed`. Rows are not
        checked here (:func:`write_selected` checks them)."""
        n, last = 0, None
        for lines, tokens in self.walk_header(fh):
            if tokens:
                n, last = 1, lines[-1]
        if not n:
            return n, last
        buf, carry = bytearray(CHUNK_BYTES), 0  # read into, reused; carry: bytes of an unfinished line
        while True:
            if len(buf) < carry + CHUNK_BYTES:  # a line longer than a chunk
                buf += bytearray(carry + CHUNK_BYTES - len(buf))
            got = fh.readinto(memoryview(buf)[carry:carry + CHUNK_BYTES])
            if self.abort is not None:
                self.abort()
            size = carry + (got or 0)
            cut = buf.rfind(b"\n", 0, size) + 1 if got else size  # at the end, a last line without newline
            if got and cut == 0:
                carry = size
                continue
            end = _end_of_rows(buf, cut)  # blank lines ending the file (RELION writes " \n") go line by line
            plain = _count_plain(buf, end) if got and end and self.class_index >= 0 and self.state == "rows" else None
            lines = io.BytesIO(bytes(buf[end if plain else 0:cut])).readlines()
            if plain:
                n += plain[0]
                self.lineno += plain[0]
                last = bytes(buf[plain[1]:end])
            for line in lines:
                if self.feed(line) is not None and self.class_index >= 0:
                    n, last = n + 1, line
            if not got:
                return n, last
            carry = size - cut
            buf[:carry] = buf[cut:size]

    @staticmethod
    def _plain(lines, ncol: int) -> bool:
        """True if a chunk holds only ordinary rows. Single-byte searches only (memchr
        speed): no quote or '#' anywhere, and the first and last rows complete. A block,
        loop or blank line left in the chunk has fewer values than the class column and
        sends the chunk down the careful path through the IndexError in :meth:`walk`."""
        blob = b"".join(lines)
        if b'"' in blob or b"'" in blob or b"#" in blob:
            return False
        return len(lines[0].split()) == ncol and len(lines[-1].split()) == ncol

    def feed(self, line: bytes):
        """Process one line; returns its tokens if it is a particle row, else None."""
        self.lineno += 1
        lineno, path = self.lineno, self.path
        stripped = line.strip()
        if not stripped or stripped.startswith(b"#"):
            return None
        if stripped.startswith(b"data_"):
            self.close(lineno)
            self.block = stripped[5:].decode(errors="replace").split()[0] if len(stripped) > 5 else ""
            self.labels, self.state, self.class_index = [], "keys", -1
            return None
        if stripped.startswith(b"loop_"):
            self.state = "labels"
            return None
        if stripped.startswith(b"_"):
            if self.state == "rows":
                raise StarError(f"{path}: line {lineno}: column label after the rows of data_{self.block}")
            if self.state == "labels":
                if not stripped[1:].split():
                    raise StarError(f"{path}: line {lineno}: a lone '_' where a column label belongs (file garbled?)")
                label = stripped[1:].split()[0].decode(errors="replace")
                if label in self.labels:
                    raise StarError(f"{path}: line {lineno}: label _{label} appears twice in table "
                                    f"data_{self.block} (RELION cannot read such a file)")
                self.labels.append(label)
            return None
        if self.state not in ("labels", "rows"):
            raise StarError(f"{path}: line {lineno}: unexpected text outside a table")
        if self.state == "labels":
            self.state = "rows"
            self._start_table(lineno)
        try:
            tokens = _split(stripped)
        except ValueError as exc:
            raise StarError(f"{path}: line {lineno}: {exc}") from None
        if len(tokens) != len(self.labels):
            raise StarError(f"{path}: line {lineno}: row has {len(tokens)} values but table "
                            f"data_{self.block} has {len(self.labels)} columns (truncated or garbled?)")
        if self.class_index >= 0:
            return tokens
        if self.block == "optics":
            self.optics.rows.append([t.decode(errors="replace") for t in tokens])
        return None

    def close(self, lineno: int) -> None:
        """End the current block (a table may have labels but no rows)."""
        if self.state == "labels" and self.labels:
            self._start_table(lineno)

    def _start_table(self, lineno: int) -> None:
        if self.block == "optics":
            self.optics = StarBlock(name="optics", labels=list(self.labels), source=self.path)
            self.class_index = -1
        elif _is_particle_table(self.block, self.labels):
            if self.found_table:
                raise StarError(f"{self.path}: line {lineno}: a second particle table (data_{self.block})")
            if "rlnClassNumber" not in self.labels:
                raise StarError(f"{self.path}: particle table data_{self.block} has no _rlnClassNumber column "
                                "(is this the data.star of a 2D classification?)")
            self.found_table = True
            self.particle_labels = list(self.labels)
            self.class_index = self.labels.index("rlnClassNumber")
            if self.with_optics and self.optics is not None and "rlnOpticsGroup" in self.labels:
                self.optics_index = self.labels.index("rlnOpticsGroup")
        else:
            self.class_index = -1


def _ends_with_line_end(fh) -> bool:
    """Whether the (seekable) file ends with a newline; leaves the position at the start."""
    try:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return False
        fh.seek(size - 1)
        return fh.read(1) == b"\n"
    except OSError:
        return False
    finally:
        fh.seek(0)


def _open(path: str):
    from .inputs import check_input

    try:
        return open(check_input(path, "STAR file"), "rb")
    except FileNotFoundError:
        raise StarError(f"{path}: file not found") from None
    except OSError as exc:
        raise StarError(f"{path}: cannot be read ({exc.strerror})") from None


def scan_particles(path: str | os.PathLike, abort: Callable[[], None] | None = None,
                   per_class: bool = True, n_rows: int | None = None) -> ParticleSummary:
    """Count the particles of each class in a data.star, streaming; with ``per_class``
    False only the particles (``counts`` is left empty, for :func:`write_selected` to fill),
    and rows are not checked.

    ``n_rows`` (with ``per_class`` False): the number of particle rows, known elsewhere (the
    model's ``rlnGroupNrParticles``): then only the header, the optics table and the first
    particle row are read (``last_row`` is that first row), and the caller must check the
    number on the pass that writes (:func:`write_selected` counts every row). A file that does
    not end with a line end is read whole, for the error below.

    Raises StarError if the file has no particle table with ``rlnClassNumber``, a row is
    garbled, or the table is empty.
    """
    path = os.fspath(path)
    walker = _Walker(path, abort, with_optics=per_class)
    token_counts: Counter = Counter()  # of class tokens, or of (class, optics group) token pairs
    last: bytes | None = None
    header_only = False
    with _open(path) as fh:
        if per_class:
            for lines, tokens in walker.walk(fh):
                if tokens:
                    token_counts.update(tokens)
                    last = lines[-1]
        elif n_rows is not None and n_rows > 0 and _ends_with_line_end(fh):
            header_only = True
            for lines, tokens in walker.walk_header(fh):
                if tokens:
                    last = lines[-1]
            n_rows = n_rows if last is not None else 0
        else:
            n_rows, last = walker.count_rows(fh)
        walker.close(0)
    if not walker.found_table:
        raise StarError(f"{path}: no particle table (data_particles, or a table with _rlnImageName)")
    if last is not None and not last.endswith(b"\n"):
        raise StarError(f"{path}: the last particle row does not end with a line end (file cut short?)")
    if per_class and walker.optics_index >= 0:
        token_counts = _checked_optics_pairs(token_counts, walker.optics, path)
    counts = _class_counts(token_counts, path)
    n_particles = sum(counts.values()) if per_class else n_rows
    if n_particles == 0:
        raise StarError(f"{path}: the particle table has no rows (zero particles)")
    try:
        values = _split(last.strip())
    except ValueError as exc:
        raise StarError(f"{path}: last particle row: {exc}") from None
    last_row = {label: t.decode(errors="replace") for label, t in zip(walker.particle_labels, values)}
    return ParticleSummary(path=path, n_particles=n_particles, counts=counts, labels=walker.particle_labels,
                           optics=walker.optics, last_row=last_row, per_class=per_class,
                           rows_counted=not header_only)


def _checked_optics_pairs(pairs: Counter, optics: StarBlock, path: str) -> Counter:
    """Counts of (class, optics group) token pairs -> counts of class tokens, once every
    optics group is checked (:func:`_check_optics_groups`)."""
    _check_optics_groups({o for _c, o in pairs}, optics, path)
    token_counts: Counter = Counter()
    for (c, _o), n in pairs.items():
        token_counts[c] += n
    return token_counts


def _class_counts(token_counts: Counter, path: str) -> dict[int, int]:
    counts: Counter[int] = Counter()
    for token, n in token_counts.items():
        counts[_class_of(token, path)] += n
    return dict(counts)


def _check_optics_groups(tokens: set, optics: StarBlock, path: str) -> None:
    """Every particle's rlnOpticsGroup must be a group the optics table defines: RELION's own
    programs refuse the file otherwise ("optics groups were not defined"), so would the next job."""
    if not optics.has("rlnOpticsGroup"):
        raise StarError(f"{path}: table data_optics has no _rlnOpticsGroup column, but the particles name "
                        "optics groups")
    defined = set()
    for value in optics.column("rlnOpticsGroup"):
        try:
            defined.add(int(value))
        except ValueError:
            raise StarError(f"{path}: table data_optics: rlnOpticsGroup {value!r} is not a whole number") from None
    undefined = set()
    for token in tokens:
        try:
            group = int(token)
        except ValueError:
            undefined.add(token.decode(errors="replace"))
            continue
        if group not in defined:
            undefined.add(str(group))
    if undefined:
        shown = ", ".join(sorted(undefined)[:5])
        raise StarError(f"{path}: particles are in optics group(s) {shown} that table data_optics does not define "
                        f"(it defines {', '.join(map(str, sorted(defined))) or 'none'}); RELION cannot read such a file")


PARALLEL_MIN_BYTES = 32 << 20  # particle rows worth filtering in more than one process (fork costs ~10 ms)


def write_selected(path_in: str | os.PathLike, path_out: str | os.PathLike, selected_classes,
                   abort: Callable[[], None] | None = None, counts: dict | None = None, workers: int = 1) -> int:
    """Copy ``path_in`` to ``path_out`` keeping only particle rows of ``selected_classes``.

    Header lines, comments, the optics table and blank lines are copied unchanged; particle
    rows are copied byte for byte in input order. Returns the number of rows written.
    ``counts``: a dict to fill with the particles of every class (as :func:`scan_particles`).
    ``workers`` > 1: the rows after the first (from ``PARALLEL_MIN_BYTES`` of them) are cut at
    line ends into that many ranges; this process filters the first, forked processes the
    others into unnamed temporary files (nothing is left behind if the job is killed),
    appended in order. A range holding anything but the particle table's rows (another
    table), or a fault, is filtered again here, in order, so that the output and every error
    (with its line number) are those of one process reading the file from start to end.
    The caller writes to a temporary name and renames it on success.
    """
    path_in = os.fspath(path_in)
    # without per-class counts from scan_particles (its fast pass only counts rows), this pass
    # counts the classes and checks every optics group: tokens are then (class, optics) pairs
    walker = _Walker(path_in, abort, with_optics=counts is not None)
    rows = _RowFilter(path_in, selected_classes, walker, count=counts is not None)
    with _open(path_in) as fh, open(path_out, "wb", buffering=1 << 20) as out:
        rows.copy(walker.walk_header(fh), out.write)
        if walker.in_particle_rows():
            ranges = _line_ranges(fh, workers)
            if len(ranges) == 1:
                rows.copy(walker.walk_rows(fh), out.write)
            else:
                _write_ranges(fh, out, rows, ranges, path_out)
    if counts is not None:
        token_counts = rows.token_counts
        if walker.optics_index >= 0:
            token_counts = _checked_optics_pairs(token_counts, walker.optics, path_in)
        counts.update(_class_counts(token_counts, path_in))
    return rows.written


class _RowFilter:
    """Keeps the selected classes' rows of what a :class:`_Walker` yields, counting them and,
    with ``count``, (the tokens of) every class."""

    def __init__(self, path: str, selected_classes, walker: _Walker, count: bool = True):
        self.path, self.walker, self.count = path, walker, count
        self.wanted = set(int(k) for k in selected_classes)
        self.keep: dict[bytes, bool] = {}
        self.token_counts: Counter = Counter()
        self.written = 0

    def copy(self, pieces, write) -> None:
        keep, walker = self.keep, self.walker
        for lines, tokens in pieces:
            if tokens is None:
                write(lines[0])
                continue
            for token in set(tokens) - keep.keys():
                keep[token] = _class_of(token[0] if isinstance(token, tuple) else token, self.path,
                                        walker.lineno) in self.wanted
            flags = list(map(keep.__getitem__, tokens))
            write(b"".join(itertools.compress(lines, flags)))
            self.written += sum(flags)
            if self.count:
                self.token_counts.update(tokens)


def _line_ranges(fh, workers: int) -> list[tuple[int, int]]:
    """(start, size) of up to ``workers`` ranges of about equal size from ``fh``'s position to
    its end, each starting at a line start; one range below ``PARALLEL_MIN_BYTES``. Leaves
    ``fh`` at the first range's start."""
    start = fh.tell()
    end = os.fstat(fh.fileno()).st_size
    if workers <= 1 or end - start < PARALLEL_MIN_BYTES:
        return [(start, end - start)]
    cuts = [start]
    for k in range(1, workers):
        fh.seek(max(cuts[-1], start + (end - start) * k // workers))
        if fh.tell() > start:
            fh.seek(fh.tell() - 1)  # a cut exactly at a line start stays there
        fh.readline()
        if cuts[-1] < fh.tell() < end:
            cuts.append(fh.tell())
    fh.seek(start)
    cuts.append(end)
    return [(a, b - a) for a, b in zip(cuts, cuts[1:])]


def _filter_range(rows: _RowFilter, path_in: str, start: int, size: int, out_fd: int):
    """In a forked process: the rows of one range into ``out_fd``. Returns (rows written, token
    counts, lines read), or None where the range must be filtered again in order (it leaves the
    particle table, or holds a fault: line numbers here would be wrong)."""
    walker = rows.walker
    walker.abort = None  # the parent looks for RELION_JOB_ABORT_NOW
    block, lines_before = walker.block, walker.lineno
    try:
        with open(path_in, "rb") as fh, os.fdopen(os.dup(out_fd), "wb", buffering=1 << 20) as out:
            fh.seek(start)
            rows.copy(walker.walk_rows(fh, size), out.write)
    except StarError:
        return None
    if not walker.in_rows_of(block):
        return None
    return rows.written, rows.token_counts, walker.lineno - lines_before


def _write_ranges(fh, out, rows: _RowFilter, ranges, path_out) -> None:
    """:func:`write_selected`'s rows after the header, in ranges (see there)."""
    import copy
    import shutil
    import tempfile

    from .background import Background

    walker = rows.walker
    block = walker.block
    pieces, helpers = [], []
    try:
        for start, size in ranges[1:]:
            piece = tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(path_out)) or ".")
            pieces.append(piece)
            child_rows = _RowFilter(rows.path, rows.wanted, copy.copy(walker), rows.count)  # (in the walker's state)
            helpers.append(Background(_filter_range, child_rows, rows.path, start, size, piece.fileno()))
        rows.copy(walker.walk_rows(fh, ranges[0][1]), out.write)
        for (start, _size), helper, piece in zip(ranges[1:], helpers, pieces):
            done = helper.result() if walker.in_rows_of(block) else None
            if done is None:  # from here on, in order, in this process
                fh.seek(start)
                rows.copy(walker.walk_rows(fh), out.write)
                return
            written, token_counts, lines = done
            rows.written += written
            rows.token_counts.update(token_counts)
            walker.lineno += lines
            piece.seek(0)
            shutil.copyfileobj(piece, out, 1 << 20)
    finally:
        for helper in helpers:
            helper.cancel()
        for piece in pieces:
            piece.close()
