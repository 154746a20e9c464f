"""RELION's External-job protocol: exit files, abort polling, output nodes, atomic outputs.

RELION ignores exit codes: a job ends only when ``RELION_JOB_EXIT_SUCCESS``,
``RELION_JOB_EXIT_FAILURE`` or ``RELION_JOB_EXIT_ABORTED`` appears in the job directory,
and the GUI's Abort button only creates ``RELION_JOB_ABORT_NOW`` there
(``shared/docs/relion_external_job_protocol.md``).
"""

from __future__ import annotations

import os

from .star import format_block

EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"
NODES_FILE = "RELION_OUTPUT_NODES.star"

# Node types: RELION 3.1 integer codes and RELION 4/5 labels, both written in one table
# (the only form that registers correct types in both versions).
NODE_PARTICLES = (3, "ParticleGroupMetadata.star.relion")
NODE_CLASS_AVERAGES = (5, "Image2DGroupMetadata.star.relion.classaverages")
NODE_OPTIMISER = (9, "OptimiserData.star.relion.select")
NODE_PDF_LOG = (13, "LogFile.pdf.relion")


class JobAborted(Exception):
    """The user pressed Abort (RELION_JOB_ABORT_NOW appeared)."""


class JobDir:
    """The External job's output directory (``--o``), relative to the project root."""

    def __init__(self, path: str):
        path = path.rstrip("/") or "."
        self.path = path
        self.pending: list[tuple[str, str]] = []

    def file(self, name: str) -> str:
        """Path of a file in the job dir, relative to the project root (as RELION names nodes)."""
        return os.path.join(self.path, name)

    def start(self) -> None:
        """Create the directory and remove exit files left by an earlier run."""
        os.makedirs(self.path, exist_ok=True)
        for name in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED):
            if os.path.lexists(self.file(name)):
                os.remove(self.file(name))

    def check_abort(self) -> None:
        """Raise JobAborted if RELION asked the job to stop."""
        if os.path.exists(self.file(ABORT_NOW)):
            raise JobAborted()

    # -- atomic outputs: everything is written under a temporary name, renamed at the end
    def temp(self, name: str) -> str:
        """A temporary path for output ``name``; :meth:`commit` renames it into place."""
        final = self.file(name)
        tmp = self.file(f".{name}.part")
        self.pending.append((tmp, final))
        return tmp

    def commit(self) -> None:
        for tmp, final in self.pending:
            os.replace(tmp, final)
        self.pending.clear()

    def discard(self) -> None:
        for tmp, _final in self.pending:
            if os.path.lexists(tmp):
                os.remove(tmp)
        self.pending.clear()

    def remove_outputs(self, names) -> None:
        """Remove outputs of an earlier run so old and new results never mix."""
        for name in names:
            if os.path.lexists(self.file(name)):
                os.remove(self.file(name))

    def finish(self, exit_name: str) -> None:
        if exit_name == EXIT_ABORTED and os.path.exists(self.file(ABORT_NOW)):
            os.remove(self.file(ABORT_NOW))
        os.makedirs(self.path, exist_ok=True)
        with open(self.file(exit_name), "w"):
            pass


def nodes_star(nodes: list[tuple[str, tuple[int, str]]]) -> str:
    """RELION_OUTPUT_NODES.star text: name (relative to the project root), int type, label."""
    return format_block("output_nodes", ["rlnPipeLineNodeName", "rlnPipeLineNodeType", "rlnPipeLineNodeTypeLabel"],
                        [[name, code, label] for name, (code, label) in nodes])
