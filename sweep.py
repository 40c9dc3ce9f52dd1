"""Ablation sweeps: cells (config overrides) x seeds, each trained and evaluated in its own workdir.

    python sweep.py --config=configs/scifact.py --grid="batch_size=8,32,128" --seeds=0,1 \\
        --eval=sample_data/retrieval/scifact,sample_data/stsb/dev.tsv.gz --workdir=runs/batch
    python sweep.py --config=configs/scifact.py --seeds=0,1 --baseline=base --workdir=runs/sym \\
        --cells="base:;one direction:loss.symmetric=False"

--grid "f=v1,v2;g=a,b" is a cartesian product, --cells "name:f=v,g=w;name2:..." named cells
(values as in the config argument: `data.bucket_lengths=(32,64),(64,128)` is two values). Each
(cell, seed) trains in WORKDIR/cells/<cell>/seed_<s>/, a main.py workdir, in its own subprocess
(`main.train`, which evaluates at the end); result.json takes the scores from its metrics.jsonl.
A failed run is reported and the sweep goes on; a rerun skips finished runs and resumes
interrupted ones. After every run results.jsonl / .md / .png are rewritten (results.py).
Everything else: docs/sweeps.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import fcntl
import functools
import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import app, flags, logging

import results
from configs import base

ROOT = os.path.dirname(os.path.abspath(__file__))
SPEC, RESULT, TRAINED, LOG, LOCK = "cell.json", "result.json", "trained.json", "log.txt", ".lock"
ATTEMPTS = "attempts.jsonl"  # one line per training attempt: where it began in metrics.jsonl
# The spec keys that define what a cell trains: a finished cell whose definition changed is an
# error, not a silent mix of old and new results. Eval tasks may change (missing ones are added).
_DEFINING = ("config", "overrides", "seed")


class SweepError(ValueError):
    """A bad sweep definition or workdir; the message names the cell or the flag."""


@dataclasses.dataclass(frozen=True)
class Cell:
    name: str
    overrides: str  # 'field=value,...' on top of the config; '' = the config itself


@dataclasses.dataclass(frozen=True)
class Run:
    """One cell at one seed, trained in `dir`."""

    cell: Cell
    seed: int
    dir: str
    spec: dict[str, Any]  # what cell.json holds
    tasks: tuple[str, ...]  # the eval tasks its result must cover


# ----------------------------------------------------------------------------- the plan


def parse_grid(text: str) -> list[Cell]:
    """'f=v1,v2;g=a,b' -> the cartesian product, first field slowest, named by its overrides."""
    axes = []
    for part in base.split_arg(text or "", sep=";"):
        field, eq, values = part.strip().partition("=")
        if not eq or not field or not values.strip():
            raise SweepError(f"--grid: {part!r} is not 'field=value1,value2,...'")
        axes.append([f"{field.strip()}={v.strip()}" for v in base.split_arg(values)])
    return [Cell(",".join(combo), ",".join(combo)) for combo in itertools.product(*axes) if combo]


def parse_cells(text: str) -> list[Cell]:
    """'name:f=v,g=w;name2:...' -> named cells (the name may hold spaces, not ':' or ';')."""
    cells = []
    for part in base.split_arg(text or "", sep=";"):
        name, colon, overrides = part.partition(":")
        if not colon or not name.strip():
            raise SweepError(f"--cells: {part!r} is not 'name:field=value,...'")
        cells.append(Cell(name.strip(), ",".join(p.strip() for p in base.split_arg(overrides))))
    return cells


def slug(name: str) -> str:
    """A cell name as a folder name."""
    out = "".join(ch if ch.isalnum() or ch in "._=+-" else "_" for ch in name).strip("_.")
    return out[:120] or "cell"


@functools.cache
def load_config_module(path: str):
    """The config file as a module (as ml_collections' config flag loads it), loaded once."""
    if not os.path.isfile(path):
        raise SweepError(f"--config: {path!r} is not a file")
    spec = importlib.util.spec_from_file_location(f"_sweep_config_{slug(path)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_config(spec: dict[str, Any]) -> ml_collections.ConfigDict:
    """A run's config: CONFIG[:ARGS], then the cell's overrides, the seed, the eval tasks."""
    path, _, arg = spec["config"].partition(":")
    config = load_config_module(os.path.join(ROOT, path)).get_config(arg or None)
    try:
        base.apply_arg(config, spec["overrides"])
    except ValueError as e:
        raise SweepError(f"cell {spec['name']!r}: {e}") from e
    config.seed = spec["seed"]
    if spec["eval"] is not None:
        evals = [full_path(p) for p in spec["eval"]]
        config.eval.sts_files = tuple(p for p in evals if not os.path.isdir(p))
        config.eval.retrieval_dirs = tuple(p for p in evals if os.path.isdir(p))
    cache = spec["compilation_cache"]
    config.compilation_cache_dir = cache and full_path(cache)
    return config


def full_path(path: str) -> str:
    """A record's path as a file name: relative ones are relative to the repository."""
    return os.path.abspath(os.path.join(ROOT, path))


def eval_tasks(config: ml_collections.ConfigDict) -> list[str]:
    """The tasks main.train evaluates, in its order (STS files, then retrieval folders)."""
    return [*config.eval.sts_files, *config.eval.retrieval_dirs]


def build_runs(
    config: str,
    cells: Sequence[Cell],
    seeds: Sequence[int],
    workdir: str,
    evals: Sequence[str] | None,
    compilation_cache: str,
) -> list[Run]:
    """Every (cell, seed), in cell order then seed order, with its resolved spec checked."""
    if not cells:
        raise SweepError("no cells: give --grid and/or --cells (or neither: the config alone)")
    if not seeds:
        raise SweepError("--seeds: give at least one seed (two or more for a spread)")
    names = [c.name for c in cells]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SweepError(f"cell names must be unique; repeated: {dup}")
    slugs = [slug(n) for n in names]
    clash = sorted({n for n, s in zip(names, slugs, strict=True) if slugs.count(s) > 1})
    if clash:
        raise SweepError(f"cells {clash} map to the same folder name; rename one")
    path, colon, arg = config.partition(":")
    config = results.short_task(os.path.abspath(path)) + colon + arg  # portable records
    for p in evals or ():
        if not os.path.exists(p):
            raise SweepError(f"--eval: {p!r} does not exist")
    # cell.json holds paths inside the repository relative to it (portable records)
    evals = None if evals is None else [results.short_task(os.path.abspath(p)) for p in evals]
    if compilation_cache:
        compilation_cache = os.path.abspath(os.path.join(workdir, compilation_cache))
        compilation_cache = results.short_task(compilation_cache)
    runs = []
    for cell in cells:
        keys = [p.partition("=")[0].strip() for p in base.split_arg(cell.overrides)]
        if "seed" in keys:
            raise SweepError(f"cell {cell.name!r}: the seed comes from --seeds, not an override")
        for seed in seeds:
            spec = {
                "name": cell.name,
                "overrides": cell.overrides,
                "seed": int(seed),
                "config": config,
                "eval": evals,
                "compilation_cache": compilation_cache,
            }
            c = resolve_config(spec)  # unknown fields and bad values fail here, named
            if not eval_tasks(c):
                raise SweepError(
                    f"cell {cell.name!r}: nothing to evaluate; give --eval or set "
                    "eval.sts_files / eval.retrieval_dirs"
                )
            run_dir = os.path.join(
                os.path.abspath(workdir), "cells", slug(cell.name), f"seed_{seed}"
            )
            runs.append(Run(cell, int(seed), run_dir, spec, tuple(eval_tasks(c))))
    return runs


def check_spec(run: Run) -> None:
    """Write the run's cell.json, or check that an existing one defines the same training."""
    path = os.path.join(run.dir, SPEC)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if isinstance(old.get("config"), str):  # records of before: absolute paths
            file, colon, arg = old["config"].partition(":")
            old["config"] = results.short_task(file) + colon + arg
        diff = {k: (old.get(k), run.spec[k]) for k in _DEFINING if old.get(k) != run.spec[k]}
        if diff:
            raise SweepError(
                f"cell {run.cell.name!r} seed {run.seed}: {run.dir} was run with a different "
                f"definition (before, now): {diff}. Give the cell another name, or remove it."
            )
    os.makedirs(run.dir, exist_ok=True)
    results._atomic_write(path, json.dumps(run.spec, indent=1) + "\n")


def finished(run: Run) -> dict | None:
    """The run's result record when it covers all the run's eval tasks, else None."""
    path = os.path.join(run.dir, RESULT)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    done = {results.short_task(r["task"]) for r in record["evals"]}
    return record if all(results.short_task(t) in done for t in run.tasks) else None


# ----------------------------------------------------------------------------- one cell


@contextlib.contextmanager
def exclusive(path: str, what: str):
    """Hold an exclusive lock on `path` (released when the holder dies, even by SIGKILL)."""
    f = open(path, "a+")  # noqa: SIM115 (held for the block)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise SweepError(f"{what} is in use by process {holder} (lock {path})") from None
    try:
        f.truncate(0)
        f.write(f"{os.getpid()}\n")  # who holds it, for the message above
        f.flush()
        yield
    finally:
        f.close()


@contextlib.contextmanager
def machine_lock(path: str):
    """Wait for, then hold, an exclusive lock on `path` (nothing when `path` is '').

    Runs of several sweeps (ours and benchmarks/st_sweep.py's) or other heavy jobs that take the
    same lock never overlap on a shared machine, so their wall times stay comparable. The wait is
    not part of a run's train_wall_s (the run measures its own training).
    """
    if not path:
        yield
        return
    f = open(path, "a+")  # noqa: SIM115 (held for the block)
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"    waiting for the machine lock {path}", flush=True)
            t0 = time.time()
            fcntl.flock(f, fcntl.LOCK_EX)
            print(f"    got the machine lock after {_minutes(time.time() - t0)}", flush=True)
        yield
    finally:
        f.close()


def run_cell(run_dir: str) -> None:
    """Train (or resume) one cell with main.train in this process, evaluate, write result.json."""
    with open(os.path.join(run_dir, SPEC)) as f:
        spec = json.load(f)
    config = resolve_config(spec)
    with exclusive(os.path.join(run_dir, LOCK), f"cell {spec['name']!r} seed {spec['seed']}"):
        import jax  # only the cell's own process starts JAX

        import convert
        import distributed
        import evaluate
        import main

        distributed.use_host_devices()  # as main.py: a CPU device per core, before any computation

        if config.compilation_cache_dir:
            jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        metrics_path = os.path.join(run_dir, "metrics.jsonl")
        attempts_path = os.path.join(run_dir, ATTEMPTS)
        if not os.path.exists(os.path.join(run_dir, TRAINED)):
            begun = {"records_before": len(results.read_jsonl(metrics_path)), "pid": os.getpid()}
            with open(attempts_path, "a") as f:
                f.write(json.dumps(begun | {"date": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
            summary = main.train(config, run_dir)
            done = {"step": summary["step"], "export": summary["export"]}
            results._atomic_write(os.path.join(run_dir, TRAINED), json.dumps(done) + "\n")
        tasks = eval_tasks(config)
        have = results.final_evals(results.read_jsonl(metrics_path), config.total_steps)
        missing = [t for t in tasks if t not in have]
        if missing:  # killed between the final checkpoint and its evaluation, or a new task
            m = convert.load_model(os.path.join(run_dir, "export"))
            for task in missing:
                if task in config.eval.sts_files:
                    r = evaluate.evaluate_sts(m, task, batch_size=config.eval.batch_size)
                else:
                    r = evaluate.evaluate_retrieval(m, task, batch_size=config.eval.batch_size)
                main.MetricsLog(run_dir).write({"step": config.total_steps, "eval": r})
        record = results.make_record(
            name=spec["name"],
            overrides=spec["overrides"],
            seed=spec["seed"],
            system="ours",
            metrics=results.read_jsonl(metrics_path),
            tasks=tasks,
            steps=config.total_steps,
            batch_size=config.batch_size,
            starts=[a["records_before"] for a in results.read_jsonl(attempts_path)],
            extra={
                "config": spec["config"],
                "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            },
        )
        results._atomic_write(os.path.join(run_dir, RESULT), json.dumps(record) + "\n")
        print("cell result: " + json.dumps(record["scores"]), flush=True)


# ----------------------------------------------------------------------------- the sweep


def _die_with_parent(parent: int) -> Callable[[], None]:
    """preexec_fn: the cell's process gets SIGKILL when the sweep dies (Linux prctl), so a
    killed sweep never leaves a cell training on its own; elsewhere the cell lock still stops
    a second process from training the same cell."""

    def set_up():
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the sweep died before prctl took effect
            os._exit(1)

    return set_up


def launch(cmd: Sequence[str], run_dir: str, echo: bool) -> tuple[int, str]:
    """Run one cell's command; its output goes to RUN/log.txt (appended) and, with `echo`, to
    the console. Returns the exit status and the last line of output (the error, if any)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [env.get("PYTHONPATH")])])
    with open(os.path.join(run_dir, LOG), "a") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            list(cmd),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
            preexec_fn=_die_with_parent(os.getpid()),
        )
        last = ""
        for line in proc.stdout:
            log.write(line)
            log.flush()
            last = line.strip() or last
            if echo:
                sys.stdout.write("    " + line)
                sys.stdout.flush()
        return proc.wait(), last


def _minutes(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def run_sweep(
    runs: Sequence[Run],
    workdir: str,
    command: Callable[[Run], list[str]],
    write: Callable[[list[dict]], None],
    echo: bool = True,
    lock: str = "",
) -> list[Run]:
    """Train every unfinished run with `command(run)`, rewriting the results after each.

    With `lock`, each run holds `machine_lock(lock)` while it trains and is evaluated.

    Returns the runs that failed (their logs hold why); a rerun retries them.
    """
    os.makedirs(workdir, exist_ok=True)
    failed, durations = [], []
    with exclusive(os.path.join(workdir, LOCK), f"sweep {workdir}"):
        for run in runs:
            check_spec(run)
        todo = [r for r in runs if finished(r) is None]
        skipped = len(runs) - len(todo)
        if skipped:
            print(f"{skipped} of {len(runs)} runs already finished: skipped", flush=True)
        for i, run in enumerate(todo):
            eta = (
                f"eta {_minutes(sum(durations) / len(durations) * (len(todo) - i))}"
                if durations
                else "eta after the first cell"
            )
            print(
                f"[{skipped + i + 1}/{len(runs)}] cell {run.cell.name!r} seed {run.seed} "
                f"({skipped + len(durations)} done, {len(failed)} failed; {eta}) in {run.dir}",
                flush=True,
            )
            with machine_lock(lock):
                t0 = time.time()
                status, last = launch(command(run), run.dir, echo)
            record = finished(run)
            if status or record is None:
                failed.append(run)
                print(
                    f"[{skipped + i + 1}/{len(runs)}] cell {run.cell.name!r} seed {run.seed} "
                    f"FAILED (exit {status}): {last}\n    full log: {os.path.join(run.dir, LOG)}; "
                    "run the sweep again to retry it (training resumes from its last checkpoint)",
                    flush=True,
                )
            else:
                durations.append(time.time() - t0)
                scores = ", ".join(f"{k} {v}" for k, v in record["scores"].items())
                print(
                    f"[{skipped + i + 1}/{len(runs)}] done in {_minutes(durations[-1])}: {scores}",
                    flush=True,
                )
            write(collect(runs))
        write(collect(runs))
    return failed


def collect(runs: Sequence[Run]) -> list[dict]:
    """The finished runs' records, in plan order."""
    return [r for r in (finished(run) for run in runs) if r is not None]


def define_flags() -> None:
    """The flags sweep.py and benchmarks/st_sweep.py share."""
    flags.DEFINE_string("config", None, "config file and argument, e.g. configs/scifact.py:ARGS")
    flags.DEFINE_string("grid", "", "cartesian grid: 'field=v1,v2;field2=a,b'")
    flags.DEFINE_string("cells", "", "named cells: 'name:field=v,field2=w;name2:...'")
    flags.DEFINE_list("seeds", ["0", "1"], "seeds of every cell (config field seed)")
    flags.DEFINE_string("workdir", None, "sweep folder: cells/, results.jsonl, .md, .png")
    flags.DEFINE_list("eval", None, "STS files and BEIR folders (default: the config's eval.*)")
    flags.DEFINE_string("baseline", "", "cell the others are compared with (default: the first)")
    flags.DEFINE_string("main", "", "the main score: part of its label (default: the first task)")
    flags.DEFINE_bool("echo", True, "echo each cell's output (always in cells/.../log.txt)")
    flags.DEFINE_bool("dry_run", False, "print the runs and their folders, train nothing")
    flags.DEFINE_string(
        "compilation_cache",
        "compilation_cache",
        "XLA executables shared by every cell (relative to --workdir; absolute: shared across "
        "sweeps; '' = off)",
    )
    flags.DEFINE_string(
        "machine_lock",
        "",
        "a file locked (flock) during each run, so sweeps and other jobs sharing the machine "
        "that lock it too never overlap (comparable wall times); '' = none",
    )


def sweep_main(
    f,
    command: Callable[[Run], list[str]],
    *,
    system: str = "",
    notes: Sequence[str] = (),
    extra_overrides: dict[str, str] | None = None,
    skip: Callable[[Run], str] | None = None,
    after_write: Callable[[list[dict], list[Cell]], None] | None = None,
) -> None:
    """The sweep from the shared flags: plan, check, run every unfinished run with
    `command(run)`, write the results; exits non-zero naming failed runs.

    benchmarks/st_sweep.py passes its own `command`, `extra_overrides` per cell (--st_cells),
    `skip` (why a run cannot be trained there, '' when it can) and `after_write`.
    """
    try:
        if not f.config or not f.workdir:
            raise SweepError("--config and --workdir are required")
        cells = parse_cells(f.cells) + parse_grid(f.grid) or [Cell("config", "")]
        extra = extra_overrides or {}
        unknown = sorted(set(extra) - {c.name for c in cells})
        if unknown:
            raise SweepError(f"extra overrides for {unknown}, which are not cells")
        cells = [
            Cell(c.name, ",".join(filter(None, [c.overrides, extra.get(c.name)]))) for c in cells
        ]
        try:
            seeds = [int(s) for s in f.seeds]
        except ValueError as e:
            raise SweepError(f"--seeds: integers, e.g. 0,1 ({e})") from e
        runs = build_runs(f.config, cells, seeds, f.workdir, f.eval, f.compilation_cache)
        if f.baseline and f.baseline not in [c.name for c in cells]:
            raise SweepError(f"--baseline {f.baseline!r} is not a cell: {[c.name for c in cells]}")
    except ValueError as e:  # SweepError, or a config's own (unknown field, bad value)
        sys.exit(f"error: {e}")
    not_run = {}
    for run in runs if skip else ():
        if reason := skip(run):
            not_run[run.cell.name] = reason
            print(f"cell {run.cell.name!r} seed {run.seed}: not run: {reason}", flush=True)
    runs = [r for r in runs if r.cell.name not in not_run]
    if f.dry_run:
        for run in runs:
            print(f"{run.cell.name!r} seed {run.seed}: {run.spec['overrides'] or '(the config)'}")
            print(f"    {run.dir}")
        return
    argv = " ".join(os.path.relpath(a) if a == sys.argv[0] else a for a in sys.argv)
    notes = [f"Command: `{argv}`", *notes]

    def write(records):
        results.write(
            f.workdir,
            records,
            [(c.name, c.overrides) for c in cells],
            seeds=seeds,
            baseline=f.baseline or cells[0].name,
            main=f.main,
            title=f"Sweep results{system}: {f.workdir}",
            notes=notes,
            not_run=not_run,
        )
        if after_write:
            after_write(records, cells)

    try:
        failed = run_sweep(runs, f.workdir, command, write, echo=f.echo, lock=f.machine_lock)
    except SweepError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: finished runs are kept; run the same command again to continue")
    print(f"results: {os.path.join(f.workdir, 'results.md')}", flush=True)
    if failed:
        names = ", ".join(f"{r.cell.name!r} seed {r.seed}" for r in failed)
        sys.exit(f"error: {len(failed)} run(s) failed: {names}")


def main(argv: Sequence[str]) -> None:
    f = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not f["verbosity"].present:  # JAX's INFO lines (backend probe) on request
        logging.set_verbosity(logging.WARNING)
    if f.run_cell:
        return run_cell(f.run_cell)
    sweep_main(f, lambda run: [sys.executable, os.path.abspath(__file__), f"--run_cell={run.dir}"])


if __name__ == "__main__":
    define_flags()
    flags.DEFINE_string("run_cell", "", "internal: train the cell in this folder (its cell.json)")
    app.run(main)
