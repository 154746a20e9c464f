"""The ranked-classes report: ``logfile.pdf`` (RELION's Display button opens it) and
``logfile.png`` (the best ``PNG_TILES`` classes, for a quick look or a web page).

Page 1 summarises the selection (particles and classes in/kept, threshold, score
histogram with the threshold line). The following pages show every class sorted by score,
``TILES_PER_PAGE`` to a page, each tile labelled with class number, score, particle
count and resolution, framed green (selected) or red (rejected) with the main reason.
Each page is one mosaic image plus text, so 300 classes take about a second.
"""

from __future__ import annotations

import numpy as np

COLS, ROWS = 6, 5
TILES_PER_PAGE = COLS * ROWS
TILE_PX = 64
PNG_TILES = 60  # logfile.png shows the best classes; the PDF has them all
GREEN, RED, GREY = "#1a9850", "#d73027", "#808080"


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
    lo, hi = np.percentile(img, [1, 99])
    return np.clip((img - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(img)


def write_report(pdf_path: str, png_path: str, entries: list[dict], summary: dict) -> None:
    """Write the PDF and PNG.

    ``entries``: one dict per class with ``class_number``, ``image`` (64x64), ``score``
    (None if not scored), ``count``, ``resolution_A``, ``selected``, ``reason``.
    ``summary``: ``particles_in``, ``particles_kept``, ``classes_in``, ``classes_kept``,
    ``threshold``, ``title``.
    """
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams["pdf.compression"] = 1  # zlib level: most of the time went into compressing
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    order = sorted(entries, key=lambda e: (e["score"] is None, -(e["score"] or 0), e["class_number"]))
    with PdfPages(pdf_path) as pdf:
        fig = _summary_page(plt, summary, [e["score"] for e in entries if e["score"] is not None])
        pdf.savefig(fig)
        plt.close(fig)
        pages = [order[i:i + TILES_PER_PAGE] for i in range(0, len(order), TILES_PER_PAGE)] or [[]]
        for n, page in enumerate(pages, 1):
            fig = _grid_page(plt, page, COLS, f"Classes by score, page {n} of {len(pages)}")
            pdf.savefig(fig)
            plt.close(fig)
    shown = order[:PNG_TILES]
    title = summary.get("title", "Ranked classes") + (f" (best {PNG_TILES} of {len(order)}; all in logfile.pdf)"
                                                      if len(order) > PNG_TILES else "")
    fig = _grid_page(plt, shown, 10, title)
    fig.savefig(png_path, dpi=80, format="png", pil_kwargs={"compress_level": 1})
    plt.close(fig)


def _summary_page(plt, s: dict, scores: list[float]):
    fig = plt.figure(figsize=(8.27, 11.69))
    fig.text(0.08, 0.95, s.get("title", "relion_external_rank"), fontsize=11, weight="bold", wrap=True)
    pin, pk = s["particles_in"], s["particles_kept"]
    lines = [f"Particles: {pk} of {pin} kept ({100 * pk / max(pin, 1):.1f} %)",
             f"Classes: {s['classes_kept']} of {s['classes_in']} kept ({s['classes_scored']} scored)",
             f"Score threshold: {s['threshold_text']}", f"Model: {s.get('model', '')}"]
    for i, line in enumerate(lines):
        fig.text(0.08, 0.90 - 0.03 * i, line, fontsize=11)
    ax = fig.add_axes([0.1, 0.45, 0.8, 0.3])
    ax.hist(scores, bins=np.linspace(0, 1, 21), color=GREY, edgecolor="black")
    if s.get("threshold") is not None:
        ax.axvline(s["threshold"], color=RED, lw=2, label=f"threshold {s['threshold']:.2f}")
        ax.legend()
    ax.set_xlabel("class score")
    ax.set_ylabel("classes")
    ax.set_title("Score histogram")
    return fig


def _hex_rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])


def _grid_page(plt, page: list[dict], cols: int, title: str):
    """One figure: an RGB mosaic (tiles framed in their colour) and one label per tile."""
    rows = max(1, -(-len(page) // cols))
    cell_h, cell_w = TILE_PX + 30, TILE_PX + 8  # room for the label under each tile
    mosaic = np.ones((rows * cell_h, cols * cell_w, 3))
    labels = []
    for i, e in enumerate(page):
        r, c = divmod(i, cols)
        y, x = r * cell_h + 4, c * cell_w + 4
        colour = GREEN if e["selected"] else (GREY if e["score"] is None else RED)
        mosaic[y - 3:y + TILE_PX + 3, x - 3:x + TILE_PX + 3] = _hex_rgb(colour)
        mosaic[y:y + TILE_PX, x:x + TILE_PX] = _tile(e["image"])[..., None]
        score = "not scored" if e["score"] is None else f"score {e['score']:.2f}"
        res = f"{e['resolution_A']:.1f} A" if e["resolution_A"] else "res n/a"
        text = f"#{e['class_number']}  {score}\n{e['count']} ptcls, {res}"
        if not e["selected"]:
            text += "\n" + e["reason"][:34]
        labels.append((x, y + TILE_PX + 6, text, colour))
    height = 11.69 if cols == COLS else max(3.0, 1.45 * rows + 0.6)
    fig = plt.figure(figsize=(8.27 if cols == COLS else 1.3 * cols, height))
    ax = fig.add_axes([0.02, 0.02, 0.96, 0.93])
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title, fontsize=12)
    for x, y, text, colour in labels:
        ax.text(x, y, text, fontsize=5.5, color=colour, va="top", linespacing=1.3)
    return fig
