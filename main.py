"""Contrastive training of sentence encoders: the whole run, top to bottom.

    python main.py --config=configs/base.py[:ARGS] --workdir=DIR [--config.FIELD=VALUE ...]

config -> mesh -> state -> jitted, shard_mapped train step -> loop (log, evaluate, checkpoint)
-> export. Running the same command again resumes from DIR's latest checkpoint. Every
hyper-parameter is a config field (configs/base.py); flags only pick the config and the workdir,
and, for a multi-host run (the same command in every process), the process topology:
--coordinator_address=HOST:PORT --num_processes=N --process_id=I, or --distributed where JAX
finds them itself (Cloud TPU, Slurm, Open MPI). See docs/multihost.md.
Shape letters: B rows (examples) of the global batch, C columns (anchor, positive, negatives),
L tokens, D embedding width.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import haiku as hk
import jax
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

import checkpoint
import convert
import data as data_lib
import distributed
import evaluate
import loss as loss_lib
import model as model_lib
import packing

AXIS = "data"
# Fault injection for tests: SIGKILL this process right after this step (0 = never), or send
# it SENTEMB_KILL_SIGNAL instead (SIGSTOP: a process that hangs rather than dies).
_KILL_AT_STEP = int(os.environ.get("SENTEMB_KILL_AT_STEP", "0"))
_KILL_SIGNAL = signal.Signals[os.environ.get("SENTEMB_KILL_SIGNAL", "SIGKILL")]


class TrainState(NamedTuple):
    params: hk.Params
    opt_state: optax.OptState
    rng: jax.Array
    step: jax.Array


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------- config checks


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Every error names the config field, before anything is compiled."""

    def bad(field: str, why: str):
        raise ValueError(f"config field {field}: {why}")

    if config.batch_size <= 0 or config.batch_size % num_devices:
        bad(
            "batch_size",
            f"{config.batch_size} is not a positive multiple of the {num_devices} devices",
        )
    if config.total_steps <= 0:
        bad("total_steps", "must be > 0")
    if not 0 <= config.warmup_steps <= config.total_steps:
        bad("warmup_steps", f"{config.warmup_steps} not in [0, total_steps]")
    if config.lr <= 0:
        bad("lr", "must be > 0")
    for field in ("log_every", "checkpoint_every", "keep_checkpoints"):
        if config[field] <= 0:
            bad(field, "must be > 0")
    if config.eval_every < 0:
        bad("eval_every", "must be >= 0")
    if config.init_from and not os.path.isdir(config.init_from):
        bad("init_from", f"{config.init_from!r} is not a folder (an HF/ST model folder, or '')")
    if not config.init_from and not os.path.exists(
        os.path.join(config.model.tokenizer, "tokenizer.json")
    ):
        bad("model.tokenizer", f"no tokenizer.json in {config.model.tokenizer!r} (random init)")
    if config.init_from == "" and config.model.model_type not in model_lib.MODEL_TYPES:
        bad("model.model_type", f"{config.model.model_type!r} not in {model_lib.MODEL_TYPES}")
    if config.model.pooling not in model_lib.POOLING_MODES:
        bad("model.pooling", f"{config.model.pooling!r} not in {model_lib.POOLING_MODES}")
    if config.model.dtype not in model_lib.DTYPES:
        bad("model.dtype", f"{config.model.dtype!r} not in {model_lib.DTYPES}")
    if not 0 <= config.model.dropout_rate < 1:
        bad("model.dropout_rate", "must lie in [0, 1)")
    if config.loss.similarity not in loss_lib.SIMILARITIES:
        bad("loss.similarity", f"{config.loss.similarity!r} not in {loss_lib.SIMILARITIES}")
    if not config.loss.scale > 0:
        bad("loss.scale", "must be > 0")
    local = config.batch_size // num_devices
    chunk = config.loss.cache_chunk_size
    if chunk < 0 or (chunk and local % chunk):
        bad("loss.cache_chunk_size", f"{chunk} does not divide the per-device batch {local}")
    d = config.data
    if d.config_file and not os.path.exists(d.config_file):
        bad("data.config_file", f"{d.config_file!r} does not exist")
    if not d.config_file and not os.path.isdir(d.dir):
        bad("data.dir", f"{d.dir!r} is not a folder")
    if d.max_seq_len < 2:
        bad("data.max_seq_len", "must be >= 2")
    if any(not 0 < b <= d.max_seq_len for b in d.bucket_lengths):
        bad("data.bucket_lengths", f"{tuple(d.bucket_lengths)} must lie in [1, max_seq_len]")
    if d.max_negatives < 0:
        bad("data.max_negatives", "must be >= 0")
    if not 1 <= d.datasets_per_batch <= config.batch_size:
        bad("data.datasets_per_batch", "must lie in [1, batch_size]")
    for path in config.eval.sts_files:
        if not os.path.exists(path):
            bad("eval.sts_files", f"{path!r} does not exist")
    for path in config.eval.retrieval_dirs:
        if not os.path.exists(os.path.join(path, "corpus.jsonl.gz")):
            bad("eval.retrieval_dirs", f"{path!r} has no corpus.jsonl.gz (BEIR layout)")


