"""Training sources on disk: line formats, datasets and their weights, one dataset as a stream.

A dataset is a `.jsonl` / `.jsonl.gz` file or a folder of such shards, one example per line in
any of the sentence-transformers embedding-training-data layouts (`parse_line`). `find_datasets`
lists a mixture's datasets with their line counts and weights (from the seed's data_config.json,
or every dataset of a folder). `DatasetStream` reads one dataset forever, block-shuffled, with a
position that fits in JSON; `data.MixtureLoader` mixes many of them into batches.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import re
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

_SUFFIXES = (".jsonl", ".jsonl.gz")
_LINE_CACHE = ".line_counts.json"
# Constants mixed into seeds so that different random streams never share a SeedSequence.
_TAG_BLOCK, _TAG_SHARDS = 0x626C6B, 0x736872
# A JSON "\ud800"-style escape can decode to a lone surrogate, which is not encodable text.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abAB]")


class DataError(ValueError):
    """A data folder or config that cannot be trained on; the message names the file."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset, file or folder that is not there."""


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
        pos, neg = _str_list(obj.get("pos")), _str_list(obj.get("neg"))
        if any(not p.strip() for p in pos):
            raise BadLine("empty_text")
        # A positive equal to the query or to a negative is never picked, so that whether a
        # line is bad does not depend on `key` (it changes every pass): each is counted once.
        usable = [p for p in pos if p != obj["query"] and p not in neg]
        if not usable:
            raise BadLine("repeated_text" if pos else "too_few_texts")
        texts = [obj["query"], usable[key % len(usable)], *neg]
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


def _read_data_config(path: str) -> list[dict[str, Any]]:
    """A data_config.json: a list of {"name": str, "lines": int (optional), "weight": number}."""
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a list of {{name, lines, weight}}")
    for i, e in enumerate(entries):
        ok = (
            isinstance(e, dict)
            and isinstance(e.get("name"), str)
            and isinstance(e.get("weight"), int | float)
            and not isinstance(e.get("weight"), bool)
            and (e.get("lines") is None or isinstance(e.get("lines"), int))
        )
        if not ok:
            raise DataError(
                f"{path}: entry {i} should be {{name: str, lines: int, weight: number}}, got {e!r}"
            )
    return entries


