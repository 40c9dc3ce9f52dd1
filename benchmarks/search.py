"""Query latency of exact top-k search (evaluate.top_k, used by `apps.py search query`).

    python -m benchmarks.search [--n=1000000] [--dim=384] [--k=10] [--queries=1] [--repeats=20]

Random unit vectors stand in for an index (the search does the same work whatever the values).
Timed: one call of `top_k` for a batch of --queries query vectors, after one warm-up call, over
the corpus held in memory and, as `search query` reads it, as a memory map of an .npy file in a
temporary folder (warm page cache). Prints one JSON line per setting with the median and the
fastest time in milliseconds. Encoding the query text is not included.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from absl import app, flags

import evaluate

flags.DEFINE_integer("n", 1_000_000, "corpus vectors")
flags.DEFINE_integer("dim", 384, "vector size (all-MiniLM-L6-v2: 384)")
flags.DEFINE_integer("k", 10, "hits per query")
flags.DEFINE_integer("queries", 1, "query vectors per call")
flags.DEFINE_integer("repeats", 20, "timed calls per setting")
flags.DEFINE_integer("chunk", evaluate.SEARCH_CHUNK, "corpus rows per matrix product")


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = np.empty((n, dim), np.float32)
    for lo in range(0, n, 100_000):  # in blocks: no float64 copy of the whole corpus
        block = rng.standard_normal((min(100_000, n - lo), dim), dtype=np.float32)
        x[lo : lo + len(block)] = evaluate.l2_normalize(block)
    return x


def _time(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up: page cache, BLAS threads
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)), 1000 * float(np.min(times))


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    rng = np.random.default_rng(0)
    corpus = _unit_rows(rng, f.n, f.dim)
    queries = _unit_rows(rng, f.queries, f.dim)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "embeddings.npy")
        np.save(path, corpus)
        mapped = np.load(path, mmap_mode="r")
        for name, data in (("memory", corpus), ("mmap", mapped)):
            median, best = _time(lambda d=data: evaluate.top_k(queries, d, f.k, f.chunk), f.repeats)
            row = {"corpus": name, "n": f.n, "dim": f.dim, "k": f.k, "queries": f.queries}
            row.update(chunk=f.chunk, median_ms=round(median, 1), min_ms=round(best, 1))
            row["cpus"] = os.cpu_count()
            print(json.dumps(row), flush=True)
        del mapped


if __name__ == "__main__":
    app.run(main)
