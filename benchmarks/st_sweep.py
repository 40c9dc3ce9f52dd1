"""The cells of a sweep trained with sentence-transformers' own trainer (not a test).

    /work/refvenv/bin/python -m benchmarks.st_sweep --config=configs/scifact.py --seeds=0,1 \\
        --cells="base:;batch 8:batch_size=8" --eval=sample_data/retrieval/scifact \\
        --workdir=runs/study_st [--ours=runs/study] [--eval_python=.venv/bin/python] \\
        [--st_cells="mined:data.dir=runs/mined_st"] [--batch_sampler=batch_sampler]

Run in the requirements-bench virtualenv (torch, sentence-transformers 6.2.0, ml-collections,
matplotlib), from the repository root. It takes sweep.py's flags and builds the same runs
(sweep.build_runs: the same config, overrides and seeds), trains each in
WORKDIR/cells/<cell>/seed_<s>/ with SentenceTransformerTrainer, and writes the same files as
sweep.py (result.json per run, results.jsonl, results.md, results.png, through results.py);
with --ours=SWEEP_DIR also comparison.md / comparison.png, ours and theirs cell by cell.

Each config field maps onto their trainer (`st_setup`): init_from -> SentenceTransformer,
batch_size -> per_device_train_batch_size, total_steps -> max_steps, warmup_steps, lr,
weight_decay, grad_clip -> max_grad_norm, seed -> seed and data_seed, data.max_seq_len ->
max_seq_length, model.dropout_rate; the loss: MultipleNegativesRankingLoss (scale, similarity),
with directions (query_to_doc, doc_to_query) and partition_mode per_direction for
loss.symmetric (what the deprecated MultipleNegativesSymmetricRankingLoss is),
CachedMultipleNegativesRankingLoss for loss.cache_chunk_size (mini_batch_size), GISTEmbedLoss /
CachedGISTEmbedLoss for loss.guide (the guide a SentenceTransformer of init_from for 'init',
temperature = 1 / loss.scale). Data: every dataset of data.dir (sources.py reads the same lines
in the same formats) as a datasets.Dataset with columns anchor, positive, negative_1..K
(K = data.max_negatives; rows with fewer negatives are dropped, counted in the record), several
datasets as a DatasetDict drawn by their PROPORTIONAL multi-dataset sampler (each batch from one
dataset, datasets in proportion to their size). Cells their trainer cannot express (random
init, several datasets per batch, data_config.json weights or a temperature, steps_per_dataset)
are listed as not run, with the reason. Hard negatives mined by their own `mine_hard_negatives`:
`tools/st_mine.py` writes them in our line format, and --st_cells points a cell's data.dir there
for this side only.

Evaluation is ours on their model, for identical metrics: the trained model is saved to
RUN/export and scored by evaluate.py (`--eval_python`, a virtualenv with requirements.txt), and
the scores are recorded in RUN/metrics.jsonl as the trainer's own evaluations are on our side.
A run interrupted mid-training starts again from scratch (their trainer saves no checkpoints
here); a finished run is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

from absl import app, flags, logging

import results
import sources
import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def unsupported(config, run_dir: str) -> str:
    """Why sentence-transformers' trainer cannot train this config ('' when it can)."""
    if not config.init_from:
        return "random init (their trainer starts from a model folder)"
    d = config.data
    specs = sources.find_datasets(
        d.dir, config_file=d.config_file, temperature=d.temperature, workdir=run_dir
    )
    if len(specs) > 1:
        if d.datasets_per_batch > 1:
            return f"{d.datasets_per_batch} datasets per batch (their samplers: one per batch)"
        if d.config_file or d.temperature != 1.0:
            return "dataset weights (their proportional sampler weights datasets by size)"
        if d.steps_per_dataset > 1:
            return "steps_per_dataset > 1 (their samplers draw a dataset per batch)"
    return ""


def read_datasets(config, run_dir: str) -> tuple[dict, dict]:
    """{dataset name: columns} with K negative columns, and the row counts kept and dropped."""
    d, k = config.data, config.data.max_negatives
    specs = sources.find_datasets(
        d.dir, config_file=d.config_file, temperature=d.temperature, workdir=run_dir
    )
    out, counts = {}, {"rows": 0, "bad_lines": 0, "too_few_negatives": 0}
    for spec in specs:
        cols = {"anchor": [], "positive": [], **{f"negative_{i + 1}": [] for i in range(k)}}
        for shard in spec.files:
            path = os.path.join(spec.root, shard)
            with sources._open(path) as f:
                for i, raw in enumerate(f):
                    try:
                        texts = sources.parse_line(raw, key=i)
                    except sources.BadLine:
                        counts["bad_lines"] += 1
                        continue
                    if len(texts) - 2 < k:
                        counts["too_few_negatives"] += 1
                        continue
                    for name, text in zip(cols, texts, strict=False):
                        cols[name].append(text)
                    counts["rows"] += 1
        out[spec.name.split(".")[0]] = cols
    return out, counts


