"""results.py: records, statistics, the exceeds verdict, results.md / .png and the comparison of
two systems."""

import json
import math

import pytest

import results


def _record(name, seed, score, sts=80.0, wall=10.0):
    evals = [
        {"task": "/x/scifact", "metric": "ndcg_at_10", "score": score, "n": 3, "mrr_at_10": 1.0},
        {"task": "/x/sts.tsv", "metric": "spearman_cosine", "score": sts, "n": 5},
    ]
    return {
        "name": name,
        "seed": seed,
        "evals": evals,
        "scores": results.scores_of(evals),
        "train_wall_s": wall,
        "pairs_per_s": 100 / wall,
        "machine": "m",
        "commit": "c",
        "date": "2026-12-01T10:00:00",
        "load": [1.0, 1.0, 1.0],
    }


def test_statistics_and_the_exceeds_verdict():
    base = results.Stat([60.0, 62.0])  # mean 61, std sqrt(2)
    assert base.mean == 61.0 and math.isclose(base.std, math.sqrt(2))
    # spread = hypot(sqrt 2, sqrt 2) = 2: a difference of 2.5 exceeds it, 1.5 does not.
    assert results.versus(results.Stat([63.0, 64.0, 63.5]), base)[1] == "yes"
    assert results.versus(results.Stat([62.0, 63.0]), base) == (1.5, "no")
    assert results.versus(results.Stat([59.0, 58.0]), base) == (-2.5, "yes")
    assert results.versus(results.Stat([70.0]), base)[1] == "n/a"  # one seed: no spread


def test_results_table_and_chart(tmp_path):
    recs = [
        _record("base", 0, 60.0),
        _record("base", 1, 62.0),
        _record("big", 0, 64.0, sts=79.0),
        _record("big", 1, 65.0, sts=81.0),
        _record("same", 0, 61.0),
    ]
    cells = [("base", ""), ("big", "batch_size=128"), ("same", "lr=1e-5")]
    results.write(str(tmp_path), recs, cells, seeds=[0, 1], baseline="base", main="scifact")
    md = (tmp_path / "results.md").read_text()
    assert results.exceeds_text() in md
    assert "Machine: m. Date: 2026-12-01. Commit: c" in md
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if "|" in line}
    assert rows["big"] == (
        "| big | `batch_size=128` | 2/2 | 64.50 ± 0.71 | +3.50 (yes) | 80.00 ± 1.41 | "
        "+0.00 (no) | 10 ± 0 | 10.0 ± 0.0 |"
    )
    assert "| same | `lr=1e-5` | 1/2 | 61.00 | +0.00 (n/a) |" in rows["same"]
    assert "| base | (the config) | 2/2 | 61.00 ± 1.41 | baseline |" in rows["base"]
    header = md.splitlines()[
        [i for i, x in enumerate(md.splitlines()) if x.startswith("| cell")][0]
    ]
    assert header.startswith("| cell | overrides | seeds | /x/scifact ndcg_at_10 |")
    got = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert got == recs
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_time_sums_attempts():
    metrics = [
        {"step": 1, "loss": 1.0, "elapsed_s": 5.0},
        {"step": 2, "loss": 1.0, "elapsed_s": 7.0},
        {"step": 2, "eval": {"task": "t", "metric": "m", "score": 1.0}},
        {"step": 3, "loss": 1.0, "elapsed_s": 9.0},  # killed after this; resumed from step 2
        {"step": 3, "loss": 1.0, "elapsed_s": 9.5},  # a slow first step: the clock does not drop
        {"step": 4, "loss": 1.0, "elapsed_s": 11.0},
    ]
    assert results.train_time(metrics) == (20.0, 2)  # the step went back
    assert results.train_time(metrics, starts=[0, 4]) == (20.0, 2)
    # Resumed right after a logged checkpoint (step 3 follows step 2) with a slow first step:
    # only the recorded attempt starts tell.
    resumed = metrics[:2] + [{"step": 3, "loss": 1.0, "elapsed_s": 8.0}]
    assert results.train_time(resumed) == (8.0, 1)
    assert results.train_time(resumed, starts=[0, 2]) == (15.0, 2)
    assert results.train_time(resumed, starts=[0, 2, 3]) == (15.0, 2)  # one trained nothing


def test_comparison_side_by_side(tmp_path):
    ours = [_record("base", 0, 64.0, wall=10.0), _record("base", 1, 65.0, wall=12.0)]
    theirs = [_record("base", 0, 60.0, wall=30.0), _record("base", 1, 60.5, wall=36.0)]
    for r in ours + theirs:
        r["config"] = "configs/scifact.py"
    results.comparison(str(tmp_path / "cmp"), ours, theirs, ["base"], main="scifact")
    md = (tmp_path / "cmp.md").read_text()
    assert results.exceeds_text("ours", "sentence-transformers") in md
    row = next(x for x in md.splitlines() if x.startswith("| base"))
    assert row == (
        "| base | 64.50 ± 0.71 | 60.25 ± 0.35 | +4.25 (yes) | 80.00 ± 0.00 | 80.00 ± 0.00 | "
        "+0.00 (no) | 11 ± 1 | 33 ± 4 | 3.00x |"
    )
    assert "different configs" not in md
    theirs[0]["config"] = "configs/other.py"
    results.comparison(str(tmp_path / "cmp"), ours, theirs, ["base"])
    assert "'base' was trained from different configs" in (tmp_path / "cmp.md").read_text()
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"


def test_record_from_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    ev = {"task": "/x/sts.tsv", "metric": "spearman_cosine", "score": 70.0, "n": 5}
    lines = [
        {"step": 0, "eval": dict(ev, score=60.0)},
        {"step": 1, "loss": 2.0, "elapsed_s": 3.0},
        {"step": 2, "loss": 1.0, "elapsed_s": 5.0},
        {"step": 2, "eval": dict(ev, score=69.0)},
        {"step": 2, "eval": ev},  # evaluated again (a resumed run): the last one counts
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 3, "lo')  # torn
    metrics = results.read_jsonl(str(path))
    assert metrics == lines
    rec = results.make_record(
        name="a",
        overrides="lr=1.0",
        seed=1,
        system="ours",
        metrics=metrics,
        tasks=["/x/sts.tsv"],
        steps=2,
        batch_size=8,
    )
    assert rec["evals"] == [ev] and rec["scores"] == {"/x/sts.tsv spearman_cosine": 70.0}
    assert rec["scores_before"] == {"/x/sts.tsv spearman_cosine": 60.0}
    assert (rec["train_wall_s"], rec["pairs_per_s"], rec["final_loss"]) == (5.0, 3.2, 1.0)
    assert {"date", "commit", "machine", "load"} <= set(rec)
    with pytest.raises(ValueError, match="no evaluation of .*/x/other"):
        results.make_record(
            name="a",
            overrides="",
            seed=1,
            system="ours",
            metrics=metrics,
            tasks=["/x/other"],
            steps=2,
            batch_size=8,
        )


def test_cpu_description_names_the_cpu_and_its_signature(tmp_path):
    """Two VMs that both say "AMD EPYC" can be Zen 3 and Zen 4: the record carries the family."""
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
        "model name\t: AMD EPYC 7B13\n\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\n"
    )
    assert results.cpu_description(str(info)) == "AMD EPYC 7B13 (AuthenticAMD family 25 model 1)"
    info.write_text("model name\t: Some CPU\n")  # no signature fields: the name alone
    assert results.cpu_description(str(info)) == "Some CPU"
    assert results.cpu_description(str(tmp_path / "missing"))  # no file: platform's name
