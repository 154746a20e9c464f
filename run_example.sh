#!/usr/bin/env bash
# Run the ranker on the example RELION project shipped in examples/ (a fresh copy in example_output/project),
# exactly as RELION's External job would, and show what it wrote.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
EXE="$HERE/relion_external_rank.py"
[ -f "$HERE/.installed_python" ] || [ -x "$HERE/.venv/bin/python" ] || { echo "run_example.sh: run ./install.sh first" >&2; exit 2; }
rm -rf "$HERE/example_output/project"
mkdir -p "$HERE/example_output"
cp -r "$HERE/examples/class2d_sim" "$HERE/example_output/project"
cd "$HERE/example_output/project"
"$EXE" --o External/job003/ --in_parts Class2D/job002/run_it020_data.star --j 2 --pipeline_control External/job003/
echo
echo "Outputs in $HERE/example_output/project/External/job003/:"
ls External/job003/
echo "Open logfile.pdf (or logfile.png) to see the ranked classes; particles.star feeds the next RELION job."
