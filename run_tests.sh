#!/usr/bin/env bash
# The test command (README, .ci/run): installs Debian's relion for the integration tests if it is
# missing, then runs the whole pytest suite with the environment made by ./install.sh.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
if ! command -v relion_refine >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -q relion >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q relion >/dev/null; }) \
      || echo "run_tests.sh: could not install Debian's relion; tests marked 'relion' will fail" >&2
  else
    echo "run_tests.sh: relion_refine not found and not root: install Debian's relion (apt-get install relion)" >&2
  fi
fi
PY="$HERE/.venv/bin/python"
[ -x "$PY" ] || { echo "run_tests.sh: run ./install.sh first" >&2; exit 2; }
"$PY" -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ $rc = 5 ]; then echo "run_tests.sh: pytest collected no tests" >&2; exit 1; fi
exit $rc
