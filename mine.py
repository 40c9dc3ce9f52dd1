"""Hard-negative mining with an embedding model: (anchor, positive) -> [anchor, positive, negs].

    python mine.py --model=M --data=PAIRS.jsonl.gz --out=OUT.jsonl.gz [--corpus=FILE]
        [--num_negatives=3] [--range_min=0] [--range_max=50] [--absolute_margin=X]
        [--relative_margin=X] [--max_score=X] [--min_score=X] [--sampling=top|random] [--seed=0]
        [--query_prompt=... --corpus_prompt=...] [--batch_size=64]

The flags are the arguments of sentence-transformers' `util.mine_hard_negatives` (6.2.0), with
its meaning: the anchors (deduplicated) and the corpus (deduplicated) are embedded once with M and
L2-normalised; for each anchor, the `range_max + P` nearest corpus texts by cosine (P = most
pairs any anchor has) are retrieved by exact search (`evaluate.top_k`, in chunks); the anchor's
positives (of every pair with the same anchor text) are no candidates; then a candidate is
dropped as a probable false negative when it scores above `positive - absolute_margin`, above
`positive - |positive| * relative_margin` (positive = the lowest score among the anchor's
positives), above `max_score` or below `min_score`; the first `range_min` of the surviving
candidates (best first) are skipped, the next `range_max - range_min` form the pool, and the
`num_negatives` negatives are its first ones (`top`) or a seeded random draw (`random`), written
best first. The corpus is every positive of the data, or `--corpus` plus every positive.

Where ours differs from sentence-transformers (all documented in docs/hard-negatives.md):
- The anchor text itself is never a candidate either (theirs does not exclude it when the anchor
  also occurs in the corpus; the window then keeps one more hit for that anchor).
- Output: the seed's format, one line `[anchor, positive, neg_1, ..., neg_K]` per input pair, in
  input order; a pair with fewer than K negatives left keeps what it has (counted; theirs drops
  it in "n-tuple" format; `--keep_incomplete=false` does that). `--output_format=triplet` writes
  one `[anchor, positive, negative]` line per negative, as theirs does by default. Duplicate input
  pairs stay duplicates (theirs merges them). `--output_scores` writes `{"query", "pos": [p],
  "neg": [...], "scores": [positive, negatives...]}` lines (a format the loader reads; theirs adds
  a scores column). `--query_prompt`/`--corpus_prompt` are strings only (no prompt names).
- `random` draws from NumPy's generator seeded with `--seed` (theirs: Python's global `random`).
- Ties exactly equal in score are broken by corpus order (theirs: torch.topk's order).
- No cross-encoder rescoring, no FAISS: exact search only.

Input: a .jsonl[.gz] file, or a folder of them, in any format the loader reads
(sources.parse_line): `[anchor, positive, neg...]` (the input negatives are replaced, counted),
`{"query", "pos": [...], "neg"}` (one pair per positive), `{"anchor", "positive"}`, `{"set":
[t0, t1, ...]}` (the pairs (t0, t1), (t0, t2), ...). Bad lines are skipped and counted by reason,
as in training. `--corpus`: a BEIR corpus (`.jsonl[.gz]` records with "text" and optional
"title": `title + " " + text`, as evaluate.py reads it) or any other file with one text per line
(gzip if .gz).

The output is written atomically (gzip without name or time: the same bytes on every run with
the same embeddings), with a JSON summary beside it (OUT minus .jsonl.gz + ".summary.json"), also
printed on stdout; a table of score distributions goes to stderr. Train on it with
`data.max_negatives=K` (missing negatives are masked). Memory: the embeddings (N x D float32)
plus one chunk of queries x one chunk of corpus scores; never an N x N matrix.
Shape letters: Q anchors (queries), N corpus texts, W retrieved window per anchor, K negatives,
D embedding width.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import os
import sys
from collections.abc import Sequence

import numpy as np
import tqdm
from absl import app, flags, logging

import convert
import evaluate
import sources

QUERY_CHUNK = 256  # anchors per search: with evaluate.SEARCH_CHUNK, ~0.3 GB of scores at once
ENCODE_BLOCK = 1024  # texts tokenized at once (a million never sit tokenized whole); bar steps
FILTERS = ("absolute_margin", "relative_margin", "max_score", "min_score")
_SUFFIXES = (".jsonl", ".jsonl.gz")


class MiningError(ValueError):
    """Bad arguments or input; the message names the flag, file or line."""


# ----------------------------------------------------------------------------- reading


@dataclasses.dataclass
class Pairs:
    """The (anchor, positive) pairs of a dataset, in input order, and what reading skipped."""

    anchors: list[str]
    positives: list[str]
    lines: int = 0  # lines read
    bad_lines: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    first_bad: list[str] = dataclasses.field(default_factory=list)  # "file:line reason", a few
    input_negatives: int = 0  # negatives the input carried (replaced by the mined ones)


def line_pairs(raw: bytes) -> tuple[list[tuple[str, str]], int]:
    """One dataset line -> its (anchor, positive) pairs and the number of negatives it carried.

    Raises sources.BadLine like the loader does (same validation and reasons).
    """
    texts = sources.parse_line(raw, 0)  # validates every format; picks pos[0] of a "pos" list
    obj = json.loads(raw)
    if isinstance(obj, dict) and "set" in obj:
        members = list(dict.fromkeys(obj["set"]))
        return [(members[0], m) for m in members[1:]], 0
    if isinstance(obj, dict) and "query" in obj:
        positives = list(dict.fromkeys(sources._str_list(obj.get("pos"))))
        if any(not p.strip() for p in positives):
            raise sources.BadLine("empty_text")
        if obj["query"] in positives:
            raise sources.BadLine("repeated_text")
        return [(obj["query"], p) for p in positives], len(texts) - 2
    return [(texts[0], texts[1])], len(texts) - 2


def dataset_files(path: str) -> list[str]:
    """A .jsonl[.gz] file, or every .jsonl[.gz] file under a folder (sorted)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise MiningError(f"--data: {path}: no such file or folder")
    found = sorted(
        os.path.join(d, f)
        for d, _, names in os.walk(path)
        for f in names
        if f.endswith(_SUFFIXES) and not f.startswith(".")
    )
    if not found:
        raise MiningError(f"--data: no *.jsonl or *.jsonl.gz files in {path}")
    return found


