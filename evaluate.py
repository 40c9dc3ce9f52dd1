"""Embedding and evaluation: STS (cosine Spearman) and the evaluation CLI.

    python evaluate.py --model=PATH --sts=FILE.tsv.gz [--sts=FILE2 ...]

PATH is anything convert.load_model accepts (a HF / sentence-transformers folder or a training
workdir). One JSON line is printed per task, e.g.
`{"task": "sample_data/stsb/test.tsv.gz", "metric": "spearman_cosine", "score": 82.03, "n": 1379}`;
the score is x100 with 2 decimals, as sentence-transformers' EmbeddingSimilarityEvaluator and MTEB
report it. Shape letters: N texts, B batch rows, L tokens, D embedding size.
"""

from __future__ import annotations

import functools
import gzip
import json
import sys
import time
from collections.abc import Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from absl import app, flags

import convert
import model as model_lib

BUCKET = 16  # rows are padded to a multiple of this many tokens: few shapes, little padding


class DataFileError(ValueError):
    """An evaluation file that cannot be read; the message names the file and line."""


@functools.lru_cache(maxsize=16)
def _jitted_embed(
    config: model_lib.EncoderConfig, pooling: str, normalize: bool, dtype: str
) -> callable:
    fn = model_lib.make_embed_fn(config, pooling, normalize)

    def embed(params, ids_BxL, segments_BxL):
        params = model_lib.cast_params(params, dtype)
        return fn.apply(params, None, ids_BxL, segments_BxL, False)[:, 0]

    return jax.jit(embed)


def _progress(done: int, total: int, start: float, label: str) -> None:
    rate = done / max(time.time() - start, 1e-9)
    end = "\n" if done == total else ""
    print(f"\r{label}: {done}/{total} texts, {rate:,.0f} texts/s", end=end, file=sys.stderr)


def encode(
    m: convert.LoadedModel,
    texts: Sequence[str],
    *,
    params: hk.Params | None = None,
    batch_size: int = 64,
    dtype: str = "float32",
    progress: bool = True,
    label: str = "encoding",
) -> np.ndarray:
    """Embed `texts` -> float32 [N, D] in input order (length-sorted inside: little padding)."""
    params = m.params if params is None else params
    n = len(texts)
    emb_NxD = np.zeros((n, m.config.hidden_size), np.float32)
    if n == 0:
        return emb_NxD
    encodings = m.tokenizer.encode_batch(list(texts))
    lengths = np.array([len(e.ids) for e in encodings])
    order = np.argsort(-lengths, kind="stable")
    embed = _jitted_embed(m.config, m.pooling, m.normalize, dtype)
    pad = m.pad_id
    start = time.time()
    for lo in range(0, n, batch_size):
        idx = order[lo : lo + batch_size]
        longest = int(lengths[idx].max())
        length = min(-(-longest // BUCKET) * BUCKET, max(longest, m.max_seq_length))
        # Fixed batch rows (empty rows pad the last batch) so each length compiles once.
        ids_BxL = np.full((batch_size, length), pad, np.int32)
        seg_BxL = np.zeros((batch_size, length), np.int32)
        for row, i in enumerate(idx):
            ids = encodings[i].ids
            ids_BxL[row, : len(ids)] = ids
            seg_BxL[row, : len(ids)] = 1
        out = embed(params, jnp.asarray(ids_BxL), jnp.asarray(seg_BxL))
        emb_NxD[idx] = np.asarray(out)[: len(idx)]
        if progress:
            _progress(min(lo + batch_size, n), n, start, label)
    return emb_NxD


def read_sts(path: str) -> tuple[list[str], list[str], np.ndarray]:
    """A gzip TSV with header sentence1, sentence2, score (no quoting) -> columns."""
    try:
        f = gzip.open(path, "rt", encoding="utf-8", newline="\n")
        lines = f.read().split("\n")
    except FileNotFoundError as e:
        raise DataFileError(f"{path}: file not found") from e
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataFileError(f"{path}: cannot read as gzip UTF-8 text ({e})") from e
    header = lines[0].rstrip("\r").split("\t")
    try:
        cols = [header.index(c) for c in ("sentence1", "sentence2", "score")]
    except ValueError as e:
        raise DataFileError(
            f"{path}:1: header must name columns sentence1, sentence2, score; got {header}"
        ) from e
    s1, s2, scores = [], [], []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.rstrip("\r").split("\t")
        if len(parts) <= max(cols):
            raise DataFileError(f"{path}:{lineno}: expected {len(header)} tab-separated columns")
        try:
            score = float(parts[cols[2]])
        except ValueError as e:
            raise DataFileError(f"{path}:{lineno}: score {parts[cols[2]]!r} is not a number") from e
        if not np.isfinite(score):
            raise DataFileError(f"{path}:{lineno}: score {parts[cols[2]]!r} is not finite")
        s1.append(parts[cols[0]])
        s2.append(parts[cols[1]])
        scores.append(score)
    if not scores:
        raise DataFileError(f"{path}: no pairs after the header")
    return s1, s2, np.asarray(scores, np.float64)


def evaluate_sts(
    m: convert.LoadedModel, path: str, *, params: hk.Params | None = None, batch_size: int = 64
) -> dict:
    """Spearman correlation x100 of cosine similarity with the gold scores."""
    s1, s2, gold = read_sts(path)
    unique = list(dict.fromkeys(s1 + s2))  # embed each distinct sentence once
    emb = encode(m, unique, params=params, batch_size=batch_size, label=path)
    index = {t: i for i, t in enumerate(unique)}
    a = emb[[index[t] for t in s1]].astype(np.float64)
    b = emb[[index[t] for t in s2]].astype(np.float64)
    cos = (a * b).sum(-1) / np.maximum(
        np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12
    )
    rho = scipy.stats.spearmanr(gold, cos).statistic
    return {"task": path, "metric": "spearman_cosine", "score": round(100 * rho, 2), "n": len(gold)}


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    if not f.model:
        raise app.UsageError("--model is required")
    if not f.sts:
        raise app.UsageError("give at least one --sts file")
    try:
        m = convert.load_model(f.model)
        for path in f.sts:
            print(json.dumps(evaluate_sts(m, path, batch_size=f.batch_size)), flush=True)
    except (convert.ModelFolderError, DataFileError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    flags.DEFINE_string("model", None, "model folder or training workdir")
    flags.DEFINE_multi_string("sts", [], "STS gzip TSV (sentence1, sentence2, score)")
    flags.DEFINE_integer("batch_size", 64, "texts per encoding batch")
    app.run(main)
