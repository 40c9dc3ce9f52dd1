"""Encoder tests on tiny random models: padding invariance, packing, dtypes, dropout, names."""

import functools

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import model

TINY = dict(
    vocab_size=50,
    hidden_size=16,
    num_layers=2,
    num_heads=2,
    intermediate_size=32,
    max_position_embeddings=40,
)
FAMILIES = {
    "bert": model.EncoderConfig(model_type="bert", **TINY),
    "roberta": model.EncoderConfig(
        model_type="roberta", type_vocab_size=1, pad_token_id=1, position_offset=2, **TINY
    ),
    "distilbert": model.EncoderConfig(model_type="distilbert", type_vocab_size=0, **TINY),
    "mpnet": model.EncoderConfig(
        model_type="mpnet",
        type_vocab_size=0,
        pad_token_id=1,
        position_offset=2,
        relative_attention_num_buckets=8,
        **TINY,
    ),
}


@functools.cache
def _random_params(cfg, seed=0):
    # Random LayerNorm/bias values too, so that no parameter is trivially zero or one.
    params = model.init_params(cfg, seed)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, leaves)


class PoolingTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(
        ("mean", "bert"),
        ("cls", "bert"),
        ("max", "bert"),
        ("mean", "roberta"),
        ("cls", "distilbert"),
        ("max", "mpnet"),
    )
    def test_padding_never_changes_the_pooled_output(self, mode, family):
        cfg = FAMILIES[family]
        fn = model.make_embed_fn(cfg, pooling=mode, normalize=False)
        params = _random_params(cfg)
        rng = np.random.default_rng(0)
        ids = rng.integers(3, cfg.vocab_size, size=(3, 7)).astype(np.int32)
        seg = np.ones_like(ids)
        # The same texts with 9 extra padding positions holding arbitrary ids.
        ids_pad = np.concatenate([ids, rng.integers(0, cfg.vocab_size, (3, 9))], 1).astype(np.int32)
        seg_pad = np.concatenate([seg, np.zeros((3, 9), np.int32)], 1)
        apply = self.variant(lambda p, i, s: fn.apply(p, None, i, s, False))
        short = apply(params, ids, seg)
        padded = apply(params, ids_pad, seg_pad)
        chex.assert_shape(short, (3, 1, cfg.hidden_size))
        chex.assert_trees_all_close(short, padded, atol=1e-6)

    @parameterized.parameters(*model.POOLING_MODES)
    def test_packed_texts_equal_separate_texts(self, mode):
        cfg = FAMILIES["mpnet"]  # the relative bias makes this the strictest family
        params = _random_params(cfg)
        a, b = [5, 6, 7, 8, 9], [10, 11, 12]
        sep = model.make_embed_fn(cfg, pooling=mode, normalize=True)
        packed = model.make_embed_fn(cfg, pooling=mode, normalize=True, num_segments=3)
        ids = np.zeros((2, 8), np.int32)
        seg = np.zeros((2, 8), np.int32)
        ids[0, :5], seg[0, :5] = a, 1
        ids[1, :3], seg[1, :3] = b, 1
        one_each = sep.apply(params, None, ids, seg, False)[:, 0]
        row = np.array([a + b], np.int32)
        row_seg = np.array([[1] * 5 + [2] * 3], np.int32)
        both = packed.apply(params, None, row, row_seg, False)[0]
        chex.assert_trees_all_close(both[:2], one_each, atol=1e-5)
        np.testing.assert_array_equal(both[2], 0.0)  # an empty segment pools to zeros

    def test_positions_restart_per_segment(self):
        seg = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0]])
        np.testing.assert_array_equal(
            model.positions_from_segments(seg), [[0, 1, 2, 0, 1, 0, 0, 1]]
        )

    def test_normalize_gives_unit_vectors(self):
        cfg = FAMILIES["bert"]
        fn = model.make_embed_fn(cfg, normalize=True)
        ids = np.full((2, 4), 7, np.int32)
        out = fn.apply(_random_params(cfg), None, ids, np.ones_like(ids), False)
        np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-6)

    def test_unknown_pooling_is_an_error(self):
        with pytest.raises(ValueError, match="pooling 'sum'"):
            model.make_embed_fn(FAMILIES["bert"], pooling="sum")


def _softmax_attention(q, k, v, bias, rate=0.0, key=None):
    """Attention as written down: softmax(q k^T / sqrt(K) + bias), dropout, then times v."""
    scores = jnp.einsum("bqhk,bthk->bhqt", q / np.sqrt(q.shape[-1]), k) + bias
    probs = jax.nn.softmax(scores, axis=-1)
    if rate:
        probs = model.dropout(key, rate, probs)
    return jnp.einsum("bhqt,bthk->bqhk", probs, v)