def read_pairs(path: str) -> Pairs:
    pairs = Pairs([], [])
    for file in dataset_files(path):
        opener = gzip.open if file.endswith(".gz") else open
        try:
            with opener(file, "rb") as f:
                for lineno, raw in enumerate(f, start=1):
                    pairs.lines += 1
                    try:
                        found, negatives = line_pairs(raw)
                    except sources.BadLine as e:
                        pairs.bad_lines[e.reason] += 1
                        if len(pairs.first_bad) < 5:
                            pairs.first_bad.append(f"{file}:{lineno} {e.reason}")
                        continue
                    pairs.input_negatives += negatives
                    for anchor, positive in found:
                        pairs.anchors.append(anchor)
                        pairs.positives.append(positive)
        except (OSError, EOFError) as e:  # a truncated gzip keeps what was read before it
            pairs.bad_lines["truncated_gzip"] += 1
            pairs.first_bad.append(f"{file}: {e}")
    if not pairs.anchors:
        raise MiningError(
            f"--data: {path}: no valid (anchor, positive) pair in {pairs.lines} lines"
        )
    return pairs


def read_corpus(path: str) -> list[str]:
    """A BEIR corpus (.jsonl[.gz]: title + " " + text) or one text per line; blanks skipped."""
    try:
        if path.endswith(_SUFFIXES):
            return evaluate.read_beir_corpus(path)[1]
        return [t for t in evaluate._read_gzip_lines(path) if t.strip()]
    except evaluate.DataFileError as e:
        raise MiningError(f"--corpus: {e}") from e


