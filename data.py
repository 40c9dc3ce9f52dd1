"""Streaming mixed-dataset loader: readers, mixture sampling, batch composition, tokenization.

NumPy only (no torch, tf.data or HF datasets). The pipeline has two separate stages so that a
packer can later replace the second one:

1. Composition (`MixtureLoader`): streams examples, tuples of strings `(anchor, positive,
   *negatives)`, from many jsonl(.gz) datasets, mixes them by weight into global batches of
   `datasets_per_batch` single-dataset chunks, keeps every text unique within a global batch, and
   returns this process's rows. Its `state()` is a small JSON dict from which a new loader
   continues with exactly the batches the old one would have produced.
2. Featurization (`tokenize`): HF tokenizer, static NumPy shapes.

`Prefetcher` runs both in a background thread and yields `(arrays, state_after_batch)`.

Shape letters: B rows of this process's batch, C = 2 + max_negatives columns (anchor,
positive, negatives), L sequence length (max_seq_len or a bucket length).

Debug CLI: `python data.py --data=DIR_OR_CONFIG --tokenizer=PATH [--batches=N]`.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import itertools
import json
import os
import queue
import re
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from absl import logging

SAMPLE_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_data", "train")
_SUFFIXES = (".jsonl", ".jsonl.gz")
_LINE_CACHE = ".line_counts.json"
_LOG_FIRST_BAD = 5  # bad lines logged per file; the rest are only counted.
_STATE_VERSION = 1
# Constants mixed into seeds so that different random streams never share a SeedSequence.
_TAG_MIX, _TAG_BLOCK, _TAG_SHARDS = 0x6D6978, 0x626C6B, 0x736872
# A JSON "\ud800"-style escape can decode to a lone surrogate, which is not encodable text.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abAB]")


# ----------------------------------------------------------------------------- line parsing


class BadLine(ValueError):
    """A line that is skipped; `reason` is the key under which it is counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _str_list(value: Any) -> list[str]:
    """A JSON value that may be one string or a list of strings (e.g. "neg")."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise BadLine("wrong_type")


def parse_line(raw: bytes, key: int = 0) -> tuple[str, ...]:
    """One jsonl line -> `(anchor, positive, *negatives)`, or raises `BadLine(reason)`.

    Formats: `[anchor, positive, neg...]`, `{"query", "pos", "neg"}`, `{"set": [...]}` and
    `{"anchor", "positive", "negative"}`. `key` is a random integer fixed per line by the
    shuffle, used to pick the pair of a "set" and the positive of a "pos" list, so that the
    choice is reproducible on resume.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadLine("invalid_utf8") from None
    if not text.strip():
        raise BadLine("blank_line")
    try:
        obj = json.loads(text)
    except ValueError:
        raise BadLine("malformed_json") from None
    if isinstance(obj, list):
        texts = obj
    elif isinstance(obj, dict) and "set" in obj:
        members = _str_list(obj["set"])
        if any(not m.strip() for m in members):
            raise BadLine("empty_text")
        members = list(dict.fromkeys(members))  # distinct, in order
        if len(members) < 2:
            raise BadLine("too_few_texts")
        m = len(members)
        i, j = key % m, (key // m) % (m - 1)
        texts = [members[i], members[j + (j >= i)]]
    elif isinstance(obj, dict) and "query" in obj:
        pos = _str_list(obj.get("pos"))
        if not pos:
            raise BadLine("too_few_texts")
        texts = [obj["query"], pos[key % len(pos)], *_str_list(obj.get("neg"))]
    elif isinstance(obj, dict) and "anchor" in obj and "positive" in obj:
        texts = [obj["anchor"], obj["positive"], *_str_list(obj.get("negative"))]
    else:
        raise BadLine("wrong_type")
    if not all(isinstance(t, str) for t in texts):
        raise BadLine("wrong_type")
    if len(texts) < 2:
        raise BadLine("too_few_texts")
    if any(not t.strip() for t in texts):
        raise BadLine("empty_text")
    if len(set(texts)) < len(texts):
        # A negative equal to the positive (or anchor == positive) teaches nothing or worse.
        raise BadLine("repeated_text")
    if _SURROGATE_ESCAPE.search(raw):
        try:
            for t in texts:
                t.encode("utf-8")
        except UnicodeEncodeError:
            raise BadLine("invalid_utf8") from None
    return tuple(texts)


# ----------------------------------------------------------------------------- datasets


class DatasetSpec(NamedTuple):
    """One dataset of the mixture: a file or a folder of shards."""

    name: str  # path relative to `root`, as in data_config.json
    root: str  # the data folder
    files: tuple[str, ...]  # shard paths relative to `root`, sorted
    lines: int  # line count (from the config, or counted and cached)
    weight: float  # unnormalised sampling weight


def _open(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb", buffering=1 << 20)


def count_lines(path: str) -> int:
    """Number of lines, streaming in 1 MiB chunks; a truncated .gz counts what is readable."""
    n, last = 0, b"\n"
    with _open(path) as f:
        try:
            while chunk := f.read1(1 << 20):  # read1: keeps what precedes damage
                n += chunk.count(b"\n")
                last = chunk
        except (EOFError, OSError, zlib.error):
            pass
    return n + (not last.endswith(b"\n"))


def _cached_line_counts(paths: Sequence[str], root: str, workdir: str | None) -> dict[str, int]:
    """Line counts keyed by path; counted once, cached next to the data or in the workdir.

    Entries carry size and mtime so that a changed file is recounted.
    """
    # Written to the workdir when there is one (the data folder may be shared or read-only),
    # else next to the data; read from both.
    caches = [os.path.join(root, _LINE_CACHE)]
    if workdir:
        caches.insert(0, os.path.join(workdir, "line_counts.json"))
    cache: dict[str, Any] = {}
    for c in caches:
        if os.path.exists(c):
            with open(c) as f:
                cache.update(json.load(f))
    counts, changed = {}, False
    for p in paths:
        full = os.path.realpath(p)
        st = os.stat(full)
        entry = cache.get(full)
        if entry is None or entry["size"] != st.st_size or entry["mtime_ns"] != st.st_mtime_ns:
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "lines": count_lines(full)}
            cache[full], changed = entry, True
        counts[p] = entry["lines"]
    if changed:
        for c in caches:
            try:
                os.makedirs(os.path.dirname(c), exist_ok=True)
                tmp = f"{c}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    json.dump(cache, f)
                os.replace(tmp, c)  # atomic: processes counting concurrently never see half
                break
            except OSError:
                continue  # read-only data folder: fall back to the workdir
    return counts


def _shards(root: str, name: str) -> tuple[str, ...]:
    path = os.path.join(root, name)
    if os.path.isfile(path):
        return (name,)
    found = []
    for dirpath, _, filenames in os.walk(path):
        for fn in filenames:
            if fn.endswith(_SUFFIXES) and not fn.startswith("."):
                found.append(os.path.relpath(os.path.join(dirpath, fn), root))
    return tuple(sorted(found))


def find_datasets(
    data_dir: str,
    *,
    config_file: str = "",
    temperature: float = 1.0,
    workdir: str | None = None,
) -> list[DatasetSpec]:
    """The datasets of a mixture, from a data_config.json or from every dataset in a folder.

    With `config_file` (a list of `{"name", "lines", "weight"}`), names are relative to
    `data_dir`, or to the config's folder when `data_dir` is empty. Without it, each
    `*.jsonl[.gz]` file or sub-folder of shards in `data_dir` is a dataset weighted by
    `lines ** (1 / temperature)`. Missing files raise `FileNotFoundError` naming them.
    """
    if config_file:
        root = data_dir or os.path.dirname(os.path.abspath(config_file))
        with open(config_file) as f:
            entries = json.load(f)
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and "name" in e and "weight" in e for e in entries
        ):
            raise ValueError(f"{config_file}: expected a list of {{name, lines, weight}}")
        missing = [e["name"] for e in entries if not os.path.exists(os.path.join(root, e["name"]))]
        if missing:
            raise FileNotFoundError(
                f"{config_file}: {len(missing)} dataset(s) not found in {root}: "
                + ", ".join(missing[:10])
                + (" ..." if len(missing) > 10 else "")
            )
        names = [e["name"] for e in entries]
        weights = [float(e["weight"]) for e in entries]
        lines = [e.get("lines") for e in entries]
    else:
        root = data_dir
        if not os.path.isdir(root):
            raise FileNotFoundError(f"data folder not found: {root}")
        names = sorted(
            n
            for n in os.listdir(root)
            if not n.startswith(".")
            and (
                n.endswith(_SUFFIXES) or (os.path.isdir(os.path.join(root, n)) and _shards(root, n))
            )
        )
        if not names:
            raise FileNotFoundError(f"no *.jsonl or *.jsonl.gz datasets in {root}")
        weights, lines = [], [None] * len(names)
    shards = {n: _shards(root, n) for n in names}
    empty = [n for n in names if not shards[n]]
    if empty:
        raise FileNotFoundError(f"datasets without *.jsonl[.gz] shards: {', '.join(empty)}")
    uncounted = [
        os.path.join(root, s)
        for n, c in zip(names, lines, strict=True)
        if c is None
        for s in shards[n]
    ]
    counts = _cached_line_counts(uncounted, root, workdir) if uncounted else {}
    lines = [
        c if c is not None else sum(counts[os.path.join(root, s)] for s in shards[n])
        for n, c in zip(names, lines, strict=True)
    ]
    if not config_file:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        weights = [float(c) ** (1.0 / temperature) for c in lines]
    return [
        DatasetSpec(n, root, shards[n], int(c), w)
        for n, c, w in zip(names, lines, weights, strict=True)
    ]


