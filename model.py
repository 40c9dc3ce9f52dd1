"""Haiku transformer encoders and pooling for sentence embeddings.

One encoder body serves the families the seed trained (BERT/MiniLM, RoBERTa, DistilBERT, MPNet):
they share post-LayerNorm blocks with exact GELU and differ in their embeddings (token types,
position offset) and, for MPNet, a bucketed relative-position attention bias shared by all layers.
The Hugging Face tensor names of each family live next to these modules in `hf_name_table`.

Every input row may hold several texts ("packed sequences"): `segments_BxL` numbers the texts of a
row 1, 2, ... and marks padding with 0. Attention is confined to a token's own text, positions
restart at 0 for each text, and pooling yields one embedding per text. An ordinary padded batch is
the special case `segments_BxL = mask_BxL`, with one text per row.

Shape letters: B batch rows, L tokens per row, S texts (segments) per row, D hidden size,
H attention heads, K head size, F feed-forward size, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

MODEL_TYPES = ("bert", "roberta", "distilbert", "mpnet")
POOLING_MODES = ("mean", "cls", "max")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture of an encoder; the names follow Hugging Face's config.json where one exists."""

    model_type: str = "bert"  # bert | roberta | distilbert | mpnet
    vocab_size: int = 30522  # V
    hidden_size: int = 384  # D
    num_layers: int = 6  # transformer blocks
    num_heads: int = 12  # H; D must divide by it
    intermediate_size: int = 1536  # F, feed-forward width
    max_position_embeddings: int = 512  # rows of the position table (offset included)
    type_vocab_size: int = 2  # token-type rows; 0 = no token-type embeddings
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon (RoBERTa/MPNet 1e-5)
    dropout_rate: float = 0.1  # hidden-state dropout when training
    attention_dropout_rate: float = 0.1  # attention-probability dropout when training
    pad_token_id: int = 0  # padding id; RoBERTa's position ids start after it
    position_offset: int = 0  # first position id (see position_offset())
    relative_attention_num_buckets: int = 0  # MPNet's relative bias buckets; 0 = none

    def validate(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not one of {MODEL_TYPES}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )


# What each family fixes when config.json does not say (or, in transformers, whatever it says):
# token-type rows, LayerNorm epsilon, the padding id, MPNet's relative-position buckets. Random
# init (main.build_model) and import (convert.config_from_hf) both build configs from here.
FAMILY_DEFAULTS = {
    "bert": dict(
        type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0, relative_attention_num_buckets=0
    ),
    "roberta": dict(
        type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, relative_attention_num_buckets=0
    ),
    "distilbert": dict(
        type_vocab_size=0, layer_norm_eps=1e-12, pad_token_id=0, relative_attention_num_buckets=0
    ),
    "mpnet": dict(
        type_vocab_size=0, layer_norm_eps=1e-5, pad_token_id=1, relative_attention_num_buckets=32
    ),
}


def position_offset(model_type: str, pad_token_id: int) -> int:
    """The first position id of a family, as transformers computes it.

    BERT and DistilBERT count from 0; RoBERTa's positions start after its padding id; MPNet's at
    2, because transformers' MPNetEmbeddings fixes its padding_idx at 1 whatever config.json says.
    """
    return {"bert": 0, "distilbert": 0, "roberta": pad_token_id + 1, "mpnet": 2}[model_type]


