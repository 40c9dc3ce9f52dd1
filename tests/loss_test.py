"""Tests for loss.py: NumPy reference, sharded == single-device, negative alignment, GradCache,
Matryoshka, the guided (GISTEmbed) loss.

Sharded tests run on the 8 fake CPU devices from conftest.py, on a 1-D mesh named `data`.
"""

import functools
import itertools

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import loss

# These tiny programs spend far more time in XLA's LLVM back end than running; without its
# optimisation passes they compile ~4x faster. The passes keep IEEE semantics (no fast-math),
# so the values under test are the same.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

DEVICES = 8
LOCAL_BATCH = 2
DIM = 8
# Each layout: number of hard negatives per example (None = pairs) and whether to mask some.
LAYOUTS = {
    "pairs": (None, False),
    "triplets": (1, False),
    "k3": (3, False),
    "k3_masked": (3, True),
}


def assert_relative_close(got, want, tol: float = 1e-5):
    """Leafwise max |got - want| <= tol * max |want|: relative to each array's scale, since a
    gradient entry near zero is the difference of larger terms and carries their rounding."""
    chex.assert_trees_all_equal_structs(got, want)
    for (path, g), w in zip(
        jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
    ):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        error, size = np.max(np.abs(g - w), initial=0.0), np.max(np.abs(w), initial=0.0)
        assert error <= tol * size, f"{jax.tree_util.keystr(path)}: {error} > {tol} * {size}"


def _mesh() -> jax.sharding.Mesh:
    return jax.make_mesh((DEVICES,), ("data",))


def _shard(mesh, tree):
    return jax.device_put(tree, NamedSharding(mesh, P("data")))


def _random_batch(seed: int, batch: int, num_negatives: int | None, masked: bool):
    """Random embeddings; the masked layout also has a row with every negative masked."""
    rng = np.random.default_rng(seed)
    # Norms near 1, so dot-product logits (scale 20) do not saturate the softmax; a saturated
    # softmax leaves float32 gradients of ~1e-6 that only rounding separates.
    anchor = rng.normal(size=(batch, DIM)).astype(np.float32) / np.sqrt(DIM)
    positive = (anchor + rng.normal(size=(batch, DIM)) / np.sqrt(DIM)).astype(np.float32)
    if num_negatives is None:
        return anchor, positive, None, None
    negative = (rng.normal(size=(batch, num_negatives, DIM)) / np.sqrt(DIM)).astype(np.float32)
    if not masked:
        return anchor, positive, negative, None
    mask = rng.random(size=(batch, num_negatives)) < 0.6
    mask[1] = False
    mask[2] = True
    return anchor, positive, negative, mask


def reference_loss(anchor, positive, negative, mask, scale, similarity, symmetric):
    """Float64 NumPy MNRL, row by row, with masked negatives left out of the candidate list."""
    anchor, positive = np.float64(anchor), np.float64(positive)
    negative = None if negative is None else np.float64(negative)

    def sim(x, y):
        if similarity == "cosine":
            return x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
        return x @ y

    def cross_entropy(logits, target):
        logits = np.asarray(logits)
        top = logits.max()
        return top + np.log(np.sum(np.exp(logits - top))) - logits[target]

    batch = anchor.shape[0]
    negatives = []
    if negative is not None:
        for j in range(batch):
            for k in range(negative.shape[1]):
                if mask is None or mask[j, k]:
                    negatives.append(negative[j, k])
    losses, hits = [], []
    for i in range(batch):
        logits = [scale * sim(anchor[i], c) for c in list(positive) + negatives]
        forward = cross_entropy(logits, i)
        hits.append(float(np.argmax(logits) == i))
        if symmetric:
            back = [scale * sim(positive[i], a) for a in anchor]
            forward = 0.5 * (forward + cross_entropy(back, i))
        losses.append(forward)
    return np.mean(losses), np.mean(hits)


# Every (similarity, symmetric) option pair; tests sweep them inside one jitted function per
# layout, since XLA compile time, not run time, is what these tiny tests spend.
OPTIONS = tuple(itertools.product(("cosine", "dot"), (False, True)))
OPTION_KEYS = tuple(f"{similarity}/symmetric={symmetric}" for similarity, symmetric in OPTIONS)


def _loss_and_grads(a, p, n, m, **kwargs):
    """Loss, accuracy and embedding gradients of mnrl_loss for every entry of OPTIONS."""
    results = {}
    for similarity, symmetric in OPTIONS:

        def objective(a, p, n, similarity=similarity, symmetric=symmetric):
            return loss.mnrl_loss(a, p, n, m, similarity=similarity, symmetric=symmetric, **kwargs)

        (value, metrics), grads = jax.value_and_grad(objective, (0, 1, 2), has_aux=True)(a, p, n)
        results[f"{similarity}/symmetric={symmetric}"] = (value, metrics["accuracy"], grads)
    return results


