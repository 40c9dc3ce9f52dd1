"""tools/study_tables.py: docs/study.md's study tables from records in a study folder."""

import json
import os
import subprocess
import sys

import pytest

from tools import study_tables

ZEN4 = "AMD EPYC (AuthenticAMD family 25 model 17), 2 cores"
ZEN3 = "AMD EPYC (AuthenticAMD family 25 model 1), 2 cores"


def _write(root, side, name, seed, ndcg, wall, cpu=ZEN4, date="2026-12-03T10:00:00"):
    d = os.path.join(root, side, "cells", name.replace(" ", "_"), f"seed_{seed}")
    os.makedirs(d)
    record = {
        "name": name,
        "seed": seed,
        "scores": {study_tables.NDCG: ndcg, study_tables.STSB: 86.0 + seed / 10},
        "train_wall_s": wall,
        "machine": cpu,
        "date": date,
    }
    with open(os.path.join(d, "result.json"), "w") as f:
        json.dump(record, f)


def _row(lines, name):
    (row,) = [line for line in lines if line.startswith(f"| {name} |")]
    return [c.strip() for c in row.strip("|").split("|")]


def test_machine_names_the_cpu_and_dates_old_epyc_records():
    assert (
        study_tables.machine({"machine": "Intel(R) Xeon(R) Processor, 2 cores", "date": ""})
        == "Xeon"
    )
    assert study_tables.machine({"machine": ZEN3, "date": "2026-12-03T00:00:00"}) == "Zen 3"
    old = "AMD EPYC, 2 cores"
    assert study_tables.machine({"machine": old, "date": "2026-12-02T13:45:00"}) == "Zen 4"
    assert study_tables.machine({"machine": old, "date": "2026-12-02T14:25:00"}) == "Zen 3"
    assert (
        study_tables.machine({"machine": "Other CPU", "date": "2027-01-01T00:00:00"}) == "Other CPU"
    )


def test_tables_from_records(tmp_path):
    root = str(tmp_path)
    for side, scores, walls in (
        ("ours", (66.0, 66.2), (100, 110)),
        ("st", (67.0, 67.2), (200, 220)),
    ):
        for seed in (0, 1):
            _write(root, side, "base", seed, 60.0 + seed / 10, 50)
            _write(root, side, "guided", seed, scores[seed], walls[seed])
    _write(root, "ours", "1 mined negative", 0, 70.0, 300)  # one seed, theirs not run
    _write(root, "ours", "1 mined negative", 1, 70.4, 900, cpu=ZEN3)
    for seed in (0, 1):  # both sides complete, but on two machines: no speed ratio
        _write(root, "ours", "one direction", seed, 66.0, 100)
        _write(root, "st", "one direction", seed, 66.0 + seed, 200, cpu=ZEN3)
    _write(root, "ours", "zzz extra", 0, 61.0, 10)  # a cell ORDER does not know comes last
    records = study_tables.read(root)
    names = ["base", "one direction", "guided", "1 mined negative", "zzz extra"]
    assert study_tables.cells(records) == names

    table = study_tables.side_by_side(records)
    guided = _row(table, "guided")
    assert guided[1] == "Zen 4"
    assert guided[2] == "66.10 ± 0.14 (66.00, 66.20)"
    assert guided[3] == "67.10 ± 0.14 (67.00, 67.20)"
    assert guided[4] == "-1.00, **beyond**"
    assert guided[10] == "2.00x"
    mined = _row(table, "1 mined negative")
    assert mined[1] == "Zen 3, Zen 4"
    assert mined[3] == "not run yet"
    assert mined[4] == "n/a" and mined[10] == "n/a"  # no theirs; two machines
    both = _row(table, "one direction")
    assert both[1] == "Zen 3, Zen 4" and both[4] == "-0.50, no effect" and both[10] == "n/a"
    assert _row(table, "zzz extra")[2] == "seed 0 only: 61.00"

    vs = study_tables.against_base(records)
    assert not [line for line in vs if line.startswith("| base |")]
    assert _row(vs, "guided")[1:3] == ["+6.05, **beyond**", "+7.05, **beyond**"]
    assert _row(vs, "1 mined negative")[2] == ""  # theirs has no such run


def test_missing_field_names_the_file(tmp_path):
    _write(str(tmp_path), "ours", "base", 0, 60.0, 50)
    path = os.path.join(tmp_path, "ours", "cells", "base", "seed_0", "result.json")
    with open(path) as f:
        record = json.load(f)
    del record["train_wall_s"]
    with open(path, "w") as f:
        json.dump(record, f)
    with pytest.raises(SystemExit, match="seed_0/result.json: no field 'train_wall_s'"):
        study_tables.read(str(tmp_path))


def test_committed_study_prints_both_tables_and_the_page_shows_them():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(root, "tools", "study_tables.py"),
            os.path.join(root, "docs", "study"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.count("| cell |") == 2 and "| base | " in out
    # docs/study.md shows both tables as the tool prints them from the committed records, so a
    # record committed without its tables (or tables edited by hand) fails here.
    with open(os.path.join(root, "docs", "study.md")) as f:
        page = f.read()
    tables = out.strip().split("\n\n")
    assert len(tables) == 2
    for table in tables:
        assert table in page, "docs/study.md: rerun `python tools/study_tables.py` and paste"
    # docs/results.md shows the side-by-side table too (the study's headline page).
    with open(os.path.join(root, "docs", "results.md")) as f:
        assert tables[0] in f.read(), "docs/results.md: paste the side-by-side table"
