#!/bin/bash
# The study of docs/results.md ("The seed's three claims"): ours, then sentence-transformers' trainer,
# on the same cells, seeds and data; SciFact test nDCG@10 and STS-B dev for every run.
#
#     bash tools/study.sh [OUT]        # from the repository root; OUT defaults to runs/study
#
# Ours go to OUT/, theirs to OUT_st/ (with OUT_st/comparison.md, the two side by side). Needs the
# project virtualenv active (python) and the requirements-bench one (ST_PYTHON, default
# /work/refvenv/bin/python). The two sweeps run at once, and each run holds the machine lock
# OUT.lock while it trains and is evaluated: ours and theirs alternate, never overlap, and their
# wall times compare. Both resume: kill this any time and rerun it to continue. Claim 2 (mined negatives, guided masking) is added once mine.py and
# loss.guide are on main (docs/hard-negatives.md).
set -euo pipefail
OUT=${1:-runs/study}
ST_PYTHON=${ST_PYTHON:-/work/refvenv/bin/python}
MIXED="data.dir='sample_data/scifact_mixed'"
CELLS="base:"
CELLS+=";one direction:loss.symmetric=False"
CELLS+=";batch 8, 1 epoch:batch_size=8,total_steps=115,warmup_steps=12"
CELLS+=";batch 128, 1 epoch:batch_size=128,total_steps=8,warmup_steps=1,loss.cache_chunk_size=32"
CELLS+=";mixed, 1 dataset per batch:$MIXED,data.datasets_per_batch=1,total_steps=60,warmup_steps=6"
CELLS+=";mixed, 2 datasets per batch:$MIXED,data.datasets_per_batch=2,total_steps=60,warmup_steps=6"
CELLS+=";batch 8, 30 steps:batch_size=8"
CELLS+=";batch 128, 30 steps:batch_size=128,loss.cache_chunk_size=32"
COMMON=(--config=configs/scifact.py --seeds=0,1 --baseline=base --main=scifact
  --eval=sample_data/retrieval/scifact,sample_data/stsb/dev.tsv.gz --cells="$CELLS"
  --machine_lock="$OUT.lock" --echo=false)
mkdir -p "$(dirname "$OUT")"
python sweep.py "${COMMON[@]}" --workdir="$OUT" &
ours=$!
trap 'kill $ours 2>/dev/null' EXIT
"$ST_PYTHON" -m benchmarks.st_sweep "${COMMON[@]}" --workdir="${OUT}_st" --ours="$OUT" \
  --eval_python="$(command -v python)"
wait $ours
