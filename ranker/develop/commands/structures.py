"""Fetch real coordinate files from Debian packages for the simulator.

    python -m ranker.develop structures DIR [--names 1ake,...]

Downloads Debian packages that ship real coordinate files (``apt-get download`` + ``dpkg -x``)
and keeps the selected structures as DIR/NAME.npz + DIR/structures.json
(:mod:`ranker.develop.simulate.structures`).
"""

from __future__ import annotations


def add_args(p) -> None:
    from ranker.develop.simulate.structures import DEBIAN_STRUCTURES

    p.add_argument("dest", help="directory to write the structures to")
    p.add_argument("--names", default="", help="comma-separated subset of: " + ",".join(DEBIAN_STRUCTURES))


def main(a) -> int:
    from ranker.develop.simulate.structures import fetch_structures

    fetch_structures(a.dest, [n for n in a.names.split(",") if n] or None)
    return 0
