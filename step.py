"""The train step: what it eats (packed rows of a global batch) and what it does (embed, loss
inside shard_map with negatives gathered across devices, AdamW update), jitted.

main.py builds the optimizer, the featurizer and the step here and runs them in its loop;
benchmarks/throughput.py times the same step. Shape letters as in main.py: B examples of the
global batch, C columns (anchor, positive, negatives), R rows, S segments per row, L tokens,
D embedding width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import haiku as hk
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

import convert
import loss as loss_lib
import model as model_lib
import packing

AXIS = "data"


class TrainState(NamedTuple):
    params: hk.Params
    opt_state: optax.OptState
    rng: jax.Array
    step: jax.Array


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, config.lr, max(config.warmup_steps, 1)),
            optax.linear_schedule(config.lr, 0.0, config.total_steps - config.warmup_steps),
        ],
        [config.warmup_steps],
    )
    # No weight decay on biases and LayerNorm parameters (BERT practice, the seed's script too).
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    parts = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip else []
    parts.append(optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask))
    return optax.chain(*parts), schedule


def make_featurizer(
    config: ml_collections.ConfigDict, m: convert.LoadedModel, mesh: jax.sharding.Mesh
) -> Callable[[list], dict[str, np.ndarray]]:
    """Global batch of examples -> this process's arrays (packed rows, see packing.py).

    Every process packs the whole global batch (cheap next to a step), so all processes agree
    on the packed shapes without talking, then keeps its own devices' part.
    """
    mesh_devices = list(mesh.devices.flat)
    local = [i for i, d in enumerate(mesh_devices) if d.process_index == jax.process_index()]
    if local != list(range(local[0], local[0] + len(local))):
        raise RuntimeError(f"this process's devices are not contiguous in the mesh: {local}")
    pad, chunk = m.pad_id, config.loss.cache_chunk_size
    p = config.data.prompts
    prompts = (p.anchor, p.positive) + (p.negatives,) * config.data.max_negatives

    def featurize(examples):
        arrays = packing.featurize(
            examples,
            m.tokenizer,
            num_devices=len(mesh_devices),
            max_seq_len=config.data.max_seq_len,
            max_negatives=config.data.max_negatives,
            pad_id=pad,
            pack=config.data.packing,
            max_segments=config.data.max_segments,
            bucket_lengths=tuple(config.data.bucket_lengths),
            size_multiple=chunk or 1,  # GradCache splits each device's rows into chunks
            prompts=prompts if any(prompts) else (),
        )
        return packing.device_slice(arrays, len(mesh_devices), local[0], len(local))

    return featurize


def make_train_step(
    config: ml_collections.ConfigDict,
    m: convert.LoadedModel,
    mesh: jax.sharding.Mesh,
    optimizer,
    guide: convert.LoadedModel | None = None,
) -> Callable[..., tuple[TrainState, dict]]:
    """One jitted step: embed, loss inside shard_map (negatives gathered), AdamW update.

    The batch holds rows of tokens (packed or one text per row, see packing.py) and, for every
    example b and column c, the row and segment where its text was placed. With a `guide`
    (loss.guide, see main.build_guide) the step is `step(state, batch, guide_params)`: the guide
    embeds the same rows without gradient (in GradCache's chunks when it is on) and the guided
    loss (GISTEmbed) masks the candidates it calls false negatives; its params stay outside the
    state. Without one, the guide's lines trace nothing: the program is the plain MNRL step's.
    """
    num_segments = config.data.max_segments if config.data.packing else 1
    embed = m.embed_fn(num_segments)
    guide_embed = guide.embed_fn(num_segments) if guide is not None else None
    lc, dtype = config.loss, config.model.dtype
    chunk = lc.cache_chunk_size or None

    def embed_fn(params, rows, rng):
        ids, segments = rows["ids_GRxL"], rows["segments_GRxL"]
        # emb_RxSxD: one vector per segment of each local row
        return embed.apply(model_lib.cast_params(params, dtype), rng, ids, segments, True)

    def guide_fn(params, rows):
        ids, segments = rows["ids_GRxL"], rows["segments_GRxL"]
        return guide_embed.apply(model_lib.cast_params(params, dtype), None, ids, segments, False)

    # Every prefix is ranked from the same embeddings; () = the loss itself. Matryoshka composes
    # with the guide: every prefix is masked by the guide's full-width similarities.
    ranking_loss = loss_lib.matryoshka_loss(
        loss_lib.mnrl_loss if guide is None else loss_lib.guided_mnrl_loss,
        lc.matryoshka_dims,
        lc.matryoshka_weights,
    )

    def loss_fn(batch, emb_RxSxD, guide_RxSxD=None):
        emb_BxCxD = emb_RxSxD[batch["row_BxC"], batch["slot_BxC"]]
        has_negatives = emb_BxCxD.shape[1] > 2
        negatives = emb_BxCxD[:, 2:] if has_negatives else None
        guided = {}
        if guide_RxSxD is not None:
            g_BxCxD = guide_RxSxD[batch["row_BxC"], batch["slot_BxC"]]
            guided = dict(
                guide_anchor_BxD=g_BxCxD[:, 0],
                guide_positive_BxD=g_BxCxD[:, 1],
                guide_negative_BxKxD=g_BxCxD[:, 2:] if has_negatives else None,
                margin=lc.guide_margin,
                margin_strategy=lc.guide_margin_strategy,
                contrast_anchors=lc.guide_contrast_anchors,
                contrast_positives=lc.guide_contrast_positives,
            )
        return ranking_loss(
            emb_BxCxD[:, 0],
            emb_BxCxD[:, 1],
            negatives,
            batch["valid_BxC"][:, 2:] if has_negatives else None,
            **guided,
            scale=lc.scale,
            similarity=lc.similarity,
            symmetric=lc.symmetric,
            axis_name=AXIS,
            gather=lc.gather,
        )

    def sharded_grads(params, rng, step, batch, *guide_params):
        # Dropout keys differ per step and per device.
        rng = jax.random.fold_in(jax.random.fold_in(rng, step), jax.lax.axis_index(AXIS))
        rows = {"ids_GRxL": batch["ids_GRxL"], "segments_GRxL": batch["segments_GRxL"]}
        guide_RxSxD = None
        if guide is not None:
            guide_RxSxD = loss_lib.frozen_embeddings(guide_fn, guide_params[0], rows, chunk)
        (loss, metrics), grads = loss_lib.embedding_value_and_grad(
            embed_fn,
            lambda emb: loss_fn(batch, emb, guide_RxSxD),
            params,
            rows,
            rng,
            cache_chunk_size=chunk,
            axis_name=AXIS,
        )
        return loss, metrics, grads

    grads_fn = jax.shard_map(
        sharded_grads,
        mesh=mesh,
        in_specs=(P(), P(), P(), P(AXIS)) + ((P(),) if guide is not None else ()),
        out_specs=(P(), P(), P()),
    )

    def step_fn(state: TrainState, batch: dict, *guide_params) -> tuple[TrainState, dict]:
        loss, metrics, grads = grads_fn(state.params, state.rng, state.step, batch, *guide_params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # The step number travels in the metrics: state.step itself is donated to the next step.
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), step=state.step + 1)
        return TrainState(params, opt_state, state.rng, state.step + 1), metrics

    return jax.jit(step_fn, donate_argnums=(0,))
