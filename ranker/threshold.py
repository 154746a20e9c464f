"""Data-adaptive score threshold for ``--min_score auto``."""