# ----------------------------------------------------------------------------- selection


@dataclasses.dataclass
class Settings:
    """mine_hard_negatives' arguments (sentence-transformers' names and meaning)."""

    num_negatives: int = 3
    range_min: int = 0
    range_max: int | None = None  # None: range_min + 10 K + P with a filter, else range_min + K + P
    absolute_margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    min_score: float | None = None
    sampling: str = "top"  # top | random
    seed: int = 0

    def resolved_range_max(self, max_positives: int) -> int:
        """range_max as sentence-transformers derives it when not given."""
        if self.range_max is not None:
            return self.range_max
        filtered = (self.absolute_margin, self.relative_margin, self.max_score)
        if any(x is not None for x in filtered):  # room for the candidates the filters drop
            return self.range_min + 10 * self.num_negatives + max_positives
        return self.range_min + self.num_negatives + max_positives

    def validate(self, max_positives: int) -> None:
        """Their checks, with the flag named."""
        range_max = self.resolved_range_max(max_positives)
        if self.num_negatives < 1:
            raise MiningError(f"--num_negatives must be at least 1, got {self.num_negatives}")
        if self.range_min < 0:
            raise MiningError(f"--range_min must be non-negative, got {self.range_min}")
        if self.range_min >= range_max:
            raise MiningError(
                f"--range_min ({self.range_min}) must be smaller than --range_max ({range_max})"
            )
        if self.num_negatives > range_max - self.range_min:
            raise MiningError(
                f"--num_negatives={self.num_negatives} does not fit: only "
                f"{range_max - self.range_min} candidates remain after skipping the first "
                f"--range_min={self.range_min} of --range_max={range_max}"
            )
        if self.sampling not in ("top", "random"):
            raise MiningError(f"--sampling must be 'top' or 'random', got {self.sampling!r}")


