"""Domain fine-tuning example: all-MiniLM-L6-v2 on SciFact's *train* claims -> cited abstracts.

    python -m configs.scifact            # (re)writes the pairs file from qrels/train.tsv
    python main.py --config=configs/scifact.py --workdir=runs/scifact
    python evaluate.py --model=runs/scifact --retrieval=sample_data/retrieval/scifact

The pairs are `[claim, title + " " + abstract]` for the lines of the bundled SciFact
qrels/train.tsv (807 claims, 917 pairs); no test claim is used: the splits share no query id
(`write_pairs` checks) and the two train claims whose text repeats a test claim are dropped.
The test split is evaluated afterwards with evaluate.py; the reference model scores 64.51
nDCG@10 there (MTEB), the figure to beat. Idea: in-domain fine-tuning of a general sentence
embedder with MultipleNegativesRankingLoss on (query, relevant passage) pairs, as in
sentence-transformers' domain-adaptation examples and the BEIR paper's in-domain baselines.
"""

import gzip
import json
import os

from configs import base

SCIFACT = os.path.join(base.SAMPLE, "retrieval", "scifact")
PAIRS_DIR = os.path.join(base.SAMPLE, "retrieval", "scifact_train")  # one dataset: the pairs
PAIRS = os.path.join(PAIRS_DIR, "scifact_train_pairs.jsonl.gz")


def get_config(arg=None):
    c = base.base()
    c.init_from = base._reference_model_dir()
    c.data.dir = PAIRS_DIR
    c.data.config_file = ""
    c.data.max_seq_len = 256  # the model's own limit: abstracts are long
    c.data.bucket_lengths = (64, 128, 256)
    c.data.datasets_per_batch = 1  # a single dataset
    c.data.max_negatives = 0  # pairs: in-batch negatives only
    c.data.shuffle_buffer = 1000  # the whole file
    c.batch_size = 32  # fits a 2-core CPU; 917 pairs = 29 steps per epoch
    c.total_steps = 30  # about one epoch (917 pairs)
    c.warmup_steps = 3  # 10% warm-up
    c.lr = 2e-5
    c.log_every = 1  # 30 steps: a line each
    c.eval_every = 0
    c.checkpoint_every = 15
    c.eval.sts_files = ()  # SciFact test is scored afterwards with evaluate.py --retrieval
    return base.apply_arg(c, arg)


def write_pairs(folder: str = SCIFACT, out: str = PAIRS) -> int:
    """Write `[claim, title + " " + abstract]` lines from qrels/train.tsv; returns the count."""
    import evaluate  # imported here: configs are loaded by main.py, which has it already

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
    print(f"wrote {write_pairs()} pairs to {PAIRS}")