class AttentionTest(parameterized.TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        self.q, self.k, self.v = (rng.normal(size=(3, 7, 2, 4)).astype(np.float32) for _ in "qkv")
        seg = np.array([[1, 1, 1, 2, 2, 0, 0], [1] * 7, [1, 1, 0, 0, 0, 0, 0]])
        allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
        # Padding queries see no key at all: every score masked, as the encoder's bias does.
        self.bias = np.where(allowed, 0.0, np.finfo(np.float32).min)[:, None].astype(np.float32)

    def test_equals_softmax_then_product_in_float64(self):
        got = model.attention(self.q, self.k, self.v, self.bias, 0.0, False)
        q, k, v = (x.astype(np.float64) for x in (self.q, self.k, self.v))
        scores = np.einsum("bqhk,bthk->bhqt", q / 2.0, k) + self.bias
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        want = np.einsum("bhqt,bthk->bqhk", probs, v)
        np.testing.assert_allclose(got, want, atol=2e-6)

    def test_gradients_equal_the_softmax_form(self):
        def loss(attend):
            return lambda q, k, v: (attend(q, k, v) ** 2 * self.v).sum()

        ours = jax.grad(
            loss(lambda q, k, v: model.attention(q, k, v, self.bias, 0.0, False)), (0, 1, 2)
        )(self.q, self.k, self.v)
        want = jax.grad(loss(lambda q, k, v: _softmax_attention(q, k, v, self.bias)), (0, 1, 2))(
            self.q, self.k, self.v
        )
        chex.assert_trees_all_close(ours, want, atol=1e-5)

    def test_dropout_drops_the_same_probabilities(self):
        key = jax.random.PRNGKey(3)
        draw = hk.transform(lambda: hk.next_rng_key())
        ours = hk.transform(
            lambda: model.attention(self.q, self.k, self.v, self.bias, 0.3, True)
        ).apply({}, key)
        want = _softmax_attention(self.q, self.k, self.v, self.bias, 0.3, draw.apply({}, key))
        np.testing.assert_allclose(ours, want, atol=2e-6)
        assert not np.allclose(ours, _softmax_attention(self.q, self.k, self.v, self.bias))


class EncoderTest(parameterized.TestCase):
    def test_bfloat16_compute_is_close_to_float32(self):
        cfg = FAMILIES["bert"]
        fn = model.make_embed_fn(cfg)
        params = _random_params(cfg)
        ids = np.arange(12, dtype=np.int32).reshape(2, 6) + 3
        f32 = fn.apply(params, None, ids, np.ones_like(ids), False)
        bf16 = fn.apply(model.cast_params(params, "bfloat16"), None, ids, np.ones_like(ids), False)
        self.assertEqual(bf16.dtype, jnp.float32)  # pooled output is float32
        chex.assert_tree_all_finite(bf16)
        chex.assert_trees_all_close(bf16, f32, atol=5e-2)
        # The master parameters stay float32.
        self.assertTrue(all(x.dtype == jnp.float32 for x in jax.tree.leaves(params)))

    def test_dropout_only_when_training(self):
        cfg = FAMILIES["bert"]
        fn = model.make_embed_fn(cfg)
        params = _random_params(cfg)
        ids = np.arange(12, dtype=np.int32).reshape(2, 6) + 3
        seg = np.ones_like(ids)
        k1, k2 = jax.random.split(jax.random.PRNGKey(0))
        t1 = fn.apply(params, k1, ids, seg, True)
        t2 = fn.apply(params, k2, ids, seg, True)
        self.assertGreater(float(jnp.abs(t1 - t2).max()), 1e-4)
        chex.assert_trees_all_close(t1, fn.apply(params, k1, ids, seg, True))  # same key
        e1 = fn.apply(params, None, ids, seg, False)
        chex.assert_trees_all_close(e1, fn.apply(params, None, ids, seg, False))

    def test_threefry_known_answers(self):
        # Random123's known-answer vectors for Threefry-2x32-20 (also in JAX's random_test.py).
        cases = [
            ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
            ((0xFFFFFFFF,) * 2, (0xFFFFFFFF,) * 2, (0x1CB996FC, 0xBB002BE7)),
            ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
        ]
        for key, count, expected in cases:
            out = model.threefry2x32(*(jnp.uint32(v) for v in key + count))
            self.assertEqual(tuple(int(v) for v in out), expected)

    def test_dropout_mask(self):
        x = jnp.ones((64, 8, 128), jnp.float32)
        key = jax.random.key(3)
        y = np.asarray(jax.jit(model.dropout, static_argnums=1)(key, 0.1, x))
        kept = y != 0
        self.assertAlmostEqual(kept.mean(), 0.9, delta=0.005)  # 65536 draws: sd ~0.0012
        np.testing.assert_allclose(y[kept], 1 / 0.9, rtol=1e-6)
        self.assertGreater((kept[0] != kept[1]).mean(), 0.1)  # rows get different masks
        np.testing.assert_array_equal(y, model.dropout(key, 0.1, x))  # a function of the key
        other = np.asarray(model.dropout(jax.random.key(4), 0.1, x)) != 0
        self.assertGreater((kept != other).mean(), 0.1)

    @parameterized.parameters(*FAMILIES)
    def test_name_table_covers_every_param(self, family):
        cfg = FAMILIES[family]
        params = model.init_params(cfg)
        table = model.hf_name_table(cfg)
        self.assertEqual(set(table), {(m, n) for m in params for n in params[m]})
        self.assertEqual(len({v[0] for v in table.values()}), len(table))  # names unique
        back = model.params_from_hf(model.params_to_hf(params, cfg), cfg)
        chex.assert_trees_all_equal(back, jax.tree.map(np.asarray, params))

    def test_bad_config(self):
        with pytest.raises(ValueError, match="model_type 'gpt2'"):
            model.EncoderConfig(model_type="gpt2").validate()
        with pytest.raises(ValueError, match="not divisible"):
            model.EncoderConfig(hidden_size=10, num_heads=3).validate()
