"""Embedding and evaluation: STS (cosine Spearman), retrieval (nDCG@10) and the evaluation CLI.

    python evaluate.py --model=PATH [--sts=FILE.tsv.gz ...] [--retrieval=BEIR_DIR ...]

PATH is anything convert.load_model accepts (a HF / sentence-transformers folder or a training
workdir). One JSON line is printed per task, e.g.
`{"task": "sample_data/stsb/test.tsv.gz", "metric": "spearman_cosine", "score": 82.03, "n": 1379}`
or, for a BEIR folder (corpus.jsonl.gz, queries.jsonl.gz, qrels/test.tsv),
`{"task": ..., "metric": "ndcg_at_10", "score": 64.51, "n": 300, "mrr_at_10": ..., "recall_at_100":
...}`; scores are x100 with 2 decimals, as sentence-transformers' evaluators and MTEB report them.
Retrieval follows MTEB / BEIR: documents are `title + " " + text`, cosine similarity, exact search,
and the metrics of pytrec_eval (trec_eval): ranking by score then by *descending* document id
(trec_eval's `comp_sim_docno`), graded gain with a log2(rank + 1) discount, queries without a
relevant document skipped. Shape letters: N texts or documents, Q queries, K hits per query,
B batch rows, L tokens, D embedding size.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import os
import sys
from collections.abc import Iterator, Sequence

import haiku as hk
import jax
import numpy as np
import scipy.stats
import tqdm
from absl import app, flags, logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import convert
import distributed
import model as model_lib
import packing

ENCODE_AXIS = "rows"  # mesh axis of data-parallel encoding
PACK_LENGTH = 64  # texts of at most half this many tokens share encoding rows this long
SEARCH_CHUNK = 65536  # corpus rows per matrix product in top_k: bounded memory, BLAS-sized work


class DataFileError(ValueError):
    """An evaluation file that cannot be read; the message names the file and line."""


@functools.lru_cache(maxsize=32)
def _jitted_embed(
    config: model_lib.EncoderConfig,
    pooling: str,
    normalize: bool,
    dtype: str,
    num_segments: int,
    mesh: jax.sharding.Mesh | None,
) -> callable:
    """ids_RxL, segments_RxL -> emb_RxSxD, data-parallel over `mesh`'s devices when given."""
    fn = model_lib.make_embed_fn(config, pooling, normalize, num_segments)

    def embed(params, ids_RxL, segments_RxL):
        params = model_lib.cast_params(params, dtype)
        return fn.apply(params, None, ids_RxL, segments_RxL, False)

    if mesh is None:
        return jax.jit(embed)
    # Each device embeds its share of the rows: XLA:CPU runs the attention's batched products
    # on one core per device, so two host devices keep both cores busy (docs/benchmarks.md).
    rows = P(ENCODE_AXIS)
    return jax.jit(jax.shard_map(embed, mesh=mesh, in_specs=(P(), rows, rows), out_specs=rows))


