"""Streaming mixed-dataset loader: mixture sampling, batch composition, prefetch, data CLI.

NumPy only (no torch, tf.data or HF datasets). The files themselves (formats, weights, one
dataset's shuffled stream) are `sources.py`'s. The pipeline has two separate stages:

1. Composition (`MixtureLoader`): streams examples, tuples of strings `(anchor, positive,
   *negatives)`, from many jsonl(.gz) datasets, mixes them by weight into global batches of
   `datasets_per_batch` single-dataset chunks, keeps every text unique within a global batch. Every
   process composes the whole global batch (the trainer keeps its devices' rows after
   packing, see step.make_featurizer). Its `state()` is a small JSON dict from which a new loader
   continues with exactly the batches the old one would have produced.
2. Featurization (`packing.featurize`): the model's tokenizer (convert.load_tokenizer), then
   texts packed several to a row of tokens, or one per row, in static NumPy shapes.

`Prefetcher` runs both in a background thread and yields `(arrays, state_after_batch)`.

Debug CLI: `python data.py --data=DIR_OR_CONFIG --tokenizer=PATH [--batches=N]`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from absl import logging

import convert
import packing
import sources
from sources import DataError, DatasetSpec, DatasetStream, find_datasets

SAMPLE_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_data", "train")
_LOG_FIRST_BAD = 5  # bad lines logged per file; the rest are only counted.
_STATE_VERSION = 1
# Constants mixed into seeds so that different random streams never share a SeedSequence.
_TAG_MIX = 0x6D6978


# ----------------------------------------------------------------------------- the mixture


class MixtureLoader:
    """Global batches mixed from many datasets.

    A global batch of `batch_size` rows is `datasets_per_batch` chunks; each chunk comes from
    one dataset drawn with probability proportional to its weight (with replacement), and the
    draw is kept for `steps_per_dataset` consecutive steps. No text occurs twice in a global
    batch: an example sharing a text with an earlier row is deferred to a later chunk of its
    dataset (up to `max_deferred` per dataset; beyond that the oldest is dropped and counted).
    Examples with more than `max_negatives` negatives keep the first ones.

    Every process computes the whole global batch (reading is cheap next to tokenization), so
    the state is global and a run may resume on a different number of processes. The loader is
    not thread-safe: while a `Prefetcher` owns it, use only the prefetcher.
    """

    def __init__(
        self,
        datasets: Sequence[DatasetSpec],
        *,
        batch_size: int,
        seed: int,
        datasets_per_batch: int = 2,
        steps_per_dataset: int = 1,
        shuffle_buffer: int = 10_000,
        max_negatives: int = 1,
        max_deferred: int = 10_000,
        state: dict[str, Any] | None = None,
    ):
        if not datasets:
            raise ValueError("no datasets")
        if not 1 <= datasets_per_batch <= batch_size:
            raise ValueError(f"datasets_per_batch={datasets_per_batch} not in [1, batch_size]")
        if steps_per_dataset < 1 or shuffle_buffer < 1 or max_negatives < 0:
            raise ValueError("steps_per_dataset and shuffle_buffer must be >= 1, K >= 0")
        weights = np.array([d.weight for d in datasets], np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise DataError("dataset weights must be >= 0 with a positive sum")
        names = [d.name for d in datasets]
        if len(set(names)) < len(names):
            raise ValueError("duplicate dataset names")
        self.datasets = list(datasets)
        self.probs = weights / weights.sum()
        self.batch_size, self.seed, self.max_negatives = batch_size, seed, max_negatives
        self.steps_per_dataset, self.max_deferred = steps_per_dataset, max_deferred
        self.chunk_sizes = [
            len(a) for a in np.array_split(np.arange(batch_size), datasets_per_batch)
        ]
        self._streams = [DatasetStream(d, seed, shuffle_buffer, self) for d in datasets]
        self._by_name = dict(zip(names, self._streams, strict=True))
        self._logged: collections.Counter[str] = collections.Counter()
        self.last_composition: list[str] = []
        self._reset_counters()
        self._check_startup()
        if state is not None:
            self.restore(state)

    @classmethod
    def from_config(
        cls,
        data_cfg: Any,
        *,
        batch_size: int,
        seed: int,
        workdir: str | None = None,
        state: dict[str, Any] | None = None,
    ) -> MixtureLoader:
        """Builds the loader from an ml_collections group (missing fields take the defaults).

        Fields:
          dir: folder of datasets; default the bundled sample_data/train.
          config_file: a data_config.json ({"name", "lines", "weight"} list, names relative to
            `dir`); empty = every *.jsonl[.gz] file or shard folder in `dir`.
          temperature: without config_file, weight = lines ** (1 / temperature) (default 1.0).
          datasets_per_batch: single-dataset chunks per global batch (default 2).
          steps_per_dataset: consecutive steps that keep the drawn datasets (default 1).
          shuffle_buffer: lines per dataset shuffled together in memory (default 10_000).
          max_negatives: K, static number of negative columns; extra negatives are cut and
            counted (default 1).
          max_deferred: conflicting examples held per dataset before the oldest is dropped
            and counted (default 10_000; only pathological data gets there).
          max_seq_len, bucket_lengths, prefetch: used by `tokenize` / `Prefetcher`, not here.
        """
        g = data_cfg.get
        specs = find_datasets(
            g("dir", "") or (SAMPLE_DATA_DIR if not g("config_file", "") else ""),
            config_file=g("config_file", ""),
            temperature=g("temperature", 1.0),
            workdir=workdir,
        )
        return cls(
            specs,
            batch_size=batch_size,
            seed=seed,
            datasets_per_batch=g("datasets_per_batch", 2),
            steps_per_dataset=g("steps_per_dataset", 1),
            shuffle_buffer=g("shuffle_buffer", 10_000),
            max_negatives=g("max_negatives", 1),
            max_deferred=g("max_deferred", 10_000),
            state=state,
        )

    def _check_startup(self) -> None:
        """Fails now, naming the dataset, rather than hours into a run (find_datasets has made
        sure that every dataset has a valid line)."""
        for s, p in zip(self._streams, self.probs, strict=True):
            if p > 0 and s.spec.lines < max(self.chunk_sizes):
                raise DataError(
                    f"dataset {s.spec.name} has {s.spec.lines} lines, fewer than a chunk of "
                    f"{max(self.chunk_sizes)} rows: its texts would repeat within a batch"
                )

    def _reset_counters(self) -> None:
        self.step = 0
        self._lines_read: collections.Counter[str] = collections.Counter()
        self._skipped: dict[str, collections.Counter[str]] = {}
        self._examples: collections.Counter[str] = collections.Counter()
        self._neg_cut = self._deferred_total = self._deferred_dropped = 0

    def line_read(self, rel: str) -> None:
        self._lines_read[rel] += 1

    def bad_line(self, rel: str, line: int, reason: str) -> None:
        self._skipped.setdefault(rel, collections.Counter())[reason] += 1
        self._logged[rel] += 1
        if self._logged[rel] <= _LOG_FIRST_BAD:
            logging.warning(
                "skipping %s:%d (%s)", os.path.join(self.datasets[0].root, rel), line, reason
            )

    def _draw(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step // self.steps_per_dataset, _TAG_MIX])
        return rng.choice(len(self._streams), size=len(self.chunk_sizes), p=self.probs)

    def _fill(self, stream: DatasetStream, size: int, seen: set[str]) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = []

        def accept(ex: tuple[str, ...]) -> bool:
            if seen.isdisjoint(ex):
                seen.update(ex)
                out.append(ex)
                return True
            return False

        if stream.deferred:  # oldest first, so a deferred example is not starved
            kept = collections.deque(
                ex for ex in stream.deferred if len(out) >= size or not accept(ex)
            )
            stream.deferred = kept
        start_pass = accepted_pass = stream.pass_
        while len(out) < size:
            ex = stream.next_example()
            if len(ex) > 2 + self.max_negatives:
                self._neg_cut += len(ex) - 2 - self.max_negatives
                ex = ex[: 2 + self.max_negatives]
            if accept(ex):
                accepted_pass = stream.pass_
                continue
            stream.deferred.append(ex)
            self._deferred_total += 1
            if len(stream.deferred) > self.max_deferred:
                stream.deferred.popleft()
                self._deferred_dropped += 1
            if stream.pass_ - max(accepted_pass, start_pass) >= 2:
                raise DataError(
                    f"dataset {stream.spec.name}: a whole pass added nothing to a chunk of "
                    f"{size} rows; it has too few distinct texts"
                )
        return out

    def next_examples(self) -> list[tuple[str, ...]]:
        """All `batch_size` rows of the next global batch (every process computes them all)."""
        seen: set[str] = set()
        rows: list[tuple[str, ...]] = []
        self.last_composition = []
        for d, size in zip(self._draw(self.step), self.chunk_sizes, strict=True):
            stream = self._streams[d]
            chunk = self._fill(stream, size, seen)
            self._examples[stream.spec.name] += len(chunk)
            self.last_composition.append(stream.spec.name)
            rows.extend(chunk)
        self.step += 1
        return rows

    def state(self) -> dict[str, Any]:
        """JSON-serialisable position after the last batch returned (see `restore`)."""
        return {
            "version": _STATE_VERSION,
            "step": self.step,
            "datasets": {s.spec.name: s.state() for s in self._streams},
            "counters": {
                "lines_read": dict(self._lines_read),
                "skipped": {k: dict(v) for k, v in self._skipped.items()},
                "examples": dict(self._examples),
                "negatives_cut": self._neg_cut,
                "deferred_total": self._deferred_total,
                "deferred_dropped": self._deferred_dropped,
            },
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continues from `state()`: the next batches equal those of an uninterrupted loader."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown loader state version {state.get('version')}")
        unknown = set(state["datasets"]) - set(self._by_name)
        if unknown:
            logging.warning("loader state has datasets not in the mixture: %s", sorted(unknown))
        self._reset_counters()
        self.step = state["step"]
        for name, s in self._by_name.items():
            if name in state["datasets"]:
                s.restore(state["datasets"][name])
        c = state.get("counters", {})
        self._lines_read.update(c.get("lines_read", {}))
        self._skipped = {k: collections.Counter(v) for k, v in c.get("skipped", {}).items()}
        self._examples.update(c.get("examples", {}))
        self._neg_cut = c.get("negatives_cut", 0)
        self._deferred_total = c.get("deferred_total", 0)
        self._deferred_dropped = c.get("deferred_dropped", 0)

    def stats(self) -> dict[str, Any]:
        """Counters for logging; global (identical on every process)."""
        return {
            "step": self.step,
            "lines_read": dict(self._lines_read),
            "skipped": {k: dict(v) for k, v in self._skipped.items()},
            "skipped_total": sum(sum(v.values()) for v in self._skipped.values()),
            "examples": dict(self._examples),  # pairs (rows) per dataset
            "negatives_cut": self._neg_cut,
            "deferred_pending": sum(len(s.deferred) for s in self._streams),
            "deferred_total": self._deferred_total,
            "deferred_dropped": self._deferred_dropped,
            "passes": {s.spec.name: s.pass_ for s in self._streams},
            "buffered_lines": sum(s.buffered() for s in self._streams),
        }

    def close(self) -> None:
        for s in self._streams:
            s.close()


# ----------------------------------------------------------------------------- prefetching


class _Failure(NamedTuple):
    error: BaseException


class Prefetcher:
    """Yields `(featurize(examples), loader_state_after_this_batch)`, computed ahead.

    A daemon thread fills a queue of `size` batches so that reading and tokenization overlap
    the device step (the tokenizer releases the GIL). The state travels with its batch, so a
    checkpoint of the state of the last consumed batch resumes exactly, whatever was
    prefetched. An exception in the thread is re-raised by `next()`. `size=0` runs in the
    caller's thread. Use as a context manager or call `close()`.
    """

    def __init__(self, loader: MixtureLoader, featurize: Callable[[list], Any], size: int = 4):
        self._loader, self._featurize, self._size = loader, featurize, size
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        if size > 0:
            self._queue: queue.Queue = queue.Queue(maxsize=size)
            self._thread = threading.Thread(target=self._run, name="data-prefetch", daemon=True)
            self._thread.start()

    def _produce(self) -> tuple[Any, dict[str, Any]]:
        examples = self._loader.next_examples()
        state = self._loader.state()
        return self._featurize(examples), state

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._put(self._produce())
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer, who re-raises
            self._put(_Failure(e))

    def __iter__(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        return self

    def __next__(self) -> tuple[Any, dict[str, Any]]:
        if self._failure is not None:
            raise self._failure
        if self._stop.is_set():
            raise StopIteration
        if self._size == 0:
            return self._produce()
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("data prefetch thread died") from None
        if isinstance(item, _Failure):
            self._failure = item.error
            raise item.error
        return item

    def close(self) -> None:
        """Stops the thread; batches already prefetched are discarded."""
        self._stop.set()
        if self._size > 0:
            while True:  # unblock a producer waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join(timeout=30)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------- CLI


def check(specs: Sequence[DatasetSpec], first: int = 5) -> dict[str, Any]:
    """`--check`: a full read of every file, exact bad lines per file and reason (sources)."""
    datasets, total = [], 0
    for spec in specs:
        files = {rel: sources.check_file(os.path.join(spec.root, rel), first) for rel in spec.files}
        bad: collections.Counter[str] = collections.Counter()
        for f in files.values():
            bad.update(f["bad"])
        total += sum(bad.values())
        datasets.append(
            {
                "name": spec.name,
                "lines": sum(f["lines"] for f in files.values()),
                "valid": sum(f["valid"] for f in files.values()),
                "bad": dict(bad),
                "files": files,
            }
        )
    return {"datasets": datasets, "bad_lines": total}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Debug CLI: datasets, weights, bad lines and the composition of the first batches; with
    --check, a full read of every file counting its bad lines."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=SAMPLE_DATA_DIR, help="folder of datasets or a config")
    p.add_argument("--check", action="store_true", help="read every line; count bad lines")
    p.add_argument("--tokenizer", help="model folder or tokenizer.json (not for --check)")
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--datasets_per_batch", type=int, default=2)
    p.add_argument("--steps_per_dataset", type=int, default=1)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--shuffle_buffer", type=int, default=10_000)
    p.add_argument("--max_negatives", type=int, default=1)
    p.add_argument("--max_seq_len", type=int, default=128)
    p.add_argument("--workdir", default=None, help="where to cache line counts if not beside data")
    args = p.parse_args(argv)
    if not args.check and not args.tokenizer:
        p.error("--tokenizer is required (except with --check)")
    try:
        report = _check(args) if args.check else _batches(args)
    except (DataError, convert.ModelFolderError) as e:
        sys.exit(f"error: {e}")
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return report


def _find(args: argparse.Namespace, require_valid: bool = True) -> list[DatasetSpec]:
    is_config = os.path.isfile(args.data)
    return find_datasets(
        "" if is_config else args.data,
        config_file=args.data if is_config else "",
        temperature=args.temperature,
        workdir=args.workdir,
        require_valid=require_valid,
    )


def _check(args: argparse.Namespace) -> dict[str, Any]:
    return check(_find(args, require_valid=False))  # a dataset without a valid line too


def _batches(args: argparse.Namespace) -> dict[str, Any]:
    tok = convert.load_tokenizer(
        args.tokenizer, args.max_seq_len
    )  # before any line count is cached
    specs = _find(args)
    loader = MixtureLoader(
        specs,
        batch_size=args.batch_size,
        seed=args.seed,
        datasets_per_batch=args.datasets_per_batch,
        steps_per_dataset=args.steps_per_dataset,
        shuffle_buffer=args.shuffle_buffer,
        max_negatives=args.max_negatives,
    )
    batches, pairs = [], 0
    start = time.perf_counter()
    for _ in range(args.batches):
        examples = loader.next_examples()
        arrays = packing.featurize(
            examples,
            tok,
            num_devices=1,
            max_seq_len=args.max_seq_len,
            max_negatives=args.max_negatives,
            pad_id=convert.pad_id_of(tok),
        )
        pairs += len(examples)
        sizes = loader.chunk_sizes
        batches.append(
            {
                "chunks": [
                    {"dataset": n, "rows": r}
                    for n, r in zip(loader.last_composition, sizes, strict=True)
                ],
                "negatives": int(arrays["valid_BxC"][:, 2:].sum()),
            }
        )
    elapsed = time.perf_counter() - start
    stats = loader.stats()
    loader.close()
    return {
        "datasets": [
            {
                "name": s.name,
                "files": len(s.files),
                "lines": s.lines,
                "weight": s.weight,
                "probability": round(float(q), 6),
                "passes": stats["passes"][s.name],
            }
            for s, q in zip(specs, loader.probs, strict=True)
        ],
        # Each bad line once (read in a dataset's first pass; complete once "passes" >= 1).
        "skipped": stats["skipped"],
        "lines_read": stats["lines_read"],
        "negatives_cut": stats["negatives_cut"],
        "deferred_total": stats["deferred_total"],
        "batches": batches,
        "pairs_per_s": round(pairs / elapsed, 1) if elapsed > 0 else None,
    }


if __name__ == "__main__":
    main()
