#!/usr/bin/env python3
"""RELION External job: rank 2D class averages and select the good ones.

Paste this file's path into RELION's External tab ("External executable"), or run

    relion_external_rank.py --o External/job012/ --in_parts Class2D/job008/run_it025_data.star --j 4

from the RELION project directory. ``--help`` lists the options; README.md explains them.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

from ranker.runtime.job import program  # noqa: E402

if __name__ == "__main__":
    program()
