"""The trainer end to end on the tiny ':smoke' config: resume after kill -9 (at a step and inside
a save, injected by tests/fixtures/fault_main.py), resume with a changed config, unreadable
checkpoints, device counts, non-finite loss, bad lines; config parsing."""

import ast
import json
import os
import shutil
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
import safetensors.numpy

import checkpoint
import convert
import main
import model_card
import runconfig
import step as step_lib
from configs import base
from tools import record_loss_trace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke(**overrides):
    c = base.get_config("smoke")
    for k, v in overrides.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    out = {}
    for r in records:  # a resumed run appends; the last record of a step wins
        if "loss" in r:
            out[r["step"]] = r["loss"]
    return out


def _run_cli(workdir, fault=None, *overrides):
    """main.py on ':smoke' with checkpoints every 4 steps; `fault` (EVENT@STEP[:ACTION]) runs
    it through tests/fixtures/fault_main.py, which injects it through train()'s hook."""
    script = ["tests/fixtures/fault_main.py", f"--fault={fault}"] if fault else ["main.py"]
    cmd = [
        sys.executable,
        *script,
        "--config=configs/base.py:smoke",
        f"--workdir={workdir}",
        "--config.checkpoint_every=4",
        *overrides,
    ]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """12 smoke steps in one go: the losses a killed and resumed run must reproduce."""
    workdir = tmp_path_factory.mktemp("straight")
    r = _run_cli(workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_kill_and_resume_is_exact(tmp_path, straight):
    killed = tmp_path / "killed"
    r = _run_cli(killed, "step@6")
    assert r.returncode == -9, r.stderr[-3000:]  # SIGKILL
    assert max(_losses(killed)) == 5  # killed after step 6, before its metrics were logged
    assert sorted(os.listdir(killed / checkpoint.CHECKPOINTS)) == [f"{4:09d}"]
    r = _run_cli(killed)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from step 4" in r.stdout
    a, b = _losses(straight), _losses(killed)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in range(7, 13):
        assert a[step] == b[step], (step, a[step], b[step])
    # The CLI keeps its XLA executables in the workdir (JAX's persistent cache, which the
    # resumed run reads: its losses above match the straight run's).
    assert os.listdir(killed / "compilation_cache")
    pa = convert.load_model(str(straight / "export")).params
    pb = convert.load_model(str(killed / "export")).params
    chex.assert_trees_all_equal(pa, pb)


@pytest.mark.slow
@pytest.mark.parametrize("stage, resumes_from", [("model", 4), ("placed", 8)])
def test_kill_inside_a_save_then_rerun_is_exact(tmp_path, straight, stage, resumes_from):
    """SIGKILL inside the save of step 8: with half a checkpoint in its temporary folder
    (model written), or with the new one renamed into place but the older ones not yet pruned."""
    workdir = tmp_path / "killed"
    r = _run_cli(workdir, f"save:{stage}@8")
    assert r.returncode == -9, r.stderr[-3000:]
    assert f"fault: SIGKILL at save:{stage} of step 8" in r.stdout
    r = _run_cli(workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from step {resumes_from}" in r.stdout
    a, b = _losses(straight), _losses(workdir)
    assert [b[s] for s in range(1, 13)] == [a[s] for s in range(1, 13)]
    # keep_checkpoints=3; the killed save's temporary folder is gone.
    assert sorted(os.listdir(workdir / checkpoint.CHECKPOINTS)) == [f"{s:09d}" for s in (4, 8, 12)]
    chex.assert_trees_all_equal(
        convert.load_model(str(straight / "export")).params,
        convert.load_model(str(workdir / "export")).params,
    )


def _file_bytes(folder) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            path = os.path.join(dirpath, n)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


class _Stopped(Exception):
    """Raised by an on_event hook: the run stops there, as when it is interrupted."""


def _stop_after_save(at):
    def hook(name, step, state):
        if name == "save:pruned" and step == at:
            raise _Stopped(step)

    return hook


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_incompatible_change_and_allows_the_others(tmp_path):
    """The issue's scenario: 12 smoke steps with checkpoints every 4, stopped after the save of
    step 8; the same workdir with another architecture and pooling is refused (every file
    byte-identical); with only dropout_rate, or only lr, changed it continues from step 8 (the
    change logged at step 8, the new lr in effect) and leaves checkpoints 4 and 8 as they were."""
    workdir = str(tmp_path / "run")
    with pytest.raises(_Stopped):
        main.train(smoke(), workdir, on_event=_stop_after_save(8))
    before = _file_bytes(workdir)
    assert "run_config.json" in before
    assert [os.path.basename(p) for p in checkpoint.checkpoint_dirs(workdir)] == [
        f"{8:09d}",
        f"{4:09d}",
    ]
    with pytest.raises(checkpoint.ResumeError) as err:
        main.train(smoke(**{"model.hidden_size": 64, "model.pooling": "cls"}), workdir)
    message = str(err.value)
    assert "model.hidden_size: 32 -> 64" in message and "model.pooling: 'mean' -> 'cls'" in message
    assert workdir in message and "use a new workdir" in message
    assert _file_bytes(workdir) == before

    lr_workdir = str(tmp_path / "lr")
    shutil.copytree(workdir, lr_workdir)
    for where, field, old, new in [
        (workdir, "model.dropout_rate", 0.1, 0.0),
        (lr_workdir, "lr", 1e-3, 5e-4),
    ]:
        config = smoke(**{field: new})
        summary = main.train(config, where)
        assert summary["step"] == 12
        records = _records(where)
        change = [r for r in records if "config_change" in r]
        assert len(change) == 1 and change[0]["step"] == 8
        assert change[0]["config_change"] == {field: {"old": old, "new": new}}
        # Steps 1-8 from the first run, 9-12 from the resumed one: nothing trained twice.
        assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
        lrs = {r["step"]: r["lr"] for r in records if "loss" in r}
        _, schedule = step_lib.make_optimizer(config)
        assert lrs[9] == pytest.approx(float(schedule(8)))  # the new config's schedule
        # The config that applied up to step 8 is kept; run_config.json is the new one.
        with open(os.path.join(where, change[0]["previous_config"]), "rb") as f:
            assert f.read() == before["run_config.json"]
        with open(os.path.join(where, "run_config.json")) as f:
            assert json.load(f)[field] == new
        # Checkpoints 4 and 8 of the first run are still there, untouched.
        after = _file_bytes(where)
        for name, blob in before.items():
            if name.startswith(checkpoint.CHECKPOINTS):
                assert after[name] == blob, name
    # The lr change is in effect: the two continuations log different rates from step 9 on.
    lr_a = {r["step"]: r["lr"] for r in _records(workdir) if "loss" in r}
    lr_b = {r["step"]: r["lr"] for r in _records(lr_workdir) if "loss" in r}
    assert lr_a[8] == lr_b[8] and lr_a[9] != lr_b[9]


@pytest.mark.slow
def test_one_and_eight_devices_give_the_same_losses(tmp_path):
    assert jax.device_count() == 8
    # log_every=2: metrics of two steps wait on the device while the state is donated onward.
    cfg = smoke(
        **{"model.dropout_rate": 0.0, "total_steps": 4, "checkpoint_every": 100, "log_every": 2}
    )
    one = main.train(cfg, str(tmp_path / "one"), devices=jax.devices()[:1])
    eight = main.train(cfg, str(tmp_path / "eight"))
    l1, l8 = _losses(tmp_path / "one"), _losses(tmp_path / "eight")
    assert sorted(l1) == [2, 4]
    np.testing.assert_allclose([l8[s] for s in l1], [l1[s] for s in l1], atol=1e-5)
    chex.assert_trees_all_close(one["params"], eight["params"], atol=1e-5)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = smoke(lr=1e12, warmup_steps=0, checkpoint_every=1, log_every=50, total_steps=12)
    with pytest.raises(main.NonFiniteLossError, match=r"at step (\d+)") as err:
        main.train(cfg, str(tmp_path))
    bad_step = int(err.value.args[0].split("at step ")[1].split(";")[0])
    latest = checkpoint.latest_dir(str(tmp_path))
    assert latest is not None and int(os.path.basename(latest)) < bad_step
    params = convert.load_model(os.path.join(latest, "model")).params
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_truncated_latest_checkpoint_falls_back_and_is_kept_aside(tmp_path, capsys):
    cfg = smoke(total_steps=4, checkpoint_every=2)
    main.train(cfg, str(tmp_path))
    latest = tmp_path / checkpoint.CHECKPOINTS / f"{4:09d}"
    weights = latest / "model" / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    cfg.total_steps = 6
    main.train(cfg, str(tmp_path))
    out = capsys.readouterr()
    aside = f"{latest}.unreadable"
    assert f"checkpoint {latest} is unreadable" in out.err and f"renamed to {aside}" in out.err
    assert "resuming from step 2" in out.out
    with open(os.path.join(aside, "model", "model.safetensors"), "rb") as f:
        assert f.read() == blob[: len(blob) // 2]  # kept as it was
    names = sorted(os.listdir(tmp_path / checkpoint.CHECKPOINTS))
    assert names == sorted([f"{s:09d}" for s in (2, 4, 6)] + [os.path.basename(aside)])


@pytest.mark.slow
def test_bad_lines_are_logged_once_each(tmp_path):
    """Planted bad lines in a small file that training reads many times over: metrics.jsonl
    logs their exact counts, not one per pass."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    good = [json.dumps([f"a{i}", f"b{i}"]) for i in range(40)]
    (data_dir / "pairs.jsonl").write_text("\n".join(good + ["{bad"] * 3 + ["[1, 2]"]) + "\n")
    workdir = str(tmp_path / "run")
    summary = main.train(smoke(**{"data.dir": str(data_dir), "total_steps": 8}), workdir)
    assert summary["loader"]["passes"]["pairs.jsonl"] >= 2  # 8 steps of 16 pairs, 40 valid
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line)["bad_lines"] for line in f if "bad_lines" in line]
    assert records[-1] == {"pairs.jsonl": {"malformed_json": 3, "wrong_type": 1}}


def test_main_reads_no_environment_variables():
    """Faults come from outside the trainer (train's on_event hook, tests/fixtures/fault_main.py):
    main.py reads no environment variable, test-only or other."""
    with open(os.path.join(ROOT, "main.py")) as f:
        tree = ast.parse(f.read())
    found = [
        f"main.py:{node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if (isinstance(node, ast.Attribute) and node.attr in ("environ", "environb", "getenv"))
        or (isinstance(node, ast.Name) and node.id in ("environ", "getenv"))
        or (isinstance(node, ast.Constant) and "SENTEMB_" in str(node.value))
    ]
    assert not found, found


def test_matryoshka_wider_than_the_model_is_refused_before_anything_is_written(tmp_path):
    """The width bound needs the model (init_from gives it): checked in build_model, still
    before the workdir exists. (The other Matryoshka checks: runconfig_test.py.)"""
    cfg = smoke(**{"loss.matryoshka_dims": (64, 16)})  # the smoke model is 32 wide
    workdir = tmp_path / "run"
    with pytest.raises(
        runconfig.ConfigError, match=r"loss\.matryoshka_dims: \(64, 16\) exceed .* width 32"
    ):
        main.train(cfg, str(workdir))
    assert not workdir.exists()


def test_featurizer_prefixes_the_config_prompts():
    cfg = smoke(**{"data.prompts.anchor": "query: ", "data.prompts.negatives": "neg: "})
    cfg.data.max_negatives = 2
    m = main.build_model(cfg)
    assert (m.query_prompt, m.document_prompt) == ("query: ", "")  # what the export will say
    examples = [(f"anchor {i}", f"positive {i}", f"negative {i}") for i in range(8)]
    got = step_lib.make_featurizer(cfg, m, jax.make_mesh((8,), ("data",)))(examples)
    prefixed = [(f"query: anchor {i}", f"positive {i}", f"neg: negative {i}") for i in range(8)]
    want = step_lib.make_featurizer(
        smoke(**{"data.max_negatives": 2}), m, jax.make_mesh((8,), ("data",))
    )(prefixed)
    chex.assert_trees_all_equal(got, want)


@pytest.mark.slow
def test_matryoshka_prompts_and_model_card_end_to_end(tmp_path):
    """Matryoshka with GradCache and prompts through train(): per-prefix losses summed with their
    weights, the prompts in the export, a model card in the export and in every checkpoint."""
    weights = {32: 1.0, 16: 0.5, 8: 0.25}
    cfg = smoke(
        **{
            "loss.matryoshka_dims": tuple(weights),
            "loss.matryoshka_weights": tuple(weights.values()),
            "loss.cache_chunk_size": 2,
            "data.prompts.anchor": "q: ",
            "data.prompts.positive": "d: ",
            "data.prompts.negatives": "d: ",
            "total_steps": 4,
            "checkpoint_every": 2,
        }
    )
    summary = main.train(cfg, str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f if '"loss"' in line]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        total = sum(w * r[f"matryoshka_loss_{d}"] for d, w in weights.items())
        np.testing.assert_allclose(r["loss"], total, rtol=1e-5)
    exported = convert.load_model(summary["export"])
    assert exported.prompts == {"query": "q: ", "document": "d: "}
    with open(os.path.join(summary["export"], "README.md")) as f:
        card = f.read()
    for want in (
        "- loss:MatryoshkaLoss",
        "- **Steps:** 4 of 4",
        "dims and weights 32: 1.0, 16: 0.5",
        "`loss.cache_chunk_size`: `2`",
        "| `snli_triplets.jsonl.gz` |",
    ):
        assert want in card, want
    ckpt = os.path.join(tmp_path, checkpoint.CHECKPOINTS, f"{2:09d}", "model", "README.md")
    with open(ckpt) as f:
        card = f.read()
    assert "- **Steps:** 2 of 4" in card and "checkpoint at step 2" in card


def test_every_config_field_has_a_same_line_comment():
    with open(os.path.join(ROOT, "configs", "base.py")) as f:
        source = f.read()
    body = source.split("def base()")[1].split("\ndef ")[0]  # the field definitions
    lines = [ln for ln in body.split("\n") if ln.strip().startswith("c.") and " = " in ln]
    assert len(lines) > 40
    missing = [ln.strip() for ln in lines if "ConfigDict()" not in ln and "#" not in ln]
    assert not missing, missing


def test_config_arg_parsing():
    c = base.get_config("smoke,batch_size=64,loss.scale=10.0,model.pooling=cls")
    assert (c.batch_size, c.loss.scale, c.model.pooling, c.init_from) == (64, 10.0, "cls", "")
    with pytest.raises(ValueError, match="unknown config field 'loss.temperature'"):
        base.get_config("loss.temperature=2")
    with pytest.raises(ValueError, match="unknown config variant 'tiny'"):
        base.get_config("tiny")


def test_config_arg_takes_tuples_and_quoted_commas():
    c = base.get_config("smoke,data.bucket_lengths=(32,64),eval.sts_files=('a,b.tsv',),lr=0.5")
    assert c.data.bucket_lengths == (32, 64) and c.eval.sts_files == ("a,b.tsv",)
    assert (c.lr, c.data.max_seq_len) == (0.5, 32)  # the parts around them still apply
    with pytest.raises(ValueError, match="unbalanced"):
        base.get_config("smoke,data.bucket_lengths=(32,64")
    with pytest.raises(ValueError, match="config field batch_size"):
        base.get_config("smoke,batch_size=1.5")


def test_config_flag_passes_tuples_through(tmp_path):
    """The whole command-line path: absl's config flag hands everything after ':' to get_config."""
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=values)
    values(["main.py", f"--config={ROOT}/configs/base.py:smoke,data.bucket_lengths=(32,64)"])
    assert values.config.data.bucket_lengths == (32, 64)


@pytest.mark.parametrize(
    "name, field, value",
    [
        ("no_symmetric", "loss.symmetric", False),
        ("one_dataset_per_batch", "data.datasets_per_batch", 1),
        ("local_negatives", "loss.gather", False),
        ("dot_product", "loss.similarity", "dot"),
        ("no_hard_negatives", "data.max_negatives", 0),
        ("matryoshka", "loss.matryoshka_dims", (384, 192, 96, 48)),
        ("guided", "loss.guide", base._reference_model_dir()),
        ("mined_negatives", "data.max_negatives", 3),
    ],
)
def test_ablation_configs_change_their_field(name, field, value):
    import importlib

    cfg = importlib.import_module(f"configs.{name}").get_config("smoke")
    group, key = field.split(".")
    assert cfg[group][key] == value != base.get_config("smoke")[group][key]
    runconfig.validate(cfg, 8)


def test_scifact_matryoshka_is_scifact_plus_the_dims():
    import importlib

    plain = importlib.import_module("configs.scifact").get_config()
    mat = importlib.import_module("configs.scifact_matryoshka").get_config("seed=1")
    assert model_card.config_diff(mat) == {
        **model_card.config_diff(plain),
        "loss.matryoshka_dims": [384, 192, 96, 48],
        "loss.matryoshka_weights": [1.0, 1.0, 1.0, 1.0],
        "seed": 1,
    }


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "mpnet"])
def test_random_init_and_import_agree_on_the_family_defaults(tmp_path, family):
    """A random-init model exported and imported again has the same config, for a tokenizer whose
    padding id (BERT's [PAD] = 0) is not the family's default (RoBERTa/MPNet: 1)."""
    m = main.build_model(base.get_config(f"smoke,model.model_type={family}"))
    assert m.pad_id == 0
    out = convert.export_model(m, str(tmp_path / family))
    assert convert.load_model(out).config == m.config


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(record_loss_trace.RUNS))
def test_guide_off_is_bit_identical_to_before_the_guide(tmp_path, run):
    """loss.guide = '' reproduces, bit for bit, the losses, gradient norms and final params that
    the code before the guided loss produced (tools/record_loss_trace.py made the trace). The bits
    depend on the CPU: the fixture holds a trace per CPU; on one it lacks, the losses and gradient
    norms must agree to 1e-4 relative with every recorded CPU's."""
    with open(os.path.join(ROOT, "tests", "fixtures", "smoke_loss_trace.json")) as f:
        traces = json.load(f)["traces"]
    got = record_loss_trace.trace(record_loss_trace.RUNS[run], str(tmp_path))
    mine = [t["runs"][run] for t in traces if t["cpu"] == record_loss_trace.cpu_signature()]
    if mine:
        assert got == mine[0]
        return
    for t in traces:
        for key in ("loss", "grad_norm"):
            want = [float.fromhex(x) for x in t["runs"][run][key]]
            assert [float.fromhex(x) for x in got[key]] == pytest.approx(want, rel=1e-4), t["cpu"]