def st_setup(config, model, guide_model=None):
    """(loss, its description, mismatches with our loss) for a config."""
    from sentence_transformers import util
    from sentence_transformers.sentence_transformer import losses

    lc, chunk = config.loss, config.loss.cache_chunk_size
    mismatch = []
    guide = lc.get("guide", "")
    if guide:
        margin = float(lc.get("guide_margin", 0.0))
        strategy = lc.get("guide_margin_strategy", "absolute")
        k = config.data.max_negatives
        # GISTEmbedLoss takes at most one negative column; the cached form any number.
        cached = chunk or k > 1
        cls = losses.CachedGISTEmbedLoss if cached else losses.GISTEmbedLoss
        kwargs = {"mini_batch_size": chunk or config.batch_size} if cached else {}
        loss = cls(
            model,
            guide_model,
            temperature=1.0 / lc.scale,
            margin_strategy=strategy,
            margin=margin,
            **kwargs,
        )
        shown = {"temperature": 1.0 / lc.scale, "margin_strategy": strategy, "margin": margin}
        desc = f"{cls.__name__}({shown | kwargs})"
        if lc.symmetric:
            mismatch.append("GISTEmbedLoss has one direction only (ours: symmetric)")
        if lc.similarity != "cosine":
            mismatch.append("GISTEmbedLoss uses cosine similarity")
        return loss, desc, mismatch
    kwargs = {
        "scale": lc.scale,
        "similarity_fct": util.cos_sim if lc.similarity == "cosine" else util.dot_score,
    }
    if lc.symmetric:
        kwargs.update(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")
    if chunk:
        loss = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=chunk, **kwargs)
    else:
        loss = losses.MultipleNegativesRankingLoss(model, **kwargs)
    shown = {k: v for k, v in kwargs.items() if k != "similarity_fct"}
    if chunk:
        shown["mini_batch_size"] = chunk
    desc = f"{type(loss).__name__}({lc.similarity}, {shown})"
    return loss, desc, mismatch


def run_cell(run_dir: str, eval_python: str, batch_sampler: str) -> None:
    """Train one run with SentenceTransformerTrainer, save it, score it with our evaluate.py."""
    import datasets
    import torch
    import transformers
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers import __version__ as st_version
    from sentence_transformers.base.sampler import BatchSamplers, MultiDatasetBatchSamplers

    with open(os.path.join(run_dir, sweep.SPEC)) as f:
        spec = json.load(f)
    config = sweep.resolve_config(spec)
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    export = os.path.join(run_dir, "export")
    with sweep.exclusive(os.path.join(run_dir, sweep.LOCK), f"cell {spec['name']!r}"):
        trained_path = os.path.join(run_dir, sweep.TRAINED)
        if not os.path.exists(trained_path):
            if os.path.exists(metrics_path):  # an interrupted attempt: start again
                os.replace(metrics_path, metrics_path + f".interrupted.{int(time.time())}")
            columns, counts = read_datasets(config, run_dir)
            train = {n: datasets.Dataset.from_dict(c) for n, c in columns.items()}
            model = SentenceTransformer(config.init_from, device="cpu")
            model.max_seq_length = min(model.max_seq_length, config.data.max_seq_len)
            rate = config.model.dropout_rate
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = rate
            guide = None
            g = config.loss.get("guide", "")
            if g:
                guide = SentenceTransformer(config.init_from if g == "init" else g, device="cpu")
                guide.max_seq_length = model.max_seq_length
            loss, desc, mismatch = st_setup(config, model, guide)
            t0, log = [0.0], []

            class Log(transformers.TrainerCallback):
                def on_train_begin(self, args, state, control, **kwargs):
                    t0[0] = time.time()

                def on_log(self, args, state, control, logs=None, **kwargs):
                    if not logs or "loss" not in logs:
                        return
                    elapsed = time.time() - t0[0]
                    step = state.global_step
                    rec = {
                        "step": step,
                        "loss": float(logs["loss"]),
                        "lr": float(logs.get("learning_rate", 0.0)),
                        "elapsed_s": elapsed,
                        "eta_s": elapsed / step * (config.total_steps - step),
                    }
                    log.append(rec)
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    print(
                        f"step {step:>7} | loss {rec['loss']:.4f} | lr {rec['lr']:.2e} | "
                        f"{elapsed:.0f}s elapsed, eta {rec['eta_s']:.0f}s",
                        flush=True,
                    )

            args = SentenceTransformerTrainingArguments(
                output_dir=os.path.join(run_dir, "hf"),
                per_device_train_batch_size=config.batch_size,
                max_steps=config.total_steps,
                learning_rate=config.lr,
                warmup_steps=config.warmup_steps,
                lr_scheduler_type="linear",
                weight_decay=config.weight_decay,
                max_grad_norm=config.grad_clip or None,
                seed=config.seed,
                data_seed=config.seed,
                fp16=False,
                bf16=config.model.dtype == "bfloat16",
                batch_sampler=BatchSamplers(batch_sampler),
                multi_dataset_batch_sampler=MultiDatasetBatchSamplers.PROPORTIONAL,
                dataloader_drop_last=True,
                save_strategy="no",
                logging_steps=1,
                report_to="none",
                disable_tqdm=True,
                use_cpu=not torch.cuda.is_available(),
            )
            trainer = SentenceTransformerTrainer(
                model=model,
                args=args,
                train_dataset=datasets.DatasetDict(train) if len(train) > 1 else train.popitem()[1],
                loss=loss,
                callbacks=[Log()],
            )
            trainer.train()
            with contextlib.suppress(OSError):
                os.rmdir(args.output_dir)  # their Trainer's output folder, empty without saves
            model.save(export)
            info = {
                "loss": desc,
                "mismatch": mismatch,
                "data": counts,
                "batch_sampler": batch_sampler,
                "versions": f"sentence-transformers {st_version}, torch {torch.__version__}",
                "torch_threads": torch.get_num_threads(),
                "steps_done": log[-1]["step"] if log else 0,
            }
            results._atomic_write(trained_path, json.dumps(info) + "\n")
        with open(trained_path) as f:
            info = json.load(f)
        tasks = sweep.eval_tasks(config)
        have = results.final_evals(results.read_jsonl(metrics_path), config.total_steps)
        missing = [t for t in tasks if t not in have]
        if missing:
            cmd = [eval_python, os.path.join(ROOT, "evaluate.py"), f"--model={export}"]
            cmd += [f"--sts={t}" for t in missing if t in config.eval.sts_files]
            cmd += [f"--retrieval={t}" for t in missing if t not in config.eval.sts_files]
            cmd.append(f"--batch_size={config.eval.batch_size}")
            env = dict(os.environ)
            if spec.get("compilation_cache"):
                env["JAX_COMPILATION_CACHE_DIR"] = sweep.full_path(spec["compilation_cache"])
                env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
            print("evaluating with ours: " + " ".join(cmd), flush=True)
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            sys.stderr.write(out.stderr[-3000:])
            if out.returncode:
                sys.exit(f"error: evaluate.py failed (exit {out.returncode})")
            for line in out.stdout.splitlines():
                if line.startswith("{") and '"task"' in line:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps({"step": config.total_steps, "eval": json.loads(line)}))
                        f.write("\n")
        record = results.make_record(
            name=spec["name"],
            overrides=spec["overrides"],
            seed=spec["seed"],
            system=f"sentence-transformers {st_version}",
            metrics=results.read_jsonl(metrics_path),
            tasks=tasks,
            steps=config.total_steps,
            batch_size=config.batch_size,
            extra={
                "config": spec["config"],
                **{k: v for k, v in info.items() if k != "steps_done"},
            },
        )
        results._atomic_write(os.path.join(run_dir, sweep.RESULT), json.dumps(record) + "\n")
        print("cell result: " + json.dumps(record["scores"]), flush=True)


