"""The development commands, one module each (``add_args(parser)``, ``main(args)``, usage docstring).

Run as ``python -m ranker.develop COMMAND [--help]``.
"""

# In the order the work flows: make data, check it against real data, train, evaluate.
COMMANDS = ("structures", "simulate", "corpus", "compare_classifiers", "realism", "real_fixture", "train",
            "fit_context", "evaluate", "oracle_precision", "particle_stats", "freeze")


class UsageError(Exception):
    """A command's arguments do not fit together; printed as an argparse usage error (exit 2)."""
