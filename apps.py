"""The seed's applications of a sentence-embedding model, as subcommands.

    python apps.py embed --model=M --input=texts.txt --output=emb.npy
    python apps.py similarity --model=M "source sentence" "other 1" "other 2" ...  (or --file)
    python apps.py qa --model=M --query="How many people live in Berlin?" "answer 1" ... (or --file)
    python apps.py search index --model=M --input=corpus.txt|corpus.jsonl.gz --index=DIR
    python apps.py search query --index=DIR [--model=M] [--top_k=10] "query" ...  (or --file)
    python apps.py cluster --model=M --input=texts.txt --k=K [--seed=0] [--show=3]
    python apps.py bias --model=M --output=DIR [--templates=sample_data/bias]

M is anything convert.load_model accepts (a HF / sentence-transformers folder or a training
workdir). Text files hold one text per line. `similarity` ranks by cosine similarity, `qa` and
`search` by dot product (asymmetric search: a short question against longer answers). A search
index is a folder: embeddings.npy (float32, one row per document), docs.jsonl ({"id", "text"} per
line) and model.json (the model's fingerprint: queries and later additions by another model are
refused). Prompts follow sentence-transformers: queries (qa's --query, search queries) get the
model's "query" prompt, qa's answers and indexed documents its "document" prompt, the other
commands its default prompt; --query_prompt, --document_prompt, --prompt override them.
--truncate_dim=N keeps the first N dims (re-normalised where cosine is used); an index records
its width and prompt, and queries use that width. Shape letters: N texts or documents, Q
queries, K clusters or hits, D embedding size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Sequence

import jax
import numpy as np
import scipy.cluster.vq
from absl import app, flags, logging

import bias
import convert
import distributed
import evaluate

HERE = os.path.dirname(os.path.abspath(__file__))
INDEX_EMB, INDEX_DOCS, INDEX_META = "embeddings.npy", "docs.jsonl", "model.json"

flags.DEFINE_string("model", None, "model folder or training workdir")
flags.DEFINE_string("input", None, "text file (one text per line); search index: or a BEIR corpus")
flags.DEFINE_string("output", None, "embed: the .npy file; bias: folder for bias.json, bias.png")
flags.DEFINE_string("file", None, "texts one per line instead of positional arguments")
flags.DEFINE_string("query", None, "qa: the question; search query: one more query")
flags.DEFINE_string("index", None, "search: index folder")
flags.DEFINE_integer("top_k", 10, "search: hits per query")
flags.DEFINE_integer("k", None, "cluster: number of clusters")
flags.DEFINE_integer("seed", 0, "cluster: k-means++ seed")
flags.DEFINE_integer("show", 3, "cluster: texts shown per cluster, nearest to the centroid first")
flags.DEFINE_string("templates", os.path.join(HERE, "sample_data", "bias"), "bias: template folder")
flags.DEFINE_integer(
    "batch_size", 64, "encoding: a call holds the tokens of this many max-length texts"
)
flags.DEFINE_string("query_prompt", None, "qa, search query: queries' prefix; default: the model's")
flags.DEFINE_string("document_prompt", None, "qa answers, search index docs; default: the model's")
flags.DEFINE_string("prompt", None, "embed, similarity, cluster, bias; default: the model's")
flags.DEFINE_integer("truncate_dim", None, "use the first N dims (Matryoshka); default: all")


class AppError(ValueError):
    """A problem with the command's inputs, reported without a traceback."""