def _sharded_loss_and_grads(mesh, batch, **kwargs):
    """_loss_and_grads inside shard_map: each device differentiates its local loss."""
    fn = jax.shard_map(
        functools.partial(_loss_and_grads, axis_name="data", **kwargs),
        mesh=mesh,
        in_specs=P("data"),
        # Loss and accuracy are replicated, embedding gradients stay sharded like the inputs.
        out_specs={key: (P(), P(), P("data")) for key in OPTION_KEYS},
    )
    return jit(fn)(*_shard(mesh, batch))


class MnrlLossTest(parameterized.TestCase):
    @parameterized.parameters(*LAYOUTS)
    def test_matches_numpy_reference(self, layout):
        batch = _random_batch(0, 6, *LAYOUTS[layout])
        got = jit(_loss_and_grads)(*batch)
        for similarity, symmetric in OPTIONS:
            value, accuracy, _ = got[f"{similarity}/symmetric={symmetric}"]
            want_loss, want_accuracy = reference_loss(*batch, 20.0, similarity, symmetric)
            chex.assert_shape(value, ())
            self.assertEqual(value.dtype, jnp.float32)
            msg = f"{layout} {similarity} symmetric={symmetric}"
            np.testing.assert_allclose(value, want_loss, rtol=1e-5, err_msg=msg)
            np.testing.assert_allclose(accuracy, want_accuracy, rtol=1e-6, err_msg=msg)

    @parameterized.parameters(*LAYOUTS)
    def test_sharded_matches_single_device(self, layout):
        """Loss, accuracy and gradients, for every similarity and symmetric option."""
        batch = _random_batch(1, DEVICES * LOCAL_BATCH, *LAYOUTS[layout])
        want = jit(_loss_and_grads)(*batch)
        got = _sharded_loss_and_grads(_mesh(), batch)
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)

    def test_gradient_of_sharded_loss_from_outside_matches(self):
        """The other way to differentiate: jax.grad around the shard_mapped loss."""
        mesh = _mesh()
        anchor, positive, negative, mask = _random_batch(2, DEVICES * LOCAL_BATCH, 3, True)
        sharded = jax.shard_map(
            functools.partial(loss.mnrl_loss, axis_name="data", symmetric=True),
            mesh=mesh,
            in_specs=P("data"),
            out_specs=P(),
        )

        def objective(fn, a, p, n, m):
            return fn(a, p, n, m)[0]

        grad_fn = jit(jax.grad(objective, (1, 2, 3)), static_argnums=0)
        single = functools.partial(loss.mnrl_loss, symmetric=True)
        want = grad_fn(single, anchor, positive, negative, mask)
        got = grad_fn(sharded, *_shard(mesh, (anchor, positive, negative, mask)))
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)

    def test_gather_off_uses_local_candidates_only(self):
        batch = _random_batch(3, DEVICES * LOCAL_BATCH, 3, True)
        got = _sharded_loss_and_grads(_mesh(), batch, gather=False)
        for similarity, symmetric in OPTIONS:
            per_device = [
                reference_loss(
                    *(
                        None if x is None else x[d * LOCAL_BATCH : (d + 1) * LOCAL_BATCH]
                        for x in batch
                    ),
                    20.0,
                    similarity,
                    symmetric,
                )
                for d in range(DEVICES)
            ]
            value, accuracy, _ = got[f"{similarity}/symmetric={symmetric}"]
            want_loss, want_accuracy = np.mean(per_device, axis=0)
            np.testing.assert_allclose(value, want_loss, rtol=1e-5)
            np.testing.assert_allclose(accuracy, want_accuracy, rtol=1e-6)

    def test_gathered_negatives_stay_aligned(self):
        """Closed-form loss for a batch built so every candidate's role is known.

        Example i (global) has anchor = positive = e_i and hard negatives at cosine 1/2 to e_i,
        each along its own extra axis; some negatives are masked. Anchor i then scores 5 on its
        positive, 2.5 on its own unmasked negatives and 0 on every other candidate. If gathering
        mixed negatives into the positive block, or the mask drifted from its negatives, the
        target or the candidate counts would change.
        """
        batch, num_negatives = DEVICES * LOCAL_BATCH, 2
        dim = batch * (1 + num_negatives)
        eye = np.eye(dim, dtype=np.float32)
        anchor = eye[:batch]
        negative = np.stack(
            [
                [
                    0.5 * eye[i] + np.sqrt(0.75) * eye[batch + i * num_negatives + k]
                    for k in range(num_negatives)
                ]
                for i in range(batch)
            ]
        ).astype(np.float32)
        mask = np.ones((batch, num_negatives), dtype=bool)
        # Not periodic in the local batch, so a mask tiled from one device would differ.
        mask[np.arange(batch) % 3 == 1, 1] = False
        mask[5, 0] = False
        own = mask.sum(axis=1)
        others = (batch - 1) + (mask.sum() - own)
        # Scale 5, not 20: near-zero losses would drown in float32 rounding of log-sum-exp.
        want = np.mean(-5.0 + np.log(np.exp(5.0) + own * np.exp(2.5) + others))

        got = _sharded_loss_and_grads(_mesh(), (anchor, anchor, negative, mask), scale=5.0)
        for key in ("cosine/symmetric=False", "dot/symmetric=False"):  # unit vectors: equal
            value, accuracy, _ = got[key]
            np.testing.assert_allclose(value, want, rtol=1e-5, err_msg=key)
            self.assertEqual(float(accuracy), 1.0)

    def test_fully_masked_negatives_equal_pairs(self):
        anchor, positive, negative, _ = _random_batch(4, 6, 3, False)

        @jit
        def variants(anchor, positive, negative):
            masked = _loss_and_grads(anchor, positive, negative, jnp.zeros((6, 3), bool))
            empty = _loss_and_grads(anchor, positive, negative[:, :0], None)
            pairs = _loss_and_grads(anchor, positive, None, None)

            def strip(tree):
                # Gradients for the negatives (zeros, or an empty array) have no pairs twin.
                return {key: (value, acc, grads[:2]) for key, (value, acc, grads) in tree.items()}

            return strip(masked), strip(empty), strip(pairs)

        masked, empty, pairs = variants(anchor, positive, negative)
        chex.assert_trees_all_close(masked, pairs, rtol=1e-5, atol=1e-7)
        chex.assert_trees_all_close(empty, pairs, rtol=1e-5, atol=1e-7)

    def test_bfloat16_inputs_give_finite_float32_loss(self):
        anchor, positive, negative, mask = _random_batch(5, 16, 3, True)
        # Large norms: a dot product in bfloat16 would lose the logits' low digits entirely.
        bf16 = [jnp.asarray(x * 30.0, jnp.bfloat16) for x in (anchor, positive, negative)]
        got = jit(_loss_and_grads)(*bf16, mask)
        as_f32 = [np.asarray(x, np.float32) for x in bf16]
        for similarity, symmetric in OPTIONS:
            value, _, grads = got[f"{similarity}/symmetric={symmetric}"]
            self.assertEqual(value.dtype, jnp.float32)
            chex.assert_tree_all_finite((value, grads))
            # Computed in float32 from the bfloat16 values, it matches the float64 reference.
            want, _ = reference_loss(*as_f32, mask, 20.0, similarity, symmetric)
            np.testing.assert_allclose(value, want, rtol=1e-4)

    def test_unknown_similarity_raises(self):
        anchor, positive, _, _ = _random_batch(6, 4, None, False)
        with self.assertRaisesRegex(ValueError, "euclidean"):
            loss.mnrl_loss(anchor, positive, similarity="euclidean")


