#!/usr/bin/env bash
# Install relion_external_rank and print the executable to paste into RELION's External tab.
#   ./install.sh                          -> makes .venv/ here (python3 -m venv) and installs the package into it,
#                                            editable, with the test and development extras, at the versions
#                                            pinned in constraints.txt (torch 2.13.0 CPU wheel where available)
#   ./install.sh --python /path/to/python -> installs the package into that existing environment (e.g. RELION-5's
#                                            conda env, which has torch already: what is there and fits is kept)
#   ./install.sh --no-example             -> do not run the job on the example project afterwards
# Both use pip on this directory (pyproject.toml declares the dependencies) and record the interpreter in
# .installed_python, where relion_external_rank.py finds it when RELION starts it with another python3.
# Nothing is downloaded at run time.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PY=""
EXAMPLE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --python) [ $# -ge 2 ] || { echo "install.sh: --python needs a path" >&2; exit 2; }; PY="$2"; shift 2 ;;
    --python=*) PY="${1#--python=}"; shift ;;
    --no-example) EXAMPLE=0; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (use --python PATH, --no-example)" >&2; exit 2 ;;
  esac
done
PIP_QUIET=(-q --disable-pip-version-check)
if [ -z "$PY" ]; then
  [ -x "$HERE/.venv/bin/python" ] || python3 -m venv "$HERE/.venv"
  PY="$HERE/.venv/bin/python"
  "$PY" -m pip install "${PIP_QUIET[@]}" -c "$HERE/constraints.txt" -e "$HERE[test,develop]"
else
  [ -x "$PY" ] || { echo "install.sh: $PY is not an executable python" >&2; exit 2; }
  # pip's default upgrade strategy keeps installed packages that satisfy pyproject's ranges (e.g. RELION's torch).
  "$PY" -m pip install "${PIP_QUIET[@]}" "$HERE"
fi
PY=$("$PY" -c 'import sys; print(sys.executable)')
echo "$PY" > "$HERE/.installed_python"
# earlier versions of this script wrote a wrapper here; relion_external_rank.py does its work now
if grep -qs "Made by install.sh" "$HERE/bin/relion_external_rank.py"; then
  rm -f "$HERE/bin/relion_external_rank.py"; rmdir "$HERE/bin" 2>/dev/null || true
fi
"$HERE/relion_external_rank.py" --version
if [ "$EXAMPLE" = 1 ]; then
  echo "Running the ranker on the example project (examples/class2d_sim):"
  "$HERE/run_example.sh"
  echo
fi
echo "Installed into $PY. In RELION's External tab, set 'External executable' to:"
echo "  $HERE/relion_external_rank.py"
echo "(or the command $(dirname "$PY")/relion_external_rank)"
