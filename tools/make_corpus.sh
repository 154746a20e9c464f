#!/bin/bash
# Build (or resume) the labelled training corpus: N RELION-3.1 Class2D projects of simulated
# particles + junk with per-particle / per-class truth (see ranker/develop/simulate/).
#
#   tools/make_corpus.sh [N_JOBS] [CORPUS_DIR] [options of 'ranker.develop corpus']   (defaults: 200, ./corpus)
#   e.g. a corpus of low-SNR jobs: tools/make_corpus.sh 40 corpus4 --snr_range 0.02 0.06
#   the realism recipe (coloured real noise, ice gradients, crowding, blurry blob and real-patch junk, no CTF
#   correction in a quarter of the jobs, more elongated / multi-domain shapes, larger jobs; MODEL_CARD,
#   "Distance between simulated and real data"):
#        SEED=21 BUDGET=400 tools/make_corpus.sh 120 corpus_r1 --recipe realism
#   a blob-rich corpus (blurry blob junk, the junk v4 keeps most):
#        SEED=24 BUDGET=200 HELDOUT=8,28 tools/make_corpus.sh 60 corpus_r4 --recipe realism --junk_kinds blob,aggregate,offcentre
#   CTF-corrected jobs classified with --ctf_intact_first_peak (they do not collapse into one class; MODEL_CARD):
#        SEED=28 BUDGET=200 HELDOUT=0 tools/make_corpus.sh 60 corpus_r8 --recipe realism --ctf_intact_first_peak
#   classes from the fast in-Python stand-in instead of relion_refine (not RELION; see MODEL_CARD):
#        SEED=6 tools/make_corpus.sh 34 corpus_q6 --classifier quick
#   env: PY (python with numpy, scipy, mrcfile, matplotlib; gemmi for mmCIF), SEED (1),
#        BUDGET (estimated relion_refine seconds per job, 130), HELDOUT (4JSV job numbers, 8,28,48)
#
# Add --freeze datasets/realism to freeze each job as it is made (features, images, truth; kept in the
# repository, datasets/README.md): corpora outside the repository have been lost between sessions.
# In the background (one job at a time, niced, logs to CORPUS/make_corpus.log):
#   setsid nohup tools/make_corpus.sh 200 corpus > corpus/make_corpus.log 2>&1 < /dev/null &
# Progress:
#   $PY -m ranker.develop corpus corpus --summary [--jobs]
# Restartable: finished jobs (CORPUS/jobNNNN/corpus_job.json) are skipped, a half-made
# CORPUS/jobNNNN.tmp is rebuilt, failed jobs are logged in CORPUS/failed/ and skipped.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-200}
CORPUS=${2:-$ROOT/corpus}
PY=${PY:-python3}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
command -v relion_refine >/dev/null || { echo "relion_refine (RELION 3.1) not on PATH" >&2; exit 1; }
mkdir -p "$CORPUS"
cd "$ROOT"
if [ ! -f "$CORPUS/_structures/structures.json" ]; then
  nice -n 10 "$PY" -m ranker.develop structures "$CORPUS/_structures"
fi
exec nice -n 10 "$PY" -m ranker.develop corpus "$CORPUS" --n "$N" --structures "$CORPUS/_structures" \
  --seed "${SEED:-1}" --budget "${BUDGET:-130}" --heldout "${HELDOUT:-8,28,48}" "${@:3}"