# Matryoshka: prefixes of DIM = 8, unequal weights so a weight applied to the wrong prefix shows.
MATRYOSHKA_DIMS = (2, 8, 4)  # unsorted on purpose: matryoshka_loss sorts them
MATRYOSHKA_WEIGHTS = (2.0, 1.0, 0.5)


def reference_matryoshka(anchor, positive, negative, mask, similarity, symmetric):
    """Float64 NumPy: the weighted sum of reference_loss on each prefix; accuracy at full width."""
    total = 0.0
    for dim, weight in zip(MATRYOSHKA_DIMS, MATRYOSHKA_WEIGHTS, strict=True):
        prefix = [None if x is None else x[..., :dim] for x in (anchor, positive, negative)]
        total += weight * reference_loss(*prefix, mask, 20.0, similarity, symmetric)[0]
    return total, reference_loss(anchor, positive, negative, mask, 20.0, similarity, symmetric)[1]


def numeric_gradients(fn, arrays, eps=1e-5):
    """Central differences of the float64 function `fn(*arrays)` in every entry of every array."""
    arrays = [np.array(x, np.float64) for x in arrays]
    grads = []
    for x in arrays:
        g = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            keep = x[idx]
            x[idx] = keep + eps
            up = fn(*arrays)
            x[idx] = keep - eps
            down = fn(*arrays)
            x[idx] = keep
            g[idx] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def _matryoshka_loss_and_grads(a, p, n, m, **kwargs):
    """Like _loss_and_grads, with matryoshka_loss over MATRYOSHKA_DIMS around mnrl_loss."""
    fn = loss.matryoshka_loss(loss.mnrl_loss, MATRYOSHKA_DIMS, MATRYOSHKA_WEIGHTS)
    results = {}
    for similarity, symmetric in OPTIONS:

        def objective(a, p, n, similarity=similarity, symmetric=symmetric):
            return fn(a, p, n, m, similarity=similarity, symmetric=symmetric, **kwargs)

        (value, metrics), grads = jax.value_and_grad(objective, (0, 1, 2), has_aux=True)(a, p, n)
        results[f"{similarity}/symmetric={symmetric}"] = (value, metrics, grads)
    return results


