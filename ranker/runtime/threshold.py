"""A per-job score threshold for ``--min_score auto``.

The model's scores are trained so that 0.5 means "half of the particles are real". On a
real dataset they can still drift as a whole (different microscope, ice, particle), which
moves both the good and the junk classes. ``auto`` looks for the natural gap in this job's
scores: it splits the sorted scores in two groups with the largest between-group variance
(Otsu's rule) and puts the threshold halfway between the groups, but

* only if the two groups are clearly apart (means differ by at least ``MIN_SEPARATION``),
  otherwise the job has no gap (all good, all junk, or a continuum) and 0.5 is used;
* clamped to [``LOWEST``, ``HIGHEST``], so the threshold never strays far from the meaning
  of the score.

``--select_min_nr_particles`` / ``--select_min_nr_classes`` still apply after it.
"""

from __future__ import annotations

import numpy as np

DEFAULT = 0.5
LOWEST, HIGHEST = 0.3, 0.7
MIN_SEPARATION = 0.3


def auto_threshold(scores) -> float:
    """Threshold for one job's class scores (scored classes only)."""
    s = np.sort(np.asarray(scores, float))
    if len(s) < 3:
        return DEFAULT
    best_var, best_cut = -1.0, None
    for cut in range(1, len(s)):
        lo, hi = s[:cut], s[cut:]
        var = len(lo) * len(hi) * (hi.mean() - lo.mean()) ** 2
        if var > best_var:
            best_var, best_cut = var, cut
    lo, hi = s[:best_cut], s[best_cut:]
    if hi.mean() - lo.mean() < MIN_SEPARATION:
        return DEFAULT
    return float(np.clip((lo.max() + hi.min()) / 2, LOWEST, HIGHEST))
