"""The functions behind demo.py's four tabs, without Gradio: limits, rankings, search, clusters,
bias reports, and the page's search index (opened, or built in the background).

Each one checks its inputs against the Limits and raises InputError with the message the page
shows; the results come from apps.py and bias.py (rank, top_hits, cluster_embeddings, bias_eval),
never from a second implementation. Tables are lists of rows; charts are matplotlib Figures (no
pyplot: the server's threads draw at the same time). Shape letters: N documents, D embedding size.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Sequence

import numpy as np
from absl import logging

import apps
import bias
import convert
import evaluate

HERE = os.path.dirname(os.path.abspath(__file__))
SCIFACT = os.path.join(HERE, "sample_data", "retrieval", "scifact", "corpus.jsonl.gz")
BUILD_CHUNK = 256  # titles per append to the default index: progress in the page, resumable

SIMILARITY_EXAMPLE = (
    "A man is eating food.",
    [
        "A man is eating a piece of bread.",
        "A man is riding a horse.",
        "A woman is playing the violin.",
        "Two men pushed carts through the woods.",
        "A monkey is playing drums.",
    ],
)
QA_EXAMPLE = (  # the seed's example (docs/apps.md)
    "How many people live in Berlin?",
    [
        "The capital of France is Paris",
        "Around 3.5 million people live in Berlin",
        "Berlin is well known for its museums.",
    ],
)
SEARCH_EXAMPLE = "Which genes are linked to an increased risk of cancer?"


class InputError(ValueError):
    """A request the page answers with a message: over a limit, empty, or unknown model."""


@dataclasses.dataclass(frozen=True)
class Limits:
    texts: int = 64  # texts per request
    chars: int = 2000  # characters per text
    top_k: int = 50  # hits per query; hits clustered
    clusters: int = 12  # k of k-means
    sample: int = 1000  # index documents clustered at once


@dataclasses.dataclass
class Index:
    """A search index as loaded (apps.load_index) and the label of the model that built it."""

    path: str
    model: str  # a key of Demo.models
    docs: list[dict]
    emb_NxD: np.ndarray
    total: int  # documents it will hold when the background build ends (= len(docs) if none)
    error: str | None = None  # why the background build stopped


@dataclasses.dataclass
class Demo:
    """What the page serves: models by label, the search index, the bias templates, limits."""

    models: dict[str, convert.LoadedModel]
    index: Index | None
    templates: str
    limits: Limits = Limits()
    bias_reports: dict = dataclasses.field(default_factory=dict)  # label -> report, once each
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def model_labels(specs: Sequence[str]) -> list[tuple[str, str]]:
    """(label, path) per --models entry: NAME=PATH, or the path's last two components."""
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "/".join(os.path.normpath(spec).split(os.sep)[-2:]), spec
        if not name or not path:
            raise InputError(f"--models: {spec!r} should be PATH or NAME=PATH")
        if name in dict(out):
            raise InputError(f"--models: two models are called {name!r}; name them NAME=PATH")
        out.append((name, path))
    return out


def _text(value: str | None, what: str, limits: Limits) -> str:
    text = (value or "").strip()
    if not text:
        raise InputError(f"{what.capitalize()} is empty.")
    if len(text) > limits.chars:
        raise InputError(
            f"{what.capitalize()} has {len(text):,} characters: the limit is {limits.chars:,} "
            "characters per text (demo.py --max_chars)."
        )
    return text


def _texts(block: str | None, what: str, limits: Limits) -> list[str]:
    """The non-blank lines of a text box, each within the character limit."""
    texts = [t.strip() for t in (block or "").splitlines() if t.strip()]
    if not texts:
        raise InputError(f"Give the {what}, one per line.")
    if len(texts) > limits.texts:
        raise InputError(
            f"{len(texts)} {what} given: the limit is {limits.texts} texts per request "
            "(demo.py --max_texts)."
        )
    for i, t in enumerate(texts, 1):
        _text(t, f"line {i} of the {what}", limits)
    return texts


def _int(value, what: str, lo: int, hi: int, flag: str = "") -> int:
    """A whole number in [lo, hi]; `flag` names the demo.py flag that sets hi."""
    flag = f" (demo.py {flag})" if flag else ""
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise InputError(f"{what.capitalize()} should be a whole number, not {value!r}.") from e
    if n != value and not isinstance(value, str):
        raise InputError(f"{what.capitalize()} should be a whole number, not {value!r}.")
    if not lo <= n <= hi:
        raise InputError(f"{what.capitalize()} is {n}: it should be from {lo} to {hi}{flag}.")
    return n


def chosen_models(demo: Demo, names: Sequence[str] | str | None) -> list[str]:
    names = [names] if isinstance(names, str) else list(names or [])
    if not names:
        raise InputError("Choose at least one model.")
    unknown = [n for n in names if n not in demo.models]
    if unknown:
        raise InputError(f"Unknown model {unknown[0]!r}: served are {', '.join(demo.models)}.")
    return names