class MatryoshkaLossTest(parameterized.TestCase):
    @parameterized.parameters("pairs", "k3_masked")
    def test_matches_numpy_reference_loss_and_gradients(self, layout):
        anchor, positive, negative, mask = _random_batch(7, 4, *LAYOUTS[layout])
        if negative is None:  # pairs: no negatives to differentiate
            negative = np.zeros((4, 0, DIM), np.float32)
        got = jit(_matryoshka_loss_and_grads)(anchor, positive, negative, mask)
        for similarity, symmetric in OPTIONS:
            value, metrics, grads = got[f"{similarity}/symmetric={symmetric}"]
            msg = f"{layout} {similarity} symmetric={symmetric}"

            def ref(a, p, n, similarity=similarity, symmetric=symmetric):
                return reference_matryoshka(a, p, n, mask, similarity, symmetric)[0]

            want_loss, want_accuracy = reference_matryoshka(
                anchor, positive, negative, mask, similarity, symmetric
            )
            np.testing.assert_allclose(value, want_loss, rtol=1e-5, err_msg=msg)
            np.testing.assert_allclose(metrics["accuracy"], want_accuracy, rtol=1e-6)
            for dim in MATRYOSHKA_DIMS:
                prefix = [x[..., :dim] for x in (anchor, positive, negative)]
                want = reference_loss(*prefix, mask, 20.0, similarity, symmetric)[0]
                np.testing.assert_allclose(metrics[f"matryoshka_loss_{dim}"], want, rtol=1e-5)
            want_grads = numeric_gradients(ref, (anchor, positive, negative))
            assert_relative_close(tuple(grads), tuple(want_grads), tol=1e-5)

    @parameterized.parameters("pairs", "k3_masked")
    def test_sharded_matches_single_device(self, layout):
        batch = _random_batch(8, DEVICES * LOCAL_BATCH, *LAYOUTS[layout])
        want = jit(_matryoshka_loss_and_grads)(*batch)
        keys = ("accuracy", *(f"matryoshka_loss_{d}" for d in MATRYOSHKA_DIMS))
        fn = jax.shard_map(
            functools.partial(_matryoshka_loss_and_grads, axis_name="data"),
            mesh=_mesh(),
            in_specs=P("data"),
            out_specs={k: (P(), {m: P() for m in keys}, P("data")) for k in OPTION_KEYS},
        )
        got = jit(fn)(*_shard(_mesh(), batch))
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)

    def test_no_dims_is_the_ranking_loss_bit_for_bit(self):
        self.assertIs(loss.matryoshka_loss(loss.mnrl_loss, ()), loss.mnrl_loss)
        batch = _random_batch(9, 6, 3, True)

        @jit
        def both(a, p, n, m):
            full = loss.matryoshka_loss(loss.mnrl_loss, (DIM,))  # one prefix: the whole width
            return [
                jax.value_and_grad(
                    lambda *x, fn=fn: fn(*x, m, symmetric=True), (0, 1, 2), has_aux=True
                )(a, p, n)
                for fn in (loss.mnrl_loss, full)
            ]

        (plain, plain_grads), (full, full_grads) = both(*batch)
        np.testing.assert_array_equal(full[0], plain[0])
        np.testing.assert_array_equal(full[1]["accuracy"], plain[1]["accuracy"])
        chex.assert_trees_all_equal(full_grads, plain_grads)

    def test_bad_dims_and_weights_raise(self):
        with self.assertRaisesRegex(ValueError, "distinct positive"):
            loss.matryoshka_loss(loss.mnrl_loss, (4, 4))
        with self.assertRaisesRegex(ValueError, "one per dim"):
            loss.matryoshka_loss(loss.mnrl_loss, (8, 4), (1.0,))
        anchor, positive, _, _ = _random_batch(10, 4, None, False)
        with self.assertRaisesRegex(ValueError, "exceeds the embedding width 8"):
            loss.matryoshka_loss(loss.mnrl_loss, (16, 8))(anchor, positive)


# A tiny encoder for GradCache: embedding, dense layer, dropout, masked mean pooling.
VOCAB, LENGTH, WIDTH = 32, 5, 8


def _encode(ids_BxL, mask_BxL, dropout_rate):
    x_BxLxD = hk.Embed(VOCAB, WIDTH)(ids_BxL)
    x_BxLxD = jax.nn.gelu(hk.Linear(WIDTH)(x_BxLxD))
    if dropout_rate:
        x_BxLxD = hk.dropout(hk.next_rng_key(), dropout_rate, x_BxLxD)
    weights_BxL = mask_BxL.astype(x_BxLxD.dtype)
    return jnp.einsum("bld,bl->bd", x_BxLxD, weights_BxL) / weights_BxL.sum(1, keepdims=True)


def _tiny_encoder(dropout_rate: float) -> hk.Transformed:
    def forward(inputs):
        rows, num_negatives = inputs["negative_ids"].shape[:2]
        # All texts in one encoder call: one dropout draw, so one random-bits kernel to compile.
        ids = [inputs["anchor_ids"], inputs["positive_ids"], inputs["negative_ids"]]
        masks = [inputs["anchor_mask"], inputs["positive_mask"], inputs["negative_mask"]]
        emb = _encode(
            jnp.concatenate([x.reshape(-1, LENGTH) for x in ids]),
            jnp.concatenate([x.reshape(-1, LENGTH) for x in masks]),
            dropout_rate,
        )
        return {
            "anchor": emb[:rows],
            "positive": emb[rows : 2 * rows],
            "negative": emb[2 * rows :].reshape(rows, num_negatives, WIDTH),
        }

    return hk.transform(forward)


