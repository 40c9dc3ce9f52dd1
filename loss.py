"""Multiple-negatives ranking loss, its cross-device form, and GradCache.

The seed's recipe ("1B training pairs", all-MiniLM-L6-v2): every anchor must pick its own
positive among all positives of the batch and all hard negatives, with scaled cosine
similarity and softmax cross-entropy. Bigger batches mean more negatives, so the candidates are
gathered across devices (`mnrl_loss(..., axis_name="data")` inside `jax.shard_map`), and a batch
that does not fit in memory is embedded in chunks whose activations are recomputed on the
backward pass (`cached_value_and_grad`, GradCache by Gao et al. 2021). `matryoshka_loss` wraps
the ranking loss so that every prefix of the embedding is trained as an embedding of its own
(Matryoshka representation learning, Kusupati et al. 2022). `guided_mnrl_loss` is the same loss
with GISTEmbed's guided masking: a frozen guide's embeddings of the batch (`frozen_embeddings`,
no gradient) mask the candidates it scores above the anchor's positive.

Shapes: B examples (local to one device inside shard_map), D embedding width, K hard negatives
per example, G devices on the `data` axis, N candidates (G*B positives then G*B*K negatives),
C chunks of the batch, M Matryoshka prefix widths.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import optax

import model as model_lib

SIMILARITIES = ("cosine", "dot")
MARGIN_STRATEGIES = ("absolute", "relative")  # of the guided loss, as GISTEmbedLoss names them

# Finite rather than -inf: exp() of it underflows to exactly 0 in float32, and a row whose
# candidates were all masked could never produce inf - inf = NaN.
_MASKED_LOGIT = -1e9

# embed_fn(params, inputs_chunk, rng_chunk) -> embeddings pytree with leading axis = chunk rows.
EmbedFn = Callable[[hk.Params, Any, jax.Array], Any]
# loss_fn(embeddings pytree of the whole local batch) -> (loss, metrics).
LossFn = Callable[[Any], tuple[jax.Array, dict]]


def _prepare(x: jax.Array, similarity: str) -> jax.Array:
    # float32 before anything else: bfloat16 cosines carry ~3 significant digits, which scale 20
    # turns into logit errors of ~0.1.
    x = x.astype(jnp.float32)
    if similarity == "cosine":
        # torch.nn.functional.normalize, which sentence-transformers' cos_sim uses.
        x = model_lib.l2_normalize(x)
    return x


def _scores(scale: float, query_BxD: jax.Array, candidate_NxD: jax.Array) -> jax.Array:
    # HIGHEST: accelerators otherwise default to bf16/tf32 passes for float32 matmuls.
    return scale * jnp.matmul(
        query_BxD, candidate_NxD.T, precision=jax.lax.Precision.HIGHEST
    ).astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gather_rows(x: jax.Array, axis_name: str) -> jax.Array:
    """`all_gather(x, axis_name, tiled=True)` whose gradient is a psum and this device's slice.

    The plain gather's transpose is a reduce-scatter. In multi-process CPU runs (XLA:CPU's gloo
    collectives), the train step with it spent 3.6 s per step in the gradient all-reduce (2
    processes x 2 devices, with or without GradCache); with this gradient the steps take
    0.1-0.15 s. An empirical workaround: benchmarks/collectives.py stalls with either form, and the
    cause inside XLA is not known. Same values either way; the [G*B, D] cotangent it sums is
    small next to the parameter gradients, and accelerators run it over ICI/NCCL.
    """
    return jax.lax.all_gather(x, axis_name, tiled=True)


def _gather_rows_fwd(x: jax.Array, axis_name: str) -> tuple[jax.Array, None]:
    return gather_rows(x, axis_name), None


def _gather_rows_bwd(axis_name: str, _, g_NxD: jax.Array) -> tuple[jax.Array]:
    rows = g_NxD.shape[0] // jax.lax.axis_size(axis_name)
    start = jax.lax.axis_index(axis_name) * rows
    return (jax.lax.dynamic_slice_in_dim(jax.lax.psum(g_NxD, axis_name), start, rows),)


gather_rows.defvjp(_gather_rows_fwd, _gather_rows_bwd)


def mnrl_loss(
    anchor_BxD: jax.Array,
    positive_BxD: jax.Array,
    negative_BxKxD: jax.Array | None = None,
    negative_mask_BxK: jax.Array | None = None,
    *,
    scale: float = 20.0,
    similarity: str = "cosine",
    symmetric: bool = False,
    axis_name: str | None = None,
    gather: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MultipleNegativesRankingLoss: anchor i must rank positive i first among all candidates.

    Candidates are all positives, then all hard negatives flattened row-major over (example, k).
    With `axis_name`, call it inside `jax.shard_map` on the local shard: candidates (and the
    negatives mask) are gathered from every device in device order, so loss and gradients equal
    the single-device call on the concatenated global batch; `gather=False` keeps the local
    candidates only (the ablation). Returns the mean loss and {"accuracy": in-batch top-1}, both
    float32 scalars averaged over the whole (global) batch.

    Args:
      anchor_BxD: anchor embeddings.
      positive_BxD: positive embeddings, row i belongs to anchor i.
      negative_BxKxD: optional hard negatives, K of them per example (K may be 0).
      negative_mask_BxK: True where a hard negative exists; masked ones are no candidates.
      scale: multiplies the similarities (inverse temperature); the seed used 20.
      similarity: "cosine" or "dot".
      symmetric: also average in the positive -> anchor direction, scored over the anchors
        only (sentence-transformers' MultipleNegativesSymmetricRankingLoss; CLIP).
      axis_name: mesh axis of the enclosing shard_map, or None on one device.
      gather: with axis_name, gather candidates from all devices (True) or not (False).
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"Unknown similarity {similarity!r}; expected one of {SIMILARITIES}.")
    if negative_mask_BxK is not None and negative_BxKxD is None:
        raise ValueError("negative_mask_BxK given without negative_BxKxD.")
    batch = anchor_BxD.shape[0]
    anchor_BxD = _prepare(anchor_BxD, similarity)
    positive_BxD = _prepare(positive_BxD, similarity)
    labels_B = jnp.arange(batch)
    if axis_name is not None and gather:
        # Tiled gathers of each array on its own keep the global example order equal to the
        # concatenated batch. Gathering one per-device [positives; negatives] block would
        # interleave them, and the offset labels would then point at other examples' negatives.
        def collect(x):
            if jnp.issubdtype(x.dtype, jnp.floating):
                return gather_rows(x, axis_name)
            return jax.lax.all_gather(x, axis_name, tiled=True)  # the mask: no gradient

        labels_B = labels_B + jax.lax.axis_index(axis_name) * batch
    else:

        def collect(x):
            return x

    scores_BxN = _scores(scale, anchor_BxD, collect(positive_BxD))
    if negative_BxKxD is not None and negative_BxKxD.shape[1] > 0:
        negative_BxKxD = _prepare(negative_BxKxD, similarity)
        if negative_mask_BxK is None:
            negative_mask_BxK = jnp.ones(negative_BxKxD.shape[:2], dtype=bool)
        all_negative_BxKxD = collect(negative_BxKxD)
        all_mask_BxK = collect(negative_mask_BxK.astype(bool))
        negative_scores = _scores(
            scale, anchor_BxD, all_negative_BxKxD.reshape(-1, all_negative_BxKxD.shape[-1])
        )
        negative_scores = jnp.where(all_mask_BxK.reshape(1, -1), negative_scores, _MASKED_LOGIT)
        scores_BxN = jnp.concatenate([scores_BxN, negative_scores], axis=1)

    loss_B = optax.softmax_cross_entropy_with_integer_labels(scores_BxN, labels_B)
    accuracy = jnp.mean((jnp.argmax(scores_BxN, axis=1) == labels_B).astype(jnp.float32))
    if symmetric:
        backward_scores = _scores(scale, positive_BxD, collect(anchor_BxD))
        backward_B = optax.softmax_cross_entropy_with_integer_labels(backward_scores, labels_B)
        loss_B = 0.5 * (loss_B + backward_B)
    loss = jnp.mean(loss_B)
    if axis_name is not None:
        # Every device holds B rows, so the mean of the local means is the global mean.
        loss = jax.lax.pmean(loss, axis_name)
        accuracy = jax.lax.pmean(accuracy, axis_name)
    return loss, {"accuracy": accuracy}


def matryoshka_loss(
    ranking_loss: Callable[..., tuple[jax.Array, dict]],
    dims: Sequence[int],
    weights: Sequence[float] = (),
) -> Callable[..., tuple[jax.Array, dict]]:
    """`ranking_loss` on the first d dimensions of the embeddings for each d in `dims`, weighted.

    sentence-transformers' `MatryoshkaLoss(model, MultipleNegativesRankingLoss, dims, weights)`
    (Kusupati et al. 2022): loss = sum_m weights[m] * ranking_loss(embeddings[..., :dims[m]]). The
    prefixes are slices of the same embeddings, so the encoder runs once per step; under GradCache
    the prefixes' gradients add up in the embedding gradient before the replay. The ranking loss
    prepares each prefix itself: with cosine similarity it is re-normalised (as MatryoshkaLoss's
    `shrink`), with "dot" it is scored as is (sentence-transformers normalises it regardless).

    The returned function takes the ranking loss's arguments: anchors, positives and hard
    negatives are truncated, everything else (the negatives mask, `axis_name`, `gather`, scale,
    ...) reaches every prefix unchanged. An extra mask from guided in-batch negatives (GISTEmbed)
    plugs in the same way: computed once from the guide model's full similarities, passed as a
    keyword, applied to every prefix. Its metrics are the widest prefix's, plus
    `matryoshka_loss_<d>` per prefix. Empty `dims` returns `ranking_loss` itself (bit-identical).

    Args:
      ranking_loss: (anchor_BxD, positive_BxD, negative_BxKxD=None, negative_mask_BxK=None,
        **kwargs) -> (loss, metrics), e.g. `mnrl_loss`.
      dims: prefix widths, distinct and positive (order free; the widest is checked against D
        when called), or () for no Matryoshka.
      weights: one per entry of `dims` (in the same order), or () for all 1.
    """
    if not dims:
        return ranking_loss
    dims, weights = tuple(int(d) for d in dims), tuple(float(w) for w in weights or ())
    if any(d <= 0 for d in dims) or len(set(dims)) != len(dims):
        raise ValueError(f"matryoshka dims {dims} must be distinct positive widths")
    if not weights:
        weights = (1.0,) * len(dims)
    if len(weights) != len(dims):
        raise ValueError(f"matryoshka weights {weights} must be one per dim {dims}")
    # Widest first, as MatryoshkaLoss sorts them: its metrics (accuracy) are the model's own.
    dims_M, weights_M = zip(*sorted(zip(dims, weights, strict=True), reverse=True), strict=True)

    def loss_fn(anchor_BxD, positive_BxD, negative_BxKxD=None, negative_mask_BxK=None, **kwargs):
        width = anchor_BxD.shape[-1]
        if dims_M[0] > width:
            raise ValueError(f"matryoshka dim {dims_M[0]} exceeds the embedding width {width}")
        total, metrics = None, {}
        for dim, weight in zip(dims_M, weights_M, strict=True):
            value, aux = ranking_loss(
                anchor_BxD[..., :dim],
                positive_BxD[..., :dim],
                None if negative_BxKxD is None else negative_BxKxD[..., :dim],
                negative_mask_BxK,
                **kwargs,
            )
            term = weight * value
            total = term if total is None else total + term
            if not metrics:
                metrics = dict(aux)
            metrics[f"matryoshka_loss_{dim}"] = value
        return total, metrics

    return loss_fn


def guided_mnrl_loss(
    anchor_BxD: jax.Array,
    positive_BxD: jax.Array,
    negative_BxKxD: jax.Array | None = None,
    negative_mask_BxK: jax.Array | None = None,
    *,
    guide_anchor_BxD: jax.Array,
    guide_positive_BxD: jax.Array,
    guide_negative_BxKxD: jax.Array | None = None,
    margin: float = 0.0,
    margin_strategy: str = "absolute",
    contrast_anchors: bool = True,
    contrast_positives: bool = True,
    scale: float = 20.0,
    similarity: str = "cosine",
    symmetric: bool = False,
    axis_name: str | None = None,
    gather: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`mnrl_loss` with GISTEmbed's guided masking of probable false negatives (Solatorio 2024).

    A frozen guide model's embeddings of the same texts (`guide_*`, no gradient) decide which
    candidates are no negatives: anchor i's candidate c is masked out of the softmax when the
    guide's cosine(anchor i, c) exceeds its cosine(anchor i, positive i) less the margin
    (`absolute`: pos - margin; `relative`: pos - |pos| * margin), as sentence-transformers'
    GISTEmbedLoss does. The candidates are all positives (the own positive is never masked),
    with `contrast_anchors` all anchors, with `contrast_positives` the positives again as
    seen from positive i (GISTEmbed's anchor-anchor and positive-positive pairs), then the
    hard negatives. `symmetric` adds the positive -> anchor direction over the anchors, masked
    the same way (not counted in "guide_masked"). With `axis_name` (inside shard_map), every
    candidate block and its guide embeddings are gathered from all devices, so the result
    equals the single-device call on the global batch. Returns the mean loss and {"accuracy",
    "guide_masked": candidates the guide masked per anchor, averaged}.

    Where it differs from sentence-transformers' GISTEmbedLoss: a text is never its own
    negative (the anchor-anchor and positive-positive diagonals are masked outright; theirs masks
    them only when the guide scores the text with itself above the threshold, i.e. nearly
    always); gathered across devices the anchor-anchor block spans the global batch (theirs: the
    local anchors); K hard negatives with a mask (theirs: one); the logits are `scale` x the
    model's similarity (theirs: cosine / temperature, 0.01 by default, i.e. scale 100); the
    symmetric direction is ours (theirs has none). The guide's similarity is always cosine.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"Unknown similarity {similarity!r}; expected one of {SIMILARITIES}.")
    if margin_strategy not in MARGIN_STRATEGIES:
        raise ValueError(
            f"Unknown margin_strategy {margin_strategy!r}; expected one of {MARGIN_STRATEGIES}."
        )
    has_negatives = negative_BxKxD is not None and negative_BxKxD.shape[1] > 0
    if has_negatives and guide_negative_BxKxD is None:
        raise ValueError("hard negatives given without their guide embeddings.")
    batch = anchor_BxD.shape[0]
    anchor_BxD = _prepare(anchor_BxD, similarity)
    positive_BxD = _prepare(positive_BxD, similarity)
    guide = lambda x: jax.lax.stop_gradient(_prepare(x, "cosine"))  # noqa: E731
    g_anchor_BxD, g_positive_BxD = guide(guide_anchor_BxD), guide(guide_positive_BxD)
    labels_B = jnp.arange(batch)
    if axis_name is not None and gather:

        def collect(x):
            return gather_rows(x, axis_name)

        def collect_fixed(x):  # guide embeddings and masks: no gradient
            return jax.lax.all_gather(x, axis_name, tiled=True)

        labels_B = labels_B + jax.lax.axis_index(axis_name) * batch
    else:
        collect = collect_fixed = lambda x: x  # noqa: E731

    all_positive_NxD, g_all_positive_NxD = collect(positive_BxD), collect_fixed(g_positive_BxD)
    is_own_BxN = jnp.arange(all_positive_NxD.shape[0])[None, :] == labels_B[:, None]
    g_scores_BxN = _scores(1.0, g_anchor_BxD, g_all_positive_NxD)
    g_positive_Bx1 = jnp.take_along_axis(g_scores_BxN, labels_B[:, None], axis=1)
    if margin_strategy == "absolute":
        threshold_Bx1 = g_positive_Bx1 - margin
    else:
        threshold_Bx1 = g_positive_Bx1 - jnp.abs(g_positive_Bx1) * margin

    masked_counts = []

    def block(query_BxD, candidate_NxD, g_query_BxD, g_candidate_NxD, keep=None, drop=None):
        """Scores of one candidate block, masked where the guide says false negative."""
        masked = _scores(1.0, g_query_BxD, g_candidate_NxD) > threshold_Bx1
        if keep is not None:
            masked &= ~keep
        if drop is not None:  # not candidates at all (self pairs, missing negatives): not counted
            masked_counts.append(jnp.sum(masked & ~drop, axis=1))
            masked |= drop
        else:
            masked_counts.append(jnp.sum(masked, axis=1))
        return jnp.where(masked, _MASKED_LOGIT, _scores(scale, query_BxD, candidate_NxD))

    blocks = [
        block(anchor_BxD, all_positive_NxD, g_anchor_BxD, g_all_positive_NxD, keep=is_own_BxN)
    ]
    all_anchor_NxD = g_all_anchor_NxD = None
    if contrast_anchors or symmetric:
        all_anchor_NxD, g_all_anchor_NxD = collect(anchor_BxD), collect_fixed(g_anchor_BxD)
    if contrast_anchors:
        blocks.append(
            block(anchor_BxD, all_anchor_NxD, g_anchor_BxD, g_all_anchor_NxD, drop=is_own_BxN)
        )
    if contrast_positives:
        blocks.append(
            block(
                positive_BxD, all_positive_NxD, g_positive_BxD, g_all_positive_NxD, drop=is_own_BxN
            )
        )
    if has_negatives:
        negative_BxKxD = _prepare(negative_BxKxD, similarity)
        if negative_mask_BxK is None:
            negative_mask_BxK = jnp.ones(negative_BxKxD.shape[:2], dtype=bool)
        all_negative = collect(negative_BxKxD)
        g_all_negative = collect_fixed(guide(guide_negative_BxKxD))
        all_mask = collect_fixed(negative_mask_BxK.astype(bool)).reshape(1, -1)
        width = all_negative.shape[-1]
        blocks.append(
            block(
                anchor_BxD,
                all_negative.reshape(-1, width),
                g_anchor_BxD,
                g_all_negative.reshape(-1, g_all_negative.shape[-1]),
                drop=jnp.broadcast_to(~all_mask, (batch, all_mask.shape[1])),
            )
        )
    masked = jnp.mean(sum(masked_counts).astype(jnp.float32))  # forward direction only
    scores_BxN = jnp.concatenate(blocks, axis=1)
    loss_B = optax.softmax_cross_entropy_with_integer_labels(scores_BxN, labels_B)
    accuracy = jnp.mean((jnp.argmax(scores_BxN, axis=1) == labels_B).astype(jnp.float32))
    if symmetric:
        is_own_anchor_BxN = jnp.arange(all_anchor_NxD.shape[0])[None, :] == labels_B[:, None]
        backward = block(
            positive_BxD, all_anchor_NxD, g_positive_BxD, g_all_anchor_NxD, keep=is_own_anchor_BxN
        )
        backward_B = optax.softmax_cross_entropy_with_integer_labels(backward, labels_B)
        loss_B = 0.5 * (loss_B + backward_B)
    loss = jnp.mean(loss_B)
    if axis_name is not None:
        loss = jax.lax.pmean(loss, axis_name)
        accuracy = jax.lax.pmean(accuracy, axis_name)
        masked = jax.lax.pmean(masked, axis_name)
    return loss, {"accuracy": accuracy, "guide_masked": masked}


def frozen_embeddings(
    embed_fn: Callable[[hk.Params, Any], Any],
    params: hk.Params,
    inputs: Any,
    chunk_size: int | None = None,
) -> Any:
    """`embed_fn(params, inputs)` without gradient, `chunk_size` rows at a time (the guide's).

    Nothing is differentiated, so no activation outlives its chunk: with a chunk size (the
    train step passes GradCache's) the guide's memory is that of one chunk's forward pass.
    """
    params = jax.lax.stop_gradient(params)
    if chunk_size:
        chunks, _ = _split_chunks(inputs, chunk_size)
        out = _merge_chunks(jax.lax.map(lambda x: embed_fn(params, x), chunks))
    else:
        out = embed_fn(params, inputs)
    return jax.lax.stop_gradient(out)


def _split_chunks(tree: Any, chunk_size: int) -> tuple[Any, int]:
    sizes = {x.shape[0] for x in jax.tree.leaves(tree)}
    if len(sizes) != 1:
        raise ValueError(f"Inputs disagree on the batch size: {sorted(sizes)}.")
    (size,) = sizes
    if chunk_size <= 0 or size % chunk_size:
        raise ValueError(f"chunk_size {chunk_size} does not divide the batch size {size}.")
    num_chunks = size // chunk_size
    chunked = jax.tree.map(lambda x: x.reshape(num_chunks, chunk_size, *x.shape[1:]), tree)
    return chunked, num_chunks


def _merge_chunks(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]), tree)


def _chunk_keys(rng: jax.Array, num_chunks: int) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(num_chunks))


def _embed_in_chunks(embed_fn: EmbedFn, params: hk.Params, chunks: Any, keys: jax.Array) -> Any:
    embedded = jax.lax.map(lambda xs: embed_fn(params, xs[0], xs[1]), (chunks, keys))
    return _merge_chunks(embedded)


def chunked_value_and_grad(
    embed_fn: EmbedFn,
    loss_fn: LossFn,
    params: hk.Params,
    inputs: Any,
    rng: jax.Array,
    chunk_size: int,
) -> tuple[tuple[jax.Array, dict], hk.Params]:
    """Reference for `cached_value_and_grad`: same chunks and keys, activations kept.

    Chunk c is embedded with key `fold_in(rng, c)`. Memory grows with the whole batch; use it
    to check GradCache, not to train.
    """
    chunks, num_chunks = _split_chunks(inputs, chunk_size)
    keys = _chunk_keys(rng, num_chunks)

    def objective(p):
        return loss_fn(_embed_in_chunks(embed_fn, p, chunks, keys))

    return jax.value_and_grad(objective, has_aux=True)(params)


def cached_value_and_grad(
    embed_fn: EmbedFn,
    loss_fn: LossFn,
    params: hk.Params,
    inputs: Any,
    rng: jax.Array,
    chunk_size: int,
    *,
    axis_name: str | None = None,
) -> tuple[tuple[jax.Array, dict], hk.Params]:
    """GradCache: value and parameter gradient of `loss_fn(embed_fn(params, inputs))` in chunks.

    1. Embed the batch chunk by chunk (chunk c with key `fold_in(rng, c)`) without recording
       activations. 2. Differentiate `loss_fn` with respect to the embeddings only; it sees the
       whole local batch, so it may gather across devices. 3. Replay each chunk's forward pass
       with the same key and pull its slice of the embedding gradient back to the parameters.
    Peak activation memory is that of one chunk; the price is a second forward pass. Returns
    `((loss, metrics), grads)` like `jax.value_and_grad(..., has_aux=True)`.

    Inside `jax.shard_map` (with its default check_vma=True), pass the mesh axis over which
    `params` are replicated as `axis_name`: each device then accumulates its own gradient and
    one psum at the end sums them. Without it the result is the same, but JAX would insert that
    psum into every chunk's replay.

    Args:
      embed_fn: (params, inputs_chunk, rng_chunk) -> embeddings pytree, rows on axis 0.
      loss_fn: embeddings pytree of the whole local batch -> (loss, metrics).
      params: the parameters to differentiate.
      inputs: pytree of arrays sharing a leading batch axis divisible by chunk_size.
      rng: key for dropout; chunk c uses `jax.random.fold_in(rng, c)`.
      chunk_size: rows embedded at once.
      axis_name: shard_map axis over which params are replicated, or None.
    """
    chunks, num_chunks = _split_chunks(inputs, chunk_size)
    keys = _chunk_keys(rng, num_chunks)
    embeddings = jax.lax.stop_gradient(_embed_in_chunks(embed_fn, params, chunks, keys))
    (loss, metrics), embedding_grads = jax.value_and_grad(loss_fn, has_aux=True)(embeddings)
    chunk_grads, _ = _split_chunks(embedding_grads, chunk_size)

    replay_params = params
    if axis_name is not None:
        replay_params = jax.lax.pcast(params, axis_name, to="varying")

    def replay(total, xs):
        chunk, key, chunk_grad = xs
        _, pullback = jax.vjp(lambda p: embed_fn(p, chunk, key), replay_params)
        (grads,) = pullback(chunk_grad)
        return jax.tree.map(jnp.add, total, grads), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    if axis_name is not None:
        zeros = jax.lax.pcast(zeros, axis_name, to="varying")
    grads, _ = jax.lax.scan(replay, zeros, (chunks, keys, chunk_grads))
    if axis_name is not None:
        grads = jax.lax.psum(grads, axis_name)
    return (loss, metrics), grads


def embedding_value_and_grad(
    embed_fn: EmbedFn,
    loss_fn: LossFn,
    params: hk.Params,
    inputs: Any,
    rng: jax.Array,
    *,
    cache_chunk_size: int | None = None,
    axis_name: str | None = None,
) -> tuple[tuple[jax.Array, dict], hk.Params]:
    """The train step's entry point: GradCache when `cache_chunk_size` is set, else plain.

    Without a chunk size the whole local batch is embedded at once with `rng`, so the dropout
    masks differ from the cached path's per-chunk keys (both are valid draws).
    """
    if cache_chunk_size:
        return cached_value_and_grad(
            embed_fn, loss_fn, params, inputs, rng, cache_chunk_size, axis_name=axis_name
        )

    def objective(p):
        return loss_fn(embed_fn(p, inputs, rng))

    return jax.value_and_grad(objective, has_aux=True)(params)
