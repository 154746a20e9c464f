"""``python -m ranker ...``: the External job, as the ``relion_external_rank`` command."""

import sys

from ranker.runtime.job import main

if __name__ == "__main__":
    sys.exit(main())
