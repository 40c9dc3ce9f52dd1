"""benchmarks/st_sweep.py without torch: which cells their trainer can run, and the datasets it
gets (the same lines as ours, K negative columns)."""

import gzip
import json
import os

from benchmarks import st_sweep
from configs import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def _config(data_dir, **fields):
    c = base.get_config("demo")
    c.data.dir = str(data_dir)
    return base.apply_arg(c, ",".join(f"{k}={v!r}" for k, v in fields.items()))


def test_datasets_have_k_negative_columns_and_drop_rows_with_fewer(tmp_path):
    _write(
        tmp_path / "a.jsonl.gz",
        [
            ["q1", "p1", "n1", "n2"],
            {"query": "q2", "pos": ["p2"], "neg": ["m1", "m2", "m3"]},
            ["q3", "p3", "n3"],  # one negative only
            "not json",
        ],
    )
    _write(tmp_path / "b.jsonl.gz", [{"anchor": "x", "positive": "y"}])
    cols, counts = st_sweep.read_datasets(
        _config(tmp_path, **{"data.max_negatives": 2}), str(tmp_path)
    )
    assert cols == {
        "a": {
            "anchor": ["q1", "q2"],
            "positive": ["p1", "p2"],
            "negative_1": ["n1", "m1"],
            "negative_2": ["n2", "m2"],
        },
        "b": {"anchor": [], "positive": [], "negative_1": [], "negative_2": []},
    }
    assert counts == {"rows": 2, "bad_lines": 1, "too_few_negatives": 2}
    cols, counts = st_sweep.read_datasets(_config(tmp_path), str(tmp_path))  # K = 1 (demo)
    assert cols["a"]["negative_1"] == ["n1", "m1", "n3"] and cols["b"]["anchor"] == []
    assert counts["too_few_negatives"] == 1
    cols, _ = st_sweep.read_datasets(_config(tmp_path, **{"data.max_negatives": 0}), str(tmp_path))
    assert cols["b"] == {"anchor": ["x"], "positive": ["y"]}


def test_what_their_trainer_cannot_run(tmp_path):
    train = os.path.join(ROOT, "sample_data", "train")  # six datasets
    scifact = os.path.join(ROOT, "sample_data", "retrieval", "scifact_train")  # one
    ok = _config(train, **{"data.datasets_per_batch": 1})
    assert st_sweep.unsupported(ok, str(tmp_path)) == ""
    assert "datasets per batch" in st_sweep.unsupported(_config(train), str(tmp_path))
    assert st_sweep.unsupported(_config(scifact), str(tmp_path)) == ""  # one dataset: any dpb
    hot = _config(train, **{"data.datasets_per_batch": 1, "data.temperature": 2.0})
    assert "weights" in st_sweep.unsupported(hot, str(tmp_path))
    runs = _config(train, **{"data.datasets_per_batch": 1, "data.steps_per_dataset": 4})
    assert "steps_per_dataset" in st_sweep.unsupported(runs, str(tmp_path))
    assert "random init" in st_sweep.unsupported(_config(train, init_from=""), str(tmp_path))