# ----------------------------------------------------------------------------- one dataset


class _Stream:
    """Endless block-shuffled reader of one dataset, with a position that fits in JSON.

    Reads `shuffle_buffer` raw lines at a time and emits them in a permutation seeded by
    (seed, dataset, pass, shard, byte offset), so memory is bounded by the buffer and a block
    is rebuilt on resume by seeking to its offset. Shards are re-ordered and files reopened on
    every pass.
    """

    def __init__(self, spec: DatasetSpec, seed: int, shuffle_buffer: int, loader: MixtureLoader):
        self.spec, self.seed, self.buffer, self.loader = spec, seed, shuffle_buffer, loader
        self.name_key = zlib.crc32(spec.name.encode())
        self.deferred: collections.deque[tuple[str, ...]] = collections.deque()
        self.restore({"pass": 0, "shard": 0, "offset": 0, "line": 0, "block_lines": 0})
        self.valid_in_pass = False

    def state(self) -> dict[str, Any]:
        return {
            "pass": self.pass_,
            "shard": self.shard,
            "offset": self.offset,
            "line": self.line,
            "block_lines": self.block_lines,
            "end": self.end,
            "index": self.index,
            "deferred": [list(ex) for ex in self.deferred],
        }

    def restore(self, st: dict[str, Any]) -> None:
        self.close()
        self.pass_, self.shard = st["pass"], st["shard"]
        self.offset, self.line = st["offset"], st["line"]
        self.block_lines, self.end = st["block_lines"], st.get("end", False)
        self.index = st.get("index", 0)
        self.deferred = collections.deque(tuple(ex) for ex in st.get("deferred", ()))
        self.valid_in_pass = True  # unknown for a pass resumed midway: do not raise on it
        self._block: list[bytes] | None = None

    def close(self) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()
        self._file = None

    def buffered(self) -> int:
        return len(self._block) if self._block is not None else 0

    def _shard_path(self) -> str:
        files = self.spec.files
        if len(files) > 1:
            rng = np.random.default_rng([self.seed, self.name_key, self.pass_, _TAG_SHARDS])
            files = [files[i] for i in rng.permutation(len(files))]
        return files[self.shard]

    def _load_block(self) -> None:
        """Reads the block at (shard, offset): the recorded size on resume, else a full buffer."""
        rel = self._shard_path()
        if self._file is None:
            self._file = _open(os.path.join(self.spec.root, rel))
            if self.offset:
                self._file.seek(self.offset)  # gzip: decompresses up to the offset, once
        resuming = self.block_lines > 0
        want = self.block_lines if resuming else self.buffer
        lines: list[bytes] = []
        try:
            while len(lines) < want and (raw := self._file.readline()):
                lines.append(raw)
        except (EOFError, OSError, zlib.error):
            if not resuming:  # on resume, this truncation was counted before the state was saved
                self.loader._count_bad(rel, self.line + len(lines) + 1, "truncated_gzip")
            self.end = True
        if not resuming:
            self.end = self.end or len(lines) < want
        self.block_lines, self._block_bytes = len(lines), sum(map(len, lines))
        rng = np.random.default_rng(
            [self.seed, self.name_key, self.pass_, self.shard, self.offset, _TAG_BLOCK]
        )
        self._order = rng.permutation(len(lines))
        self._keys = rng.integers(0, 2**62, size=len(lines))
        self._block, self._rel = lines, rel

    def _next_block(self) -> None:
        if self.end or self.block_lines == 0:
            self.close()
            self.shard, self.offset, self.line = self.shard + 1, 0, 0
            if self.shard == len(self.spec.files):
                if not self.valid_in_pass:
                    raise ValueError(f"dataset {self.spec.name}: a whole pass had no valid line")
                self.pass_, self.shard, self.valid_in_pass = self.pass_ + 1, 0, False
        else:
            self.offset += self._block_bytes
            self.line += self.block_lines
        self.block_lines, self.end, self.index, self._block = 0, False, 0, None

    def next_example(self) -> tuple[str, ...]:
        while True:
            if self._block is None:
                self._load_block()
            if self.index >= len(self._block):
                self._next_block()
                continue
            i = int(self._order[self.index])
            self.index += 1
            self.loader._lines_read[self._rel] += 1
            try:
                ex = parse_line(self._block[i], int(self._keys[i]))
            except BadLine as e:
                self.loader._count_bad(self._rel, self.line + i + 1, e.reason)
                continue
            self.valid_in_pass = True
            return ex