def _token_batch(seed: int, batch: int):
    rng = np.random.default_rng(seed)

    def texts(*shape):
        ids = rng.integers(1, VOCAB, size=(*shape, LENGTH)).astype(np.int32)
        lengths = rng.integers(1, LENGTH + 1, size=shape)
        return ids, np.arange(LENGTH) < lengths[..., None]

    anchor_ids, anchor_mask = texts(batch)
    positive_ids, positive_mask = texts(batch)
    negative_ids, negative_mask = texts(batch, 1)
    return dict(
        anchor_ids=anchor_ids,
        anchor_mask=anchor_mask,
        positive_ids=positive_ids,
        positive_mask=positive_mask,
        negative_ids=negative_ids,
        negative_mask=negative_mask,
    )


def _mnrl_on(embeddings, axis_name=None):
    return loss.mnrl_loss(
        embeddings["anchor"],
        embeddings["positive"],
        embeddings["negative"],
        symmetric=True,
        axis_name=axis_name,
    )


class GradCacheTest(parameterized.TestCase):
    def _setup(self, dropout_rate, batch=16):
        inputs = _token_batch(0, batch)
        model = _tiny_encoder(dropout_rate)
        params = jit(model.init)(jax.random.key(0), inputs)

        # GradCache's embed_fn takes the key last; Haiku's apply takes it second.
        def embed_fn(p, x, rng):
            return model.apply(p, rng, x)

        return embed_fn, params, inputs

    def test_cached_matches_plain_without_dropout(self):
        embed_fn, params, inputs = self._setup(0.0)
        rng = jax.random.key(1)

        @jit
        def run(p):
            plain = jax.value_and_grad(lambda q: _mnrl_on(embed_fn(q, inputs, rng)), has_aux=True)(
                p
            )
            # Chunks of one row (the edge case) and of four.
            cached = {
                size: loss.cached_value_and_grad(embed_fn, _mnrl_on, p, inputs, rng, size)
                for size in (1, 4)
            }
            return plain, cached

        plain, cached = run(params)
        for size, got in cached.items():
            with self.subTest(chunk_size=size):
                assert_relative_close(got, plain)

    def test_cached_matches_chunked_with_dropout(self):
        embed_fn, params, inputs = self._setup(0.3)

        @jit
        def run(p):
            rng = jax.random.key(2)
            return (
                loss.cached_value_and_grad(embed_fn, _mnrl_on, p, inputs, rng, 4),
                loss.chunked_value_and_grad(embed_fn, _mnrl_on, p, inputs, rng, 4),
                [embed_fn(p, inputs, jax.random.key(k))["anchor"] for k in (4, 5)],
            )

        cached, chunked, (first, second) = run(params)
        assert_relative_close(cached, chunked)
        # Dropout is really on, so a replay with other keys than the first pass would show.
        self.assertGreater(float(jnp.max(jnp.abs(first - second))), 1e-3)

    def test_cached_with_cross_device_gather_matches_single_device(self):
        mesh = _mesh()
        embed_fn, params, inputs = self._setup(0.0, batch=DEVICES * LOCAL_BATCH * 2)
        rng = jax.random.key(3)
        want = jit(jax.value_and_grad(lambda q: _mnrl_on(embed_fn(q, inputs, rng)), has_aux=True))(
            params
        )
        loss_fn = functools.partial(_mnrl_on, axis_name="data")
        # (cache_chunk_size, axis_name): plain; GradCache with JAX's per-chunk gradient psum;
        # GradCache with one psum at the end.
        configs = ((None, None), (2, None), (2, "data"))

        def local(p, x):
            return [
                loss.embedding_value_and_grad(
                    embed_fn, loss_fn, p, x, rng, cache_chunk_size=size, axis_name=axis_name
                )
                for size, axis_name in configs
            ]

        fn = jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data")), out_specs=P()))
        got = fn(jax.device_put(params, NamedSharding(mesh, P())), _shard(mesh, inputs))
        for config, result in zip(configs, got, strict=True):
            with self.subTest(config=config):
                assert_relative_close(result, want)

    def test_cached_matryoshka_matches_plain_and_single_device(self):
        """Matryoshka from the cached embeddings: one embedding gradient for all prefixes."""
        mesh = _mesh()
        embed_fn, params, inputs = self._setup(0.0, batch=DEVICES * LOCAL_BATCH * 2)
        rng = jax.random.key(4)
        fn = loss.matryoshka_loss(loss.mnrl_loss, MATRYOSHKA_DIMS, MATRYOSHKA_WEIGHTS)

        def matryoshka_on(embeddings, axis_name=None):
            return fn(
                *(embeddings[k] for k in ("anchor", "positive", "negative")),
                symmetric=True,
                axis_name=axis_name,
            )

        want = jit(
            jax.value_and_grad(lambda q: matryoshka_on(embed_fn(q, inputs, rng)), has_aux=True)
        )(params)
        single_cached = jit(
            lambda p: loss.cached_value_and_grad(embed_fn, matryoshka_on, p, inputs, rng, 4)
        )(params)
        assert_relative_close(single_cached, want)

        def local(p, x):
            return loss.embedding_value_and_grad(
                embed_fn,
                functools.partial(matryoshka_on, axis_name="data"),
                p,
                x,
                rng,
                cache_chunk_size=2,
                axis_name="data",
            )

        sharded = jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data")), out_specs=P()))
        got = sharded(jax.device_put(params, NamedSharding(mesh, P())), _shard(mesh, inputs))
        assert_relative_close(got, want)

    def test_chunk_size_must_divide_batch(self):
        inputs = _token_batch(0, 16)
        with self.assertRaisesRegex(ValueError, "does not divide"):
            loss.cached_value_and_grad(None, _mnrl_on, {}, inputs, jax.random.key(0), 5)