@pytest.mark.slow
def test_guided_run_resumes_exactly_with_the_initial_guide(tmp_path):
    """loss.guide='init' is the starting model also after a resume: a run resumed from its
    step-2 checkpoint ends with the same params as the straight run. The guide's params are
    no part of the checkpoint."""
    c = smoke(**{"loss.guide": "init", "total_steps": 4, "checkpoint_every": 2})
    c.compilation_cache_dir = ""
    straight = main.train(c, str(tmp_path))
    assert straight["last"]["guide_masked"] > 0  # the guide masks in-batch candidates
    records = [json.loads(x) for x in open(tmp_path / "metrics.jsonl") if '"loss"' in x]
    assert all("guide_masked" in r for r in records)
    ckpt = tmp_path / checkpoint.CHECKPOINTS
    names = set(safetensors.numpy.load_file(str(ckpt / f"{2:09d}" / "model" / "model.safetensors")))
    plain = smoke(total_steps=2, checkpoint_every=2)
    plain.compilation_cache_dir = ""
    main.train(plain, str(tmp_path / "plain"))
    plain_file = tmp_path / "plain" / checkpoint.CHECKPOINTS / f"{2:09d}" / "model"
    plain_file = plain_file / "model.safetensors"
    assert names == set(safetensors.numpy.load_file(str(plain_file)))
    shutil.rmtree(ckpt / f"{4:09d}")
    resumed = main.train(c, str(tmp_path))
    chex.assert_trees_all_equal(resumed["params"], straight["params"])