def select_negatives(
    hits_QxW: np.ndarray,
    scores_QxW: np.ndarray,
    excluded_QxW: np.ndarray,
    positive_Q: np.ndarray,
    settings: Settings,
    range_max: int,
    counts: collections.Counter,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The negatives of a chunk of anchors from their retrieved window (best first).

    `excluded_QxW` marks hits that are no candidates (the anchor's positives, the anchor itself,
    padding); `positive_Q` is the lowest positive score of each anchor. Each filter counts in
    `counts[name]` the candidates it removes, in sentence-transformers' order (absolute margin,
    relative margin, max score, min score; a candidate is counted by the first that removes it).
    Returns (corpus rows QxK, scores QxK), -1 / -inf where fewer than K negatives were found.
    """
    s, k = settings, settings.num_negatives
    alive_QxW = ~np.asarray(excluded_QxW, bool)
    threshold_Q = positive_Q[:, None]
    drops = {
        "absolute_margin": (
            None if s.absolute_margin is None else scores_QxW + s.absolute_margin > threshold_Q
        ),
        "relative_margin": (
            None
            if s.relative_margin is None
            else scores_QxW > threshold_Q - np.abs(threshold_Q) * s.relative_margin
        ),
        "max_score": None if s.max_score is None else scores_QxW > s.max_score,
        "min_score": None if s.min_score is None else scores_QxW < s.min_score,
    }
    for name in FILTERS:
        drop = drops[name]
        if drop is not None:
            counts[name] += int((drop & alive_QxW).sum())
            alive_QxW &= ~drop
    # Surviving candidates keep their score order (the window is sorted best first): the pool is
    # the survivors ranked range_min .. range_max - 1.
    rank_QxW = np.cumsum(alive_QxW, axis=1) - 1
    pool_QxW = alive_QxW & (rank_QxW >= s.range_min) & (rank_QxW < range_max)
    if s.sampling == "random":
        # One uniform key per window slot, drawn in anchor order: the same draws whatever the
        # chunking. The K smallest keys among the pool are a uniform sample without replacement.
        keys_QxW = rng.random(pool_QxW.shape)
        keys_QxW[~pool_QxW] = np.inf
        chosen_QxW = np.zeros_like(pool_QxW)
        pick_QxK = np.argsort(keys_QxW, axis=1, kind="stable")[:, :k]
        np.put_along_axis(chosen_QxW, pick_QxK, True, axis=1)
        pool_QxW &= chosen_QxW
    else:
        pool_QxW &= np.cumsum(pool_QxW, axis=1) <= k
    # Chosen slots in window order (best first), left-aligned into K columns.
    order_QxW = np.argsort(~pool_QxW, axis=1, kind="stable")[:, :k]
    found_QxK = np.take_along_axis(pool_QxW, order_QxW, axis=1)
    rows_QxK = np.where(found_QxK, np.take_along_axis(hits_QxW, order_QxW, axis=1), -1)
    neg_QxK = np.where(found_QxK, np.take_along_axis(scores_QxW, order_QxW, axis=1), -np.inf)
    return rows_QxK, neg_QxK.astype(np.float32)


# ----------------------------------------------------------------------------- mining


def encode_texts(m, texts: Sequence[str], prompt: str, batch_size: int, label: str) -> np.ndarray:
    """L2-normalised float32 embeddings, ENCODE_BLOCK texts tokenized at a time, one bar.

    Blocks follow the texts sorted by character length (longest first), so each block's batches
    hold similar lengths (little padding) and the bar moves, with its eta, every block.
    """
    out = np.zeros((len(texts), m.config.hidden_size), np.float32)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    with tqdm.tqdm(total=len(texts), desc=label, unit="text", file=sys.stderr) as bar:
        for lo in range(0, len(texts), ENCODE_BLOCK):
            idx = order[lo : lo + ENCODE_BLOCK]
            block = [prompt + texts[i] for i in idx]
            out[idx] = evaluate.encode(m, block, batch_size=batch_size, progress=False)
            bar.update(len(block))
    return evaluate.l2_normalize(out)


@dataclasses.dataclass
class Mined:
    """Per input pair: negative texts (best first) and scores; summary counters."""

    negatives: list[list[str]]
    negative_scores: list[list[float]]
    positive_scores: np.ndarray  # cosine of each input pair
    counts: collections.Counter
    corpus_size: int
    unique_anchors: int
    max_positives: int
    range_max: int


def mine(
    m,
    anchors: Sequence[str],
    positives: Sequence[str],
    corpus: Sequence[str] | None,
    settings: Settings,
    *,
    query_prompt: str = "",
    corpus_prompt: str = "",
    batch_size: int = 64,
    query_chunk: int = QUERY_CHUNK,
    embed=None,
) -> Mined:
    """Mine negatives for the pairs (anchors[i], positives[i]) from `corpus` + the positives.

    `embed(texts, prompt, label) -> normalised float32 [N, D]` defaults to `encode_texts` with
    `m` (tests pass precomputed embeddings through it).
    """
    if embed is None:

        def embed(texts, prompt, label):
            return encode_texts(m, texts, prompt, batch_size, label)

    if len(anchors) != len(positives) or not anchors:
        raise MiningError("need as many anchors as positives, at least one pair")
    # Their order: the corpus first, then the positives, deduplicated (ties follow this order).
    corpus_texts = list(dict.fromkeys([*(corpus or []), *positives]))
    corpus_row = {t: i for i, t in enumerate(corpus_texts)}
    queries = list(dict.fromkeys(anchors))
    query_row = {t: i for i, t in enumerate(queries)}
    pairs_per_query = collections.Counter(anchors)  # theirs counts pairs, duplicates included
    max_positives = max(pairs_per_query.values())
    settings.validate(max_positives)
    range_max = settings.resolved_range_max(max_positives)
    n = len(corpus_texts)
    # (anchor, positive) as sorted keys anchor * N + row: membership of hits by binary search.
    positive_keys = np.unique(
        np.array([query_row[a] for a in anchors], np.int64) * n
        + np.array([corpus_row[p] for p in positives], np.int64)
    )

    if query_prompt == corpus_prompt:  # one encoding for texts that are anchors and in the corpus
        union = list(dict.fromkeys([*corpus_texts, *queries]))
        emb = embed(union, corpus_prompt, "anchors + corpus")
        corpus_NxD = emb[: len(corpus_texts)]
        union_row = {t: i for i, t in enumerate(union)}
        query_QxD = emb[[union_row[q] for q in queries]]
    else:
        corpus_NxD = embed(corpus_texts, corpus_prompt, "corpus")
        query_QxD = embed(queries, query_prompt, "anchors")

    pair_query = np.array([query_row[a] for a in anchors])
    pair_positive = np.array([corpus_row[p] for p in positives])
    positive_scores = np.einsum("pd,pd->p", query_QxD[pair_query], corpus_NxD[pair_positive])
    lowest_Q = np.full(len(queries), np.inf, np.float32)
    np.minimum.at(lowest_Q, pair_query, positive_scores)
    anchor_in_corpus = np.array([corpus_row.get(q, -1) for q in queries])

    window = range_max + max_positives  # theirs: range_max + P hits, positives included
    fetch = min(window + 1, n)  # one more where the anchor itself is among the hits
    rows_QxK = np.full((len(queries), settings.num_negatives), -1, np.int64)
    scores_QxK = np.full((len(queries), settings.num_negatives), -np.inf, np.float32)
    counts: collections.Counter = collections.Counter()
    rng = np.random.default_rng(settings.seed) if settings.sampling == "random" else None
    with tqdm.tqdm(total=len(queries), desc="search", unit="anchor", file=sys.stderr) as bar:
        for lo in range(0, len(queries), query_chunk):
            hi = min(lo + query_chunk, len(queries))
            hits_QxW, hit_scores_QxW = evaluate.top_k(query_QxD[lo:hi], corpus_NxD, fetch)
            keys_QxW = np.arange(lo, hi, dtype=np.int64)[:, None] * n + hits_QxW
            at = np.minimum(np.searchsorted(positive_keys, keys_QxW), len(positive_keys) - 1)
            is_positive = positive_keys[at] == keys_QxW
            is_anchor = hits_QxW == anchor_in_corpus[lo:hi, None]
            # Theirs keeps `window` hits; the anchor's own hit, if retrieved, adds one slot.
            width_Q = window + is_anchor.any(axis=1)
            beyond = np.arange(hits_QxW.shape[1])[None, :] >= width_Q[:, None]
            counts["positive"] += int((is_positive & ~beyond).sum())
            counts["anchor"] += int((is_anchor & ~beyond).sum())
            excluded = is_positive | is_anchor | beyond
            counts["candidates"] += int((~excluded).sum())
            rows, scores = select_negatives(
                hits_QxW,
                hit_scores_QxW,
                excluded,
                lowest_Q[lo:hi],
                settings,
                range_max,
                counts,
                rng,
            )
            rows_QxK[lo:hi], scores_QxK[lo:hi] = rows, scores
            bar.update(hi - lo)

    negatives, negative_scores = [], []
    for q in pair_query:
        found = rows_QxK[q] >= 0
        negatives.append([corpus_texts[r] for r in rows_QxK[q][found]])
        negative_scores.append(scores_QxK[q][found].tolist())
    return Mined(
        negatives,
        negative_scores,
        positive_scores,
        counts,
        n,
        len(queries),
        max_positives,
        range_max,
    )


# ----------------------------------------------------------------------------- output


def output_lines(
    pairs: Pairs,
    mined: Mined,
    num_negatives: int,
    output_format: str,
    keep_incomplete: bool,
    output_scores: bool = False,
) -> list:
    """The output lines: n-tuples, or one triplet per negative (a pair without any: [a, p]).

    With `output_scores`, each line is `{"query": a, "pos": [p], "neg": [...], "scores": [pos,
    neg...]}` instead (the loader reads that format too; the scores are ignored there).
    """
    lines = []
    for a, p, negs, neg_scores, pos in zip(
        pairs.anchors,
        pairs.positives,
        mined.negatives,
        mined.negative_scores,
        mined.positive_scores.tolist(),
        strict=True,
    ):
        if output_format == "triplet" and negs:
            groups = [([n], [s]) for n, s in zip(negs, neg_scores, strict=True)]
        elif len(negs) == num_negatives or keep_incomplete:
            groups = [(negs, neg_scores)]
        else:
            continue
        for n, s in groups:
            if output_scores:
                lines.append({"query": a, "pos": [p], "neg": n, "scores": [pos, *s]})
            else:
                lines.append([a, p, *n])
    return lines


def write_jsonl_gz(path: str, lines: Sequence) -> None:
    """gzip without file name or time (the same bytes every run), written then renamed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
            for line in lines:
                f.write((json.dumps(line) + "\n").encode("utf-8"))
    os.replace(tmp, path)