def l2_normalize(x_NxD: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length, x / max(||x||, eps) (torch's F.normalize); the dtype is kept.

    NumPy's; model.l2_normalize is the JAX one inside the encoder and the loss.
    """
    return x_NxD / np.maximum(np.linalg.norm(x_NxD, axis=-1, keepdims=True), eps)


def encode(
    m: convert.LoadedModel,
    texts: Sequence[str],
    *,
    params: hk.Params | None = None,
    batch_size: int = 64,
    dtype: str = "float32",
    progress: bool = True,
    label: str = "encoding",
    max_tokens: int | None = None,
    pack_length: int = PACK_LENGTH,
    devices: Sequence[jax.Device] | None = None,
    prompt: str | None = None,
    truncate_dim: int | None = None,
) -> np.ndarray:
    """Embed `texts` -> float32 [N, D] in input order.

    Calls are sized by tokens, not texts: each holds at most `max_tokens` token slots (default
    `batch_size` texts of the model's max_seq_length), so it takes many short texts and few long
    ones. Texts of at most `pack_length // 2` tokens share rows of `pack_length` tokens (packed
    segments, attention confined to each text; 0 = one text per row); longer ones go one per
    row, longest first, padded to a multiple of 16 tokens. Each call's rows are split over
    `devices` (default: this process's devices of the default backend), the params put on them
    once. See packing.encode_batches for the shapes that get compiled.

    As sentence-transformers' `encode`: `prompt` is prepended to every text before tokenization
    (None: the model's default prompt, `m.default_prompt`; pass `m.query_prompt` or
    `m.document_prompt` for encode_query / encode_document), and the embeddings are cut to their
    first `truncate_dim` dims (None: `m.truncate_dim`, else all D), not re-normalised.
    """
    prompt = m.default_prompt if prompt is None else prompt
    if prompt:
        texts = [prompt + t for t in texts]
    full_NxD = _encode(
        m, texts, params, batch_size, dtype, progress, label, max_tokens, pack_length, devices
    )
    return truncate(full_NxD, truncate_dim, m)


def truncate(emb_NxD: np.ndarray, dim: int | None, m: convert.LoadedModel) -> np.ndarray:
    """The first `dim` dims of each row (None: `m.truncate_dim`, else all); no re-normalising."""
    dim = m.truncate_dim if dim is None else dim
    if dim is None:
        return emb_NxD
    if not 0 < dim <= emb_NxD.shape[-1]:
        raise ValueError(f"truncate_dim {dim} not in [1, {emb_NxD.shape[-1]}]")
    return emb_NxD[..., :dim]


def _encode(
    m, texts, params, batch_size, dtype, progress, label, max_tokens, pack_length, devices
) -> np.ndarray:
    """encode's batching: full-width embeddings of the (already prompted) texts."""
    n = len(texts)
    emb_NxD = np.zeros((n, m.config.hidden_size), np.float32)
    if n == 0:
        return emb_NxD
    devices = list(jax.local_devices() if devices is None else devices)
    mesh = (
        jax.make_mesh((len(devices),), (ENCODE_AXIS,), devices=devices)
        if len(devices) > 1
        else None
    )
    params = m.params if params is None else params
    if mesh is None:
        params = jax.device_put(params, devices[0])
        put = functools.partial(jax.device_put, device=devices[0])
    else:
        params = jax.device_put(params, NamedSharding(mesh, P()))
        put = functools.partial(jax.device_put, device=NamedSharding(mesh, P(ENCODE_AXIS)))
    token_ids = [e.ids for e in m.tokenizer.encode_batch(list(texts))]
    batches = packing.encode_batches(
        [len(t) for t in token_ids],
        max_tokens=max_tokens or batch_size * m.max_seq_length,
        max_length=max(m.max_seq_length, max(len(t) for t in token_ids)),
        pack_length=pack_length,
        row_multiple=len(devices),
    )
    pad = m.pad_id
    bar = tqdm.tqdm(total=n, desc=label, unit="text", disable=not progress, file=sys.stderr)
    pending = None  # the call in flight: its result is read after the next one is dispatched

    def collect(batch, out_RxSxD):
        emb_NxD[batch.index] = np.asarray(out_RxSxD)[batch.row, batch.slot]
        bar.update(len(batch.index))

    for batch in batches:
        ids_RxL, seg_RxL = packing.encode_rows(batch, token_ids, pad)
        embed = _jitted_embed(m.config, m.pooling, m.normalize, dtype, batch.segments, mesh)
        out = embed(params, put(ids_RxL), put(seg_RxL))
        if pending is not None:
            collect(*pending)
        pending = (batch, out)
    collect(*pending)
    bar.close()
    return emb_NxD


def _read_gzip_lines(path: str) -> list[str]:
    """Lines of a gzip (or, for a name without .gz, plain) UTF-8 text file."""
    gz = path.endswith(".gz")
    try:
        with (gzip.open if gz else open)(path, "rt", encoding="utf-8", newline="\n") as f:
            return f.read().split("\n")
    except FileNotFoundError as e:
        raise DataFileError(f"{path}: file not found") from e
    except (OSError, EOFError, UnicodeDecodeError) as e:
        kind = "gzip UTF-8" if gz else "UTF-8"
        raise DataFileError(f"{path}: cannot read as {kind} text ({e})") from e


def read_tsv(path: str, columns: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, values of `columns`) per non-blank row of a TSV whose header names them.

    No quoting: a quote is text. Errors name the file and line.
    """
    lines = _read_gzip_lines(path)
    header = lines[0].rstrip("\r").split("\t")
    try:
        cols = [header.index(c) for c in columns]
    except ValueError as e:
        raise DataFileError(
            f"{path}:1: header must name columns {', '.join(columns)}; got {header}"
        ) from e
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.rstrip("\r").split("\t")
        if len(parts) <= max(cols):
            raise DataFileError(f"{path}:{lineno}: expected {len(header)} tab-separated columns")
        yield lineno, [parts[c] for c in cols]


def read_sts(path: str) -> tuple[list[str], list[str], np.ndarray]:
    """An STS TSV (gzip when named .gz; header sentence1, sentence2, score) -> columns."""
    s1, s2, scores = [], [], []
    for lineno, (a, b, raw) in read_tsv(path, ("sentence1", "sentence2", "score")):
        try:
            score = float(raw)
        except ValueError as e:
            raise DataFileError(f"{path}:{lineno}: score {raw!r} is not a number") from e
        if not np.isfinite(score):
            raise DataFileError(f"{path}:{lineno}: score {raw!r} is not finite")
        s1.append(a)
        s2.append(b)
        scores.append(score)
    if not scores:
        raise DataFileError(f"{path}: no pairs after the header")
    return s1, s2, np.asarray(scores, np.float64)


def _widths(m: convert.LoadedModel, truncate_dims: Sequence[int | None]) -> list[int | None]:
    """The widths to score: each given one (None: the model's default), checked against D."""
    dims = [m.truncate_dim if d is None else d for d in truncate_dims] or [m.truncate_dim]
    for d in dims:
        if d is not None and not 0 < d <= m.config.hidden_size:
            raise ValueError(f"truncate_dim {d} not in [1, {m.config.hidden_size}]")
    return dims


def _labelled(result: dict, dim: int | None) -> dict:
    return result if dim is None else {**result, "truncate_dim": dim}


def sts_scores(
    m: convert.LoadedModel,
    path: str,
    truncate_dims: Sequence[int | None] = (None,),
    *,
    params: hk.Params | None = None,
    batch_size: int = 64,
    prompt: str | None = None,
) -> list[dict]:
    """evaluate_sts at each width of `truncate_dims`, from one encoding of the sentences."""
    dims = _widths(m, truncate_dims)
    s1, s2, gold = read_sts(path)
    unique = list(dict.fromkeys(s1 + s2))  # embed each distinct sentence once
    kw = dict(params=params, batch_size=batch_size, truncate_dim=m.config.hidden_size)
    full = encode(m, unique, label=path, prompt=prompt, **kw)
    index = {t: i for i, t in enumerate(unique)}
    i1, i2 = [index[t] for t in s1], [index[t] for t in s2]
    results = []
    for dim in dims:
        emb = l2_normalize(truncate(full, dim or m.config.hidden_size, m).astype(np.float64))
        rho = scipy.stats.spearmanr(gold, (emb[i1] * emb[i2]).sum(-1)).statistic
        result = {"task": path, "metric": "spearman_cosine", "score": round(100 * rho, 2)}
        results.append(_labelled({**result, "n": len(gold)}, dim))
    return results


def evaluate_sts(
    m: convert.LoadedModel,
    path: str,
    *,
    params: hk.Params | None = None,
    batch_size: int = 64,
    prompt: str | None = None,
    truncate_dim: int | None = None,
) -> dict:
    """Spearman correlation x100 of cosine similarity with the gold scores.

    Sentences get `prompt` (None: the model's default prompt, as sentence-transformers' encode);
    with `truncate_dim` (None: the model's default) the first N dims are scored, re-normalised.
    """
    return sts_scores(
        m, path, (truncate_dim,), params=params, batch_size=batch_size, prompt=prompt
    )[0]


def read_jsonl_records(
    path: str, fields: Sequence[str], optional: Sequence[str] = ()
) -> list[dict]:
    """JSON objects, one a line, with string `fields` and `optional` ones (BEIR corpus, queries)."""
    records, seen = [], set()
    for lineno, line in enumerate(_read_gzip_lines(path), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFileError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
        if not isinstance(rec, dict):
            raise DataFileError(f"{path}:{lineno}: expected a JSON object")
        for key in fields:
            if not isinstance(rec.get(key), str):
                raise DataFileError(f"{path}:{lineno}: field {key!r} should be a string")
        for key in optional:
            if not isinstance(rec.get(key, ""), str):
                raise DataFileError(f"{path}:{lineno}: field {key!r} should be a string")
        if rec["_id"] in seen:
            raise DataFileError(f"{path}:{lineno}: duplicate _id {rec['_id']!r}")
        seen.add(rec["_id"])
        records.append(rec)
    if not records:
        raise DataFileError(f"{path}: no records")
    return records


def read_beir_corpus(path: str) -> tuple[list[str], list[str]]:
    """(ids, texts) of a BEIR corpus.jsonl.gz; a text is `title + " " + text`, stripped (MTEB)."""
    docs = read_jsonl_records(path, ("_id", "text"), optional=("title",))
    ids = [d["_id"] for d in docs]
    texts = [
        (d["title"] + " " + d["text"]).strip() if "title" in d else d["text"].strip() for d in docs
    ]
    return ids, texts


def read_qrels(path: str, corpus: tuple[str, set[str]] | None = None) -> dict[str, dict[str, int]]:
    """A qrels TSV (header query-id, corpus-id, score: an integer grade) -> {qid: {doc: grade}}.

    With `corpus` = (its path, its ids), a corpus-id that is not among them is an error.
    """
    qrels: dict[str, dict[str, int]] = {}
    for lineno, (qid, doc, raw) in read_tsv(path, ("query-id", "corpus-id", "score")):
        try:
            grade = int(raw)
        except ValueError as e:
            raise DataFileError(f"{path}:{lineno}: score {raw!r} is not an integer") from e
        if corpus is not None and doc not in corpus[1]:
            raise DataFileError(f"{path}:{lineno}: corpus-id {doc!r} is not in {corpus[0]}")
        qrels.setdefault(qid, {})[doc] = grade
    if not qrels:
        raise DataFileError(f"{path}: no judgements after the header")
    return qrels


@dataclasses.dataclass
class BeirSet:
    """A BEIR retrieval set restricted to the judged queries of one split."""

    doc_ids: list[str]
    doc_texts: list[str]
    query_ids: list[str]  # queries with at least one relevant document, in qrels order
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]


def read_beir(folder: str, split: str = "test") -> BeirSet:
    """corpus.jsonl.gz, queries.jsonl.gz and qrels/<split>.tsv of a BEIR-layout folder."""
    corpus_path = os.path.join(folder, "corpus.jsonl.gz")
    doc_ids, doc_texts = read_beir_corpus(corpus_path)
    queries_path = os.path.join(folder, "queries.jsonl.gz")
    queries = {q["_id"]: q["text"] for q in read_jsonl_records(queries_path, ("_id", "text"))}
    qrels_path = os.path.join(folder, "qrels", f"{split}.tsv")
    qrels = read_qrels(qrels_path, (corpus_path, set(doc_ids)))
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise DataFileError(
            f"{qrels_path}: query-id {missing[0]!r} is not in {queries_path} "
            f"({len(missing)} missing)"
        )
    # trec_eval skips queries without a relevant document: they have no ideal ranking.
    judged = [q for q, rels in qrels.items() if any(g > 0 for g in rels.values())]
    return BeirSet(doc_ids, doc_texts, judged, [queries[q] for q in judged], qrels)


def top_k(
    queries_QxD: np.ndarray, corpus_NxD: np.ndarray, k: int, chunk: int = SEARCH_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k rows of `corpus_NxD` by dot product: (indices QxK, scores QxK), best first.

    The corpus is read `chunk` rows at a time (it may be a read-only memory map): one matrix
    product per chunk, `argpartition` keeps each chunk's k best, and a running merge keeps the k
    best so far. The hits are ordered by score, equal scores by ascending row; of rows tied
    exactly at the k-th score, which ones make the cut is unspecified.
    """
    q_QxD = np.asarray(queries_QxD, np.float32)
    num_q, n = q_QxD.shape[0], corpus_NxD.shape[0]
    k = min(k, n)
    best_idx_QxK = np.zeros((num_q, 0), np.int64)
    best_QxK = np.zeros((num_q, 0), np.float32)
    for lo in range(0, n, chunk):
        block_CxD = np.asarray(corpus_NxD[lo : lo + chunk], np.float32)
        scores_QxC = q_QxD @ block_CxD.T
        if scores_QxC.shape[1] > k:
            part_QxK = np.argpartition(-scores_QxC, k - 1, axis=1)[:, :k]
        else:
            part_QxK = np.broadcast_to(np.arange(scores_QxC.shape[1]), scores_QxC.shape)
        cand_idx = np.concatenate([best_idx_QxK, part_QxK + lo], axis=1)
        cand = np.concatenate([best_QxK, np.take_along_axis(scores_QxC, part_QxK, 1)], axis=1)
        if cand.shape[1] > k:
            keep = np.lexsort((cand_idx, -cand), axis=1)[:, :k]
            cand_idx = np.take_along_axis(cand_idx, keep, 1)
            cand = np.take_along_axis(cand, keep, 1)
        best_idx_QxK, best_QxK = cand_idx, cand
    order = np.lexsort((best_idx_QxK, -best_QxK), axis=1)
    return np.take_along_axis(best_idx_QxK, order, 1), np.take_along_axis(best_QxK, order, 1)


def trec_order(doc_ids: Sequence[str], scores: Sequence[float]) -> list[str]:
    """Document ids ranked as trec_eval ranks a run: score descending, then id descending."""
    pairs = sorted(zip(doc_ids, scores, strict=True), key=lambda p: p[0], reverse=True)
    return [d for d, _ in sorted(pairs, key=lambda p: -p[1])]  # stable: keeps the id order


def retrieval_metrics(ranked: Sequence[str], rels: dict[str, int]) -> dict[str, float]:
    """nDCG@10, MRR@10, Recall@100 (fractions) of one query's ranked ids against its judgements.

    pytrec_eval semantics: the gain is the grade (negative grades count as 0), the discount
    log2(rank + 1), the ideal ranking orders all judged documents by grade; a document is
    relevant when its grade is at least 1.
    """
    gains = [max(rels.get(d, 0), 0) for d in ranked[:10]]
    dcg = sum(g / np.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted((max(g, 0) for g in rels.values()), reverse=True)[:10]
    idcg = sum(g / np.log2(i + 2) for i, g in enumerate(ideal))
    relevant = {d for d, g in rels.items() if g >= 1}
    rr = next((1.0 / (i + 1) for i, d in enumerate(ranked[:10]) if d in relevant), 0.0)
    recall = len(relevant.intersection(ranked[:100])) / len(relevant) if relevant else 0.0
    return {
        "ndcg_at_10": dcg / idcg if idcg > 0 else 0.0,
        "mrr_at_10": rr,
        "recall_at_100": recall,
    }


def retrieval_scores(
    m: convert.LoadedModel,
    folder: str,
    truncate_dims: Sequence[int | None] = (None,),
    *,
    split: str = "test",
    params: hk.Params | None = None,
    batch_size: int = 64,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
) -> list[dict]:
    """evaluate_retrieval at each width of `truncate_dims`, from one encoding of the corpus."""
    dims = _widths(m, truncate_dims)
    data = read_beir(folder, split)
    width = m.config.hidden_size
    q_prompt = m.query_prompt if query_prompt is None else query_prompt
    d_prompt = m.document_prompt if document_prompt is None else document_prompt
    kw = dict(params=params, batch_size=batch_size, truncate_dim=width)
    full_docs = encode(m, data.doc_texts, label="corpus", prompt=d_prompt, **kw)
    full_queries = encode(m, data.query_texts, label="queries", prompt=q_prompt, **kw)
    results = []
    for dim in dims:
        docs = l2_normalize(truncate(full_docs, dim or width, m))
        queries = l2_normalize(truncate(full_queries, dim or width, m))
        # Keep a few more than 100 hits so documents tied at the cut are ranked by trec_order.
        idx_QxK, scores_QxK = top_k(queries, docs, 128)
        totals = {"ndcg_at_10": 0.0, "mrr_at_10": 0.0, "recall_at_100": 0.0}
        for qid, idx, scores in zip(data.query_ids, idx_QxK, scores_QxK, strict=True):
            ranked = trec_order([data.doc_ids[i] for i in idx], scores.tolist())
            for key, value in retrieval_metrics(ranked, data.qrels[qid]).items():
                totals[key] += value
        n = len(data.query_ids)
        out = {k: round(100 * v / n, 2) for k, v in totals.items()}
        result = {
            "task": folder,
            "metric": "ndcg_at_10",
            "score": out["ndcg_at_10"],
            "n": n,
            "mrr_at_10": out["mrr_at_10"],
            "recall_at_100": out["recall_at_100"],
        }
        results.append(_labelled(result, dim))
    return results


def evaluate_retrieval(
    m: convert.LoadedModel,
    folder: str,
    *,
    split: str = "test",
    params: hk.Params | None = None,
    batch_size: int = 64,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
    truncate_dim: int | None = None,
) -> dict:
    """nDCG@10 (main score), MRR@10 and Recall@100, x100, of cosine exact search on a BEIR set.

    Queries get `query_prompt`, documents `document_prompt` (None: the model's own "query" and
    "document" prompts, as encode_query / encode_document); with `truncate_dim` (None: the
    model's default) the first N dims are searched, re-normalised.
    """
    return retrieval_scores(
        m,
        folder,
        (truncate_dim,),
        split=split,
        params=params,
        batch_size=batch_size,
        query_prompt=query_prompt,
        document_prompt=document_prompt,
    )[0]


def main(argv: Sequence[str]) -> None:
    distributed.use_host_devices()  # before any JAX computation: encoding uses every core
    if not flags.FLAGS["verbosity"].present:  # JAX's INFO lines (backend probe) on request
        logging.set_verbosity(logging.WARNING)
    del argv
    f = flags.FLAGS
    if not f.model:
        raise app.UsageError("--model is required")
    if not f.sts and not f.retrieval:
        raise app.UsageError("give at least one --sts file or --retrieval folder")
    try:
        dims = [int(d) for d in f.truncate_dim] or [None]
    except ValueError as e:
        raise app.UsageError(f"--truncate_dim={','.join(f.truncate_dim)}: not integers") from e
    try:
        m = convert.load_model(f.model)
        dims = _widths(m, dims)
        for path in f.sts:
            for r in sts_scores(m, path, dims, batch_size=f.batch_size, prompt=f.prompt):
                print(json.dumps(r), flush=True)
        for folder in f.retrieval:
            for r in retrieval_scores(
                m,
                folder,
                dims,
                split=f.split,
                batch_size=f.batch_size,
                query_prompt=f.query_prompt,
                document_prompt=f.document_prompt,
            ):
                print(json.dumps(r), flush=True)
    except (convert.ModelFolderError, DataFileError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    flags.DEFINE_string("model", None, "model folder or training workdir")
    flags.DEFINE_multi_string("sts", [], "STS gzip TSV (sentence1, sentence2, score)")
    flags.DEFINE_multi_string("retrieval", [], "BEIR folder (corpus, queries, qrels/SPLIT.tsv)")
    flags.DEFINE_string("split", "test", "qrels split of the --retrieval folders")
    flags.DEFINE_integer(
        "batch_size", 64, "encoding: a call holds the tokens of this many max-length texts"
    )
    flags.DEFINE_list(
        "truncate_dim", [], "score the first N dims (re-normalised); N1,N2,...: each, one encoding"
    )
    flags.DEFINE_string("query_prompt", None, "retrieval queries' prefix; default: the model's")
    flags.DEFINE_string(
        "document_prompt", None, "retrieval documents' prefix; default: the model's"
    )
    flags.DEFINE_string("prompt", None, "STS sentences' prefix; default: the model's default one")
    app.run(main)
