"""``python -m ranker ...``: the External job, as the ``relion_external_rank`` command."""

import signal


def _record(signum, frame):
    """Until the job installs its own handlers: remember a stop signal (see relion_external_rank.py)."""
    _record.received.append(signum)


_record.received = []
if __name__ == "__main__":
    for _sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                 signal.SIGXCPU):
        if signal.getsignal(_sig) is not signal.SIG_IGN:
            signal.signal(_sig, _record)

from ranker.runtime.job import program  # noqa: E402

if __name__ == "__main__":
    program()
