"""Reading and writing RELION STAR files (small ones: optimiser, model, selections).

Large particle tables (data.star, up to millions of rows) are never loaded with this
module; :mod:`ranker.particles` streams them.

Public surface:

* :func:`read_star` -> ``dict[name, StarBlock]`` keeping block order. Block names are
  given without the ``data_`` prefix (``"model_classes"``; an unnamed block is ``""``).
* :class:`StarBlock` -- one block, either a key/value list or a loop table. Values are kept
  as the strings found in the file; :meth:`StarBlock.float_column` converts with RELION's
  C++ rules (``inf``/``nan`` read as 0).
* :func:`format_block` (or :func:`block_lines`, piece by piece) and :func:`write_star` write
  blocks in RELION's layout, numbers as RELION does (:func:`format_value`: ``%12.6f``, exponent
  form for tiny or huge values). Every STAR file the project writes goes through them.

Every error is a :class:`StarError` whose message names the file and the problem.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field


class StarError(ValueError):
    """A STAR file could not be read: the message names the file and the problem."""


@dataclass
class StarBlock:
    """One ``data_`` block.

    ``labels`` are the column names without the leading underscore (``rlnClassNumber``).
    For a loop table ``rows`` holds one list of strings per row; for a key/value block it
    holds exactly one row and ``is_loop`` is False.
    """

    name: str
    labels: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    is_loop: bool = True
    source: str = ""

    def has(self, label: str) -> bool:
        return label in self.labels

    def column(self, label: str) -> list[str]:
        """All values of one column, as strings."""
        if label not in self.labels:
            raise StarError(f"{self.source}: table data_{self.name} has no column _{label}")
        i = self.labels.index(label)
        return [row[i] for row in self.rows]

    def float_column(self, label: str) -> list[float]:
        """One column as floats, read as RELION's ``istream >> double`` would."""
        return [relion_float(v, self.source, label) for v in self.column(label)]

    def value(self, label: str, default: str | None = None) -> str:
        """The value of a key in a key/value block (or the first row of a table)."""
        if label not in self.labels or not self.rows:
            if default is not None:
                return default
            raise StarError(f"{self.source}: block data_{self.name} has no _{label}")
        return self.rows[0][self.labels.index(label)]

    def float_value(self, label: str, default: float | None = None) -> float:
        if label not in self.labels and default is not None:
            return default
        return relion_float(self.value(label), self.source, label)


def relion_float(token: str, source: str = "", label: str = "") -> float:
    """Parse a STAR number. ``inf``, ``-inf``, ``nan`` and ``-nan`` give 0.0, as in RELION.

    RELION reads doubles with C++ streams, which fail on these tokens and leave 0, so a
    junk class with ``rlnEstimatedResolution inf`` is seen by RELION (and by us) as 0.
    """
    try:
        value = float(token)
    except ValueError:
        raise StarError(f"{source}: _{label} value {token!r} is not a number") from None
    return 0.0 if not math.isfinite(value) else value


def tokenize(line: str) -> list[str]:
    """Split a STAR data line on whitespace, honouring single and double quotes."""
    if '"' not in line and "'" not in line:
        return line.split()
    tokens: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c.isspace():
            i += 1
            continue
        if c in "\"'":
            end = line.find(c, i + 1)
            while end != -1 and end + 1 < n and not line[end + 1].isspace():
                end = line.find(c, end + 1)
            if end == -1:
                raise ValueError(f"unterminated quote in line: {line.strip()}")
            tokens.append(line[i + 1:end])
            i = end + 1
        else:
            j = i
            while j < n and not line[j].isspace():
                j += 1
            tokens.append(line[i:j])
            i = j
    return tokens


def read_star(path: str | os.PathLike) -> dict[str, StarBlock]:
    """Read every block of a STAR file into memory (for small files only)."""
    from .inputs import check_input

    path = os.fspath(path)
    try:
        check_input(path, "STAR file")
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise StarError(f"{path}: file not found") from None
    except OSError as exc:
        raise StarError(f"{path}: cannot be read ({exc.strerror})") from None
    return parse_star(text, path)


