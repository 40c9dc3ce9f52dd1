"""The trainer end to end on the tiny ':smoke' config: resume after kill -9, device counts,
non-finite loss, config validation."""

import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

import checkpoint
import convert
import main
from configs import base

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


def _run_cli(workdir, kill_at=0):
    env = dict(os.environ, SENTEMB_KILL_AT_STEP=str(kill_at))
    cmd = [
        sys.executable,
        os.path.join(ROOT, "main.py"),
        "--config=configs/base.py:smoke",
        f"--workdir={workdir}",
        "--config.checkpoint_every=4",
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_kill_and_resume_is_exact(tmp_path):
    straight = tmp_path / "straight"
    r = _run_cli(straight)
    assert r.returncode == 0, r.stderr[-3000:]
    killed = tmp_path / "killed"
    r = _run_cli(killed, kill_at=6)
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
def test_corrupt_latest_checkpoint_falls_back(tmp_path, capsys):
    cfg = smoke(total_steps=4, checkpoint_every=2)
    main.train(cfg, str(tmp_path))
    ckpts = tmp_path / checkpoint.CHECKPOINTS
    with open(ckpts / f"{4:09d}" / "opt_state.safetensors", "wb") as f:
        f.write(b"garbage")
    cfg.total_steps = 6
    main.train(cfg, str(tmp_path))
    out = capsys.readouterr()
    assert "unreadable" in out.err and "resuming from step 2" in out.out


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("batch_size", 12, "config field batch_size: 12 is not a positive multiple of the 8"),
        ("model.pooling", "sum", "config field model.pooling: 'sum'"),
        ("loss.similarity", "l2", "config field loss.similarity: 'l2'"),
        ("init_from", "/nonexistent/model", "config field init_from: '/nonexistent/model'"),
        ("data.dir", "/nonexistent/data", "config field data.dir"),
        ("warmup_steps", 100, "config field warmup_steps"),
        ("loss.cache_chunk_size", 3, "config field loss.cache_chunk_size"),
        ("model.dtype", "float16", "config field model.dtype"),
    ],
)
def test_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        main.validate(smoke(**{field: value}), 8)


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
    ],
)
def test_ablation_configs_change_their_field(name, field, value):
    import importlib

    cfg = importlib.import_module(f"configs.{name}").get_config("smoke")
    group, key = field.split(".")
    assert cfg[group][key] == value != base.get_config("smoke")[group][key]
    main.validate(cfg, 8)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "mpnet"])
def test_random_init_and_import_agree_on_the_family_defaults(tmp_path, family):
    """A random-init model exported and imported again has the same config, for a tokenizer whose
    padding id (BERT's [PAD] = 0) is not the family's default (RoBERTa/MPNet: 1)."""
    m = main.build_model(base.get_config(f"smoke,model.model_type={family}"))
    assert m.pad_id == 0
    out = convert.export_model(m, str(tmp_path / family))
    assert convert.load_model(out).config == m.config
