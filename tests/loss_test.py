"""Tests for loss.py: NumPy reference, sharded == single-device, negative alignment, GradCache,
Matryoshka.

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


if __name__ == "__main__":
    absltest.main()