# ----------------------------------------------------------------------------- the mixture


class MixtureLoader:
    """Global batches mixed from many datasets; this process gets its rows of each.

    A global batch of `batch_size` rows is `datasets_per_batch` chunks; each chunk comes from
    one dataset drawn with probability proportional to its weight (with replacement), and the
    draw is kept for `steps_per_dataset` consecutive steps. No text occurs twice in a global
    batch: an example sharing a text with an earlier row is deferred to a later chunk of its
    dataset (up to `max_deferred` per dataset; beyond that the oldest is dropped and counted).
    Examples with more than `max_negatives` negatives keep the first ones.

    Every process computes the whole global batch (reading is cheap next to tokenization) and
    returns rows `[p * B/P, (p + 1) * B/P)`, so the state is global and a run may resume on a
    different number of processes. The loader is not thread-safe: while a `Prefetcher` owns
    it, use only the prefetcher.
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
        process_index: int = 0,
        process_count: int = 1,
        state: dict[str, Any] | None = None,
    ):
        if not datasets:
            raise ValueError("no datasets")
        if not 1 <= datasets_per_batch <= batch_size:
            raise ValueError(f"datasets_per_batch={datasets_per_batch} not in [1, batch_size]")
        if batch_size % process_count or not 0 <= process_index < process_count:
            raise ValueError(f"batch_size={batch_size} does not split over {process_count}")
        if steps_per_dataset < 1 or shuffle_buffer < 1 or max_negatives < 0:
            raise ValueError("steps_per_dataset and shuffle_buffer must be >= 1, K >= 0")
        weights = np.array([d.weight for d in datasets], np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("dataset weights must be >= 0 with a positive sum")
        names = [d.name for d in datasets]
        if len(set(names)) < len(names):
            raise ValueError("duplicate dataset names")
        self.datasets = list(datasets)
        self.probs = weights / weights.sum()
        self.batch_size, self.seed, self.max_negatives = batch_size, seed, max_negatives
        self.steps_per_dataset, self.max_deferred = steps_per_dataset, max_deferred
        self.rows = batch_size // process_count
        self.row_start = process_index * self.rows
        self.chunk_sizes = [
            len(a) for a in np.array_split(np.arange(batch_size), datasets_per_batch)
        ]
        self._streams = [_Stream(d, seed, shuffle_buffer, self) for d in datasets]
        self._by_name = dict(zip(names, self._streams, strict=True))
        self._logged: collections.Counter[str] = collections.Counter()
        self.last_composition: list[str] = []
        self._reset_counters()
        self._check_startup(shuffle_buffer)
        self._reset_counters()  # drop what the start-up probe counted
        if state is not None:
            self.restore(state)

    @classmethod
    def from_config(
        cls,
        data_cfg: Any,
        *,
        batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
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
            process_index=process_index,
            process_count=process_count,
            state=state,
        )

    def _check_startup(self, shuffle_buffer: int) -> None:
        """Fails now, naming the dataset, rather than hours into a run."""
        for s in self._streams:
            probe = _Stream(s.spec, 0, min(shuffle_buffer, 1000), self)
            try:
                probe.next_example()
            except ValueError as e:
                raise ValueError(f"dataset {s.spec.name} has no valid line") from e
            finally:
                probe.close()
        for s, p in zip(self._streams, self.probs, strict=True):
            if p > 0 and s.spec.lines < max(self.chunk_sizes):
                raise ValueError(
                    f"dataset {s.spec.name} has {s.spec.lines} lines, fewer than a chunk of "
                    f"{max(self.chunk_sizes)} rows: its texts would repeat within a batch"
                )

    def _reset_counters(self) -> None:
        self.step = 0
        self._lines_read: collections.Counter[str] = collections.Counter()
        self._skipped: dict[str, collections.Counter[str]] = {}
        self._examples: collections.Counter[str] = collections.Counter()
        self._neg_cut = self._deferred_total = self._deferred_dropped = 0

    def _count_bad(self, rel: str, line: int, reason: str) -> None:
        self._skipped.setdefault(rel, collections.Counter())[reason] += 1
        self._logged[rel] += 1
        if self._logged[rel] <= _LOG_FIRST_BAD:
            logging.warning(
                "skipping %s:%d (%s)", os.path.join(self.datasets[0].root, rel), line, reason
            )

    def _draw(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step // self.steps_per_dataset, _TAG_MIX])
        return rng.choice(len(self._streams), size=len(self.chunk_sizes), p=self.probs)

    def _fill(self, stream: _Stream, size: int, seen: set[str]) -> list[tuple[str, ...]]:
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
                raise ValueError(
                    f"dataset {stream.spec.name}: a whole pass added nothing to a chunk of "
                    f"{size} rows; it has too few distinct texts"
                )
        return out

    def next_global_examples(self) -> list[tuple[str, ...]]:
        """All `batch_size` rows of the next global batch (every process computes them)."""
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

    def next_examples(self) -> list[tuple[str, ...]]:
        """This process's `batch_size // process_count` rows of the next global batch."""
        return self.next_global_examples()[self.row_start : self.row_start + self.rows]

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