def family_config(model_type: str, **fields) -> EncoderConfig:
    """An EncoderConfig of `model_type`: the family's defaults for every field not given, and the
    position offset that follows from the padding id."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not one of {MODEL_TYPES}")
    kw = {**FAMILY_DEFAULTS[model_type], **fields}
    kw.setdefault("position_offset", position_offset(model_type, kw["pad_token_id"]))
    return EncoderConfig(model_type=model_type, **kw)


def _layer_norm(x: jax.Array, eps: float, name: str) -> jax.Array:
    # LayerNorm statistics in float32 even for bfloat16 activations.
    y = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, eps=eps, name=name)(
        x.astype(jnp.float32)
    )
    return y.astype(x.dtype)


def threefry2x32(k0, k1, x0, x1):
    """Threefry-2x32, 20 rounds (Salmon et al. 2011, the hash behind `jax.random`), unrolled.

    `jax.random` lowers this hash on CPU as a rolled 5-step loop that streams every round through
    memory; unrolled in jnp ops, XLA fuses it into the elementwise kernel that uses the mask. For
    MiniLM-L6 training on a 2-core CPU the rolled form was ~14% of the step (mostly the
    [R, H, L, L] attention-dropout masks); unrolled, the step ran about 12% faster.
    """
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in rotations[i % 2]:
            x0 = x0 + x1
            x1 = jax.lax.shift_left(x1, np.uint32(r)) | jax.lax.shift_right_logical(
                x1, np.uint32(32 - r)
            )
            x1 = x0 ^ x1
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def dropout(key: jax.Array, rate: float, x: jax.Array) -> jax.Array:
    """`hk.dropout` semantics (zero with probability `rate`, scale the rest by 1 / (1 - rate)).

    The mask is Threefry of (flat index within the row, row index) under a key drawn from `key`,
    so it is a pure function of the key and the shape, as GradCache's replay needs.
    """
    k0, k1 = jax.random.bits(key, (2,), jnp.uint32)
    within = jax.lax.iota(jnp.uint32, math.prod(x.shape[1:])).reshape(x.shape[1:])
    rows = jax.lax.broadcasted_iota(jnp.uint32, x.shape, 0)
    bits, _ = threefry2x32(k0, k1, jnp.broadcast_to(within, x.shape), rows)
    keep = bits >= np.uint32(round(rate * 2**32))
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


def _dropout(x: jax.Array, rate: float, is_training: bool) -> jax.Array:
    if is_training and rate > 0:
        return dropout(hk.next_rng_key(), rate, x)
    return x


def positions_from_segments(segments_BxL: jax.Array) -> jax.Array:
    """Position of every token inside its own text: restarts at 0 where the segment id changes."""
    length = segments_BxL.shape[1]
    index_L = jnp.arange(length, dtype=jnp.int32)
    starts_BxL = jnp.concatenate(
        [
            jnp.ones_like(segments_BxL[:, :1], dtype=bool),
            segments_BxL[:, 1:] != segments_BxL[:, :-1],
        ],
        axis=1,
    )
    start_index_BxL = jax.lax.cummax(jnp.where(starts_BxL, index_L[None, :], 0), axis=1)
    return index_L[None, :] - start_index_BxL


def relative_position_buckets(relative_LxL: jax.Array, num_buckets: int, max_distance: int = 128):
    """MPNet/T5 bidirectional log-spaced buckets (transformers' MPNetAttention maths)."""
    num_buckets //= 2
    n = -relative_LxL
    ret = (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # log of 0 for the small distances is masked by `is_small` below.
    safe_n = jnp.maximum(n, 1).astype(jnp.float32)
    val_if_large = max_exact + (
        jnp.log(safe_n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).astype(jnp.int32)
    val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
    return ret + jnp.where(is_small, n, val_if_large)


def attention(
    q_BxLxHxK: jax.Array,
    k_BxLxHxK: jax.Array,
    v_BxLxHxK: jax.Array,
    bias_Bx1xLxL: jax.Array,
    dropout_rate: float,
    is_training: bool,
) -> jax.Array:
    """Scaled dot-product attention with an additive float32 bias -> context [B, L, H, K].

    softmax(s) @ v is computed as (exp(s - max s) @ v) / sum exp(s - max s), on head-major
    [B, H, L, K] operands: the normalisation divides the [B, H, L, K] context instead of the
    [B, H, L, L] probabilities, and XLA:CPU fuses the exponential into the second product. On
    the 2-core CPU one [64 x 12 x 256 x 256] attention took 0.7 s this way against 2.6 s for the
    softmax-then-product form on [B, L, H, K] operands (forward; about 30% less forward+backward),
    equal to float32 rounding (`python -m benchmarks.attention_op`, docs/benchmarks.md).
    Dropout on the unnormalised weights is dropout on the probabilities: the mask commutes with
    the division by the (undropped) sum.
    """
    dtype = q_BxLxHxK.dtype
    # Scaling q (4x smaller than the scores for L=128) saves a full-size pass.
    q_BxLxHxK = q_BxLxHxK * jnp.asarray(1 / math.sqrt(q_BxLxHxK.shape[-1]), dtype)
    q_BxHxLxK, k_BxHxLxK, v_BxHxLxK = (
        jnp.transpose(x, (0, 2, 1, 3)) for x in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
    )
    scores_BxHxLxL = jnp.einsum("bhqk,bhtk->bhqt", q_BxHxLxK, k_BxHxLxK).astype(jnp.float32)
    scores_BxHxLxL = scores_BxHxLxL + bias_Bx1xLxL
    # jax.nn.softmax's own shift: the maximum cancels out of the value and of the gradient.
    top_BxHxLx1 = jax.lax.stop_gradient(scores_BxHxLxL.max(axis=-1, keepdims=True))
    weights_BxHxLxL = jnp.exp(scores_BxHxLxL - top_BxHxLx1)
    total_BxHxLx1 = weights_BxHxLxL.sum(axis=-1, keepdims=True)
    weights_BxHxLxL = _dropout(weights_BxHxLxL.astype(dtype), dropout_rate, is_training)
    ctx_BxHxLxK = jnp.einsum("bhqt,bhtk->bhqk", weights_BxHxLxL, v_BxHxLxK)
    ctx_BxHxLxK = (ctx_BxHxLxK.astype(jnp.float32) / total_BxHxLx1).astype(dtype)
    return jnp.transpose(ctx_BxHxLxK, (0, 2, 1, 3))


@dataclasses.dataclass
class Encoder(hk.Module):
    """Token ids -> contextual token states, for any family in MODEL_TYPES."""

    config: EncoderConfig  # architecture
    name: str | None = "encoder"  # Haiku module name; the HF name table assumes "encoder"

    def __call__(
        self, ids_BxL: jax.Array, segments_BxL: jax.Array, is_training: bool = False
    ) -> jax.Array:
        cfg = self.config
        d, h = cfg.hidden_size, cfg.num_heads
        k = d // h
        batch, length = ids_BxL.shape

        word = hk.Embed(cfg.vocab_size, d, name="word_embeddings")
        x_BxLxD = word(ids_BxL)
        dtype = x_BxLxD.dtype  # the compute dtype follows the (possibly cast) parameters
        pos_BxL = positions_from_segments(segments_BxL) + cfg.position_offset
        x_BxLxD += hk.Embed(cfg.max_position_embeddings, d, name="position_embeddings")(pos_BxL)
        if cfg.type_vocab_size:
            # Single-sentence inputs: token type 0 everywhere, as sentence-transformers feeds them.
            table = hk.get_parameter(
                "token_type_embeddings",
                [cfg.type_vocab_size, d],
                dtype,
                init=hk.initializers.TruncatedNormal(0.02),
            )
            x_BxLxD += table[0]
        x_BxLxD = _layer_norm(x_BxLxD, cfg.layer_norm_eps, "embeddings_layer_norm")
        x_BxLxD = _dropout(x_BxLxD, cfg.dropout_rate, is_training)

        # Token q may attend token k only inside the same (non-padding) text.
        allowed_BxLxL = (segments_BxL[:, :, None] == segments_BxL[:, None, :]) & (
            segments_BxL[:, None, :] > 0
        )
        bias_Bx1xLxL = jnp.where(allowed_BxLxL, 0.0, jnp.finfo(jnp.float32).min)[:, None]
        if cfg.relative_attention_num_buckets:
            index_L = jnp.arange(length)
            buckets_LxL = relative_position_buckets(
                index_L[None, :] - index_L[:, None], cfg.relative_attention_num_buckets
            )
            rel = hk.Embed(cfg.relative_attention_num_buckets, h, name="relative_attention_bias")
            rel_HxLxL = jnp.transpose(rel(buckets_LxL), (2, 0, 1)).astype(jnp.float32)
            bias_Bx1xLxL = bias_Bx1xLxL + rel_HxLxL[None]

        init = hk.initializers.TruncatedNormal(0.02)
        for i in range(cfg.num_layers):
            with hk.name_scope(f"layer_{i}"):
                q = hk.Linear(d, w_init=init, name="query")(x_BxLxD).reshape(batch, length, h, k)
                kk = hk.Linear(d, w_init=init, name="key")(x_BxLxD).reshape(batch, length, h, k)
                v = hk.Linear(d, w_init=init, name="value")(x_BxLxD).reshape(batch, length, h, k)
                ctx_BxLxHxK = attention(
                    q, kk, v, bias_Bx1xLxL, cfg.attention_dropout_rate, is_training
                )
                attn = hk.Linear(d, w_init=init, name="attention_output")(
                    ctx_BxLxHxK.reshape(batch, length, d)
                )
                attn = _dropout(attn, cfg.dropout_rate, is_training)
                x_BxLxD = _layer_norm(x_BxLxD + attn, cfg.layer_norm_eps, "attention_layer_norm")
                f = hk.Linear(cfg.intermediate_size, w_init=init, name="intermediate")(x_BxLxD)
                f = jax.nn.gelu(f, approximate=False)
                f = hk.Linear(d, w_init=init, name="output")(f)
                f = _dropout(f, cfg.dropout_rate, is_training)
                x_BxLxD = _layer_norm(x_BxLxD + f, cfg.layer_norm_eps, "output_layer_norm")
        return x_BxLxD


def pool(
    hidden_BxLxD: jax.Array, segments_BxL: jax.Array, num_segments: int, mode: str
) -> jax.Array:
    """One vector per text (segment 1..S of each row), in float32; empty segments give zeros."""
    if mode not in POOLING_MODES:
        raise ValueError(f"pooling {mode!r} is not one of {POOLING_MODES}")
    hidden_BxLxD = hidden_BxLxD.astype(jnp.float32)
    seg_S = jnp.arange(1, num_segments + 1, dtype=segments_BxL.dtype)
    member_BxSxL = segments_BxL[:, None, :] == seg_S[None, :, None]
    count_BxS = member_BxSxL.sum(-1)
    if mode == "mean":
        # sentence-transformers: sum over the mask / clamp(count, 1e-9).
        summed = jnp.einsum("bsl,bld->bsd", member_BxSxL.astype(jnp.float32), hidden_BxLxD)
        return summed / jnp.maximum(count_BxS, 1e-9)[..., None].astype(jnp.float32)
    if mode == "cls":
        first_BxS = jnp.argmax(member_BxSxL, axis=-1)  # first token of each text
        out = jnp.take_along_axis(hidden_BxLxD, first_BxS[..., None], axis=1)
        return jnp.where(count_BxS[..., None] > 0, out, 0.0)
    # max: sentence-transformers sets padding to -1e9 before the max.
    masked = jnp.where(member_BxSxL[..., None], hidden_BxLxD[:, None], -1e9)
    return jnp.where(count_BxS[..., None] > 0, masked.max(axis=2), 0.0)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """torch.nn.functional.normalize: x / max(||x||, eps).

    Written with rsqrt of a clamped square so that the gradient of an all-zero row (an empty
    segment, an absent negative) is finite rather than NaN.
    """
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def make_embed_fn(
    config: EncoderConfig, pooling: str = "mean", normalize: bool = True, num_segments: int = 1
) -> hk.Transformed:
    """`apply(params, rng, ids_BxL, segments_BxL, is_training) -> emb_BxSxD` (float32).

    Pass `rng=None` when not training. For compute in bfloat16, call with `cast_params(params)`.
    """
    config.validate()
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling {pooling!r} is not one of {POOLING_MODES}")

    def fn(ids_BxL, segments_BxL, is_training=False):
        hidden_BxLxD = Encoder(config)(ids_BxL, segments_BxL, is_training)
        emb_BxSxD = pool(hidden_BxLxD, segments_BxL, num_segments, pooling)
        return l2_normalize(emb_BxSxD) if normalize else emb_BxSxD

    return hk.transform(fn)


def cast_params(params: hk.Params, dtype: str | jnp.dtype) -> hk.Params:
    """Parameters in the compute dtype; the float32 master copy stays with the optimizer."""
    dtype = jnp.dtype(dtype)
    return jax.tree.map(
        lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params
    )


def init_params(config: EncoderConfig, seed: int = 0) -> hk.Params:
    """Random float32 parameters (BERT's truncated normal 0.02, LayerNorm 1/0, biases 0)."""
    fn = make_embed_fn(config)
    ids = jnp.zeros((1, 8), jnp.int32)
    # Jitted: op by op, the first init of a shape took 7.5 s on CPU (tiny model), jitted ~1 s.
    init = jax.jit(fn.init, static_argnums=3)
    return init(jax.random.PRNGKey(seed), ids, jnp.ones_like(ids), False)


# Hugging Face tensor names. Haiku Linear `w` is [in, out], HF Linear `weight` is [out, in].
_LINEAR = {"w": "weight", "b": "bias"}
_NORM = {"scale": "weight", "offset": "bias"}
_EMBED = {"embeddings": "weight"}

_FAMILY_NAMES = {
    # family: (embeddings prefix, layer prefix, per-layer module names, embedding LayerNorm)
    "bert": {
        "word": "embeddings.word_embeddings",
        "position": "embeddings.position_embeddings",
        "type": "embeddings.token_type_embeddings",
        "embed_norm": "embeddings.LayerNorm",
        "layer": "encoder.layer.{i}",
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attention_output": "attention.output.dense",
        "attention_layer_norm": "attention.output.LayerNorm",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
        "output_layer_norm": "output.LayerNorm",
        "relative": None,
    },
    "distilbert": {
        "word": "embeddings.word_embeddings",
        "position": "embeddings.position_embeddings",
        "type": None,
        "embed_norm": "embeddings.LayerNorm",
        "layer": "transformer.layer.{i}",
        "query": "attention.q_lin",
        "key": "attention.k_lin",
        "value": "attention.v_lin",
        "attention_output": "attention.out_lin",
        "attention_layer_norm": "sa_layer_norm",
        "intermediate": "ffn.lin1",
        "output": "ffn.lin2",
        "output_layer_norm": "output_layer_norm",
        "relative": None,
    },
    "mpnet": {
        "word": "embeddings.word_embeddings",
        "position": "embeddings.position_embeddings",
        "type": None,
        "embed_norm": "embeddings.LayerNorm",
        "layer": "encoder.layer.{i}",
        "query": "attention.attn.q",
        "key": "attention.attn.k",
        "value": "attention.attn.v",
        "attention_output": "attention.attn.o",
        "attention_layer_norm": "attention.LayerNorm",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
        "output_layer_norm": "output.LayerNorm",
        "relative": "encoder.relative_attention_bias",
    },
}
_FAMILY_NAMES["roberta"] = _FAMILY_NAMES["bert"]


def hf_name_table(config: EncoderConfig) -> dict[tuple[str, str], tuple[str, bool]]:
    """(Haiku module, param) -> (HF tensor name without model prefix, transpose?)."""
    names = _FAMILY_NAMES[config.model_type]
    table: dict[tuple[str, str], tuple[str, bool]] = {}

    def add(module, hf_prefix, kind, transpose=False):
        for ours, theirs in kind.items():
            table[(module, ours)] = (f"{hf_prefix}.{theirs}", transpose)

    add("encoder/word_embeddings", names["word"], _EMBED)
    add("encoder/position_embeddings", names["position"], _EMBED)
    if config.type_vocab_size:
        table[("encoder", "token_type_embeddings")] = (f"{names['type']}.weight", False)
    add("encoder/embeddings_layer_norm", names["embed_norm"], _NORM)
    if config.relative_attention_num_buckets:
        add("encoder/relative_attention_bias", names["relative"], _EMBED)
    for i in range(config.num_layers):
        layer = names["layer"].format(i=i)
        for ours in ("query", "key", "value", "attention_output", "intermediate", "output"):
            add(f"encoder/layer_{i}/{ours}", f"{layer}.{names[ours]}", _LINEAR, transpose=True)
        for ours in ("attention_layer_norm", "output_layer_norm"):
            add(f"encoder/layer_{i}/{ours}", f"{layer}.{names[ours]}", _NORM)
    return table


def params_from_hf(
    tensors: Mapping[str, np.ndarray], config: EncoderConfig, source: str = "model.safetensors"
) -> hk.Params:
    """HF tensors (names without model prefix) -> Haiku params, checking every shape."""
    expected = jax.eval_shape(lambda: init_params(config))
    params: dict[str, dict[str, np.ndarray]] = {}
    for (module, name), (hf_name, transpose) in hf_name_table(config).items():
        if hf_name not in tensors:
            raise ValueError(f"{source}: tensor {hf_name!r} is missing")
        value = np.asarray(tensors[hf_name])
        value = value.T if transpose else value
        want = tuple(expected[module][name].shape)
        if value.shape != want:
            raise ValueError(
                f"{source}: tensor {hf_name!r} has shape {tuple(tensors[hf_name].shape)}, "
                f"the config implies {want[::-1] if transpose else want}"
            )
        params.setdefault(module, {})[name] = value.astype(np.float32)
    return params


def params_to_hf(params: hk.Params, config: EncoderConfig) -> dict[str, np.ndarray]:
    """Haiku params -> HF tensors (names without model prefix), float32, contiguous."""
    out = {}
    for (module, name), (hf_name, transpose) in hf_name_table(config).items():
        value = np.asarray(params[module][name], dtype=np.float32)
        out[hf_name] = np.ascontiguousarray(value.T if transpose else value)
    return out