# ----------------------------------------------------------------------------- guided (GISTEmbed)

# (similarity, symmetric, margin_strategy, margin, contrast_anchors, contrast_positives): the
# sentence-transformers default first, then mixes of every option.
GUIDED_OPTIONS = (
    ("cosine", False, "absolute", 0.0, True, True),
    ("cosine", True, "relative", 0.05, True, False),
    ("dot", True, "absolute", 0.1, False, True),
    ("cosine", False, "relative", 0.1, False, False),
)
GUIDED_LAYOUTS = {"pairs": (None, False), "k2_masked": (2, True)}


def _guided_batch(seed: int, batch: int, num_negatives: int | None, masked: bool):
    """Model embeddings far from saturating the softmax (noisy positives, negatives near their
    anchor) and a guide that roughly agrees with them, so that it masks some candidates and
    keeps others; one guide positive points away from its anchor (a negative threshold)."""
    a, _, n, m = _random_batch(seed, batch, num_negatives, masked)
    rng = np.random.default_rng(seed + 100)

    def noise(*shape):
        return rng.normal(size=shape) / np.sqrt(DIM)

    p = (a + 1.5 * noise(*a.shape)).astype(np.float32)
    if n is not None:
        n = (0.7 * a[:, None] + noise(*n.shape)).astype(np.float32)

    def noisy(x):
        return None if x is None else (x + 0.6 * noise(*x.shape)).astype(np.float32)

    ga, gp, gn = noisy(a), noisy(p), noisy(n)
    gp[0] = -ga[0]
    return (a, p, n, m), (ga, gp, gn)


def reference_guided_loss(
    anchor, positive, negative, mask, g_anchor, g_positive, g_negative, options, scale=20.0
):
    """Float64 NumPy GISTEmbed loss, row by row: (loss, accuracy, masked candidates per anchor).

    sentence-transformers' GISTEmbedLoss semantics (candidate blocks: positives, anchors,
    positives, negatives; masked where the guide's cosine exceeds the threshold), with a text
    never its own negative and a missing negative never a candidate.
    """
    similarity, symmetric, strategy, margin, contrast_anchors, contrast_positives = options
    f64 = lambda x: None if x is None else np.float64(x)  # noqa: E731
    a, p, n, ga, gp, gn = map(f64, (anchor, positive, negative, g_anchor, g_positive, g_negative))

    def cos(x, y):
        return x @ y / (np.linalg.norm(x) * np.linalg.norm(y))

    sim = cos if similarity == "cosine" else (lambda x, y: x @ y)

    def cross_entropy(logits, target):
        logits = np.asarray(logits)
        top = logits.max()
        return top + np.log(np.sum(np.exp(logits - top))) - logits[target]

    batch = len(a)
    negatives = [] if n is None else [(j, k) for j in range(batch) for k in range(n.shape[1])]
    losses, hits, masked = [], [], []
    for i in range(batch):
        g_pos = cos(ga[i], gp[i])
        threshold = g_pos - margin if strategy == "absolute" else g_pos - abs(g_pos) * margin
        count = 0

        def candidate(query, cand, g_query, g_cand, own=False, skip=False, threshold=threshold):
            nonlocal count
            if skip:
                return -np.inf
            if not own and cos(g_query, g_cand) > threshold:
                count += 1
                return -np.inf
            return scale * sim(query, cand)

        logits = [candidate(a[i], p[j], ga[i], gp[j], own=j == i) for j in range(batch)]
        if contrast_anchors:
            logits += [candidate(a[i], a[j], ga[i], ga[j], skip=j == i) for j in range(batch)]
        if contrast_positives:
            logits += [candidate(p[i], p[j], gp[i], gp[j], skip=j == i) for j in range(batch)]
        for j, k in negatives:
            missing = mask is not None and not mask[j, k]
            logits.append(candidate(a[i], n[j, k], ga[i], gn[j, k], skip=missing))
        loss = cross_entropy(logits, i)
        hits.append(float(np.argmax(logits) == i))
        masked.append(count)
        if symmetric:
            back = [candidate(p[i], a[j], gp[i], ga[j], own=j == i) for j in range(batch)]
            loss = 0.5 * (loss + cross_entropy(back, i))
        losses.append(loss)
    return np.mean(losses), np.mean(hits), np.mean(masked)


