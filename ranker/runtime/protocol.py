"""RELION's External-job protocol: exit files, abort polling, output nodes, atomic outputs,
and what the job promises whatever happens to it.

RELION ignores exit codes: a job ends only when ``RELION_JOB_EXIT_SUCCESS``,
``RELION_JOB_EXIT_FAILURE`` or ``RELION_JOB_EXIT_ABORTED`` appears in the job directory,
and the GUI's Abort button only creates ``RELION_JOB_ABORT_NOW`` there
(``shared/docs/relion_external_job_protocol.md``).

The job directory (``--o``) is handled by :class:`JobDir`, in this order:

* :meth:`JobDir.claim` -- before anything is written: refuse (:class:`JobRefused`, one line,
  nothing touched, no exit file) a directory that belongs to another job (its ``job.star`` names
  another job type, or it holds outputs such as ``particles.star`` that no run of ours wrote) or
  that another run of ours is using (an ``flock`` on ``.relion_external_rank.lock``: the kernel
  drops it when a process dies, so a killed run never blocks the next one); then remove the exit
  files and the temporary files an earlier, killed run left.
* outputs are written under temporary names (:meth:`JobDir.temp`; :meth:`JobDir.writing` makes a
  write error name the output, not an input) and renamed together by :meth:`JobDir.commit`, the
  point of no return; outputs of an earlier run that this one did not write are removed then.
* after a failure, an abort or a signal: :meth:`JobDir.discard` and :meth:`JobDir.remove_outputs`
  leave no partial or stale output. No file this run read as an input (:mod:`ranker.runtime.inputs`)
  is ever removed or replaced.
* :meth:`JobDir.finish` writes the one exit file; :meth:`JobDir.release` drops the lock.

:class:`Interruptions` turns SIGTERM (a batch system's kill, scancel, a walltime limit), SIGINT
(Ctrl-C) and SIGHUP into one :class:`JobInterrupted` exception in the main process, so that
they end the job through the same cleanup as any failure.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager

from .inputs import is_input
from .star import format_block

EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
EXIT_FILES = (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED)
ABORT_NOW = "RELION_JOB_ABORT_NOW"
NODES_FILE = "RELION_OUTPUT_NODES.star"
LOCK_FILE = ".relion_external_rank.lock"

# Node types: RELION 3.1 integer codes and RELION 4/5 labels, both written in one table
# (the only form that registers correct types in both versions).
NODE_PARTICLES = (3, "ParticleGroupMetadata.star.relion")
NODE_CLASS_AVERAGES = (5, "Image2DGroupMetadata.star.relion.classaverages")
NODE_OPTIMISER = (9, "OptimiserData.star.relion.select")
NODE_PDF_LOG = (13, "LogFile.pdf.relion")


class JobAborted(Exception):
    """The user pressed Abort (RELION_JOB_ABORT_NOW appeared)."""


class JobRefused(Exception):
    """The job directory cannot be used (another job's, or in use by another run): one line on
    stderr and nothing else, no exit file (the directory is not ours to mark)."""


class OutputError(Exception):
    """An output could not be written (disk full, no permission): the message names the output."""


class JobInterrupted(BaseException):
    """A signal (SIGTERM, SIGINT, SIGHUP) stopped the job. A BaseException, as KeyboardInterrupt,
    so that no ``except Exception`` on the way turns it into another error."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {SIGNAL_TEXT.get(self.signum, signal.Signals(self.signum).name)}"


SIGNAL_TEXT = {signal.SIGTERM: "SIGTERM (killed from outside: scancel, a batch system's walltime limit, kill)",
               signal.SIGINT: "SIGINT (Ctrl-C)",
               signal.SIGHUP: "SIGHUP (the terminal or session that started the job closed)",
               signal.SIGQUIT: "SIGQUIT (Ctrl-\\)",
               signal.SIGUSR1: "SIGUSR1 (a batch system's warning before it kills the job, e.g. SGE -notify)",
               signal.SIGUSR2: "SIGUSR2 (a batch system's warning before it kills the job, e.g. SGE -notify, LSF)",
               signal.SIGXCPU: "SIGXCPU (the CPU time limit was reached)"}


class Interruptions:
    """SIGTERM, SIGINT and SIGHUP (and SIGQUIT, SIGUSR1/2 and SIGXCPU, which batch systems send before
    a kill and whose default action is death without an exit file) raise one :class:`JobInterrupted`
    in the main thread (Python runs signal handlers there, between bytecodes, also while it waits in a
    system call).

    Only the first signal raises; the handler then blocks itself, so the cleanup that follows
    cannot be interrupted in turn (later signals are recorded in ``pending``). :meth:`block` does
    the same from the outside: before the final renames, and at the start of every cleanup.
    A signal the job was started with ignored (``nohup``) stays ignored."""

    def __init__(self):
        self.blocked = False
        self.pending: list[int] = []
        self.previous: dict[int, object] = {}
        self.early: list[int] = []
        self.raised: int | None = None  # the signal whose JobInterrupted the handler raised

    def install(self) -> Interruptions:
        """Take over the signals. An entry script (relion_external_rank.py, ``python -m ranker``)
        records signals from its first line on, in a handler with a ``received`` list: they are
        replayed (:meth:`replay`), so a job stopped while Python starts still writes its exit file."""
        global _ACTIVE
        if threading.current_thread() is threading.main_thread():
            recorders = []
            for sig in SIGNAL_TEXT:
                current = signal.getsignal(sig)
                if isinstance(getattr(current, "received", None), list) and current not in recorders:
                    recorders.append(current)
                if current is not signal.SIG_IGN:
                    self.previous[sig] = signal.signal(sig, self._handler)
            self.early = [s for r in recorders for s in r.received]
            # over a file-size limit a write fails with EFBIG (named as the output being written)
            # instead of the default action, death without an exit file
            self.previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _ACTIVE = self
        return self

    def restore(self) -> None:
        global _ACTIVE
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()
        _ACTIVE = None

    def block(self) -> None:
        self.blocked = True

    def replay(self) -> None:
        """Raise JobInterrupted for a signal received before :meth:`install` (see there)."""
        if self.early and not self.blocked:
            self.blocked = True
            raise JobInterrupted(self.early[0])

    def as_raised(self, exc: BaseException) -> BaseException:
        """What an exception that ended the job stands for: the :class:`JobInterrupted` the handler
        raised, when another exception replaced it on the way out (numpy turns whatever its import
        meets into an ImportError, so a signal during a lazy ``import numpy`` arrived as one)."""
        if self.raised is not None and not isinstance(exc, JobInterrupted):
            return JobInterrupted(self.raised)
        return exc

    def _handler(self, signum, _frame) -> None:
        if self.blocked:
            self.pending.append(signum)
            return
        self.blocked = True
        self.raised = signum
        raise JobInterrupted(signum)


_ACTIVE: Interruptions | None = None


def block_interruptions() -> None:
    """From here on a signal no longer stops the job (used before the final renames)."""
    if _ACTIVE is not None:
        _ACTIVE.block()


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class JobDir:
    """The External job's output directory (``--o``), relative to the project root."""

    def __init__(self, path: str):
        path = path.rstrip("/") or "."
        self.path = path
        self.pending: list[tuple[str, str]] = []
        self.lock_fd: int | None = None

    def file(self, name: str) -> str:
        """Path of a file in the job dir, relative to the project root (as RELION names nodes)."""
        return os.path.join(self.path, name)

    def temp_name(self, name: str) -> str:
        return self.file(f".{name}.part")

    # -- claiming the directory
    def claim(self, outputs) -> list[str]:
        """Make the directory ours for this run (see the module docstring); returns notes for run.out.
        Raises JobRefused, having touched nothing, if the directory is not ours to use."""
        if os.path.lexists(self.path) and not os.path.isdir(self.path):
            raise JobRefused(f"{self.path}: --o exists and is not a directory")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise JobRefused(f"{self.path}: cannot create the job directory ({exc.strerror})") from None
        refusal = self.foreign(outputs)
        if refusal:
            raise JobRefused(refusal)
        notes = self._lock()
        for name in EXIT_FILES:
            if os.path.lexists(self.file(name)):
                os.remove(self.file(name))
        left = [self.temp_name(n) for n in outputs if os.path.lexists(self.temp_name(n))]
        for tmp in left:
            os.remove(tmp)
        if left:
            notes.append(f"Note: removed {len(left)} temporary file(s) left by an earlier run that was killed: "
                         + ", ".join(os.path.basename(t) for t in left))
        return notes

    def foreign(self, outputs) -> str | None:
        """Why the directory is not ours to write in, or None. It is another job's if its job.star
        names a job type other than External, or if it holds one of our output names while no
        RELION_OUTPUT_NODES.star of ours is there (that file is renamed into place first, so
        every run of ours that put an output in place left it)."""
        job_type = relion_job_type(self.file("job.star"))
        if job_type is not None and job_type not in ("99", "relion.external"):
            return (f"{self.file('job.star')}: {self.path} is the directory of another RELION job "
                    f"(type {job_type}); give the ranker its own External job directory as --o")
        present = [n for n in outputs if os.path.lexists(self.file(n))]
        if present and not self._ours():
            more = f" (and {len(present) - 1} more of the ranker's output names)" if len(present) > 1 else ""
            return (f"{self.file(present[0])}: {self.path} already holds {present[0]}{more}, not written by "
                    "relion_external_rank; refusing to replace another job's outputs (give a new --o)")
        return None

    def _ours(self) -> bool:
        """Our RELION_OUTPUT_NODES.star (its rank_optimiser.star node), or our lines in run.out
        (RELION appends the job's stdout there: a failed run that kept an input leaves no nodes file)."""
        for name, mark in ((NODES_FILE, b"rank_optimiser.star"), ("run.out", b"relion_external_rank ")):
            try:
                with open(self.file(name), "rb") as fh:
                    if mark in fh.read(1 << 16):
                        return True
            except OSError:
                pass
        return False

    def _lock(self) -> list[str]:
        """Hold an exclusive flock on LOCK_FILE until :meth:`release` (or the process's death).
        The file is removed on release; a holder checks that the path still names the file it
        locked (a run that opened it just before it was removed must not run alongside)."""
        path = self.file(LOCK_FILE)
        for _attempt in range(20):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise JobRefused(f"{path}: cannot write in the job directory ({exc.strerror})") from None
            try:
                import fcntl
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.lock_fd = fd  # held from here (a signal now ends in the cleanup that releases it)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "just starting"
                os.close(fd)
                raise JobRefused(f"{self.path}: another run of relion_external_rank is using this directory "
                                 f"({holder}); wait for it to end, or give another --o") from None
            except (OSError, ImportError) as exc:  # a filesystem without locks (e.g. Lustre without -o flock)
                self.lock_fd = fd
                return [f"Note: {path}: cannot lock ({getattr(exc, 'strerror', exc)}); a second run in this "
                        "directory at the same time would not be stopped"]
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if not same:  # removed by the run that just ended: lock the new file
                self.lock_fd = None
                os.close(fd)
                continue
            try:  # who holds the lock, for the refusal of a second run (best effort: the disk may be full)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                              f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
            except OSError:
                pass
            self.lock_fd = fd
            return []
        raise JobRefused(f"{path}: could not lock the job directory (other runs keep starting in it)")

    def release(self) -> None:
        """Remove the lock file and drop the lock (in that order: see :meth:`_lock`)."""
        if self.lock_fd is None:
            return
        try:
            os.remove(self.file(LOCK_FILE))
        except OSError:
            pass
        os.close(self.lock_fd)
        self.lock_fd = None

    def check_abort(self) -> None:
        """Raise JobAborted if RELION asked the job to stop."""
        if os.path.exists(self.file(ABORT_NOW)):
            raise JobAborted()

    # -- atomic outputs: everything is written under a temporary name, renamed at the end
    def temp(self, name: str) -> str:
        """A temporary path for output ``name``; :meth:`commit` renames it into place."""
        final = self.file(name)
        tmp = self.temp_name(name)
        self.pending.append((tmp, final))
        return tmp

    @contextmanager
    def writing(self, *names: str):
        """Around the writing of outputs ``names``: an OSError writing them (disk full, quota,
        read-only, permission) becomes an OutputError naming the output, not the input being
        read at the time (shutil, for one, names its source)."""
        temps = {self.temp_name(n): self.file(n) for n in names}
        try:
            yield
        except OSError as exc:
            named = temps.get(exc.filename) or temps.get(getattr(exc, "filename2", None))
            if named is None and exc.errno not in _WRITE_ERRNOS:
                raise
            final = named or self.file(names[0])
            raise OutputError(f"{final}: cannot write ({exc.strerror or exc})") from None

    def commit(self, outputs) -> None:
        """Rename every temporary output into place (RELION_OUTPUT_NODES.star first: it marks
        the directory as ours), then remove outputs of an earlier run that this one did not
        write. The point of no return: signals no longer stop the job from here."""
        block_interruptions()
        for _tmp, final in self.pending:
            if is_input(final):
                raise OutputError(f"{final}: is an input of this run and would be replaced by its output; "
                                  "give the ranker another --o")
        order = sorted(self.pending, key=lambda p: os.path.basename(p[1]) != NODES_FILE)
        with self.writing(*[os.path.basename(final) for _tmp, final in order]):
            for tmp, final in order:
                os.replace(tmp, final)
        written = {final for _tmp, final in self.pending}
        self.pending.clear()
        self.remove_outputs([n for n in outputs if self.file(n) not in written])

    def discard(self) -> None:
        for tmp, _final in self.pending:
            if os.path.lexists(tmp):
                os.remove(tmp)
        self.pending.clear()

    def remove_outputs(self, names) -> list[str]:
        """Remove outputs of an earlier run so that old and new results never mix; a file this
        run read as an input is kept (returned)."""
        kept = []
        for name in names:
            path = self.file(name)
            if os.path.lexists(path):
                if is_input(path):
                    kept.append(path)
                else:
                    os.remove(path)
        return kept

    def finish(self, exit_name: str) -> None:
        """Write the exit file (the only one in the directory)."""
        if exit_name == EXIT_ABORTED and os.path.exists(self.file(ABORT_NOW)):
            os.remove(self.file(ABORT_NOW))
        os.makedirs(self.path, exist_ok=True)
        for name in EXIT_FILES:
            if name != exit_name and os.path.lexists(self.file(name)):
                os.remove(self.file(name))
        with open(self.file(exit_name), "w"):
            pass


def relion_job_type(job_star: str) -> str | None:
    """The job type a RELION job.star names: ``_rlnJobTypeLabel`` (4/5, e.g. ``relion.external``)
    or ``_rlnJobType`` (3.1, an integer; External is 99); None without a readable job.star."""
    try:
        with open(job_star, "rb") as fh:
            head = fh.read(1 << 14).decode(errors="replace")
    except OSError:
        return None
    for line in head.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("_rlnJobTypeLabel", "_rlnJobType"):
            return parts[1]
    return None


def nodes_star(nodes: list[tuple[str, tuple[int, str]]]) -> str:
    """RELION_OUTPUT_NODES.star text: name (relative to the project root), int type, label.
    Its rank_optimiser.star node marks the directory as the ranker's (:meth:`JobDir.foreign`)."""
    return format_block(
        "output_nodes", ["rlnPipeLineNodeName", "rlnPipeLineNodeType", "rlnPipeLineNodeTypeLabel"],
        [[name, code, label] for name, (code, label) in nodes])