def distribution(values: Sequence[float]) -> dict[str, float]:
    """sentence-transformers' table: count, mean, median, std, min, quartiles, max."""
    x = np.asarray(values, np.float64)
    if not x.size:
        return {"count": 0}
    q = np.quantile(x, [0.25, 0.5, 0.75])
    std = float(np.std(x, ddof=1)) if x.size > 1 else 0.0  # torch.std: unbiased
    return {
        "count": int(x.size),
        "mean": float(x.mean()),
        "median": float(q[1]),
        "std": std,
        "min": float(x.min()),
        "25%": float(q[0]),
        "75%": float(q[2]),
        "max": float(x.max()),
    }


def summarize(pairs: Pairs, mined: Mined, settings: Settings, written: int) -> dict:
    k = settings.num_negatives
    per_pair = collections.Counter(len(n) for n in mined.negatives)
    pos, negs, diffs = [], [], []
    for p, scores in zip(mined.positive_scores.tolist(), mined.negative_scores, strict=True):
        pos.append(p)
        negs += scores
        diffs += [p - s for s in scores]
    window = mined.counts["candidates"]
    return {
        "lines_read": pairs.lines,
        "bad_lines": dict(pairs.bad_lines),
        "first_bad_lines": pairs.first_bad,
        "pairs_in": len(pairs.anchors),
        "input_negatives_replaced": pairs.input_negatives,
        "unique_anchors": mined.unique_anchors,
        "corpus_size": mined.corpus_size,
        "max_positives_per_anchor": mined.max_positives,
        "range_max": mined.range_max,
        "settings": dataclasses.asdict(settings),
        "lines_out": written,
        "pairs_with_k_negatives": per_pair[k],
        "pairs_with_fewer": sum(c for n, c in per_pair.items() if n < k),
        "negatives_per_pair": {str(n): per_pair[n] for n in sorted(per_pair)},
        "excluded": {"positive": mined.counts["positive"], "anchor": mined.counts["anchor"]},
        "candidates": window,
        "dropped": {
            name: {"count": mined.counts[name], "ratio": mined.counts[name] / max(window, 1)}
            for name in FILTERS
            if getattr(settings, name) is not None
        },
        "scores": {
            "positive": distribution(pos),
            "negative": distribution(negs),
            "difference": distribution(diffs),
        },
    }