# ----------------------------------------------------------------------------- tokenization


def load_tokenizer(path: str, max_seq_len: int):
    """A `tokenizers.Tokenizer` from a model folder or tokenizer.json: no padding, truncation."""
    from tokenizers import Tokenizer

    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    tok = Tokenizer.from_file(path)
    tok.no_padding()  # tokenizer.json files often pin padding to a fixed length
    tok.enable_truncation(max_length=max_seq_len)
    return tok


def pad_id_of(tokenizer) -> int:
    """The id of the tokenizer's padding token ([PAD] = 0 for BERT, <pad> = 1 for RoBERTa)."""
    if tokenizer.padding is not None:
        return tokenizer.padding["pad_id"]
    for tok in ("[PAD]", "<pad>", "<|padding|>", "<|pad|>", "[pad]"):
        if (i := tokenizer.token_to_id(tok)) is not None:
            return i
    raise ValueError("tokenizer has no known padding token: pass pad_id explicitly")


def tokenize(
    examples: Sequence[tuple[str, ...]],
    tokenizer,
    *,
    max_seq_len: int,
    max_negatives: int,
    bucket_lengths: Sequence[int] = (),
    pad_id: int | None = None,
) -> dict[str, np.ndarray]:
    """Examples -> `ids_BxCxL` int32, `mask_BxCxL` int32, `valid_BxC` bool.

    C = 2 + max_negatives; absent negatives are invalid columns of padding. L is max_seq_len,
    or the smallest of `bucket_lengths` that holds the batch's longest text (static shapes:
    XLA compiles once per distinct L).
    """
    if any(not 0 < b <= max_seq_len for b in bucket_lengths):
        raise ValueError(f"bucket_lengths {bucket_lengths} must lie in [1, {max_seq_len}]")
    pad = pad_id_of(tokenizer) if pad_id is None else pad_id
    num_cols = 2 + max_negatives
    valid_BxC = np.zeros((len(examples), num_cols), bool)
    texts, slots = [], []
    for b, ex in enumerate(examples):
        if not 2 <= len(ex) <= num_cols:
            raise ValueError(f"example {b} has {len(ex)} texts, expected 2..{num_cols}")
        valid_BxC[b, : len(ex)] = True
        texts.extend(ex)
        slots.extend(range(b * num_cols, b * num_cols + len(ex)))
    # encode_batch_fast skips offsets: about twice the speed of encode_batch.
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    token_ids = [e.ids[:max_seq_len] for e in encode(texts)] if texts else []
    lens = np.fromiter(map(len, token_ids), np.int64, len(token_ids))
    longest = int(lens.max(initial=0))
    seq_len = min((b for b in bucket_lengths if b >= longest), default=max_seq_len)
    ids_NxL = np.full((valid_BxC.size, seq_len), pad, np.int32)
    mask_NxL = np.zeros((valid_BxC.size, seq_len), np.int32)
    rows = np.asarray(slots, np.int64)
    real_TxL = np.arange(seq_len)[None, :] < lens[:, None]
    mask_NxL[rows] = real_TxL
    # Row-major boolean assignment fills each row's leading positions with its token ids.
    ids_NxL[mask_NxL.astype(bool)] = np.fromiter(
        itertools.chain.from_iterable(token_ids), np.int32, int(lens.sum())
    )
    shape = (len(examples), num_cols, seq_len)
    return {
        "ids_BxCxL": ids_NxL.reshape(shape),
        "mask_BxCxL": mask_NxL.reshape(shape),
        "valid_BxC": valid_BxC,
    }


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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Debug CLI: datasets, weights, bad lines and the composition of the first batches."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=SAMPLE_DATA_DIR, help="folder of datasets or a config")
    p.add_argument("--tokenizer", required=True, help="model folder or tokenizer.json")
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
    is_config = os.path.isfile(args.data)
    specs = find_datasets(
        "" if is_config else args.data,
        config_file=args.data if is_config else "",
        temperature=args.temperature,
        workdir=args.workdir,
    )
    loader = MixtureLoader(
        specs,
        batch_size=args.batch_size,
        seed=args.seed,
        datasets_per_batch=args.datasets_per_batch,
        steps_per_dataset=args.steps_per_dataset,
        shuffle_buffer=args.shuffle_buffer,
        max_negatives=args.max_negatives,
    )
    tok = load_tokenizer(args.tokenizer, args.max_seq_len)
    batches, pairs = [], 0
    start = time.perf_counter()
    for _ in range(args.batches):
        examples = loader.next_examples()
        arrays = tokenize(
            examples, tok, max_seq_len=args.max_seq_len, max_negatives=args.max_negatives
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
    report = {
        "datasets": [
            {
                "name": s.name,
                "files": len(s.files),
                "lines": s.lines,
                "weight": s.weight,
                "probability": round(float(q), 6),
            }
            for s, q in zip(specs, loader.probs, strict=True)
        ],
        "skipped": stats["skipped"],
        "lines_read": stats["lines_read"],
        "negatives_cut": stats["negatives_cut"],
        "deferred_total": stats["deferred_total"],
        "batches": batches,
        "pairs_per_s": round(pairs / elapsed, 1) if elapsed > 0 else None,
    }
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return report


if __name__ == "__main__":
    main()
