"""Sweep results: one record per cell and seed, the mean +- std table and the chart.

    results.jsonl  one JSON record per (cell, seed): name, overrides, seed, system, evals (the
                   cell's final evaluations, as its metrics.jsonl holds them), scores, train wall
                   time, pairs/s, provenance (date, commit, machine, load)
    results.md     mean +- std over seeds per cell and task, the difference to the baseline cell
                   and whether it exceeds the seed spread (`exceeds_text`, stated in the file)
    results.png    the score of each task per cell, mean with +- std error bars

NumPy and matplotlib only (no JAX, no torch): sweep.py and benchmarks/st_sweep.py (the
sentence-transformers side, in its own virtualenv) both write through it, so both sides' files
have one format. `comparison` puts two systems' records side by side.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.abspath(__file__))


def exceeds_text(a: str = "cell", b: str = "baseline") -> str:
    """The definition of `exceeds`, as results.md states it."""
    return (
        f"`exceeds`: |mean({a}) - mean({b})| > sqrt(std({a})^2 + std({b})^2), std being the "
        "sample standard deviation over seeds (ddof=1): the difference is larger than the spread "
        "of the difference of two single runs; 'no' means no effect at this spread. Without two "
        "seeds on both sides there is no spread and no verdict ('n/a')."
    )


# ----------------------------------------------------------------------------- records


def short_task(task: str) -> str:
    """A task path as the tables and records show it: relative to the repository when inside it
    (a relative path is taken as relative to the repository)."""
    full = os.path.abspath(os.path.join(ROOT, task))
    if full.startswith(ROOT + os.sep):
        return os.path.relpath(full, ROOT)
    return task


def scores_of(evals: Sequence[dict]) -> dict[str, float]:
    """{'<task> <metric>': score} for each evaluation's main metric and its extra ones
    (retrieval's mrr_at_10, recall_at_100), as evaluate.py returns them."""
    out = {}
    for r in evals:
        task = short_task(r["task"])
        out[f"{task} {r['metric']}"] = r["score"]
        for key, value in r.items():
            if key not in ("task", "metric", "score", "n") and isinstance(value, int | float):
                out[f"{task} {key}"] = value
    return out


def main_labels(evals: Sequence[dict]) -> list[str]:
    """The labels of each evaluation's main metric, in evaluation order."""
    return [f"{short_task(r['task'])} {r['metric']}" for r in evals]


def read_jsonl(path: str) -> list[dict]:
    """The JSON records of a .jsonl file (missing file: none). A line that is not JSON (cut
    short by a killed writer) is skipped, with a warning naming the file and line unless it is
    the last."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().split("\n")
    records = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i < len(lines) - 1:  # not the last line, which a running writer may be writing
                print(f"warning: {path}:{i}: not valid JSON ({e.msg}); skipped", file=sys.stderr)
    return records


def final_evals(metrics: Sequence[dict], step: int) -> dict[str, dict]:
    """{task: eval} of the evaluations recorded at `step` (the last one per task wins)."""
    return {r["eval"]["task"]: r["eval"] for r in metrics if "eval" in r and r["step"] == step}


def train_time(metrics: Sequence[dict], starts: Sequence[int] = ()) -> tuple[float, int]:
    """(training wall time in s, attempts that trained) from metrics.jsonl's training lines.

    A resumed run appends to the file and restarts its clock: each attempt counts its last
    `elapsed_s`, so a resumed cell's time includes the steps it redid after its last
    checkpoint. `starts` are the record counts at which attempts began (sweep.py's
    attempts.jsonl); without them a new attempt is recognised by its step or clock going back.
    """
    last: dict[int, float] = {}
    attempt, prev, starts = 0, None, sorted(starts)
    for i, r in enumerate(metrics):
        if "loss" not in r or "elapsed_s" not in r:
            continue
        if starts:
            attempt = bisect.bisect_right(starts, i)
        elif prev is not None and (r["step"] <= prev["step"] or r["elapsed_s"] < prev["elapsed_s"]):
            attempt += 1
        last[attempt] = r["elapsed_s"]
        prev = r
    return sum(last.values()), len(last)


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's name and signature from /proc/cpuinfo: "AMD EPYC 7B13 (AuthenticAMD family 25
    model 1)". Two VMs of one name can be different CPUs, whose bits and speeds differ (the smoke
    trace of tools/record_loss_trace.py is keyed by the same signature); platform.processor()
    where there is no /proc/cpuinfo."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if {"vendor_id", "cpu family", "model"} <= set(fields):
        name += f" ({fields['vendor_id']} family {fields['cpu family']} model {fields['model']})"
    return name


def provenance() -> dict[str, Any]:
    """Date, commit, machine and load average, recorded beside every result."""
    try:
        commit = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        commit += "-dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": commit,
        "machine": f"{cpu_description()}, {os.cpu_count()} cores",
        "load": [round(x, 2) for x in os.getloadavg()],
    }


def make_record(
    *,
    name: str,
    overrides: str,
    seed: int,
    system: str,
    metrics: Sequence[dict],
    tasks: Sequence[str],
    steps: int,
    batch_size: int,
    starts: Sequence[int] = (),
    extra: dict | None = None,
) -> dict[str, Any]:
    """The results.jsonl record of one finished cell, from its metrics.jsonl records."""
    evals_at = final_evals(metrics, steps)
    missing = [t for t in tasks if t not in evals_at]
    if missing:
        raise ValueError(f"cell {name!r} seed {seed}: no evaluation of {missing} at step {steps}")
    # Tasks inside the repository are recorded relative to it, so that the record means the same
    # in any clone (sweep.finished compares them so).
    evals = [dict(evals_at[t], task=short_task(t)) for t in tasks]
    before = [r["eval"] for r in metrics if "eval" in r and r["step"] == 0 and steps != 0]
    wall, attempts = train_time(metrics, starts)
    losses = [r["loss"] for r in metrics if "loss" in r and r.get("step") == steps]
    return {
        "name": name,
        "overrides": overrides,
        "seed": seed,
        "system": system,
        "evals": evals,
        "scores": scores_of(evals),
        "scores_before": scores_of(before),
        "steps": steps,
        "batch_size": batch_size,
        "train_wall_s": round(wall, 2),
        "pairs_per_s": round(steps * batch_size / wall, 2) if wall > 0 else None,
        "attempts": attempts,
        "final_loss": losses[-1] if losses else None,
        **(extra or {}),
        **provenance(),
    }


# ----------------------------------------------------------------------------- statistics


@dataclasses.dataclass
class Stat:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n >= 2 else math.nan

    def text(self, digits: int = 2) -> str:
        if not self.values:
            return "-"
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def versus(cell: Stat, baseline: Stat) -> tuple[float, str]:
    """(mean difference, verdict): 'yes' when it exceeds the combined seed spread (exceeds_text),
    'no' when inside it, 'n/a' without two seeds on both sides."""
    diff = cell.mean - baseline.mean
    if cell.n < 2 or baseline.n < 2:
        return diff, "n/a"
    return diff, "yes" if abs(diff) > math.hypot(cell.std, baseline.std) else "no"


def stats(records: Sequence[dict], name: str, key: str) -> Stat:
    """The values of `key` (a score label, or a record field) over the seeds of cell `name`."""
    out = []
    for r in records:
        if r["name"] != name:
            continue
        value = r["scores"].get(key) if key in r["scores"] else r.get(key)
        if isinstance(value, int | float):
            out.append(float(value))
    return Stat(out)


def pick_main(labels: Sequence[str], hint: str = "") -> str:
    """The main score's label: the one containing `hint` (exactly one), else the first."""
    if not labels:
        raise ValueError("no scores recorded yet")
    if not hint:
        return labels[0]
    found = [x for x in labels if hint in x]
    if len(found) != 1:
        raise ValueError(f"main score {hint!r} matches {found or 'none'} of {list(labels)}")
    return found[0]


# ----------------------------------------------------------------------------- files


def _atomic_write(path: str, data: str | bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    os.replace(tmp, path)


def _provenance_line(records: Sequence[dict]) -> str:
    def uniq(key):
        return sorted({str(r.get(key)) for r in records})

    dates = sorted(str(r.get("date", ""))[:10] for r in records)
    loads = [r["load"][0] for r in records if r.get("load")]
    span = f"{dates[0]} to {dates[-1]}" if dates and dates[0] != dates[-1] else dates[0]
    load = f"; load average (1 min) at the end of each cell {min(loads)}-{max(loads)}"
    return (
        f"Machine: {'; '.join(uniq('machine'))}. Date: {span}. Commit: "
        f"{', '.join(uniq('commit'))}{load if loads else ''}."
    )


def markdown(
    records: Sequence[dict],
    cells: Sequence[tuple[str, str]],
    *,
    seeds: Sequence[int],
    baseline: str,
    main: str = "",
    title: str = "Sweep results",
    notes: Sequence[str] = (),
    not_run: dict[str, str] | None = None,
) -> str:
    """The results.md text: one row per cell (in `cells` order), one column pair per task."""
    labels = list(dict.fromkeys(x for r in records for x in main_labels(r["evals"])))
    main_label = pick_main(labels, main) if labels else ""
    labels = [main_label] + [x for x in labels if x != main_label] if labels else []
    out = [f"# {title}", ""]
    out += [*notes, ""] if notes else []
    if records:
        out.append(_provenance_line(records))
        out.append("")
    out += [
        f"Mean ± std over seeds {', '.join(map(str, seeds))}; Δ is the difference of means to the "
        f"baseline cell **{baseline}**; main score: **{main_label or '(none yet)'}**.",
        "",
        exceeds_text(),
        "",
    ]
    head = ["cell", "overrides", "seeds"]
    for label in labels:
        head += [label, "Δ (exceeds)"]
    head += ["train s", "pairs/s"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    not_run = not_run or {}
    for name, overrides in cells:
        row = [name, f"`{overrides}`" if overrides else "(the config)"]
        if name in not_run:
            out.append("| " + " | ".join([*row, f"not run: {not_run[name]}"]) + " |")
            continue
        done = stats(records, name, "train_wall_s").n
        row.append(f"{done}/{len(seeds)}")
        for label in labels:
            s = stats(records, name, label)
            row.append(s.text())
            if name == baseline or not s.values:
                row.append("baseline" if name == baseline else "-")
            else:
                diff, verdict = versus(s, stats(records, baseline, label))
                row.append(f"{diff:+.2f} ({verdict})" if not math.isnan(diff) else "-")
        row.append(stats(records, name, "train_wall_s").text(0))
        row.append(stats(records, name, "pairs_per_s").text(1))
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def chart(
    path: str,
    series: dict[str, Sequence[dict]],
    cells: Sequence[str],
    labels: Sequence[str],
    baseline: str = "",
) -> None:
    """One panel per score label: mean +- std per cell, one marker series per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels)[:3] or ["(no scores yet)"]
    fig, axes = plt.subplots(
        len(labels), 1, figsize=(max(6.0, 0.9 * len(cells) + 2), 3.2 * len(labels)), squeeze=False
    )
    x = np.arange(len(cells))
    width = 0.8 / max(len(series), 1)
    for ax, label in zip(axes[:, 0], labels, strict=True):
        for i, (system, records) in enumerate(series.items()):
            st = [stats(records, c, label) for c in cells]
            means = np.array([s.mean for s in st])
            errs = np.array([0.0 if math.isnan(s.std) else s.std for s in st])
            offset = (i - (len(series) - 1) / 2) * width
            ax.errorbar(x + offset, means, yerr=errs, fmt="o", capsize=4, label=system)
            if baseline in cells and not math.isnan(means[cells.index(baseline)]):
                b = cells.index(baseline)
                ax.axhline(means[b], ls="--", lw=0.8, color=f"C{i}", alpha=0.6)
        ax.set_ylabel(label, fontsize=8)
        ax.set_xticks(x, cells, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    axes[0, 0].set_title(f"mean ± std over seeds (dashed: baseline {baseline})", fontsize=9)
    fig.tight_layout()
    tmp = f"{path}.{os.getpid()}.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write(
    workdir: str,
    records: Sequence[dict],
    cells: Sequence[tuple[str, str]],
    *,
    seeds: Sequence[int],
    baseline: str,
    main: str = "",
    title: str = "Sweep results",
    notes: Sequence[str] = (),
    not_run: dict[str, str] | None = None,
) -> None:
    """results.jsonl, results.md and results.png in `workdir`, each replaced atomically."""
    _atomic_write(
        os.path.join(workdir, "results.jsonl"), "".join(json.dumps(r) + "\n" for r in records)
    )
    md = markdown(
        records,
        cells,
        seeds=seeds,
        baseline=baseline,
        main=main,
        title=title,
        notes=notes,
        not_run=not_run,
    )
    _atomic_write(os.path.join(workdir, "results.md"), md)
    labels = list(dict.fromkeys(x for r in records for x in main_labels(r["evals"])))
    if labels:
        first = pick_main(labels, main)
        labels = [first] + [x for x in labels if x != first]
    names = [c for c, _ in cells if c not in (not_run or {})]
    chart(os.path.join(workdir, "results.png"), {"": records}, names, labels, baseline)


def comparison(
    out_prefix: str,
    ours: Sequence[dict],
    theirs: Sequence[dict],
    cells: Sequence[str],
    *,
    names: tuple[str, str] = ("ours", "sentence-transformers"),
    main: str = "",
    notes: Sequence[str] = (),
) -> None:
    """OUT.md and OUT.png: two systems' records of the same cells side by side (each score mean
    +- std, the difference ours - theirs with the `exceeds` verdict, training wall times)."""
    records = [*ours, *theirs]
    labels = list(dict.fromkeys(x for r in records for x in main_labels(r["evals"])))
    if labels:
        first = pick_main(labels, main)
        labels = [first] + [x for x in labels if x != first]
    a, b = names
    out = [f"# {a} and {b}, cell by cell", "", *notes, ""]
    for cell in cells:
        configs = {r["config"] for r in records if r["name"] == cell and r.get("config")}
        if len(configs) > 1:
            out += [f"**Cell {cell!r} was trained from different configs**: {sorted(configs)}.", ""]
    if records:
        out += [_provenance_line(records), ""]
    out += [exceeds_text(a, b), ""]
    head = ["cell"]
    for label in labels:
        head += [f"{label}: {a}", b, f"{a} - {b} (exceeds)"]
    head += [f"train s: {a}", b, f"speed {a} / {b}"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells:
        row = [cell]
        for label in labels:
            sa, sb = stats(ours, cell, label), stats(theirs, cell, label)
            row += [sa.text(), sb.text()]
            if sa.values and sb.values:
                diff, verdict = versus(sa, sb)
                row.append(f"{diff:+.2f} ({verdict})")
            else:
                row.append("-")
        ta, tb = stats(ours, cell, "train_wall_s"), stats(theirs, cell, "train_wall_s")
        ratio = f"{tb.mean / ta.mean:.2f}x" if ta.values and tb.values and ta.mean > 0 else "-"
        row += [ta.text(0), tb.text(0), ratio]
        out.append("| " + " | ".join(row) + " |")
    _atomic_write(out_prefix + ".md", "\n".join(out) + "\n")
    chart(out_prefix + ".png", {a: ours, b: theirs}, list(cells), labels)
