"""The ranked-classes report (logfile.pdf / logfile.png)."""
import time

import numpy as np

from ranker.runtime.report import TILES_PER_PAGE, rejection_reason, write_report


def test_report_for_250_classes_is_paged_and_quick(tmp_path):
    rng = np.random.default_rng(0)
    entries = [{"class_number": k, "image": rng.normal(size=(64, 64)), "score": float(rng.uniform()) if k % 7 else None,
                "count": int(rng.integers(0, 5000)), "resolution_A": 12.5, "selected": k % 3 == 0,
                "reason": "low score (0.10 < 0.50)"} for k in range(1, 251)]
    summary = {"particles_in": 10 ** 6, "particles_kept": 400000, "classes_in": 250, "classes_kept": 83,
               "classes_scored": 215, "threshold": 0.5, "threshold_text": "0.5", "title": "test"}
    t0 = time.perf_counter()
    write_report(str(tmp_path / "l.pdf"), str(tmp_path / "l.png"), entries, summary)
    elapsed = time.perf_counter() - t0
    pdf = open(tmp_path / "l.pdf", "rb").read()
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") >= 1
    n_pages = pdf.count(b"/Type /Page") - pdf.count(b"/Type /Pages")
    assert n_pages == 1 + -(-250 // TILES_PER_PAGE)
    assert open(tmp_path / "l.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    print(f"report for 250 classes: {elapsed:.2f} s")


def test_rejection_reasons():
    assert rejection_reason(0.0, 0, None, 0.5) == "empty class"
    assert "not scored" in rejection_reason(0.0, 7, None, 0.5)
    assert rejection_reason(0.2, 100, {"EdgeSignal": 0.4}, 0.5) == "low score (0.20 < 0.50); signal at mask edge"
    assert rejection_reason(0.2, 100, {"ProteinArea": 0}, 0.5).endswith("no particle density")
