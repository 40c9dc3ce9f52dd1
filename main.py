"""Contrastive training of sentence encoders: the whole run, top to bottom.

    python main.py --config=configs/base.py[:ARGS] --workdir=DIR [--config.FIELD=VALUE ...]

config -> mesh -> state -> jitted, shard_mapped train step (step.py) -> loop (log, evaluate,
checkpoint) -> export. Running the same command again resumes from DIR's latest checkpoint. Every
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
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

import checkpoint
import convert
import data as data_lib
import distributed
import evaluate
import model as model_lib
import model_card
import runconfig
import sources
import step as step_lib

# train()'s hook: (event, step, state), after every step ("step") and at each stage of a
# checkpoint save ("save:model", "save:written", ...; checkpoint.save). Tests stop runs there.
OnEvent = Callable[[str, int, Any], None]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


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
        if cfg.max_position_embeddings < config.data.max_seq_len + cfg.position_offset:
            raise runconfig.ConfigError(
                f"config field model.max_position_embeddings: {cfg.max_position_embeddings} "
                f"rows do not hold data.max_seq_len={config.data.max_seq_len} positions "
                f"(+{cfg.position_offset}, where {family}'s positions start)"
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
    width, dims = m.config.hidden_size, tuple(config.loss.matryoshka_dims)
    if any(d > width for d in dims):  # the width is known only now (init_from gives it)
        raise runconfig.ConfigError(
            f"config field loss.matryoshka_dims: {dims} exceed the model's embedding width {width}"
        )
    m.pooling, m.normalize = config.model.pooling, config.model.normalize
    p = config.data.prompts
    if p.anchor or p.positive or p.negatives:  # the prompts it is trained with; else init_from's
        m.prompts, m.default_prompt_name = {"query": p.anchor, "document": p.positive}, None
    m.max_seq_length = min(m.max_seq_length, config.data.max_seq_len)
    m.tokenizer.enable_truncation(max_length=m.max_seq_length, strategy="longest_first")
    return m


def build_guide(config: ml_collections.ConfigDict, m: convert.LoadedModel):
    """The frozen guide of the guided loss (loss.guide), or None: (model, params).

    'init' is the model as it starts (init_from or the random init, also after a resume);
    a folder is any model with the same tokenizer, since the guide embeds the batch's own
    token ids (packed rows included). Its params are never trained nor checkpointed.
    """
    if not config.loss.guide:
        return None
    if config.loss.guide == "init":
        return m, jax.tree.map(np.array, m.params)  # a copy: the state's buffers are donated
    try:
        g = convert.load_model(config.loss.guide)
    except convert.ModelFolderError as e:
        raise runconfig.ConfigError(f"config field loss.guide: {e}") from e
    if g.tokenizer.get_vocab() != m.tokenizer.get_vocab():
        raise runconfig.ConfigError(
            f"config field loss.guide: {config.loss.guide!r} has another tokenizer (vocabulary) "
            "than the model; the guide embeds the batch's token ids, so they must agree"
        )
    positions = g.config.max_position_embeddings - g.config.position_offset
    if positions < config.data.max_seq_len:
        raise runconfig.ConfigError(
            f"config field loss.guide: {config.loss.guide!r} takes {positions} tokens, fewer than "
            f"data.max_seq_len={config.data.max_seq_len}"
        )
    return g, g.params


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
    config: ml_collections.ConfigDict,
    workdir: str,
    devices: Sequence[jax.Device] | None = None,
    *,
    on_event: OnEvent | None = None,
    compilation_cache: bool = False,
) -> dict[str, Any]:
    """Train (or resume) in `workdir`; returns a summary with the final metrics and evaluations.

    `devices` defaults to all devices (of all processes); tests pass a subset, and `on_event`
    (see OnEvent) to kill, stop or hang the process at a chosen step or inside a save. Bad
    input (config, model folder, data, a resume the checkpoints do not allow) raises before
    anything is written. `compilation_cache`: keep XLA executables in the config's
    compilation_cache_dir (the CLI does; tests choose their own).
    """
    devices = list(devices or jax.devices())
    event = on_event or (lambda name, step, state: None)
    runconfig.validate(config, len(devices))
    config_changes = runconfig.check_resume(config, workdir)
    is_main = jax.process_index() == 0
    m = build_model(config)
    guide = build_guide(config, m)  # a bad guide folder stops the run before anything is written
    # Every process composes the whole global batch (see step.make_featurizer).
    loader = data_lib.MixtureLoader.from_config(
        config.data, batch_size=config.batch_size, seed=config.seed, workdir=workdir
    )
    mesh = jax.make_mesh((len(devices),), (step_lib.AXIS,), devices=devices)
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(step_lib.AXIS))
    optimizer, schedule = step_lib.make_optimizer(config)

    params = m.params
    fresh = step_lib.TrainState(
        params, optimizer.init(params), jax.random.key(config.seed), np.int32(0)
    )
    # A checkpoint of another model is an error here; an unreadable one is set aside.
    restored = checkpoint.restore(workdir, m, fresh, set_aside=is_main)
    loader_state = None
    if restored is not None:
        fresh, loader_state = restored
        loader.restore(loader_state)
        print(f"resuming from step {int(fresh.step)} in {workdir}", flush=True)
    start_step = int(fresh.step)
    if start_step >= config.total_steps:
        print(
            f"step {start_step} >= total_steps={config.total_steps}: nothing to train", flush=True
        )
    os.makedirs(workdir, exist_ok=True)  # the input checks are behind us: from here on, writes
    if compilation_cache and config.compilation_cache_dir:
        cache = os.path.join(workdir, os.path.expanduser(config.compilation_cache_dir))
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax_compilation_cache.reset_cache()  # JAX decides at its first compilation otherwise
    log = MetricsLog(workdir, enabled=is_main)
    if jax.process_count() > 1:  # every process reads the checkpoint itself
        multihost_utils.assert_equal(
            start_step,
            f"processes would resume from different steps: {workdir} must be shared storage",
        )
    if is_main:  # DIR/run_config.json; a change a resume may make is logged at its step
        kept = runconfig.save(workdir, config, start_step)
        if config_changes:
            log.write(
                {
                    "step": start_step,
                    "config_change": {
                        k: {"old": a, "new": b} for k, (a, b) in config_changes.items()
                    },
                    "previous_config": kept,
                }
            )
    state = distributed.replicate(fresh, replicated)
    featurize = step_lib.make_featurizer(config, m, mesh)

    guide_args = () if guide is None else (distributed.replicate(guide[1], replicated),)
    train_step = step_lib.make_train_step(config, m, mesh, optimizer, guide[0] if guide else None)
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
    bad_lines = (loader_state or {}).get("counters", {}).get("skipped", {})
    base_readme, evals_step = m.readme, 0
    datasets = [
        (d.name, d.lines, float(p)) for d, p in zip(loader.datasets, loader.probs, strict=True)
    ]

    def note_card(examples: dict | None = None) -> None:  # for the next export's README.md
        m.card_info = model_card.training_facts(
            config,
            base_readme=base_readme,
            step=step,
            start_step=start_step,
            wall_s=time.time() - run_t0,
            datasets=datasets,
            examples=examples,
            evals=evals,
            evals_step=evals_step,
            evals_before=evals_before,
        )

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
            # the loss at each Matryoshka prefix width (loss.matryoshka_dims), when set
            **{k: float(v) for k, v in rec.items() if k.startswith("matryoshka_loss_")},
            **({"guide_masked": float(rec["guide_masked"])} if "guide_masked" in rec else {}),
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
            state, metrics = train_step(state, batch, *guide_args)
            step += 1
            watchdog.dispatched(step, metrics["loss"])
            event("step", step, state)
            pending.append(metrics)
            if latest_loader_state["counters"]["skipped"] != bad_lines:  # each bad line once
                bad_lines = latest_loader_state["counters"]["skipped"]
                log.write({"step": step, "bad_lines": bad_lines})
            if step % config.log_every == 0 or step == config.total_steps:
                flush_metrics()
            if step % config.checkpoint_every == 0 or step == config.total_steps:
                flush_metrics()  # never checkpoint params after a non-finite loss
                if is_main:
                    note_card()
                    checkpoint.save(
                        workdir,
                        m,
                        state,
                        latest_loader_state,
                        config.keep_checkpoints,
                        on_stage=lambda name, step=step, state=state: event(
                            f"save:{name}", step, state
                        ),
                    )
            if (config.eval_every and step % config.eval_every == 0) or step == config.total_steps:
                evals, evals_step = run_evaluation(config, m, state.params, step, log), step

    export_dir = os.path.join(workdir, "export")
    if is_main:
        note_card(loader.stats()["examples"])
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


# Bad input that main() reports in one line, without a traceback.
INPUT_ERRORS = (
    runconfig.ConfigError,
    checkpoint.ResumeError,
    convert.ModelFolderError,
    evaluate.DataFileError,
    sources.DataError,
)


def main(argv: Sequence[str], on_event: OnEvent | None = None) -> None:
    if not flags.FLAGS["verbosity"].present:  # JAX's INFO lines (backend probe) on request
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    distributed.use_host_devices()  # before any JAX computation: the step uses every core
    distributed.initialize(f.coordinator_address, f.num_processes, f.process_id, auto=f.distributed)
    config = f.config
    print(config, flush=True)
    try:
        summary = train(config, f.workdir, on_event=on_event, compilation_cache=True)
    except (NonFiniteLossError, *INPUT_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        if jax.process_count() > 1:
            os._exit(1)  # a normal exit would wait in jax.distributed's shutdown
        sys.exit(1)
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


def define_flags() -> None:
    """main.py's flags (also used by tests/fixtures/fault_main.py, which wraps main)."""
    config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/base.py:demo")
    flags.DEFINE_string("workdir", None, "run folder: checkpoints, metrics.jsonl, export/")
    # Multi-host only (docs/multihost.md); else JAX_COORDINATOR_ADDRESS etc.
    flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0's coordinator")
    flags.DEFINE_integer("num_processes", None, "processes in the run (one per host)")
    flags.DEFINE_integer("process_id", None, "this process's index in [0, num_processes)")
    flags.DEFINE_bool("distributed", False, "join JAX's runtime, topology found by JAX (TPU...)")
    flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, each error in one line: ml_collections reports a bad config argument
    with its config file's traceback, whose last line says what is wrong."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = lines[-1].split(": ", 1)[-1] if "Traceback" in str(e) else " ".join(lines)
        sys.exit(f"error: {why}")
    except (AttributeError, KeyError) as e:  # ml_collections' answer to --config.nope=1
        key = str(e).strip("\"'")
        bad = [a for a in argv if a.startswith("--config.") and key in a.split("=")[0]]
        sys.exit(f"error: {bad[0] if bad else key}: no such config field (see configs/base.py)")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