def print_table(summary: dict) -> None:
    s = summary["scores"]
    fmt = "{:<10} {:>12} {:>12} {:>12}"
    print(fmt.format("metric", "positive", "negative", "difference"), file=sys.stderr)
    for key in ("count", "mean", "median", "std", "min", "25%", "75%", "max"):
        cells = [s[c].get(key, "") for c in ("positive", "negative", "difference")]
        cells = [f"{c:,}" if isinstance(c, int) else f"{c:.4f}" if c != "" else "" for c in cells]
        print(fmt.format(key, *cells), file=sys.stderr)
    for name, d in summary["dropped"].items():
        print(
            f"dropped {d['count']:,} candidates ({d['ratio']:.2%}) by {name}="
            f"{summary['settings'][name]}",
            file=sys.stderr,
        )
    print(
        f"{summary['pairs_in']:,} pairs in, {summary['lines_out']:,} lines out; "
        f"{summary['pairs_with_fewer']:,} pairs with fewer than "
        f"{summary['settings']['num_negatives']} negatives",
        file=sys.stderr,
    )


def summary_path(out: str) -> str:
    for suffix in (".jsonl.gz", ".jsonl", ".gz"):
        if out.endswith(suffix):
            return out[: -len(suffix)] + ".summary.json"
    return out + ".summary.json"


