"""Writes SciFact's training pairs, `[claim, title + " " + abstract]`, from qrels/train.tsv.

    python tools/write_scifact_pairs.py

The output, sample_data/retrieval/scifact_train/scifact_train_pairs.jsonl.gz, ships with the repo
(configs/scifact.py trains on it); this script rewrites it byte for byte from the bundled BEIR
folder. No test claim is used: the splits share no query id (checked here) and the two train
claims whose text repeats a test claim word for word are dropped.
"""

import gzip
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluate  # noqa: E402  (the repo root on the path first: run by path from anywhere)
from configs.scifact import PAIRS, SCIFACT  # noqa: E402


def write_pairs(folder: str = SCIFACT, out: str = PAIRS) -> int:
    """Write `[claim, title + " " + abstract]` lines from qrels/train.tsv; returns the count."""
    ids, texts = evaluate.read_beir_corpus(os.path.join(folder, "corpus.jsonl.gz"))
    docs = dict(zip(ids, texts, strict=True))
    queries = {
        q["_id"]: q["text"]
        for q in evaluate.read_jsonl_records(
            os.path.join(folder, "queries.jsonl.gz"), ("_id", "text")
        )
    }
    train = evaluate.read_qrels(os.path.join(folder, "qrels", "train.tsv"))
    test = evaluate.read_qrels(os.path.join(folder, "qrels", "test.tsv"))
    if set(train) & set(test):
        raise ValueError(f"train and test share queries: {sorted(set(train) & set(test))[:5]}")
    # Two train claims (871, 1291) repeat a test claim (870, 1292) word for word, with the same
    # cited abstract: they are test queries in all but id, so they are left out.
    test_claims = {queries[q] for q in test}
    train = {q: rels for q, rels in train.items() if queries[q] not in test_claims}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    lines = []
    for qid, rels in train.items():
        lines += [json.dumps([queries[qid], docs[d]]) for d, grade in rels.items() if grade > 0]
    with open(out + ".tmp", "wb") as raw:  # no name, mtime=0: the same bytes on every run
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
            f.write("".join(line + "\n" for line in lines).encode("utf-8"))
    os.replace(out + ".tmp", out)
    return len(lines)


if __name__ == "__main__":
    print(f"wrote {write_pairs()} pairs to {os.path.relpath(PAIRS)}")
