"""The Matryoshka table of docs/matryoshka.md from evaluate.py's JSON lines.

    python tools/matryoshka_table.py RUNS   # RUNS/eval_{base,scifact_s0,...}.jsonl

Each file is the output of

    python evaluate.py --model=MODEL --sts=sample_data/stsb/dev.tsv.gz \
        --retrieval=sample_data/retrieval/scifact --truncate_dim=384,192,96,48

for the exports of configs/scifact.py and configs/scifact_matryoshka.py, seeds 0 and 1
(eval_scifact_s0.jsonl, eval_scifact_matryoshka_s1.jsonl, ...), and the reference model
(eval_base.jsonl; its row is left out when that file is absent). Prints a Markdown table: per
width, SciFact test nDCG@10 and STS-B dev Spearman, mean ± std (sample std, ddof=1) over the
seeds, and each as a percentage of the same model's full-width score. Exits 1 naming the file
if one is missing, empty or lacks a width.
"""

import json
import os
import sys

import numpy as np

DIMS = (384, 192, 96, 48)
SEEDS = (0, 1)
ROWS = (("base", "all-MiniLM-L6-v2 (no fine-tune)"), ("scifact", "SciFact"))
ROWS += (("scifact_matryoshka", "SciFact + Matryoshka"),)


def read(path: str) -> dict[tuple[str, int], float]:
    """{(task, truncate_dim): score} with task "sts" or "scifact"."""
    if not os.path.exists(path) or not os.path.getsize(path):
        sys.exit(f"error: {path}: missing or empty")
    scores = {}
    with open(path) as f:
        for i, line in enumerate(f, 1):
            try:
                r = json.loads(line)
                task = "sts" if r["metric"] == "spearman_cosine" else "scifact"
                scores[task, int(r["truncate_dim"])] = float(r["score"])
            except (ValueError, KeyError) as e:
                sys.exit(f"error: {path} line {i}: {e!r}")
    missing = [(t, d) for t in ("sts", "scifact") for d in DIMS if (t, d) not in scores]
    if missing:
        sys.exit(f"error: {path}: no score for {missing}")
    return scores


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def table(runs: str) -> str:
    lines = [
        "| model | dims | SciFact nDCG@10 | % of full | STS-B dev Spearman | % of full |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in ROWS:
        if name == "base" and not os.path.exists(os.path.join(runs, "eval_base.jsonl")):
            continue
        files = (
            [f"eval_{name}.jsonl"] if name == "base" else [f"eval_{name}_s{s}.jsonl" for s in SEEDS]
        )
        runs_scores = [read(os.path.join(runs, f)) for f in files]
        for d in DIMS:
            row = [label if d == DIMS[0] else "", str(d)]
            for task in ("scifact", "sts"):
                row.append(cell([s[task, d] for s in runs_scores]))
                row.append(cell([100 * s[task, d] / s[task, DIMS[0]] for s in runs_scores]))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(table(sys.argv[1]))
