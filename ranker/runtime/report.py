"""The ranked-classes report: ``logfile.pdf`` (RELION's Display button opens it) and
``logfile.png`` (the best ``PNG_TILES`` classes, for a quick look or a web page).

Page 1 summarises the selection (particles and classes in/kept, threshold, score
histogram with the threshold line). The following pages show every class sorted by score,
``TILES_PER_PAGE`` to a page, each tile labelled with class number, score, particle count
and resolution, framed green (selected), red (rejected, with the main reason) or grey (not
scored). Pages are drawn with Pillow (A4 at 100 dpi) and saved as one PDF: 300 classes
take well under a second.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

COLS, ROWS = 6, 5
TILES_PER_PAGE = COLS * ROWS
PNG_TILES = 60
TILE_PX = 96                      # tile size on the page (the 64x64 image, enlarged)
PAGE_W, PAGE_H = 827, 1169        # A4 at 100 dpi
GREEN, RED, GREY = (26, 152, 80), (215, 48, 39), (128, 128, 128)


def rejection_reason(score, count, raw: dict | None, threshold: float) -> str:
    """The main reason a class was not selected, in words a user understands."""
    if count == 0:
        return "empty class"
    if raw is None:
        return "<= 10 particles: not scored"
    hints = []
    if raw.get("EdgeSignal", 0) > 0.25:
        hints.append("signal at mask edge")
    if raw.get("ProteinArea", 1) == 0:
        hints.append("no particle density")
    elif raw.get("ScatteredSignal", 0) > 0.3:
        hints.append("scattered signal")
    text = f"low score ({score:.2f} < {threshold:.2f})" if score < threshold else f"score {score:.2f} above max"
    return text + ("; " + hints[0] if hints else "")


def _tile(img: np.ndarray) -> np.ndarray:
    """uint8 greyscale tile, contrast from the 1st-99th percentile."""
    lo, hi = np.percentile(img, [1, 99])
    scaled = np.clip((img - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(img)
    return (scaled * 255).astype(np.uint8)


def _fonts():
    from PIL import ImageFont
    return {size: ImageFont.load_default(size=size) for size in (11, 13, 16, 20)}


def _colour(e) -> tuple:
    return GREEN if e["selected"] else (GREY if e["score"] is None else RED)


def _grid(entries: list[dict], cols: int, title: str, fonts, height: int | None = None):
    """A page (PIL image) of tiles, each with its first label line (class and score); the
    lines that need the particle counts come from :func:`_count_labels`."""
    from PIL import Image, ImageDraw

    cell_w, cell_h = _cell(cols)
    rows = max(1, -(-len(entries) // cols))
    page = Image.new("RGB", (max(PAGE_W, cols * cell_w + 40), height or (70 + rows * cell_h)), "white")
    draw = ImageDraw.Draw(page)
    draw.text((20, 20), title, fill="black", font=fonts[16])
    for i, e in enumerate(entries):
        x, y = _tile_corner(i, cols)
        colour = _colour(e)
        draw.rectangle([x - 4, y - 4, x + TILE_PX + 3, y + TILE_PX + 3], fill=colour)
        tile = Image.fromarray(_tile(e["image"])).resize((TILE_PX, TILE_PX), Image.NEAREST)
        page.paste(tile, (x, y))
        score = "not scored" if e["score"] is None else f"score {e['score']:.2f}"
        draw.text((x - 4, y + TILE_PX + 6), f"#{e['class_number']}  {score}", fill=colour, font=fonts[11])
    return page


def _count_labels(page, entries: list[dict], cols: int, fonts) -> None:
    """The tiles' second and third label lines: particles and resolution; why not selected."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(page)
    for i, e in enumerate(entries):
        x, y = _tile_corner(i, cols)
        res = f"{e['resolution_A']:.1f} A" if e["resolution_A"] else "res n/a"
        draw.text((x - 4, y + TILE_PX + 19), f"{e['count']} ptcls, {res}", fill="black", font=fonts[11])
        if not e["selected"]:
            draw.text((x - 4, y + TILE_PX + 32), e["reason"][:30], fill=_colour(e), font=fonts[11])


