"""Run a step in a forked process, to overlap it with work in this one.

The job's slow fixed costs that do not depend on the particle stream -- running the class
images through the networks (and, on a GPU or with a torch weights file, importing torch) and
drawing the report -- run in child processes while this one streams data.star. Where fork is unavailable the step simply runs
in this process when its result is asked for.
"""

from __future__ import annotations

import multiprocessing as mp
import os


_LIVE: set = set()  # Background steps started and not yet joined (stop_all ends them)


def _as_child(parent_pid: int) -> None:
    """In a forked child: the default action for SIGTERM, SIGINT, SIGHUP and the other signals the
    parent turns into an exception (the parent's
    handlers raise an exception meant for the parent's cleanup; a child is ended by its parent, or
    with it by a signal sent to the whole process group), and, on Linux, SIGKILL when the parent
    dies, even by SIGKILL, so that no child outlives the job."""
    import signal

    for sig in _signals():  # (done at the fork already; again in case of another start method)
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


_CHILD_DEFAULT = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGXCPU")


def _signals() -> list:
    import signal

    return [getattr(signal, name) for name in _CHILD_DEFAULT if hasattr(signal, name)]


def _block_signals_for_fork() -> set:
    """Block the job's signals; returns the mask before (as ``signal.pthread_sigmask``)."""
    import signal

    return signal.pthread_sigmask(signal.SIG_BLOCK, _signals())


_STARTING = False  # True while Background starts its child: the parent's unblock is left to it


def _unblock_signals_in_parent() -> None:
    """After a fork, in the parent. Not while :class:`Background` starts a child: a signal that
    arrived during the fork would be delivered here, in an at-fork hook, whose exceptions Python
    ignores (the job's JobInterrupted was lost and the job died on its killed child instead);
    Background unblocks in ordinary code."""
    import signal

    if not _STARTING:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _signals())


def _default_signals_at_fork() -> None:
    """In a child right after any fork, before multiprocessing's own start-up there: the default
    action for the signals the parent turns into JobInterrupted, set while they are blocked (from
    just before the fork), then unblocked. Without it a signal in that window ran the parent's
    handler in the child, which printed a traceback to run.err instead of ending quietly."""
    import signal

    for sig in _signals():
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _signals())


os.register_at_fork(before=_block_signals_for_fork, after_in_parent=_unblock_signals_in_parent,
                    after_in_child=_default_signals_at_fork)


def _child(conn, fn, args, parent_pid):
    _as_child(parent_pid)
    try:
        conn.send((True, fn(*args)))
    except BaseException as exc:  # noqa: BLE001 - handed to the parent, which re-raises it
        try:
            conn.send((False, exc))
        except Exception:  # an exception that cannot be pickled
            conn.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))
    finally:
        conn.close()
        os._exit(0)  # leave at once: no atexit handlers or buffers inherited from the parent


class Background:
    """``fn(*args)`` started now; :meth:`result` waits for it and returns its value or
    re-raises its exception. :meth:`cancel` stops it (used on abort or failure)."""

    def __init__(self, fn, *args):
        self.fn, self.args, self.proc = fn, args, None
        if "fork" in mp.get_all_start_methods():
            ctx = mp.get_context("fork")
            self.recv, send = ctx.Pipe(duplex=False)
            self.proc = ctx.Process(target=_child, args=(send, fn, args, os.getpid()), daemon=True)
            _LIVE.add(self)
            self._start(send)

    def _start(self, send) -> None:
        """Start the child with the job's signals blocked from before the fork until it is made; one
        sent meanwhile reaches this process's handler when they are unblocked, here, where its
        exception (JobInterrupted) propagates."""
        global _STARTING
        import signal

        previous = _block_signals_for_fork()
        _STARTING = True
        try:
            self.proc.start()
            send.close()
        finally:
            _STARTING = False
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def result(self):
        if self.proc is None:
            return self.fn(*self.args)
        try:
            ok, value = self.recv.recv()
        except EOFError:
            self.proc.join()
            _LIVE.discard(self)
            code = self.proc.exitcode
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"died (exit code {code})"
            raise RuntimeError(f"background step {self.fn.__name__} {how}") from None
        self.proc.join()
        _LIVE.discard(self)
        if not ok:
            raise value
        return value

    def cancel(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
        _LIVE.discard(self)


def stop_all() -> None:
    """End every background step still running (the job's cleanup after a failure or a signal)."""
    for step in list(_LIVE):
        step.cancel()


class Inbox:
    """A one-shot channel from this process to a Background child (made before the fork).

    :meth:`put` first closes this process's copy of the read end, so that a child which
    has already died (e.g. a bad weights file) makes the send fail at once instead of
    blocking; the child's own error is then raised by ``Background.result``.
    """

    def __init__(self):
        self._forked = "fork" in mp.get_all_start_methods()
        self._value = None
        if self._forked:
            self._recv, self._send = mp.get_context("fork").Pipe(duplex=False)

    def put(self, value) -> None:
        self._value = value
        if self._forked:
            self._recv.close()
            try:
                self._send.send(value)
            except OSError:  # the child is gone; Background.result says why
                pass
            finally:
                self._send.close()

    def get(self):
        if not self._forked:
            return self._value
        self._send.close()
        return self._recv.recv()
