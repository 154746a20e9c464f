"""Streaming access to a particle STAR file (``run_itNNN_data.star``).

A facility data.star holds millions of rows, so nothing here loads the table: both
functions read the file line by line, in bytes, and keep memory flat in particle count.

* :func:`scan_particles` counts particles per class (``rlnClassNumber``) and keeps the
  optics table and the last particle row.
* :func:`write_selected` copies the file, keeping every header, comment, optics row and
  blank line as it is, and only those particle rows whose class is selected, byte for byte
  and in input order.

Both RELION 3.1+ files (``data_optics`` + ``data_particles``) and RELION 3.0 files (one
table, usually ``data_`` or ``data_images``) are handled, as are quoted strings, blank lines
and CRLF line ends.
"""

from __future__ import annotations

import itertools
import math
import operator
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

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
        for line in fh:
            tokens = self.feed(line)
            yield [line], None if tokens is None else [self._token(tokens)]
            if self.class_index >= 0 and self.state == "rows":
                break  # first particle row seen: the rest goes in chunks
        else:
            return
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
        while True:
            lines = fh.readlines(CHUNK_BYTES)
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


def _open(path: str):
    from .inputs import check_input

    try:
        return open(check_input(path, "STAR file"), "rb")
    except FileNotFoundError:
        raise StarError(f"{path}: file not found") from None
    except OSError as exc:
        raise StarError(f"{path}: cannot be read ({exc.strerror})") from None


def scan_particles(path: str | os.PathLike, abort: Callable[[], None] | None = None) -> ParticleSummary:
    """Count the particles of each class in a data.star, streaming.

    Raises StarError if the file has no particle table with ``rlnClassNumber``, a row is
    garbled, or the table is empty.
    """
    path = os.fspath(path)
    walker = _Walker(path, abort, with_optics=True)
    token_counts: Counter = Counter()  # of class tokens, or of (class, optics group) token pairs
    last: bytes | None = None
    with _open(path) as fh:
        for lines, tokens in walker.walk(fh):
            if tokens:
                token_counts.update(tokens)
                last = lines[-1]
        walker.close(0)
    if not walker.found_table:
        raise StarError(f"{path}: no particle table (data_particles, or a table with _rlnImageName)")
    if last is not None and not last.endswith(b"\n"):
        raise StarError(f"{path}: the last particle row does not end with a line end (file cut short?)")
    if walker.optics_index >= 0:
        _check_optics_groups({o for _c, o in token_counts}, walker.optics, path)
        pairs, token_counts = token_counts, Counter()
        for (c, _o), n in pairs.items():
            token_counts[c] += n
    counts: Counter[int] = Counter()
    for token, n in token_counts.items():
        counts[_class_of(token, path)] += n
    n_particles = sum(counts.values())
    if n_particles == 0:
        raise StarError(f"{path}: the particle table has no rows (zero particles)")
    last_row = {label: t.decode(errors="replace") for label, t in zip(walker.particle_labels, _split(last.strip()))}
    return ParticleSummary(path=path, n_particles=n_particles, counts=dict(counts),
                           labels=walker.particle_labels, optics=walker.optics, last_row=last_row)


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


def write_selected(path_in: str | os.PathLike, path_out: str | os.PathLike, selected_classes,
                   abort: Callable[[], None] | None = None) -> int:
    """Copy ``path_in`` to ``path_out`` keeping only particle rows of ``selected_classes``.

    Header lines, comments, the optics table and blank lines are copied unchanged; particle
    rows are copied byte for byte in input order. Returns the number of rows written.
    The caller writes to a temporary name and renames it on success.
    """
    path_in = os.fspath(path_in)
    wanted = set(int(k) for k in selected_classes)
    keep: dict[bytes, bool] = {}
    walker = _Walker(path_in, abort)
    written = 0
    with _open(path_in) as fh, open(path_out, "wb", buffering=1 << 20) as out:
        write = out.write
        for lines, tokens in walker.walk(fh):
            if tokens is None:
                write(lines[0])
                continue
            for token in set(tokens) - keep.keys():
                keep[token] = _class_of(token, path_in, walker.lineno) in wanted
            flags = list(map(keep.__getitem__, tokens))
            write(b"".join(itertools.compress(lines, flags)))
            written += sum(flags)
    return written