def _cell(cols: int) -> tuple[int, int]:
    return max((PAGE_W - 40) // cols, TILE_PX + 40), TILE_PX + 52


def _tile_corner(i: int, cols: int) -> tuple[int, int]:
    cell_w, cell_h = _cell(cols)
    r, c = divmod(i, cols)
    return 20 + c * cell_w + (cell_w - TILE_PX) // 2, 60 + r * cell_h


def _summary(s: dict, scores: list[float], fonts):
    from PIL import Image, ImageDraw

    page = Image.new("RGB", (PAGE_W, PAGE_H), "white")
    draw = ImageDraw.Draw(page)
    draw.text((60, 50), "relion_external_rank: ranked 2D classes", fill="black", font=fonts[20])
    pin, pk = s["particles_in"], s["particles_kept"]
    lines = [s.get("title", ""), f"Particles: {pk} of {pin} kept ({100 * pk / max(pin, 1):.1f} %)",
             f"Classes: {s['classes_kept']} of {s['classes_in']} kept ({s['classes_scored']} scored)",
             f"Score threshold: {s['threshold_text']}", f"Model: {s.get('model', '')}"]
    for i, line in enumerate(lines):
        draw.text((60, 100 + 26 * i), line, fill="black", font=fonts[13])
    # histogram of scores, 20 bins over [0, 1]
    x0, y0, w, h = 100, 330, 640, 320
    counts, _ = np.histogram(scores, bins=20, range=(0, 1))
    top = max(1, int(counts.max()))
    draw.text((x0, y0 - 30), "Score histogram (classes per bin)", fill="black", font=fonts[13])
    for b, n in enumerate(counts):
        bh = int(h * n / top)
        draw.rectangle([x0 + b * w // 20 + 2, y0 + h - bh, x0 + (b + 1) * w // 20 - 2, y0 + h], fill=GREY)
    draw.line([x0, y0 + h, x0 + w, y0 + h], fill="black", width=2)
    draw.line([x0, y0, x0, y0 + h], fill="black", width=2)
    for t in range(6):
        xt = x0 + t * w // 5
        draw.text((xt - 8, y0 + h + 8), f"{t / 5:.1f}", fill="black", font=fonts[11])
    draw.text((x0 - 30, y0 - 6), str(top), fill="black", font=fonts[11])
    if s.get("threshold") is not None and -1 <= s["threshold"] <= 2:
        xt = x0 + int(w * min(max(s["threshold"], 0), 1))
        draw.line([xt, y0 - 10, xt, y0 + h], fill=RED, width=3)
        draw.text((xt + 6, y0 - 10), f"threshold {s['threshold']:.2f}", fill=RED, font=fonts[13])
    draw.text((x0, y0 + h + 40), "class score", fill="black", font=fonts[13])
    draw.text((60, 760), "Tiles: green = selected, red = rejected (reason below the tile), grey = not scored.",
              fill="black", font=fonts[13])
    return page


def write_report(pdf_path: str, png_path: str, entries: list[dict], summary: dict) -> None:
    """Write the PDF and PNG.

    ``entries``: one dict per class with ``class_number``, ``image`` (2D array), ``score``
    (None if not scored), ``count``, ``resolution_A``, ``selected``, ``reason``.
    ``summary``: ``particles_in``, ``particles_kept``, ``classes_in``, ``classes_kept``,
    ``classes_scored``, ``threshold``, ``threshold_text``, ``title``, ``model``.
    """
    ReportDraft(entries, summary).finish(pdf_path, png_path)


class ReportDraft:
    """The report drawn as far as it goes without the particles per class (tiles, scores,
    frames), so that it can be drawn while particles.star is written, which counts them;
    :meth:`finish` adds the counts (and what follows from them) and writes both files.
    ``entries`` and ``summary`` as :func:`write_report`'s; ``count``, ``reason``,
    ``particles_in`` and ``particles_kept`` may come later, in :meth:`finish`."""

    def __init__(self, entries: list[dict], summary: dict):
        self.fonts = fonts = _fonts()
        self.entries, self.summary = entries, summary
        self.order = sorted(entries, key=lambda e: (e["score"] is None, -(e["score"] or 0), e["class_number"]))
        chunks = [self.order[i:i + TILES_PER_PAGE] for i in range(0, len(self.order), TILES_PER_PAGE)] or [[]]
        self.pages = [(_grid(chunk, COLS, f"Classes by score, page {n} of {len(chunks)}", fonts, height=PAGE_H), chunk)
                      for n, chunk in enumerate(chunks, 1)]
        shown = self.order[:PNG_TILES]
        title = summary.get("title", "Ranked classes") + (
            f"  (best {PNG_TILES} of {len(self.order)}; all in logfile.pdf)" if len(self.order) > PNG_TILES else "")
        self.png = (_grid(shown, 10, title, fonts), shown)

    def finish(self, pdf_path: str, png_path: str, counts: dict | None = None, reason=None, **summary) -> None:
        """Add the counts and write ``pdf_path`` and ``png_path``. ``counts``: class number ->
        particles (else each entry's ``count``); ``reason``: entry -> why it was not selected
        (else each entry's ``reason``); ``summary``: keys to add to the summary (particles_in,
        particles_kept)."""
        for e in self.entries:
            if counts is not None:
                e["count"] = counts.get(e["class_number"], 0)
            if reason is not None:
                e["reason"] = "" if e["selected"] else reason(e)
        self.summary.update(summary)
        for page, chunk in self.pages:
            _count_labels(page, chunk, COLS, self.fonts)
        _count_labels(self.png[0], self.png[1], 10, self.fonts)
        first = _summary(self.summary, [e["score"] for e in self.entries if e["score"] is not None], self.fonts)
        with _named(pdf_path), open(pdf_path, "wb") as fh:
            first.save(fh, format="PDF", save_all=True, append_images=[p for p, _c in self.pages], resolution=100.0)
        with _named(png_path), open(png_path, "wb") as fh:
            self.png[0].save(fh, format="PNG", compress_level=1)


@contextmanager
def _named(path: str):
    """A write error (disk full) names the file being written: the job reports it as that output."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = path
        raise
