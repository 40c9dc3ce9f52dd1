"""The study tables of docs/study.md from the committed run records.

    python tools/study_tables.py [docs/study]   # reads STUDY/{ours,st}/cells/*/seed_*/result.json

Prints two Markdown tables to paste into docs/study.md, the first also into docs/results.md
(tests/study_tables_test.py fails when a page does not show them as printed):

1. ours and sentence-transformers' trainer side by side, cell by cell: the machine each cell ran
   on, SciFact test nDCG@10 and STS-B dev Spearman (mean ± std over seeds, the seeds' own
   nDCG@10 in brackets), ours - theirs with the sweep's verdict ("beyond" when the difference
   exceeds the root sum of squares of the two spreads, results.versus), the training wall times
   and their ratio. The ratio is given only where both sides have two seeds and every run of the
   cell ran on one machine: train times of different machines are not comparable.
2. each cell against the base cell, on each side (scores only: cells ran on several machines).

The machine comes from each record's "machine" field. Records written before the field named the
CPU model read "AMD EPYC, 2 cores"; those are told apart by date, as docs/benchmarks.md records:
on 2026-12-02 the VM was the Zen 4 until 13:46 UTC and the Zen 3 after. Exits 1 naming the file
when a record lacks a field the tables need.
"""

from __future__ import annotations

import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import results  # noqa: E402

NDCG = "sample_data/retrieval/scifact ndcg_at_10"
STSB = "sample_data/stsb/dev.tsv.gz spearman_cosine"
SIDES = ("ours", "st")
FIELDS = ("name", "seed", "scores", "train_wall_s", "machine", "date")
# tools/study.sh's order; a cell not named here is appended in name order.
ORDER = (
    "base",
    "batch 8, 1 epoch",
    "batch 128, 1 epoch",
    "batch 8, 30 steps",
    "batch 128, 30 steps",
    "one direction",
    "mixed, 1 dataset per batch",
    "mixed, 2 datasets per batch",
    "guided",
    "1 mined negative",
    "3 mined negatives",
    "1 mined negative, guided",
    "3 mined negatives, guided",
    "best recipe",
)
# Cells sentence-transformers' trainer has no feature for (its multi-dataset sampler draws each
# batch from one dataset).
NO_SUCH_CELL = ("mixed, 2 datasets per batch",)


def machine(record: dict) -> str:
    """Xeon, Zen 4 or Zen 3 from the record's CPU description (and its date, for old records)."""
    cpu, date = record["machine"], record["date"]
    if "Xeon" in cpu:
        return "Xeon"
    if "family 25 model 17)" in cpu:
        return "Zen 4"
    if "family 25 model 1)" in cpu:
        return "Zen 3"
    if cpu.startswith("AMD EPYC") and date.startswith("2026-12-02"):
        return "Zen 4" if date[11:16] < "13:46" else "Zen 3"
    return cpu


def read(root: str) -> dict[str, list[dict]]:
    """{side: records}, each record a result.json with "machine_label" added."""
    out: dict[str, list[dict]] = {side: [] for side in SIDES}
    for side in SIDES:
        for path in sorted(
            glob.glob(os.path.join(root, side, "cells", "*", "seed_*", "result.json"))
        ):
            with open(path) as f:
                record = json.load(f)
            missing = [k for k in FIELDS if k not in record]
            if missing:
                sys.exit(f"error: {path}: no field {', '.join(map(repr, missing))}")
            record["machine_label"] = machine(record)
            out[side].append(record)
    return out


def cells(records: dict[str, list[dict]]) -> list[str]:
    names = {r["name"] for side in SIDES for r in records[side]}
    return [n for n in ORDER if n in names] + sorted(names - set(ORDER))


def _seeds(records: list[dict], name: str, key: str) -> str:
    runs = sorted((r for r in records if r["name"] == name), key=lambda r: r["seed"])
    return ", ".join(f"{r['scores'][key]:.2f}" for r in runs if key in r["scores"])


def _stat(records: list[dict], name: str, key: str, digits: int = 2, seeds: bool = False) -> str:
    s = results.stats(records, name, key)
    if not s.values:
        return ""
    if s.n < 2:
        (seed,) = [r["seed"] for r in records if r["name"] == name]
        return f"seed {seed} only: {s.mean:.{digits}f}"
    text = s.text(digits)
    return f"{text} ({_seeds(records, name, key)})" if seeds else text


def _versus(a: list[dict], b: list[dict], name_a: str, name_b: str, key: str) -> str:
    diff, verdict = results.versus(results.stats(a, name_a, key), results.stats(b, name_b, key))
    if verdict == "n/a":
        return "n/a"
    return f"{diff:+.2f}, " + ("**beyond**" if verdict == "yes" else "no effect")


def side_by_side(records: dict[str, list[dict]]) -> list[str]:
    ours, st = records["ours"], records["st"]
    out = [
        "| cell | machine | SciFact nDCG@10: ours | theirs | ours - theirs "
        "| STS-B dev: ours | theirs | ours - theirs "
        "| train s: ours | theirs | speed ours / theirs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in cells(records):
        runs = [r for r in ours + st if r["name"] == name]
        machines = sorted({r["machine_label"] for r in runs})
        theirs = _stat(st, name, NDCG, seeds=True)
        if not theirs:
            theirs = "(no such cell)" if name in NO_SUCH_CELL else "not run yet"
        ta = results.stats(ours, name, "train_wall_s")
        tb = results.stats(st, name, "train_wall_s")
        speed = "n/a"
        if ta.n >= 2 and tb.n >= 2 and len(machines) == 1:
            speed = f"{tb.mean / ta.mean:.2f}x"
        row = [name, ", ".join(machines), _stat(ours, name, NDCG, seeds=True), theirs]
        row += [_versus(ours, st, name, name, NDCG), _stat(ours, name, STSB), _stat(st, name, STSB)]
        row += [_versus(ours, st, name, name, STSB), _stat(ours, name, "train_wall_s", 0)]
        row += [_stat(st, name, "train_wall_s", 0), speed]
        out.append("| " + " | ".join(row) + " |")
    return out


def against_base(records: dict[str, list[dict]]) -> list[str]:
    out = [
        "| cell | SciFact nDCG@10: ours | theirs | STS-B dev: ours | theirs |",
        "|---|---|---|---|---|",
    ]
    for name in cells(records):
        if name == "base" or not any(r["name"] == name for r in records["ours"]):
            continue
        row = [name]
        for key in (NDCG, STSB):
            for side in SIDES:
                has = any(r["name"] == name for r in records[side])
                row.append(_versus(records[side], records[side], name, "base", key) if has else "")
        out.append("| " + " | ".join(row) + " |")
    return out


def main(argv: list[str]) -> None:
    root = argv[1] if len(argv) > 1 else "docs/study"
    records = read(root)
    if not any(records.values()):
        sys.exit(f"error: {root}: no {{ours,st}}/cells/*/seed_*/result.json")
    print("\n".join(side_by_side(records) + [""] + against_base(records)))


if __name__ == "__main__":
    main(sys.argv)