# ----------------------------------------------------------------------------- model


def build_model(config: ml_collections.ConfigDict) -> convert.LoadedModel:
    """The model to train: imported from init_from, or randomly initialised."""
    dropout = config.model.dropout_rate
    if config.init_from:
        m = convert.load_model(config.init_from)
        m.config = m.config.__class__(
            **{**m.config.__dict__, "dropout_rate": dropout, "attention_dropout_rate": dropout}
        )
    else:
        mc = config.model
        tok_dir = mc.tokenizer
        tokenizer = convert.load_tokenizer(tok_dir, config.data.max_seq_len)
        family = mc.model_type
        pad = convert.pad_id_of(tokenizer, model_lib.FAMILY_DEFAULTS[family]["pad_token_id"])
        cfg = model_lib.family_config(  # token types, LayerNorm eps, position offset: the family's
            family,
            vocab_size=tokenizer.get_vocab_size(),
            hidden_size=mc.hidden_size,
            num_layers=mc.num_layers,
            num_heads=mc.num_heads,
            intermediate_size=mc.intermediate_size,
            max_position_embeddings=mc.max_position_embeddings,
            dropout_rate=dropout,
            attention_dropout_rate=dropout,
            pad_token_id=pad,
        )
        files = {}
        for name in convert.TOKENIZER_FILES:
            path = os.path.join(tok_dir, name)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    files[name] = f.read()
        m = convert.LoadedModel(
            config=cfg,
            params=jax.device_get(model_lib.init_params(cfg, config.seed)),
            tokenizer=tokenizer,
            pooling=config.model.pooling,
            normalize=config.model.normalize,
            max_seq_length=config.data.max_seq_len,
            hf_config=convert.hf_config_for(cfg),
            tokenizer_files=files,
            extra_tensors={},
        )
    m.pooling, m.normalize = config.model.pooling, config.model.normalize
    m.max_seq_length = min(m.max_seq_length, config.data.max_seq_len)
    m.tokenizer.enable_truncation(max_length=m.max_seq_length, strategy="longest_first")
    return m


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


# ----------------------------------------------------------------------------- train step


def make_train_step(
    config: ml_collections.ConfigDict, m: convert.LoadedModel, mesh: jax.sharding.Mesh, optimizer
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """One jitted step: embed, loss inside shard_map (negatives gathered), AdamW update.

    The batch holds rows of tokens (packed or one text per row, see packing.py) and, for every
    example b and column c, the row and segment where its text was placed.
    """
    num_segments = config.data.max_segments if config.data.packing else 1
    embed = m.embed_fn(num_segments)
    lc, dtype = config.loss, config.model.dtype

    def embed_fn(params, rows, rng):
        return embed.apply(
            model_lib.cast_params(params, dtype),
            rng,
            rows["ids_GRxL"],
            rows["segments_GRxL"],
            True,
        )  # emb_RxSxD: one vector per segment of each local row

    def loss_fn(batch, emb_RxSxD):
        emb_BxCxD = emb_RxSxD[batch["row_BxC"], batch["slot_BxC"]]
        negatives = emb_BxCxD[:, 2:] if emb_BxCxD.shape[1] > 2 else None
        return loss_lib.mnrl_loss(
            emb_BxCxD[:, 0],
            emb_BxCxD[:, 1],
            negatives,
            batch["valid_BxC"][:, 2:] if negatives is not None else None,
            scale=lc.scale,
            similarity=lc.similarity,
            symmetric=lc.symmetric,
            axis_name=AXIS,
            gather=lc.gather,
        )

    def sharded_grads(params, rng, step, batch):
        # Dropout keys differ per step and per device.
        rng = jax.random.fold_in(jax.random.fold_in(rng, step), jax.lax.axis_index(AXIS))
        rows = {"ids_GRxL": batch["ids_GRxL"], "segments_GRxL": batch["segments_GRxL"]}
        (loss, metrics), grads = loss_lib.embedding_value_and_grad(
            embed_fn,
            lambda emb: loss_fn(batch, emb),
            params,
            rows,
            rng,
            cache_chunk_size=lc.cache_chunk_size or None,
            axis_name=AXIS,
        )
        return loss, metrics, grads

    grads_fn = jax.shard_map(
        sharded_grads,
        mesh=mesh,
        in_specs=(P(), P(), P(), P(AXIS)),
        out_specs=(P(), P(), P()),
    )

    def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        loss, metrics, grads = grads_fn(state.params, state.rng, state.step, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # The step number travels in the metrics: state.step itself is donated to the next step.
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), step=state.step + 1)
        return TrainState(params, opt_state, state.rng, state.step + 1), metrics

    return jax.jit(step_fn, donate_argnums=(0,))


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
        )
        return packing.device_slice(arrays, len(mesh_devices), local[0], len(local))

    return featurize