def _numeric_gradients(fn, arrays, h=1e-6):
    """Central differences of a float64 scalar function, one entry at a time.

    h = 1e-6: the scale-20 softmax curves sharply, so h = 1e-5 already leaves truncation errors
    of ~1e-5 of the largest gradient; rounding stays ~1e-10 at 1e-6."""
    grads = []
    for index, x in enumerate(arrays):
        if x is None:
            grads.append(None)
            continue
        g = np.zeros(x.shape, np.float64)
        for pos in np.ndindex(x.shape):
            shifted = [np.float64(y) if y is not None else None for y in arrays]
            shifted[index][pos] += h
            up = fn(*shifted)
            shifted[index][pos] -= 2 * h
            g[pos] = (up - fn(*shifted)) / (2 * h)
        grads.append(g)
    return grads


def _guided_loss_and_grads(a, p, n, m, ga, gp, gn, **kwargs):
    """Loss, metrics and embedding gradients of guided_mnrl_loss for every GUIDED_OPTIONS."""
    results = {}
    for options in GUIDED_OPTIONS:
        similarity, symmetric, strategy, margin, contrast_anchors, contrast_positives = options

        def objective(a, p, n, options=options):
            similarity, symmetric, strategy, margin, anchors, positives = options
            return loss.guided_mnrl_loss(
                a,
                p,
                n,
                m,
                guide_anchor_BxD=ga,
                guide_positive_BxD=gp,
                guide_negative_BxKxD=gn,
                margin=margin,
                margin_strategy=strategy,
                contrast_anchors=anchors,
                contrast_positives=positives,
                similarity=similarity,
                symmetric=symmetric,
                **kwargs,
            )

        (value, metrics), grads = jax.value_and_grad(objective, (0, 1, 2), has_aux=True)(a, p, n)
        results[str(options)] = (value, metrics, grads)
    return results


class GuidedLossTest(parameterized.TestCase):
    @parameterized.parameters(*GUIDED_LAYOUTS)
    def test_matches_numpy_reference_loss_and_gradients(self, layout):
        # Scale 5: the guide removes the hardest candidates, and at scale 20 the few left give
        # losses of ~1e-4, whose float32 log-sum-exp carries relative errors of ~1e-4.
        (a, p, n, m), (ga, gp, gn) = _guided_batch(10, 5, *GUIDED_LAYOUTS[layout])
        got = jit(functools.partial(_guided_loss_and_grads, scale=5.0))(a, p, n, m, ga, gp, gn)
        for options in GUIDED_OPTIONS:
            value, metrics, grads = got[str(options)]
            msg = f"{layout} {options}"

            def reference(a, p, n, options=options):
                return reference_guided_loss(a, p, n, m, ga, gp, gn, options, scale=5.0)[0]

            want_loss, want_accuracy, want_masked = reference_guided_loss(
                a, p, n, m, ga, gp, gn, options, scale=5.0
            )
            # The guide really masks some candidates and leaves others.
            self.assertGreater(want_masked, 0.5, msg)
            np.testing.assert_allclose(value, want_loss, rtol=1e-5, err_msg=msg)
            np.testing.assert_allclose(metrics["accuracy"], want_accuracy, rtol=1e-6, err_msg=msg)
            np.testing.assert_allclose(metrics["guide_masked"], want_masked, rtol=1e-6, err_msg=msg)
            want_grads = _numeric_gradients(reference, [a, p, n])
            for name, g, w in zip("apn", grads, want_grads, strict=True):
                if w is not None:  # float32 against float64 (entries up to ~1)
                    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=f"{msg} d{name}")
                    self.assertGreater(np.abs(w).max(), 1e-2)

    @parameterized.parameters(*GUIDED_LAYOUTS)
    def test_sharded_matches_single_device(self, layout):
        """8 fake devices: candidates and guide embeddings gathered = the global batch."""
        mesh = _mesh()
        (a, p, n, m), guide = _guided_batch(11, DEVICES * LOCAL_BATCH, *GUIDED_LAYOUTS[layout])
        want = jit(_guided_loss_and_grads)(a, p, n, m, *guide)
        fn = jax.shard_map(
            functools.partial(_guided_loss_and_grads, axis_name="data"),
            mesh=mesh,
            in_specs=P("data"),
            out_specs={
                str(o): (P(), {"accuracy": P(), "guide_masked": P()}, P("data"))
                for o in GUIDED_OPTIONS
            },
        )
        got = jit(fn)(*_shard(mesh, (a, p, n, m, *guide)))
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)

    def test_a_guide_that_masks_nothing_gives_mnrl(self):
        """Orthogonal guide vectors (positive cosine 1, everything else 0) mask no candidate:
        without the anchor-anchor and positive-positive blocks the loss is mnrl_loss."""
        a, p, n, m = _random_batch(12, 6, 2, True)
        eye = np.eye(6 * 4, dtype=np.float32)
        ga = gp = eye[:6]
        gn = eye[6:].reshape(6, 3, 24)[:, :2]

        @jit
        def both(a, p, n):
            out = {}
            for symmetric in (False, True):
                kw = dict(symmetric=symmetric)
                guided = loss.guided_mnrl_loss(
                    a,
                    p,
                    n,
                    m,
                    guide_anchor_BxD=ga,
                    guide_positive_BxD=gp,
                    guide_negative_BxKxD=gn,
                    contrast_anchors=False,
                    contrast_positives=False,
                    **kw,
                )
                out[symmetric] = (guided, loss.mnrl_loss(a, p, n, m, **kw))
            return out

        for symmetric, ((value, metrics), (want, want_metrics)) in both(a, p, n).items():
            np.testing.assert_allclose(value, want, rtol=1e-6, err_msg=f"symmetric={symmetric}")
            self.assertEqual(float(metrics["accuracy"]), float(want_metrics["accuracy"]))
            self.assertEqual(float(metrics["guide_masked"]), 0.0)

    def test_unknown_margin_strategy_raises(self):
        a, p, _, _ = _random_batch(13, 4, None, False)
        with self.assertRaisesRegex(ValueError, "percent"):
            loss.guided_mnrl_loss(
                a, p, guide_anchor_BxD=a, guide_positive_BxD=p, margin_strategy="percent"
            )