def ranking(demo: Demo, anchor: str, block: str, names, qa: bool) -> list[list]:
    """Rows (model, rank, score, text): per model, the texts ranked by apps.rank (cosine for
    similarity, dot product for QA)."""
    what = ("question" if qa else "source text"), ("answers" if qa else "texts to rank")
    anchor, texts = _text(anchor, what[0], demo.limits), _texts(block, what[1], demo.limits)
    rows = []
    for name in chosen_models(demo, names):
        for r, (i, score) in enumerate(apps.rank(demo.models[name], anchor, texts, not qa), 1):
            rows.append([name, r, round(score, 4), texts[i]])
    return rows


def ranking_figure(rows: list[list], score: str):
    """Grouped horizontal bars: one group per text (the first model's order), a bar per model."""
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r[0] for r in rows))
    texts = [r[3] for r in rows if r[0] == names[0]]
    scores = {(r[0], r[3]): r[2] for r in rows}
    fig = Figure(figsize=(8, 0.45 * len(texts) * max(1, len(names) / 2) + 1.2))
    ax = fig.subplots()
    height = 0.8 / len(names)
    y = np.arange(len(texts))[::-1]
    for j, name in enumerate(names):
        values = [scores[name, t] for t in texts]
        ax.barh(y + 0.4 - height * (j + 0.5), values, height, label=name)
    ax.set_yticks(y, [t if len(t) <= 48 else t[:45] + "..." for t in texts], fontsize=8)
    ax.set_xlabel(score)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(names))
    fig.tight_layout()
    return fig


def _ready_index(demo: Demo) -> Index:
    idx = demo.index
    if idx is None:
        raise InputError("No search index is served (start the demo with --index=DIR).")
    if not idx.docs:
        raise InputError(
            f"The search index is still being built: 0 of {idx.total:,} documents so far."
            if idx.error is None
            else f"The search index could not be built: {idx.error}"
        )
    return idx


def search(demo: Demo, query: str, k) -> tuple[Index, list[dict]]:
    """apps.top_hits over the served index, with its own model."""
    idx = _ready_index(demo)  # one snapshot: the background build swaps in a new one
    k = _int(k, "the number of hits", 1, demo.limits.top_k, "--max_k")
    query = _text(query, "the query", demo.limits)
    return idx, apps.top_hits(demo.models[idx.model], idx.docs, idx.emb_NxD, [query], k)[0]


def pca_2d(x_NxD: np.ndarray) -> np.ndarray:
    """The first two principal components (SVD of the centred rows) -> [N, 2]."""
    x = np.asarray(x_NxD, np.float64)
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    out = u[:, :2] * s[:2]
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))  # fewer than 2 rows or columns


def cluster(demo: Demo, source: str, query: str, top_k, k, sample, seed) -> dict:
    """apps.cluster_embeddings over index rows: the hits of a query, or a seeded sample.

    -> {"clusters": [[row, ...] nearest to the centroid first], "xy": {row: (x, y)}, "docs"}."""
    lim = demo.limits
    k = _int(k, "the number of clusters", 1, lim.clusters, "--max_clusters")
    seed = _int(seed, "the seed", 0, 2**31 - 1)
    if source == "hits":
        idx, hits = search(demo, query, top_k)
        rows = [h["row"] for h in hits]
    elif source == "sample":
        idx = _ready_index(demo)
        n = _int(sample, "the sample size", 1, lim.sample, "--max_sample")
        pick = np.random.default_rng(seed).permutation(len(idx.docs))[:n]
        rows = sorted(int(i) for i in pick)
    else:
        raise InputError(f"Cluster source {source!r} should be 'hits' or 'sample'.")
    if k > len(rows):
        raise InputError(f"{k} clusters of {len(rows)} documents: k should be at most {len(rows)}.")
    emb_NxD = np.asarray(idx.emb_NxD[rows], np.float64)
    clusters = apps.cluster_embeddings(emb_NxD, k, seed)
    xy = pca_2d(evaluate.l2_normalize(emb_NxD))
    return {
        "clusters": [[rows[i] for i in c] for c in clusters],
        "xy": {rows[i]: tuple(xy[i]) for i in range(len(rows))},
        "docs": idx.docs,
    }


def cluster_figure(result: dict):
    """The documents in the plane of their first two principal components, coloured by cluster;
    a cross marks each cluster's mean."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    for j, members in enumerate(result["clusters"], 1):
        pts = np.array([result["xy"][r] for r in members])
        dots = ax.scatter(pts[:, 0], pts[:, 1], s=18, label=f"cluster {j} ({len(members)})")
        ax.scatter(*pts.mean(0), marker="X", s=120, color=dots.get_facecolor()[0], edgecolor="k")
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def cluster_rows(result: dict, show: int = 3) -> list[list]:
    """Rows (cluster, size, rank, id, text): each cluster's `show` texts nearest its centroid."""
    docs = result["docs"]
    return [
        [j, len(members), r, docs[row]["id"], docs[row]["text"]]
        for j, members in enumerate(result["clusters"], 1)
        for r, row in enumerate(members[:show], 1)
    ]


