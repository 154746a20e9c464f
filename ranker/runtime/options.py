"""Command-line options as RELION's External job passes them.

RELION builds ``EXE --o JOB/ [--in_parts F] [--LABEL VALUE ...] --j N [other args]
[--pipeline_control JOB/]``; a param with an empty value arrives as a bare ``--LABEL``.
So flags accept no value as well as true/false/yes/no/1/0, and every option is
``--name [value]``. :func:`parse_options` returns :class:`Options` or raises
:class:`OptionError` with one line naming the problem (or "help" / "version" for
``--help`` / ``--version``, which the job answers and exits 0).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field


class OptionError(ValueError):
    """A bad command line: the message says which option and why."""


@dataclass
class Options:
    out_dir: str = ""
    in_optimiser: str | None = None
    in_parts: str | None = None
    threads: int = 1
    min_score: float | str = 0.5
    max_score: float = 999.0
    select_min_nr_particles: int = -1
    select_min_nr_classes: int = -1
    relative_thresholds: bool = False
    device: str = "auto"
    model: str | None = None
    job_context: bool = True
    write_features: bool = False
    ignored: list[str] = field(default_factory=list)


_TRUE = {"", "true", "yes", "1", "on", "y"}
_FALSE = {"false", "no", "0", "off", "n"}
# RELION's other input fields: accepted and ignored, with a note in run.out.
_IGNORED = ("in_mics", "in_movies", "in_coords", "in_3dref", "in_mask")
# name -> (Options attribute, converter name, help)
SPEC = {
    "o": ("out_dir", "str", "output (job) directory, e.g. External/job012/"),
    "in_optimiser": ("in_optimiser", "str", "Class2D run_itNNN_optimiser.star, or a Class2D job directory (its final "
                     "iteration is ranked; as a param, what a Scheme or pipeline can name)"),
    "in_parts": ("in_parts", "str", "Class2D run_itNNN_data.star (optimiser/model read beside it), or a Class2D "
                 "job directory (its final iteration is ranked)"),
    "j": ("threads", "int", "threads for numpy/torch (RELION always passes it)"),
    "min_score": ("min_score", "score", "keep classes scoring at least this (0.5; 'auto' = per-job threshold)"),
    "max_score": ("max_score", "float", "keep classes scoring at most this (999)"),
    "select_min_nr_particles": ("select_min_nr_particles", "int", "add best classes until this many particles (-1 off)"),
    "select_min_nr_classes": ("select_min_nr_classes", "int", "add best classes until this many classes (-1 off)"),
    "relative_thresholds": ("relative_thresholds", "flag", "thresholds are fractions of the best score"),
    "device": ("device", "str", "auto, cpu, cuda or cuda:N"),
    "model": ("model", "str", "weights file (default: the shipped model in models/); 'relion5' = RELION-5's "
                              "downloaded v1.0.ckpt in $TORCH_HOME/hub/checkpoints/relion_class_ranker/"),
    "job_context": ("job_context", "flag", "score each class beside the job's best class, if the model has that "
                                           "stage (default true; false = each class alone, as RELION)"),
    "write_features": ("write_features", "flag", "also write features.star and features_images.mrcs"),
    "pipeline_control": (None, "str", "added by RELION; names the job directory"),
}


def usage() -> str:
    lines = ["usage: relion_external_rank.py --o External/jobNNN/ (--in_parts DATA.star | --in_optimiser OPT.star) "
             "[options]", "", "options:"]
    lines += [f"  --{name:<26}{help_}" for name, (_a, _c, help_) in SPEC.items()]
    lines += [f"  --{name:<26}accepted and ignored (RELION input field)" for name in _IGNORED]
    lines += [f"  --{'help':<26}print this list and exit", f"  --{'version':<26}print the version and exit"]
    return "\n".join(lines)


def _convert(name: str, kind: str, value: str | None):
    if kind == "flag":
        v = (value or "").strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise OptionError(f"--{name}: expected no value or true/false/yes/no/1/0, got {value!r}")
    if value is None or value == "":
        raise OptionError(f"--{name} needs a value")
    try:
        if kind == "int":
            return int(float(value)) if float(value).is_integer() else int(value)
        if kind == "score" and value.strip().lower() == "auto":
            return "auto"
        if kind in ("float", "score"):
            number = float(value)
            if not math.isfinite(number):
                raise OptionError(f"--{name} {value}: needs a finite number")
            return number
    except (ValueError, OverflowError) as exc:
        if isinstance(exc, OptionError):
            raise
        raise OptionError(f"--{name}: {value!r} is not a {'number' if kind != 'int' else 'whole number'}") from None
    return value


def _is_option(token: str) -> bool:
    return token.startswith("--") and len(token) > 2


def parse_options(argv: list[str]) -> Options:
    """Parse RELION's External-job command line (see module docstring)."""
    opts = Options()
    seen: dict[str, str | None] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not _is_option(token):
            raise OptionError(f"unexpected argument {token!r} (options are --name value)")
        name, eq, inline = token[2:].partition("=")
        if eq:
            value = inline
            i += 1
        elif i + 1 < len(argv) and not _is_option(argv[i + 1]):
            value = argv[i + 1]
            i += 2
        else:
            value = None
            i += 1
        if name in ("h", "help"):
            raise OptionError("help")
        if name == "version":
            raise OptionError("version")
        if name in _IGNORED:
            opts.ignored.append(f"--{name} {value or ''}".strip())
            continue
        if name not in SPEC:
            valid = ", ".join(f"--{n}" for n in list(SPEC) + list(_IGNORED))
            raise OptionError(f"unknown option --{name}; valid options: {valid}")
        if name in seen and seen[name] != value:
            raise OptionError(f"--{name} is given twice, as {_shown(seen[name])} and {_shown(value)}; give it once")
        seen[name] = value
    for name, value in seen.items():
        attr, kind, _help = SPEC[name]
        converted = _convert(name, kind, value)
        if attr:
            setattr(opts, attr, converted)
    if not opts.out_dir:
        opts.out_dir = seen.get("pipeline_control") or ""
    if not opts.out_dir:
        raise OptionError("--o is required (the External job directory, e.g. External/job012/)")
    if opts.threads < 1:
        raise OptionError(f"--j {opts.threads}: needs at least 1 thread")
    if opts.min_score != "auto" and opts.min_score > opts.max_score:
        raise OptionError(f"--min_score {opts.min_score:g} is above --max_score {opts.max_score:g}: no class could "
                          "be selected")
    return opts


def usable_threads(requested: int) -> tuple[int, str | None]:
    """``--j`` lowered to the cores this process may use (torch and scipy were handed e.g. 1e20
    threads), with a note for run.out when lowered."""
    cores = _cores()
    if requested > cores:
        return cores, f"Note: --j {requested} is more than the {cores} core(s) this job may use; using {cores}"
    return requested, None


def _shown(value: str | None) -> str:
    return "(no value)" if value is None else repr(value)


def _cores() -> int:
    """The cores this process may run on (its CPU affinity, as a batch system sets it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