def _guide_encoder() -> hk.Transformed:
    """The tiny encoder, without dropout, as a frozen guide (its own params)."""
    return _tiny_encoder(0.0)


def _guided_on(embeddings, guide_embeddings, axis_name=None):
    return loss.guided_mnrl_loss(
        embeddings["anchor"],
        embeddings["positive"],
        embeddings["negative"],
        guide_anchor_BxD=guide_embeddings["anchor"],
        guide_positive_BxD=guide_embeddings["positive"],
        guide_negative_BxKxD=guide_embeddings["negative"],
        margin=0.02,
        symmetric=True,
        axis_name=axis_name,
    )


class GuidedGradCacheTest(parameterized.TestCase):
    def _setup(self, batch=16):
        inputs = _token_batch(0, batch)
        model, guide = _tiny_encoder(0.0), _guide_encoder()
        params = jit(model.init)(jax.random.key(0), inputs)
        guide_params = jit(guide.init)(jax.random.key(7), inputs)

        def embed_fn(p, x, rng):
            return model.apply(p, rng, x)

        def guide_fn(p, x):
            return guide.apply(p, None, x)

        return embed_fn, guide_fn, params, guide_params, inputs

    def test_frozen_embeddings_chunked_equal_whole_and_carry_no_gradient(self):
        _, guide_fn, _, guide_params, inputs = self._setup()

        @jit
        def run(gp):
            whole = loss.frozen_embeddings(guide_fn, gp, inputs)
            chunked = loss.frozen_embeddings(guide_fn, gp, inputs, chunk_size=4)
            grad = jax.grad(
                lambda q: jnp.sum(loss.frozen_embeddings(guide_fn, q, inputs, 4)["anchor"])
            )(gp)
            return whole, chunked, grad

        whole, chunked, grad = run(guide_params)
        chex.assert_trees_all_close(chunked, whole, rtol=1e-6, atol=1e-7)
        for g in jax.tree.leaves(grad):
            self.assertEqual(float(jnp.max(jnp.abs(g))), 0.0)

    def test_cached_matches_plain(self):
        embed_fn, guide_fn, params, guide_params, inputs = self._setup()
        rng = jax.random.key(1)

        @jit
        def run(p, gp):
            plain_guide = loss.frozen_embeddings(guide_fn, gp, inputs)
            plain = jax.value_and_grad(
                lambda q: _guided_on(embed_fn(q, inputs, rng), plain_guide), has_aux=True
            )(p)
            cached = {}
            for size in (1, 4):
                g = loss.frozen_embeddings(guide_fn, gp, inputs, chunk_size=size)
                cached[size] = loss.cached_value_and_grad(
                    embed_fn, lambda e, g=g: _guided_on(e, g), p, inputs, rng, size
                )
            return plain, cached

        plain, cached = run(params, guide_params)
        self.assertGreater(float(plain[0][1]["guide_masked"]), 0.5)  # the guide does mask
        for size, got in cached.items():
            with self.subTest(chunk_size=size):
                assert_relative_close(got, plain)

    def test_cached_with_cross_device_gather_matches_single_device(self):
        mesh = _mesh()
        embed_fn, guide_fn, params, guide_params, inputs = self._setup(DEVICES * LOCAL_BATCH * 2)
        rng = jax.random.key(3)
        whole_guide = loss.frozen_embeddings(guide_fn, guide_params, inputs)
        want = jit(
            jax.value_and_grad(
                lambda q: _guided_on(embed_fn(q, inputs, rng), whole_guide), has_aux=True
            )
        )(params)

        def local(p, gp, x):
            out = []
            for size in (None, 2):
                g = loss.frozen_embeddings(guide_fn, gp, x, chunk_size=size)
                out.append(
                    loss.embedding_value_and_grad(
                        embed_fn,
                        lambda e, g=g: _guided_on(e, g, axis_name="data"),
                        p,
                        x,
                        rng,
                        cache_chunk_size=size,
                        axis_name="data",
                    )
                )
            return out

        fn = jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P("data")), out_specs=P()))
        replicated = NamedSharding(mesh, P())
        got = fn(
            jax.device_put(params, replicated),
            jax.device_put(guide_params, replicated),
            _shard(mesh, inputs),
        )
        for size, result in zip((None, 2), got, strict=True):
            with self.subTest(cache_chunk_size=size):
                assert_relative_close(result, want)


if __name__ == "__main__":
    absltest.main()