# ----------------------------------------------------------------------------- logging


class MetricsLog:
    """Console lines and DIR/metrics.jsonl (appended: a resumed run continues the file)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if "loss" in record:
            print(
                f"step {record['step']:>7} | loss {record['loss']:.4f} | acc "
                f"{record['accuracy']:.3f} | lr {record['lr']:.2e} | "
                f"{record['pairs_per_s']:.0f} pairs/s | {record['tokens_per_s']:.0f} tok/s | "
                f"pad eff {record['padding_efficiency']:.2f} | "
                f"{record['elapsed_s']:.0f}s elapsed, eta {record['eta_s']:.0f}s",
                flush=True,
            )
        else:
            print(f"step {record['step']:>7} | " + json.dumps(record), flush=True)


def run_evaluation(config, m, params, step: int, log: MetricsLog) -> list[dict]:
    if jax.process_index() != 0:
        return []  # process 0 evaluates (params are replicated); the others go on
    results = []
    host_params = jax.device_get(params)
    for path in config.eval.sts_files:
        r = evaluate.evaluate_sts(m, path, params=host_params, batch_size=config.eval.batch_size)
        results.append(r)
        log.write({"step": step, "eval": r})
    for folder in config.eval.retrieval_dirs:
        r = evaluate.evaluate_retrieval(
            m, folder, params=host_params, batch_size=config.eval.batch_size
        )
        results.append(r)
        log.write({"step": step, "eval": r})
    return results


# ----------------------------------------------------------------------------- the run


def train(
    config: ml_collections.ConfigDict, workdir: str, devices: Sequence[jax.Device] | None = None
) -> dict[str, Any]:
    """Train (or resume) in `workdir`; returns a summary with the final metrics and evaluations.

    `devices` defaults to all devices (of all processes); tests pass a subset.
    """
    devices = list(devices or jax.devices())
    validate(config, len(devices))
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    log = MetricsLog(workdir, enabled=is_main)

    m = build_model(config)
    mesh = jax.make_mesh((len(devices),), (AXIS,), devices=devices)
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(AXIS))
    optimizer, schedule = make_optimizer(config)

    params = m.params
    fresh = TrainState(params, optimizer.init(params), jax.random.key(config.seed), np.int32(0))
    restored = checkpoint.restore(workdir, m, fresh)
    loader_state = None
    if restored is not None:
        fresh, loader_state = restored
        print(f"resuming from step {int(fresh.step)} in {workdir}", flush=True)
    start_step = int(fresh.step)
    if jax.process_count() > 1:  # every process reads the checkpoint itself
        multihost_utils.assert_equal(
            start_step,
            f"processes would resume from different steps: {workdir} must be shared storage",
        )
    state = distributed.replicate(fresh, replicated)

    # Every process composes the whole global batch (see make_featurizer).
    loader = data_lib.MixtureLoader.from_config(
        config.data,
        batch_size=config.batch_size,
        seed=config.seed,
        workdir=workdir,
        state=loader_state,
    )
    featurize = make_featurizer(config, m, mesh)

    train_step = make_train_step(config, m, mesh, optimizer)
    evals: list[dict] = []
    evals_before: list[dict] = []
    if config.eval_before and start_step == 0:
        evals_before = run_evaluation(config, m, state.params, 0, log)

    pending: list[dict] = []  # device metrics not yet pulled to the host
    window = {"pairs": 0, "tokens": 0, "slots": 0, "t0": time.time(), "steps": 0}
    run_t0 = time.time()
    last_record: dict[str, Any] = {}
    step = start_step
    latest_loader_state = loader_state

    def flush_metrics() -> None:
        nonlocal last_record
        if not pending:
            return
        host = jax.device_get(pending)
        for rec in host:
            if not np.isfinite(rec["loss"]):
                raise NonFiniteLossError(
                    f"loss is {float(rec['loss'])} at step {int(rec['step'])}; stopping. The last "
                    f"good checkpoint in {workdir} is kept."
                )
        rec = host[-1]
        elapsed = time.time() - window["t0"]
        rate = window["steps"] / max(elapsed, 1e-9)
        last_record = {
            "step": int(rec["step"]),
            "loss": float(rec["loss"]),
            "accuracy": float(rec["accuracy"]),
            "grad_norm": float(rec["grad_norm"]),
            "lr": float(schedule(int(rec["step"]) - 1)),
            "pairs_per_s": window["pairs"] / max(elapsed, 1e-9),
            "tokens_per_s": window["tokens"] / max(elapsed, 1e-9),
            "padding_efficiency": window["tokens"] / max(window["slots"], 1),
            "elapsed_s": time.time() - run_t0,
            "eta_s": (config.total_steps - int(rec["step"])) / max(rate, 1e-9),
        }
        log.write(last_record)
        pending.clear()
        window.update(pairs=0, tokens=0, slots=0, t0=time.time(), steps=0)

    with (
        distributed.StepWatchdog(config.step_timeout_s, workdir) as watchdog,
        data_lib.Prefetcher(loader, featurize, size=config.data.prefetch) as batches,
    ):
        while step < config.total_steps:
            arrays, latest_loader_state = next(batches)
            segments = arrays["segments_GRxL"]
            window["pairs"] += config.batch_size
            window["tokens"] += int((segments > 0).sum()) * jax.process_count()  # estimate
            window["slots"] += int(segments.size) * jax.process_count()
            window["steps"] += 1
            batch = {
                k: jax.make_array_from_process_local_data(batch_sharding, v)
                for k, v in arrays.items()
            }
            state, metrics = train_step(state, batch)
            step += 1
            watchdog.dispatched(step, metrics["loss"])
            if step == _KILL_AT_STEP:  # fault injection for the kill -9 resume test
                jax.block_until_ready(state)
                os.kill(os.getpid(), _KILL_SIGNAL)
            pending.append(metrics)
            if step % config.log_every == 0 or step == config.total_steps:
                flush_metrics()
            if step % config.checkpoint_every == 0 or step == config.total_steps:
                flush_metrics()  # never checkpoint params after a non-finite loss
                if is_main:
                    checkpoint.save(workdir, m, state, latest_loader_state, config.keep_checkpoints)
            if (config.eval_every and step % config.eval_every == 0) or step == config.total_steps:
                evals = run_evaluation(config, m, state.params, step, log)

    export_dir = os.path.join(workdir, "export")
    if is_main:
        convert.export_model(m, export_dir, params=jax.device_get(state.params))
        print(f"exported the final model to {export_dir}", flush=True)
    return {
        "step": step,
        "last": last_record,
        "evals": evals,
        "evals_before": evals_before,
        "export": export_dir,
        "loader": loader.stats(),
        "params": jax.device_get(state.params),
    }


def main(argv: Sequence[str]) -> None:
    if not flags.FLAGS["verbosity"].present:  # JAX's INFO lines (backend probe) on request
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    distributed.initialize(f.coordinator_address, f.num_processes, f.process_id, auto=f.distributed)
    config = f.config
    print(config, flush=True)
    if config.compilation_cache_dir:  # before the first compilation; train() callers choose own
        cache = os.path.join(f.workdir, os.path.expanduser(config.compilation_cache_dir))
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        summary = train(config, f.workdir)
    except NonFiniteLossError as e:
        sys.exit(f"error: {e}")
    except Exception as e:
        if jax.process_count() == 1:
            raise
        logging.exception("training failed")
        print(
            f"error: process {jax.process_index()} of {jax.process_count()} failed ({e}); if "
            "another process died, run every process again to resume from the latest "
            f"checkpoint in {f.workdir}.",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)  # a normal exit would wait in jax.distributed's shutdown for dead peers
    before = {r["task"]: r["score"] for r in summary["evals_before"]}
    for r in summary["evals"]:
        was = f"{before[r['task']]:.2f} -> " if r["task"] in before else ""
        print(f"{r['metric']} {os.path.relpath(r['task'])}: {was}{r['score']:.2f}", flush=True)
    print(json.dumps({"final_step": summary["step"], "evals": summary["evals"]}), flush=True)


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/base.py:demo")
    flags.DEFINE_string("workdir", None, "run folder: checkpoints, metrics.jsonl, export/")
    # Multi-host only (docs/multihost.md); else JAX_COORDINATOR_ADDRESS etc.
    flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0's coordinator")
    flags.DEFINE_integer("num_processes", None, "processes in the run (one per host)")
    flags.DEFINE_integer("process_id", None, "this process's index in [0, num_processes)")
    flags.DEFINE_bool("distributed", False, "join JAX's runtime, topology found by JAX (TPU...)")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