def find_datasets(
    data_dir: str,
    *,
    config_file: str = "",
    temperature: float = 1.0,
    workdir: str | None = None,
    require_valid: bool = True,
) -> list[DatasetSpec]:
    """The datasets of a mixture, from a data_config.json or from every dataset in a folder.

    With `config_file` (a list of `{"name", "lines", "weight"}`), names are relative to
    `data_dir`, or to the config's folder when `data_dir` is empty. Without it, each
    `*.jsonl[.gz]` file or sub-folder of shards in `data_dir` is a dataset weighted by
    `lines ** (1 / temperature)`. Missing files raise `DataNotFoundError` naming them; with
    `require_valid`, a dataset without a valid line raises `DataError` naming its first bad
    lines (checked before the line counts are cached: bad data writes nothing).
    """
    if config_file:
        root = data_dir or os.path.dirname(os.path.abspath(config_file))
        entries = _read_data_config(config_file)
        missing = [e["name"] for e in entries if not os.path.exists(os.path.join(root, e["name"]))]
        if missing:
            raise DataNotFoundError(
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
            raise DataNotFoundError(f"data folder not found: {root}")
        names = sorted(
            n
            for n in os.listdir(root)
            if not n.startswith(".")
            and (
                n.endswith(_SUFFIXES) or (os.path.isdir(os.path.join(root, n)) and _shards(root, n))
            )
        )
        if not names:
            raise DataNotFoundError(f"no *.jsonl or *.jsonl.gz datasets in {root}")
        weights, lines = [], [None] * len(names)
    shards = {n: _shards(root, n) for n in names}
    empty = [n for n in names if not shards[n]]
    if empty:
        raise DataNotFoundError(f"datasets without *.jsonl[.gz] shards: {', '.join(empty)}")
    for n in names if require_valid else ():
        _check_valid_line(DatasetSpec(n, root, shards[n], 0, 1.0))
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
            raise DataError(f"temperature must be > 0, got {temperature}")
        weights = [float(c) ** (1.0 / temperature) for c in lines]
    return [
        DatasetSpec(n, root, shards[n], int(c), w)
        for n, c, w in zip(names, lines, weights, strict=True)
    ]


class ReadStats(Protocol):
    """Where a `DatasetStream` reports what it read (the mixture keeps the totals).

    `line_read` is called for every line read, in every pass; `bad_line` once per bad line of a
    file: in the first pass, which reads every line once (later passes read the same lines).
    """

    def line_read(self, rel: str) -> None: ...

    def bad_line(self, rel: str, line: int, reason: str) -> None: ...


class _FirstBadLines:
    """ReadStats keeping the first few bad lines (for a start-up error message)."""

    def __init__(self, root: str, keep: int = 3):
        self.root, self.keep, self.first = root, keep, []

    def line_read(self, rel: str) -> None:
        pass

    def bad_line(self, rel: str, line: int, reason: str) -> None:
        if len(self.first) < self.keep:
            self.first.append(f"{os.path.join(self.root, rel)}:{line} ({reason})")


def _check_valid_line(spec: DatasetSpec) -> None:
    """Raises DataError unless the dataset has a valid line (reading up to the first one)."""
    stats = _FirstBadLines(spec.root)
    probe = DatasetStream(spec, 0, 1000, stats)
    try:
        probe.next_example()
    except DataError:
        raise DataError(
            f"dataset {os.path.join(spec.root, spec.name)} has no valid line: "
            + ", ".join(stats.first)
            + (" ..." if len(stats.first) == stats.keep else "")
            + " (python data.py --check lists every bad line)"
        ) from None
    finally:
        probe.close()


def check_file(path: str, first: int = 5) -> dict[str, Any]:
    """A full read of one file, in file order: its lines, valid lines, bad lines per reason and
    the first `first` bad ones as `path:line (reason)`.

    The counts equal what training counts (once per bad line, see ReadStats): whether a line is
    bad does not depend on the shuffle.
    """
    bad: collections.Counter[str] = collections.Counter()
    where: list[str] = []
    n = valid = 0
    with _open(path) as f:
        try:
            for raw in f:
                n += 1
                try:
                    parse_line(raw)
                    valid += 1
                except BadLine as e:
                    bad[e.reason] += 1
                    if len(where) < first:
                        where.append(f"{path}:{n} ({e.reason})")
        except (EOFError, OSError, zlib.error):
            bad["truncated_gzip"] += 1
            if len(where) < first:
                where.append(f"{path}:{n + 1} (truncated_gzip)")
    return {"lines": n, "valid": valid, "bad": dict(bad), "first_bad": where}


class DatasetStream:
    """Endless block-shuffled reader of one dataset, with a position that fits in JSON.

    Reads `shuffle_buffer` raw lines at a time and emits them in a permutation seeded by
    (seed, dataset, pass, shard, byte offset), so memory is bounded by the buffer and a block
    is rebuilt on resume by seeking to its offset. Shards are re-ordered and files reopened on
    every pass.
    """

    def __init__(self, spec: DatasetSpec, seed: int, shuffle_buffer: int, counts: ReadStats):
        self.spec, self.seed, self.buffer, self.counts = spec, seed, shuffle_buffer, counts
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
            # On resume, this truncation was counted before the state was saved.
            if not resuming and self.pass_ == 0:
                self.counts.bad_line(rel, self.line + len(lines) + 1, "truncated_gzip")
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
                    raise DataError(f"dataset {self.spec.name}: a whole pass had no valid line")
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
            self.counts.line_read(self._rel)
            try:
                ex = parse_line(self._block[i], int(self._keys[i]))
            except BadLine as e:
                if self.pass_ == 0:  # later passes read the same lines again
                    self.counts.bad_line(self._rel, self.line + i + 1, e.reason)
                continue
            self.valid_in_pass = True
            return ex