def main(argv):
    f = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not f["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if f.run_cell:
        return run_cell(f.run_cell, f.eval_python, f.batch_sampler)
    if not os.path.exists(f.eval_python):
        sys.exit(
            f"error: --eval_python {f.eval_python!r} does not exist: give the python of a "
            "virtualenv with requirements.txt (ours evaluates their model)"
        )
    try:
        extra = {c.name: c.overrides for c in sweep.parse_cells(f.st_cells)}
    except ValueError as e:
        sys.exit(f"error: --st_cells: {e}")

    def compare(records, cells):
        if f.ours:
            results.comparison(
                os.path.join(f.workdir, "comparison"),
                results.read_jsonl(os.path.join(f.ours, "results.jsonl")),
                records,
                [c.name for c in cells],
                main=f.main,
                notes=[f"Ours: {f.ours}/results.jsonl; theirs: {f.workdir}/results.jsonl."],
            )

    sweep.sweep_main(
        f,
        lambda run: [
            sys.executable,
            "-m",
            "benchmarks.st_sweep",
            f"--run_cell={run.dir}",
            f"--eval_python={f.eval_python}",
            f"--batch_sampler={f.batch_sampler}",
        ],
        system=" (sentence-transformers)",
        notes=[
            "Trained with sentence-transformers' SentenceTransformerTrainer "
            "(benchmarks/st_sweep.py), scored by our evaluate.py on the saved model."
        ],
        extra_overrides=extra,
        skip=lambda run: unsupported(sweep.resolve_config(run.spec), run.dir),
        after_write=compare,
    )


if __name__ == "__main__":
    sweep.define_flags()
    flags.DEFINE_string(
        "eval_python",
        os.path.join(ROOT, ".venv", "bin", "python"),
        "python of a virtualenv with requirements.txt: our evaluate.py scores their model",
    )
    flags.DEFINE_string("ours", "", "our sweep folder: also write comparison.md / .png")
    flags.DEFINE_string("st_cells", "", "extra overrides for this side: 'name:field=v;...'")
    flags.DEFINE_enum(
        "batch_sampler",
        "batch_sampler",
        ["batch_sampler", "no_duplicates"],
        "their batch sampler (batch_sampler: random batches, as ours)",
    )
    flags.DEFINE_string("run_cell", "", "internal: train the run in this folder (its cell.json)")
    app.run(main)
