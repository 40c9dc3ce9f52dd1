"""Writes the study's claim-3 mixture: SciFact train pairs plus as many general pairs again.

    python tools/write_scifact_mixed.py

sample_data/scifact_mixed/ gets `scifact_train_pairs.jsonl.gz` (the bundled SciFact pairs, copied
byte for byte) and, per dataset of sample_data/train/, a sample of its lines: the general datasets
together hold as many lines as SciFact (917), each in proportion to its size (largest remainder),
drawn with a fixed seed and kept in file order. Weighted by lines (main.py without a config_file,
sentence-transformers' proportional sampler), the mixture is therefore half SciFact, half general,
identical for both trainers. Rerunning rewrites the same bytes.
"""

import gzip
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402
from configs.scifact import PAIRS  # noqa: E402

GENERAL = os.path.join(base.SAMPLE, "train")
OUT = os.path.join(base.SAMPLE, "scifact_mixed")
SEED = 0


def _lines(path: str) -> list[bytes]:
    with gzip.open(path, "rb") as f:
        return f.read().splitlines(keepends=True)


def quotas(sizes: dict[str, int], total: int) -> dict[str, int]:
    """`total` split over `sizes` in proportion (largest remainder; ties by name)."""
    whole = sum(sizes.values())
    exact = {n: total * s / whole for n, s in sizes.items()}
    out = {n: int(e) for n, e in exact.items()}
    for n in sorted(exact, key=lambda n: (out[n] - exact[n], n))[: total - sum(out.values())]:
        out[n] += 1
    return out


def write_mixed(out: str = OUT) -> dict[str, int]:
    """Writes the mixture folder; returns {file: lines}."""
    os.makedirs(out, exist_ok=True)
    target = len(_lines(PAIRS))
    shutil.copyfile(PAIRS, os.path.join(out, os.path.basename(PAIRS)))
    names = sorted(n for n in os.listdir(GENERAL) if n.endswith(".jsonl.gz"))
    lines = {n: _lines(os.path.join(GENERAL, n)) for n in names}
    counts = {os.path.basename(PAIRS): target}
    for i, (n, k) in enumerate(quotas({n: len(v) for n, v in lines.items()}, target).items()):
        rows = np.sort(np.random.default_rng([SEED, i]).choice(len(lines[n]), k, replace=False))
        with (
            open(os.path.join(out, n), "wb") as f,
            gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as g,
        ):
            g.writelines(lines[n][r] for r in rows)
        counts[n] = k
    return counts


if __name__ == "__main__":
    for name, n in write_mixed().items():
        print(f"{n:5d} {os.path.join(OUT, name)}")