def bias_report(demo: Demo, name: str) -> dict:
    """bias.bias_eval of one served model, computed once."""
    (name,) = chosen_models(demo, [name])
    with demo.lock:  # two requests for one model: the second waits for the first's report
        if name not in demo.bias_reports:
            demo.bias_reports[name] = bias.bias_eval(demo.models[name], demo.templates)
        return demo.bias_reports[name]


def bias_rows(reports: dict[str, dict]) -> list[list]:
    """Rows (occupation, female %, then per model: male share, female share, mean margin)."""
    first = next(iter(reports.values()))
    rows = [["OVERALL", ""]]
    rows += [[o["occupation"], o["female_pct"]] for o in first["occupations"]]
    for rep in reports.values():
        for row, r in zip(rows, [rep["overall"], *rep["occupations"]], strict=True):
            row += [r["male"], r["female"], r["mean_margin"]]
    return rows


def bias_summary(reports: dict[str, dict]) -> str:
    return "\n".join(
        f"- **{name}**: the male proposition is closer in {r['overall']['male']:.0%} of "
        f"{r['overall']['n']} cases, the female one in {r['overall']['female']:.0%}; Spearman of "
        f"the margin with the share of women: {r['spearman_margin_vs_female_pct']:+.2f}"
        for name, r in reports.items()
    )


def build_default_index(demo: Demo, index_dir: str, ids: list[str], texts: list[str]) -> None:
    """Append the not yet indexed (id, text) pairs BUILD_CHUNK at a time with apps.index_texts,
    publishing the index after each chunk (an interrupted build resumes at the next launch)."""
    name = demo.index.model
    try:
        done = {d["id"] for d in demo.index.docs}
        todo = [(i, t) for i, t in zip(ids, texts, strict=True) if i not in done]
        for lo in range(0, len(todo), BUILD_CHUNK):
            chunk_ids, chunk_texts = zip(*todo[lo : lo + BUILD_CHUNK], strict=True)
            label = f"index ({len(demo.index.docs):,} of {len(ids):,} done)"
            apps.index_texts(demo.models[name], chunk_ids, chunk_texts, index_dir, label=label)
            _, docs, emb_NxD = apps.load_index(index_dir)
            demo.index = Index(index_dir, name, docs, emb_NxD, len(ids))
    except Exception as e:  # shown in the Search tab; the other tabs go on serving
        logging.exception("building the search index %s failed", index_dir)
        demo.index = dataclasses.replace(demo.index, error=f"{type(e).__name__}: {e}")


def open_index(
    demo: Demo, index_dir: str | None, runs: str
) -> tuple[str, list[str], list[str]] | None:
    """Serve --index (its model must be among --models), or the default index of the SciFact
    titles with the first model; -> what the default index still lacks, to build, or None."""
    fingerprints = {name: apps.model_fingerprint(m) for name, m in demo.models.items()}
    if index_dir is not None:
        meta, docs, emb_NxD = apps.load_index(index_dir)
        names = [n for n, fp in fingerprints.items() if fp == meta["fingerprint"]]
        if not names:
            raise apps.AppError(
                f"{index_dir}: the index was built with model {meta['model']} (fingerprint "
                f"{meta['fingerprint'][:12]}), which is not among --models; add it"
            )
        demo.index = Index(index_dir, names[0], docs, emb_NxD, len(docs))
        return None
    name = next(iter(demo.models))
    index_dir = os.path.join(runs, f"demo-index-{fingerprints[name][:12]}")
    records = evaluate.read_jsonl_records(SCIFACT, ("_id", "title"))
    ids, titles = [r["_id"] for r in records], [r["title"].strip() for r in records]
    docs, emb_NxD = [], np.zeros((0, demo.models[name].config.hidden_size), np.float32)
    if os.path.exists(os.path.join(index_dir, apps.INDEX_META)):
        _, docs, emb_NxD = apps.load_index(index_dir)
    demo.index = Index(index_dir, name, docs, emb_NxD, len(ids))
    missing = set(ids) - {d["id"] for d in docs}
    return (index_dir, ids, titles) if missing else None


def warm_up(demo: Demo) -> None:
    """Compile each model for the shapes short requests use (8 and 16 rows of 16 and 32 tokens):
    the first click then answers at once."""
    for m in demo.models.values():
        for n, words in ((1, 3), (1, 20), (9, 3), (9, 20)):
            evaluate.encode(m, [" ".join(["warm"] * words)] * n, progress=False)