@pytest.mark.slow
def test_guided_matryoshka_run_trains_every_prefix(tmp_path):
    """loss.guide and loss.matryoshka_dims compose: the guided step ranks every prefix (per-prefix
    losses logged) and the guide still masks."""
    c = smoke(**{"loss.guide": "init", "loss.matryoshka_dims": (32, 16), "total_steps": 2})
    c.compilation_cache_dir = ""
    last = main.train(c, str(tmp_path))["last"]
    assert last["guide_masked"] > 0
    assert {"matryoshka_loss_32", "matryoshka_loss_16"} <= set(last)
    assert last["loss"] == pytest.approx(last["matryoshka_loss_32"] + last["matryoshka_loss_16"])


@pytest.mark.slow
def test_guide_from_a_model_folder(tmp_path):
    """Any model with the same tokenizer guides (here all-MiniLM-L6-v2 guides the tiny model);
    another vocabulary is an error naming the field. With margin 0 all-MiniLM-L6-v2 masks
    nothing at step 2 of the smoke run (guide_masked 0.0, also before the rebase onto issue 18),
    so a margin makes it mask."""
    c = smoke(
        **{"loss.guide": base._reference_model_dir(), "loss.guide_margin": 0.5, "total_steps": 2}
    )
    c.compilation_cache_dir = ""
    out = main.train(c, str(tmp_path / "run"))
    assert np.isfinite(out["last"]["loss"]) and out["last"]["guide_masked"] > 0
    other = smoke(**{"loss.guide": os.path.join(ROOT, "tests", "fixtures", "tiny_roberta")})
    with pytest.raises(
        runconfig.ConfigError, match="config field loss.guide: .* another tokenizer"
    ):
        main.train(other, str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()  # refused before anything was written


def test_scifact_mined_reads_the_mined_folder():
    from configs import scifact, scifact_mined

    c, plain = scifact_mined.get_config(), scifact.get_config()
    assert c.data.dir == scifact_mined.MINED_DIR != plain.data.dir
    assert (c.data.max_negatives, plain.data.max_negatives) == (1, 0)
    assert c.total_steps == plain.total_steps and c.batch_size == plain.batch_size
