"""``python -m ranker ...``: the External job, as the ``relion_external_rank`` command."""

from ranker.runtime.job import program

if __name__ == "__main__":
    program()