def read_lines(path: str, skip_blank: bool = True) -> list[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, one text per line."""
    try:
        with open(path, "rb") as f:
            raw = f.read().split(b"\n")
    except OSError as e:
        raise evaluate.DataFileError(f"{path}: cannot read ({e.strerror})") from e
    lines = []
    for i, line in enumerate(raw, start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise evaluate.DataFileError(
                f"{path}:{i}: not UTF-8 text (byte {line[e.start]:#04x} at column {e.start + 1})"
            ) from e
    if lines and lines[-1] == "":  # the final newline ends the last line; it adds no text
        lines.pop()
    out = [(i, t.rstrip("\r")) for i, t in enumerate(lines, start=1)]
    out = [(i, t) for i, t in out if t.strip() or not skip_blank]
    if not out:
        raise evaluate.DataFileError(f"{path}: no texts")
    return out


def embed_file(
    m: convert.LoadedModel, src: str, dst: str, batch_size: int = 64, prompt: str | None = None
) -> np.ndarray:
    """Embed every line of `src` (blank ones too: row i is line i + 1) into float32 `dst`."""
    texts = [t for _, t in read_lines(src, skip_blank=False)]
    emb_NxD = evaluate.encode(m, texts, batch_size=batch_size, label=src, prompt=prompt)
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a bare name
        np.save(f, emb_NxD)
    os.replace(tmp, dst)
    return emb_NxD


def rank(
    m: convert.LoadedModel,
    anchor: str,
    others: Sequence[str],
    cosine: bool,
    prompts: tuple[str | None, str | None] = (None, None),
) -> list[tuple[int, float]]:
    """(index into others, score), best first (ties in input order): cosine or dot product.

    `prompts` = (the anchor's, the others'); None is the model's default prompt.
    """
    if prompts[0] == prompts[1]:
        emb = evaluate.encode(m, [anchor, *others], progress=False, prompt=prompts[0])
    else:  # a query and its documents (qa)
        emb = np.concatenate(
            [
                evaluate.encode(m, [anchor], progress=False, prompt=prompts[0]),
                evaluate.encode(m, others, progress=False, prompt=prompts[1]),
            ]
        )
    emb = emb.astype(np.float64)
    if cosine:
        emb = evaluate.l2_normalize(emb)
    scores = emb[1:] @ emb[0]
    order = np.argsort(-scores, kind="stable")
    return [(int(i), float(scores[i])) for i in order]


def model_fingerprint(m: convert.LoadedModel) -> str:
    """sha256 of all that decides the embeddings: architecture, pooling, tokenizer, params."""
    h = hashlib.sha256()
    head = {
        "config": dataclasses.asdict(m.config),
        "pooling": m.pooling,
        "normalize": m.normalize,
        "max_seq_length": m.max_seq_length,
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    h.update(m.tokenizer.to_str().encode())
    for path, leaf in sorted(
        jax.tree_util.tree_flatten_with_path(m.params)[0], key=lambda x: str(x[0])
    ):
        arr = np.ascontiguousarray(leaf, np.float32)
        h.update(f"{jax.tree_util.keystr(path)}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def read_corpus(path: str) -> tuple[list[str], list[str]]:
    """(ids, texts): a BEIR corpus.jsonl(.gz), or a text file whose ids are line numbers."""
    if path.endswith((".jsonl", ".jsonl.gz")):
        return evaluate.read_beir_corpus(path)
    lines = read_lines(path)
    return [str(i) for i, _ in lines], [t for _, t in lines]


def _check_model(meta: dict, fingerprint: str, index_dir: str, model_path: str) -> None:
    if meta["fingerprint"] != fingerprint:
        raise AppError(
            f"{index_dir}: the index was built with model {meta['model']} (fingerprint "
            f"{meta['fingerprint'][:12]}), not {model_path} ({fingerprint[:12]}): embeddings of "
            "two models are not comparable; use that model or a new index folder"
        )


def read_index_meta(index_dir: str) -> dict:
    """model.json of an index folder: model path, fingerprint, dim, count."""
    meta_path = os.path.join(index_dir, INDEX_META)
    if not os.path.exists(meta_path):
        raise AppError(f"{index_dir}: not a search index ({INDEX_META} is missing)")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AppError(f"{meta_path}: not valid JSON ({e}): rebuild the index") from e
    fields = {"model": str, "fingerprint": str, "dim": int, "count": int}
    for key, kind in fields.items():
        if not isinstance(meta, dict) or not isinstance(meta.get(key), kind):
            raise AppError(f"{meta_path}: field {key!r} should be {kind.__name__}")
    return meta


def load_index(index_dir: str) -> tuple[dict, list[dict], np.ndarray]:
    """(model.json, docs, embeddings as a read-only memory map) of an index folder."""
    meta = read_index_meta(index_dir)
    docs_path, emb_path = os.path.join(index_dir, INDEX_DOCS), os.path.join(index_dir, INDEX_EMB)
    docs = []
    for lineno, text in read_lines(docs_path) if meta["count"] else ():
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise AppError(f"{docs_path}:{lineno}: not valid JSON ({e.msg})") from e
        if not isinstance(doc, dict) or not all(
            isinstance(doc.get(k), str) for k in ("id", "text")
        ):
            raise AppError(f'{docs_path}:{lineno}: expected {{"id": str, "text": str}}')
        docs.append(doc)
    try:
        emb_NxD = np.load(emb_path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:  # missing, truncated, not a .npy
        raise AppError(f"{emb_path}: cannot read ({e}): rebuild the index") from e
    if emb_NxD.ndim != 2 or emb_NxD.shape[1] != meta["dim"] or emb_NxD.dtype != np.float32:
        raise AppError(
            f"{emb_path}: {emb_NxD.dtype} array of shape {emb_NxD.shape}, {INDEX_META} says "
            f"float32 rows of {meta['dim']}: rebuild the index"
        )
    if not len(docs) == emb_NxD.shape[0] == meta["count"]:
        raise AppError(
            f"{index_dir}: {INDEX_DOCS} has {len(docs)} documents, {INDEX_EMB} "
            f"{emb_NxD.shape[0]} rows, {INDEX_META} says {meta['count']}: rebuild the index"
        )
    return meta, docs, emb_NxD


def index_corpus(
    m: convert.LoadedModel,
    src: str,
    index_dir: str,
    batch_size: int = 64,
    document_prompt: str | None = None,
) -> dict:
    """Embed a corpus file into `index_dir`, appending when it is an index of the same model."""
    ids, texts = read_corpus(src)
    return index_texts(
        m, ids, texts, index_dir, batch_size, label=src, document_prompt=document_prompt
    )


def index_texts(
    m: convert.LoadedModel,
    ids: Sequence[str],
    texts: Sequence[str],
    index_dir: str,
    batch_size: int = 64,
    label: str = "index",
    document_prompt: str | None = None,
) -> dict:
    """Embed (id, text) pairs into `index_dir`, appending when it is an index of the same model.

    Ids already in the index are refused, naming `label` (the corpus file). Documents get
    `document_prompt` (None: the model's "document" prompt) and keep the model's `truncate_dim`
    dims; both are recorded, and an append must use the same.
    """
    fingerprint = model_fingerprint(m)
    prompt = m.document_prompt if document_prompt is None else document_prompt
    dim = m.truncate_dim or m.config.hidden_size
    docs, old_NxD = [], np.zeros((0, dim), np.float32)
    if os.path.exists(os.path.join(index_dir, INDEX_META)):
        meta, docs, old_NxD = load_index(index_dir)
        _check_model(meta, fingerprint, index_dir, m.path)
        if (meta["dim"], meta.get("document_prompt", "")) != (dim, prompt):
            raise AppError(
                f"{index_dir}: the index holds {meta['dim']}-dim embeddings of documents with "
                f"prompt {meta.get('document_prompt', '')!r}, not {dim} dims with {prompt!r}: "
                "use the same --truncate_dim and --document_prompt, or a new index folder"
            )
    known = {d["id"] for d in docs}
    dup = next((i for i in ids if i in known), None)
    if dup is not None:
        raise AppError(f"{label}: id {dup!r} is already in {index_dir}; index it in a new folder")
    new_NxD = evaluate.encode(
        m, texts, batch_size=batch_size, label=label, prompt=prompt, truncate_dim=dim
    )
    emb_NxD = np.concatenate([np.asarray(old_NxD), new_NxD])
    docs = docs + [{"id": i, "text": t} for i, t in zip(ids, texts, strict=True)]
    meta = {
        "model": m.path,
        "fingerprint": fingerprint,
        "dim": emb_NxD.shape[1],
        "count": len(docs),
        "document_prompt": prompt,
    }
    os.makedirs(index_dir, exist_ok=True)
    # Each file is written to a temporary name, then renamed; model.json, last, holds the count
    # that load_index checks the other two against.
    for name, write in (
        (INDEX_EMB, lambda f: np.save(f, emb_NxD)),
        (INDEX_DOCS, lambda f: f.write("".join(json.dumps(d) + "\n" for d in docs).encode())),
        (INDEX_META, lambda f: f.write(json.dumps(meta, indent=2).encode())),
    ):
        tmp = os.path.join(index_dir, name + ".tmp")
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, os.path.join(index_dir, name))
    return meta


def query_index(
    m: convert.LoadedModel,
    index_dir: str,
    queries: Sequence[str],
    top_k: int = 10,
    query_prompt: str | None = None,
) -> list[list[dict]]:
    """Per query, the top_k documents by dot product: [{"id", "score", "text", "row"}], best
    first; refused when the index was built by another model.

    Queries get `query_prompt` (None: the model's "query" prompt) and the index's width.
    """
    meta, docs, emb_NxD = load_index(index_dir)
    _check_model(meta, model_fingerprint(m), index_dir, m.path)
    if m.truncate_dim not in (None, meta["dim"]):
        raise AppError(
            f"{index_dir}: the index holds {meta['dim']}-dim embeddings, not "
            f"--truncate_dim={m.truncate_dim}"
        )
    return top_hits(m, docs, emb_NxD, queries, top_k, query_prompt=query_prompt)


def top_hits(
    m: convert.LoadedModel,
    docs: Sequence[dict],
    emb_NxD: np.ndarray,
    queries: Sequence[str],
    top_k: int = 10,
    query_prompt: str | None = None,
) -> list[list[dict]]:
    """query_index over an index already loaded (load_index), whose model the caller checked;
    "row" is the document's row in the index. Queries get `query_prompt` (None: the model's
    "query" prompt) and the index's width."""
    prompt = m.query_prompt if query_prompt is None else query_prompt
    q_QxD = evaluate.encode(
        m, queries, progress=False, prompt=prompt, truncate_dim=emb_NxD.shape[1]
    )
    idx_QxK, scores_QxK = evaluate.top_k(q_QxD, emb_NxD, top_k)
    return [
        [
            {"id": docs[i]["id"], "score": float(s), "text": docs[i]["text"], "row": int(i)}
            for i, s in zip(*row, strict=True)
        ]
        for row in zip(idx_QxK, scores_QxK, strict=True)
    ]


def kmeans(x_NxD: np.ndarray, k: int, seed: int = 0, n_init: int = 10, iters: int = 100) -> tuple:
    """k-means (SciPy's kmeans2, k-means++ seeding) -> (labels [N], centroids [K, D]).

    The best (least inertia) of `n_init` seeded runs: one run can stop in a poor local minimum
    even on well separated data (scikit-learn's classic default, n_init=10).
    """
    x_NxD = np.asarray(x_NxD, np.float64)
    n = x_NxD.shape[0]
    if not 1 <= k <= n:
        raise AppError(f"--k={k}: need 1 <= k <= number of texts ({n})")
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(n_init):
        with warnings.catch_warnings():  # an empty cluster: that run just scores worse
            warnings.simplefilter("ignore", UserWarning)
            c_KxD, labels = scipy.cluster.vq.kmeans2(x_NxD, k, iter=iters, minit="++", rng=rng)
        inertia = ((x_NxD - c_KxD[labels]) ** 2).sum()
        if best is None or inertia < best[0]:
            best = (inertia, labels, c_KxD)
    return best[1], best[2]


def cluster_texts(
    m: convert.LoadedModel,
    texts: Sequence[str],
    k: int,
    seed: int = 0,
    batch_size: int = 64,
    prompt: str | None = None,
) -> list[list[int]]:
    """k-means on L2-normalised embeddings -> clusters as text indices, nearest to the centroid
    first; the largest cluster first (ties: the one holding the earliest text)."""
    if not 1 <= k <= len(texts):  # before encoding anything
        raise AppError(f"--k={k}: need 1 <= k <= number of texts ({len(texts)})")
    emb = evaluate.encode(m, texts, batch_size=batch_size, label="cluster", prompt=prompt)
    return cluster_embeddings(emb, k, seed)


def cluster_embeddings(emb_NxD: np.ndarray, k: int, seed: int = 0) -> list[list[int]]:
    """cluster_texts on embeddings already computed (rows of a search index, say)."""
    emb = evaluate.l2_normalize(np.asarray(emb_NxD, np.float64))
    labels, c_KxD = kmeans(emb, k, seed)
    clusters = []
    for j in range(k):
        members = np.flatnonzero(labels == j)
        dist = ((emb[members] - c_KxD[j]) ** 2).sum(1)
        clusters.append([int(i) for i in members[np.argsort(dist, kind="stable")]])
    return sorted(clusters, key=lambda c: (-len(c), min(c)))


def _or(value: str | None, default: str) -> str:
    return default if value is None else value


def _print_ranking(ranking: list[tuple[int, float]], texts: Sequence[str], kind: str) -> None:
    print(f"rank  {kind:>8}  text")
    for r, (i, score) in enumerate(ranking, start=1):
        print(f"{r:>4}  {score:8.4f}  {texts[i]}")


def _texts(args: Sequence[str], what: str) -> list[str]:
    """Positional texts, or the lines of --file."""
    f = flags.FLAGS
    if f.file and args:
        raise app.UsageError(f"give the {what} either as arguments or with --file, not both")
    return [t for _, t in read_lines(f.file)] if f.file else list(args)


def _cmd_embed(m: convert.LoadedModel, args: list[str]) -> None:
    f = flags.FLAGS
    emb = embed_file(m, f.input, f.output, f.batch_size, f.prompt)
    print(json.dumps({"output": f.output, "n": emb.shape[0], "dim": emb.shape[1]}))


def _cmd_rank(m: convert.LoadedModel, args: list[str], qa: bool) -> None:
    texts = _texts(args, "texts")
    anchor = flags.FLAGS.query if qa else (texts.pop(0) if texts else None)
    if anchor is None or not texts:
        raise app.UsageError("give a source (qa: --query) and at least one text to rank")
    print(f"{'query' if qa else 'source'}: {anchor}")
    f = flags.FLAGS
    prompts = (
        (_or(f.query_prompt, m.query_prompt), _or(f.document_prompt, m.document_prompt))
        if qa
        else (f.prompt, f.prompt)
    )
    ranking = rank(m, anchor, texts, cosine=not qa, prompts=prompts)
    _print_ranking(ranking, texts, "dot" if qa else "cosine")


def _cmd_index(m: convert.LoadedModel, args: list[str]) -> None:
    f = flags.FLAGS
    print(json.dumps(index_corpus(m, f.input, f.index, f.batch_size, f.document_prompt)))


def _cmd_query(m: convert.LoadedModel, args: list[str]) -> None:
    f = flags.FLAGS
    queries = _texts(args, "queries") + ([f.query] if f.query else [])  # --query, like qa
    if not queries:
        raise app.UsageError('search query needs a query: --query="..." or positional texts')
    hits_per_query = query_index(m, f.index, queries, f.top_k, f.query_prompt)
    for q, hits in zip(queries, hits_per_query, strict=True):
        print(f"query: {q}\nrank     score  id  text")
        for r, h in enumerate(hits, start=1):
            print(f"{r:>4}  {h['score']:8.4f}  {h['id']}  {h['text'][:120]}")


def _cmd_cluster(m: convert.LoadedModel, args: list[str]) -> None:
    f = flags.FLAGS
    texts = [t for _, t in read_lines(f.input)]
    clusters = cluster_texts(m, texts, f.k, f.seed, f.batch_size, f.prompt)
    for j, members in enumerate(clusters, 1):
        print(f"cluster {j}: {len(members)} texts")
        for i in members[: f.show]:
            print(f"  {texts[i]}")


def _cmd_bias(m: convert.LoadedModel, args: list[str]) -> None:
    f = flags.FLAGS
    report = bias.bias_eval(m, f.templates, f.batch_size, f.prompt)
    os.makedirs(f.output, exist_ok=True)
    with open(os.path.join(f.output, "bias.json"), "w", encoding="utf-8") as out:
        json.dump(report, out, indent=2)
    bias.bias_chart(report, os.path.join(f.output, "bias.png"))
    print(bias.format_table(report))
    print(f"wrote {f.output}/bias.json and {f.output}/bias.png")


COMMANDS = {  # name -> (function, required flags besides --model)
    "embed": (_cmd_embed, ("input", "output")),
    "similarity": (lambda m, a: _cmd_rank(m, a, qa=False), ()),
    "qa": (lambda m, a: _cmd_rank(m, a, qa=True), ("query",)),
    "search index": (_cmd_index, ("input", "index")),
    "search query": (_cmd_query, ("index",)),
    "cluster": (_cmd_cluster, ("input", "k")),
    "bias": (_cmd_bias, ("output",)),
}


def _run(command: str, args: list[str]) -> None:
    f = flags.FLAGS
    if command == "search":
        if not args or args[0] not in ("index", "query"):
            raise app.UsageError("search needs 'index' or 'query'")
        command, args = "search " + args[0], args[1:]
    if command not in COMMANDS:
        raise app.UsageError(f"unknown command {command!r} (known: {', '.join(COMMANDS)})")
    fn, required = COMMANDS[command]
    for name in required if command == "search query" else ("model", *required):
        if getattr(f, name) is None:
            raise app.UsageError(f"{command} needs --{name}")
    model_path = f.model
    if model_path is None:  # search query: the index names its model
        model_path = read_index_meta(f.index)["model"]
    m = convert.load_model(model_path)
    if f.truncate_dim is not None:  # as SentenceTransformer(path, truncate_dim=N)
        if not 0 < f.truncate_dim <= m.config.hidden_size:
            raise AppError(f"--truncate_dim={f.truncate_dim}: not in [1, {m.config.hidden_size}]")
        m.truncate_dim = f.truncate_dim
    fn(m, args)


def main(argv: Sequence[str]) -> None:
    distributed.use_host_devices()  # before any JAX computation: encoding uses every core
    if not flags.FLAGS["verbosity"].present:  # JAX's INFO lines (backend probe) on request
        logging.set_verbosity(logging.WARNING)
    if len(argv) < 2:
        raise app.UsageError("give a command: embed, similarity, qa, search, cluster or bias")
    try:
        _run(argv[1], list(argv[2:]))
    except (AppError, convert.ModelFolderError, evaluate.DataFileError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