def main(argv: Sequence[str]) -> None:
    if not flags.FLAGS["verbosity"].present:  # JAX's INFO lines (backend probe) on request
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    settings = Settings(
        num_negatives=f.num_negatives,
        range_min=f.range_min,
        range_max=f.range_max,
        absolute_margin=f.absolute_margin,
        relative_margin=f.relative_margin,
        max_score=f.max_score,
        min_score=f.min_score,
        sampling=f.sampling,
        seed=f.seed,
    )
    try:
        pairs = read_pairs(f.data)
        corpus = read_corpus(f.corpus) if f.corpus else None
        settings.validate(max(collections.Counter(pairs.anchors).values()))
        m = convert.load_model(f.model)
        mined = mine(
            m,
            pairs.anchors,
            pairs.positives,
            corpus,
            settings,
            query_prompt=f.query_prompt,
            corpus_prompt=f.corpus_prompt,
            batch_size=f.batch_size,
        )
    except (MiningError, convert.ModelFolderError) as e:
        sys.exit(f"error: {e}")
    lines = output_lines(
        pairs, mined, f.num_negatives, f.output_format, f.keep_incomplete, f.output_scores
    )
    write_jsonl_gz(f.out, lines)
    summary = summarize(pairs, mined, settings, len(lines))
    summary.update(model=f.model, data=f.data, corpus=f.corpus, out=f.out)
    with open(summary_path(f.out), "w") as out:
        json.dump(summary, out, indent=1)
    print_table(summary)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    flags.DEFINE_string("model", None, "model folder or training workdir (convert.load_model)")
    flags.DEFINE_string("data", None, "dataset: a .jsonl[.gz] file or a folder of them")
    flags.DEFINE_string("out", None, "output .jsonl.gz: [anchor, positive, neg_1, ...] per line")
    flags.DEFINE_string("corpus", "", "extra candidates: BEIR corpus .jsonl[.gz] or text lines")
    flags.DEFINE_integer("num_negatives", 3, "negatives per pair (K)")
    flags.DEFINE_integer("range_min", 0, "skip this many best surviving candidates")
    flags.DEFINE_integer("range_max", None, "pool = surviving candidates ranked below this")
    flags.DEFINE_float("absolute_margin", None, "drop candidates above positive - margin")
    flags.DEFINE_float("relative_margin", None, "drop candidates above pos - |pos| * margin")
    flags.DEFINE_float("max_score", None, "drop candidates scoring above this")
    flags.DEFINE_float("min_score", None, "drop candidates scoring below this")
    flags.DEFINE_enum("sampling", "top", ["top", "random"], "the best K, or K at random")
    flags.DEFINE_integer("seed", 0, "seed of --sampling=random")
    flags.DEFINE_string("query_prompt", "", "prefix of every anchor when embedding")
    flags.DEFINE_string("corpus_prompt", "", "prefix of every corpus text when embedding")
    flags.DEFINE_integer("batch_size", 64, "texts per encoding batch")
    flags.DEFINE_enum("output_format", "n-tuple", ["n-tuple", "triplet"], "line layout")
    flags.DEFINE_bool("keep_incomplete", True, "keep pairs with fewer than K negatives")
    flags.DEFINE_bool("output_scores", False, 'lines {"query", "pos", "neg", "scores"} instead')
    flags.mark_flags_as_required(["model", "data", "out"])
    app.run(main)
