"""runconfig.py: every config field's type and value checked, DIR/run_config.json, and which changes
a resume may make (the end-to-end resume runs are in main_test.py)."""

import json
import os

import ml_collections
import pytest

import checkpoint
import convert
import runconfig
from configs import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke(**overrides) -> ml_collections.ConfigDict:
    """The ':smoke' config with `overrides`, type safety off: any value gets through to validate,
    as from a config file that builds its ConfigDict itself."""
    flat = runconfig.leaves(base.get_config("smoke"))
    flat.update(overrides)
    nested: dict = {}
    for name, value in flat.items():
        *groups, key = name.split(".")
        node = nested
        for g in groups:
            node = node.setdefault(g, {})
        node[key] = value
    return ml_collections.ConfigDict(nested, type_safe=False)


def test_every_field_of_base_has_a_rule():
    """A field added to configs/base.py needs an entry in runconfig.FIELDS (its check and what
    a resume may do with it)."""
    assert sorted(runconfig.FIELDS) == sorted(runconfig.leaves(base.base()))
    assert {f.resume for f in runconfig.FIELDS.values()} == {runconfig.KEEP, runconfig.CONTINUES}


def _wrong_type(value):
    """A value of another kind than `value`'s: what a typo in a config file gives."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, int | float):
        return "12"
    if isinstance(value, str):
        return 3
    return "not a tuple"


@pytest.mark.parametrize("name", sorted(runconfig.leaves(base.base())))
def test_a_wrong_type_is_refused_for_every_field(name):
    default = runconfig.leaves(base.base())[name]
    config = smoke(**{name: _wrong_type(default)})
    with pytest.raises(runconfig.ConfigError, match=f"config field {name}: .* should be "):
        runconfig.validate(config, 8)


@pytest.mark.parametrize(
    "name, value, wants",
    [
        ("total_steps", 1.5, "an int"),  # a float for an int
        ("data.bucket_lengths", (32, "64"), "a tuple of int"),
        ("eval.sts_files", ("a.tsv", 3), "a tuple of str"),
        ("lr", True, "a float"),  # a bool is not a number here
        ("init_from", None, "a string"),
        ("loss.matryoshka_dims", (32, 16.0), "a tuple of int"),
        ("loss.matryoshka_dims", (32, True), "a tuple of int"),
        ("loss.matryoshka_weights", (1.0, "1"), "a tuple of float"),
    ],
)
def test_type_errors_say_what_the_field_takes(name, value, wants):
    with pytest.raises(runconfig.ConfigError, match=f"config field {name}: .* should be {wants}"):
        runconfig.validate(smoke(**{name: value}), 8)


def test_an_int_is_a_float_and_a_list_a_tuple():
    runconfig.validate(smoke(lr=1, **{"data.bucket_lengths": [16, 32]}), 8)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("batch_size", 12, "12 is not a positive multiple of the 8"),
        ("model.pooling", "sum", "'sum'"),
        ("loss.similarity", "l2", "'l2'"),
        ("init_from", "/nonexistent/model", "'/nonexistent/model' is not a folder"),
        ("data.dir", "/nonexistent/data", "is not a folder"),
        ("warmup_steps", 100, "100 not in"),
        ("loss.cache_chunk_size", 3, "3 does not divide the per-device batch 2"),
        ("model.dtype", "float16", "'float16' not in"),
        ("data.max_segments", 0, "0 must be >= 1"),
        ("data.prefetch", -1, "-1 must be >= 0"),
        ("eval.batch_size", 0, "0 must be > 0"),
        ("grad_clip", -1.0, "-1.0 must be >= 0"),
        ("lr", float("nan"), "nan must be > 0"),
        ("seed", -1, "-1 must be >= 0"),
        ("weight_decay", -0.1, "must be >= 0"),
        ("step_timeout_s", -5, "must be >= 0"),
        ("model.hidden_size", 31, "31 is not a positive multiple of model.num_heads=2"),
        ("model.dropout_rate", 1.0, "must lie in"),
        ("data.temperature", 0.0, "must be > 0"),
        ("data.steps_per_dataset", 0, "must be >= 1"),
        ("data.shuffle_buffer", 0, "must be >= 1"),
        ("data.bucket_lengths", (16, 64), r"\(16, 64\) must lie in \[1, max_seq_len=32\]"),
        ("data.datasets_per_batch", 17, "must lie in"),
        ("data.config_file", "/nonexistent/data_config.json", "does not exist"),
        ("eval.sts_files", ("/nonexistent.tsv",), "does not exist"),
        ("eval.retrieval_dirs", (ROOT,), "has no corpus.jsonl.gz"),
        ("model.tokenizer", ROOT, "no tokenizer.json"),
        ("keep_checkpoints", 0, "must be > 0"),
        ("loss.matryoshka_dims", (32, 32), r"\(32, 32\) must be distinct positive ints"),
        ("loss.matryoshka_dims", (32, 0), "must be distinct positive ints"),
        ("loss.guide", "/nonexistent/guide", "'/nonexistent/guide' is not '', 'init' or a model"),
        ("loss.guide_margin_strategy", "percent", "'percent' not in"),
        ("loss.guide_margin", -0.1, "-0.1 must be >= 0"),
        ("loss.guide_margin", float("nan"), "nan must be >= 0"),
    ],
)
def test_validation_names_the_field(field, value, message):
    with pytest.raises(runconfig.ConfigError, match=f"config field {field}: .*{message}"):
        runconfig.validate(smoke(**{field: value}), 8)


@pytest.mark.parametrize(
    "weights, message",
    [
        ((1.0,), r"\(1.0,\) must give one weight per dim of \(32, 16\)"),
        ((1.0, -1.0), r"\(1.0, -1.0\) must be numbers >= 0"),
        ((1.0, float("inf")), r"\(1.0, inf\) must be numbers >= 0"),
    ],
)
def test_matryoshka_weights_match_the_dims(weights, message):
    fields = {"loss.matryoshka_dims": (32, 16), "loss.matryoshka_weights": weights}
    with pytest.raises(
        runconfig.ConfigError, match=f"config field loss.matryoshka_weights: {message}"
    ):
        runconfig.validate(smoke(**fields), 8)
    runconfig.validate(smoke(**{**fields, "loss.matryoshka_weights": (1, 0.5)}), 8)
    runconfig.validate(smoke(**{**fields, "loss.matryoshka_weights": ()}), 8)  # all 1.0


def test_random_init_fields_are_checked_only_for_random_init():
    folder = os.path.join(ROOT, "tests", "fixtures", "tiny_bert")
    runconfig.validate(smoke(init_from=folder, **{"model.num_heads": 0}), 8)
    with pytest.raises(runconfig.ConfigError, match="config field model.num_heads"):
        runconfig.validate(smoke(**{"model.num_heads": 0}), 8)


def test_unknown_and_missing_fields_are_named():
    with pytest.raises(runconfig.ConfigError, match="config field loss.temperature: unknown"):
        runconfig.validate(smoke(**{"loss.temperature": 2.0}), 8)
    config = smoke()
    del config["eval"]["batch_size"]
    with pytest.raises(runconfig.ConfigError, match="config field eval.batch_size: missing"):
        runconfig.validate(config, 8)


def test_an_sts_file_with_a_bad_score_stops_the_run_before_training(tmp_path):
    path = tmp_path / "sts.tsv"
    path.write_text("sentence1\tsentence2\tscore\na\tb\t1\nc\td\thigh\n")
    with pytest.raises(runconfig.ConfigError, match=rf"{path}:3: score 'high' is not a number"):
        runconfig.validate(smoke(**{"eval.sts_files": (str(path),)}), 8)


# ----------------------------------------------------------------------------- resume


def _workdir(tmp_path, config, checkpoints=True):
    """A workdir as a run of `config` leaves it (run_config.json; an empty checkpoint folder)."""
    runconfig.save(str(tmp_path), config, 0)
    if checkpoints:
        os.makedirs(tmp_path / checkpoint.CHECKPOINTS / f"{4:09d}")
    return str(tmp_path)


def test_checkpoint_incompatible_changes_stop_naming_every_field(tmp_path):
    workdir = _workdir(tmp_path, base.get_config("smoke"))
    new = base.get_config("smoke,model.hidden_size=64,model.pooling=cls,seed=3,lr=0.5")
    with pytest.raises(checkpoint.ResumeError) as err:
        runconfig.check_resume(new, workdir)
    message = str(err.value)
    for part in ("model.hidden_size: 32 -> 64", "model.pooling: 'mean' -> 'cls'", "seed: 0 -> 3"):
        assert part in message
    assert "lr" not in message  # allowed: not among the reasons to stop
    assert f"workdir {workdir}" in message and "use a new workdir" in message


def test_changes_that_only_change_how_training_goes_on_are_returned(tmp_path):
    workdir = _workdir(tmp_path, base.get_config("smoke"))
    new = base.get_config("smoke,model.dropout_rate=0.0,lr=0.5,total_steps=20,log_every=5")
    assert runconfig.check_resume(new, workdir) == {
        "lr": (1e-3, 0.5),
        "log_every": (1, 5),
        "model.dropout_rate": (0.1, 0.0),
        "total_steps": (12, 20),
    }


def test_a_resume_may_change_the_matryoshka_loss(tmp_path):
    """The dims and weights are the loss, like loss.scale: the checkpoint's parameters and
    optimizer state do not depend on them."""
    workdir = _workdir(tmp_path, base.get_config("smoke"))
    new = base.get_config("smoke")
    new.loss.matryoshka_dims, new.loss.matryoshka_weights = (32, 16), (1.0, 0.5)
    assert runconfig.check_resume(new, workdir) == {
        "loss.matryoshka_dims": ([], [32, 16]),
        "loss.matryoshka_weights": ([], [1.0, 0.5]),
    }


def test_a_resume_may_change_the_guide(tmp_path):
    """The guide is frozen and never checkpointed ('init' is the start model on every resume):
    turning it on, off or changing its margin only changes the loss from the resume on."""
    workdir = _workdir(tmp_path, base.get_config("smoke"))
    new = base.get_config("smoke,loss.guide=init,loss.guide_margin=0.05")
    assert runconfig.check_resume(new, workdir) == {
        "loss.guide": ("", "init"),
        "loss.guide_margin": (0.0, 0.05),
    }


def test_without_checkpoints_any_change_is_allowed(tmp_path):
    workdir = _workdir(tmp_path, base.get_config("smoke"), checkpoints=False)
    new = base.get_config("smoke,model.hidden_size=64")
    assert runconfig.check_resume(new, workdir) == {"model.hidden_size": (32, 64)}


def test_architecture_fields_do_not_count_when_init_from_gives_the_architecture(tmp_path):
    folder = os.path.join(ROOT, "tests", "fixtures", "tiny_bert")
    workdir = _workdir(tmp_path, base.get_config(f"smoke,init_from={folder}"))
    new = base.get_config(f"smoke,init_from={folder},model.hidden_size=64")
    assert runconfig.check_resume(new, workdir) == {"model.hidden_size": (32, 64)}
    with pytest.raises(checkpoint.ResumeError, match="init_from"):
        runconfig.check_resume(base.get_config("smoke"), workdir)


def test_config_json_keeps_its_history(tmp_path):
    workdir = str(tmp_path)
    first = base.get_config("smoke")
    assert runconfig.save(workdir, first, 0) is None
    with open(tmp_path / "run_config.json") as f:
        assert json.load(f) == runconfig.as_json(first)
    assert runconfig.save(workdir, first, 4) is None  # unchanged: nothing kept
    assert not (tmp_path / runconfig.HISTORY_DIR).exists()
    kept = runconfig.save(workdir, base.get_config("smoke,lr=0.5"), 8)
    assert kept == os.path.join(runconfig.HISTORY_DIR, f"{8:09d}.json")
    with open(tmp_path / kept) as f:
        assert json.load(f) == runconfig.as_json(first)
    kept2 = runconfig.save(workdir, base.get_config("smoke,lr=0.25"), 8)  # same step again
    assert kept2 == os.path.join(runconfig.HISTORY_DIR, f"{8:09d}-2.json")
    with open(tmp_path / "run_config.json") as f:
        assert json.load(f)["lr"] == 0.25
    assert sorted(os.listdir(tmp_path)) == ["run_config.json", runconfig.HISTORY_DIR]


def test_a_workdir_with_its_run_config_is_still_a_model_path(tmp_path):
    """run_config.json is not named config.json: that would make the workdir look like a model
    folder to convert.resolve_model_dir (evaluate.py --model=DIR)."""
    model = convert.export_model(
        convert.load_model(os.path.join(ROOT, "tests", "fixtures", "tiny_bert")),
        str(tmp_path / checkpoint.CHECKPOINTS / f"{4:09d}" / "model"),
    )
    runconfig.save(str(tmp_path), base.get_config("smoke"), 0)
    assert convert.resolve_model_dir(str(tmp_path)) == model


def test_an_unreadable_config_json_is_named(tmp_path):
    (tmp_path / "run_config.json").write_text("{oops")
    with pytest.raises(checkpoint.ResumeError, match=r"run_config\.json: unreadable"):
        runconfig.check_resume(base.get_config("smoke"), str(tmp_path))
