#!/usr/bin/env bash
# Install relion_external_rank and print the executable to paste into RELION's External tab.
#   ./install.sh                      -> creates .venv/ here (python3 -m venv) and installs the pinned deps
#   ./install.sh --python /path/to/python   -> installs into that existing environment (e.g. RELION-5's conda
#                                        env, which has torch already: packages already present are kept)
#   ./install.sh --no-example         -> do not run the job on the example project afterwards
# Needs no network at run time; the install itself uses pip (torch==2.13.0 CPU wheel where available).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PY=""
EXAMPLE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY="$2"; shift 2 ;;
    --python=*) PY="${1#--python=}"; shift ;;
    --no-example) EXAMPLE=0; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (use --python PATH)" >&2; exit 2 ;;
  esac
done
if [ -z "$PY" ]; then
  if [ ! -x "$HERE/.venv/bin/python" ]; then
    python3 -m venv "$HERE/.venv"
  fi
  PY="$HERE/.venv/bin/python"
  "$PY" -m pip install -q --disable-pip-version-check -r "$HERE/requirements.txt" -r "$HERE/requirements-test.txt"
else
  [ -x "$PY" ] || { echo "install.sh: $PY is not an executable python" >&2; exit 2; }
  # In an existing environment keep what is there (e.g. RELION's torch); add only what is missing.
  missing=$("$PY" - <<'PYEOF'
import importlib.util
need = {"torch": "torch==2.13.0", "numpy": "numpy", "scipy": "scipy", "mrcfile": "mrcfile", "matplotlib": "matplotlib"}
print(" ".join(spec for mod, spec in need.items() if importlib.util.find_spec(mod) is None))
PYEOF
)
  if [ -n "$missing" ]; then "$PY" -m pip install -q --disable-pip-version-check $missing; fi
fi
PY=$("$PY" -c 'import sys; print(sys.executable)')
mkdir -p "$HERE/bin"
cat > "$HERE/bin/relion_external_rank.py" <<WRAP
#!/bin/sh
# Made by install.sh: runs relion_external_rank with the Python it was installed into.
exec "$PY" "$HERE/relion_external_rank.py" "\$@"
WRAP
chmod +x "$HERE/bin/relion_external_rank.py"
"$HERE/bin/relion_external_rank.py" --help >/dev/null
if [ "$EXAMPLE" = 1 ]; then
  echo "Running the ranker on the example project (examples/class2d_sim):"
  "$HERE/run_example.sh"
  echo
fi
echo "Installed. In RELION's External tab, set 'External executable' to:"
echo "  $HERE/bin/relion_external_rank.py"