def parse_star(text: str, source: str = "<string>") -> dict[str, StarBlock]:
    """Parse STAR text; see :func:`read_star`."""
    blocks: dict[str, StarBlock] = {}
    block: StarBlock | None = None
    state = "none"  # none | keys | loop_labels | loop_rows
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}: line {lineno}"
        if line.startswith("data_"):
            name = line[5:].split()[0] if len(line) > 5 else ""
            _finish(block, source)
            block = StarBlock(name=name, is_loop=False, source=source)
            if name in blocks:
                raise StarError(f"{where}: block data_{name} appears twice")
            blocks[name] = block
            state = "keys"
            continue
        if block is None:
            raise StarError(f"{where}: text before the first data_ block: {line[:60]!r}")
        if line.startswith("loop_"):
            if block.labels:
                raise StarError(f"{where}: loop_ after other items in block data_{block.name}")
            block.is_loop = True
            state = "loop_labels"
            continue
        if line.startswith("_"):
            parts = line[1:].split(None, 1)
            if not parts:
                raise StarError(f"{where}: a lone '_' where a column label belongs (file garbled?)")
            label = parts[0]
            if label in block.labels and state in ("loop_labels", "keys"):
                raise StarError(f"{where}: label _{label} appears twice in block data_{block.name} "
                                "(RELION cannot read such a file)")
            if state == "loop_labels":
                block.labels.append(label)
            elif state == "keys":
                value = parts[1].strip() if len(parts) > 1 else ""
                try:
                    vals = tokenize(value)
                except ValueError as exc:
                    raise StarError(f"{where}: {exc}") from None
                if not block.rows:
                    block.rows.append([])
                block.labels.append(label)
                block.rows[0].append(vals[0] if vals else "")
            else:
                raise StarError(f"{where}: label _{label} after the rows of table data_{block.name}")
            continue
        if state in ("loop_labels", "loop_rows"):
            state = "loop_rows"
            try:
                tokens = tokenize(line)
            except ValueError as exc:
                raise StarError(f"{where}: {exc}") from None
            if len(tokens) != len(block.labels):
                raise StarError(
                    f"{where}: table data_{block.name} row has {len(tokens)} values "
                    f"but {len(block.labels)} columns (file truncated or garbled?)")
            block.rows.append(tokens)
            continue
        raise StarError(f"{where}: unexpected text {line[:60]!r} in block data_{block.name}")
    _finish(block, source)
    if not blocks:
        raise StarError(f"{source}: no data_ block found (empty or not a STAR file)")
    return blocks


def _finish(block: StarBlock | None, source: str) -> None:
    if block is not None and block.is_loop and not block.labels:
        raise StarError(f"{source}: table data_{block.name} has loop_ but no columns")


def check_complete(path: str | os.PathLike) -> None:
    """Raise StarError if a RELION-written STAR file was cut short.

    RELION ends every table with a line holding one space, so the last line of a complete file
    holds only white space; a file cut anywhere inside its last table does not (a file cut
    exactly between two tables is caught by the tables missing, which the caller checks)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            tail = fh.read()
    except OSError as exc:
        raise StarError(f"{path}: cannot be read ({exc.strerror})") from None
    lines = tail.splitlines()
    if not lines or lines[-1].strip():
        raise StarError(f"{path}: the file is cut short (it ends inside a table, not with the blank line "
                        "RELION writes after every table)")


def block(blocks: dict[str, StarBlock], name: str, path: str) -> StarBlock:
    """The block called ``name`` or a StarError naming the file."""
    if name not in blocks:
        raise StarError(f"{path}: no data_{name} table")
    return blocks[name]


# --------------------------------------------------------------------------- writing

def format_value(value) -> str:
    """Format one value as RELION's STAR writer does.

    Integers as is; floats ``%12.6f`` (``%12.5f`` if negative), switching to ``%12.6e``
    (``%12.5e``) when ``0 < |v| < 0.001`` or ``|v| > 1e5``; strings unchanged (quoted if
    empty or holding whitespace).
    """
    if isinstance(value, bool):
        return f"{int(value):12d}"
    if isinstance(value, int):
        return f"{value:12d}"
    if isinstance(value, float):
        a = abs(value)
        if a > 0 and (a < 0.001 or a > 1e5):
            return f"{value:12.5e}" if value < 0 else f"{value:12.6e}"
        return f"{value:12.5f}" if value < 0 else f"{value:12.6f}"
    text = str(value)
    if (text == "" or any(c.isspace() for c in text) or text[0] in "_#'\""
            or text.startswith(("data_", "loop_"))):
        return '"' + text + '"'
    return text


def format_row(values) -> str:
    """One row of a loop table: :func:`format_value` of each value, RELION's separators."""
    return " ".join(format_value(v) for v in values) + " \n"


def block_lines(name: str, labels: list[str], rows, loop: bool = True,
                version: int = 30001) -> Iterator[str]:
    """The text of one STAR block, piece by piece (for tables too large to hold as one string).

    ``rows`` may be any iterable (a generator is consumed once). RELION's layout: a blank line,
    ``# version``, a blank line, ``data_NAME``, a blank line, then ``loop_`` with numbered
    labels and one line per row, or (``loop=False``) one ``_label value`` line per label with
    the values of the single row; a line holding one space ends the block.
    """
    yield f"\n# version {version}\n\ndata_{name}\n\n"
    if loop:
        yield "loop_ \n"
        yield "".join(f"_{label} #{i} \n" for i, label in enumerate(labels, 1))
        for row in rows:
            yield format_row(row)
    else:
        values = next(iter(rows))
        width = max((len(label) for label in labels), default=0) + 2
        yield "".join(f"_{label:<{width}}{format_value(v)}\n" for label, v in zip(labels, values))
    yield " \n"


def format_block(name: str, labels: list[str], rows, loop: bool = True, version: int = 30001) -> str:
    """One STAR block as text (see :func:`block_lines` for the layout)."""
    return "".join(block_lines(name, labels, rows, loop, version))


def write_star(path: str | os.PathLike, blocks) -> None:
    """Write blocks to ``path``: each is the text of :func:`format_block` or the pieces of
    :func:`block_lines` (written as they are made)."""
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as fh:
        for piece in blocks:
            if isinstance(piece, str):
                fh.write(piece)
            else:
                fh.writelines(piece)
