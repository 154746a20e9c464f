#!/usr/bin/env bash
# The test command (README, .ci/run): installs Debian's relion for the integration tests if it is
# missing, then runs the whole pytest suite with the environment made by ./install.sh.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
# relion: relion_refine/_pipeliner/_scheduler; relion-gui: relion_display; xvfb: a screen for it
if ! command -v relion_refine >/dev/null 2>&1 || ! command -v relion_display >/dev/null 2>&1 \
   || ! command -v Xvfb >/dev/null 2>&1; then
  PKGS="relion relion-gui xvfb"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    (apt-get install -y -q $PKGS >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $PKGS >/dev/null; }) \
      || echo "run_tests.sh: could not install Debian's $PKGS; tests marked 'relion' will fail" >&2
  else
    echo "run_tests.sh: not root: install Debian's packages yourself (apt-get install $PKGS)" >&2
  fi
fi
PY="$HERE/.venv/bin/python"
[ -x "$PY" ] || { echo "run_tests.sh: run ./install.sh first" >&2; exit 2; }
"$PY" -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ $rc = 5 ]; then echo "run_tests.sh: pytest collected no tests" >&2; exit 1; fi
exit $rc
