"""``python -m ranker.develop COMMAND [ARGS]``: the model-development commands (``--help`` lists them)."""

from __future__ import annotations

import argparse
import importlib
import sys

from ranker import __version__
from ranker.develop.commands import COMMANDS, UsageError
from ranker.runtime.star import StarError


def _summary(module) -> str:
    return (module.__doc__ or "").strip().splitlines()[0].rstrip(".")


def main(argv=None) -> int:
    modules = {name: importlib.import_module(f"ranker.develop.commands.{name}") for name in COMMANDS}
    p = argparse.ArgumentParser(prog="python -m ranker.develop",
                                description="Model development for relion_external_rank (not needed to run the job).")
    p.add_argument("--version", action="version", version=f"relion_external_rank {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {}
    for name, module in modules.items():
        parsers[name] = sub.add_parser(name, help=_summary(module), description=module.__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_args(parsers[name])
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)[1:]  # the arguments after the command's name
    try:
        return modules[args.command].main(args) or 0
    except UsageError as exc:
        parsers[args.command].error(str(exc))
    except StarError as exc:  # a damaged or wrong input file: one line naming it, not a traceback
        print(f"python -m ranker.develop {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
