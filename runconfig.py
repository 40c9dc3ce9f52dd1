"""The run's config: every field checked before anything compiles, its copy in the workdir, and
what a resumed run may change.

Every field of configs/base.py has an entry in FIELDS (a test checks): its type is the type of
base.py's default (an int field takes no 1.5, a tuple of ints no string), its check says what
else must hold, and `resume` says whether the checkpoints of a workdir depend on it:

- KEEP: a checkpoint is unusable under another value (architecture, vocabulary, pooling, the seed
  and the data files that the loader's saved position points into). A resume that changes one
  stops before anything is compiled or written, with one message naming every such field, the
  old and new values and the workdir.
- CONTINUES: only changes how training goes on (learning rate, dropout, total_steps, batch,
  logging, evaluation, checkpoint cadence); the change is logged in DIR/metrics.jsonl at the
  step the run resumes from.

DIR/run_config.json holds the config of the latest start (JSON, dotted field names); when a start
changes it, the previous file is kept as DIR/run_config_history/<step>.json, <step> being the step
from which the new config applies.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Callable
from typing import Any

import ml_collections

import checkpoint
import evaluate
import loss as loss_lib
import model as model_lib
from configs import base  # the defaults define the types

CONFIG_FILE = "run_config.json"  # DIR/run_config.json: the config of the latest start
HISTORY_DIR = "run_config_history"  # DIR/run_config_history/<step>.json: the configs it replaced
KEEP, CONTINUES = "keep", "continues"

# A check gets (value, whole config, number of devices) and returns why the value is wrong, or
# None. It runs only after every field has passed its type check.
Check = Callable[[Any, ml_collections.ConfigDict, int], "str | None"]


class ConfigError(ValueError):
    """A config field with a wrong type or value; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Field:
    resume: str  # KEEP: the checkpoints depend on it; CONTINUES: a resume may change it
    check: Check | None = None  # beyond the type
    random_init_only: bool = False  # used (checked, kept on resume) only when init_from == ''


def _positive(v, c, n):
    return None if v > 0 and math.isfinite(v) else f"{v!r} must be > 0"


def _at_least(lo):
    return lambda v, c, n: None if v >= lo and math.isfinite(v) else f"{v!r} must be >= {lo}"


def _one_of(choices):
    return lambda v, c, n: None if v in choices else f"{v!r} not in {choices}"


def _batch_size(v, c, n):
    return None if v > 0 and v % n == 0 else f"{v} is not a positive multiple of the {n} devices"


def _warmup(v, c, n):
    return None if 0 <= v <= c.total_steps else f"{v} not in [0, total_steps={c.total_steps}]"


def _dropout(v, c, n):
    return None if 0 <= v < 1 else f"{v!r} must lie in [0, 1)"


def _init_from(v, c, n):
    if v and not os.path.isdir(v):
        return f"{v!r} is not a folder (an HF/ST model folder, or '')"
    return None


def _tokenizer(v, c, n):
    if not os.path.exists(os.path.join(v, "tokenizer.json")):
        return f"no tokenizer.json in {v!r} (random init)"
    return None


def _hidden_size(v, c, n):
    if v <= 0 or v % max(c.model.num_heads, 1):
        return f"{v} is not a positive multiple of model.num_heads={c.model.num_heads}"
    return None


def _data_dir(v, c, n):
    if not c.data.config_file and not os.path.isdir(v):
        return f"{v!r} is not a folder"
    return None


def _config_file(v, c, n):
    return f"{v!r} does not exist" if v and not os.path.isfile(v) else None


def _buckets(v, c, n):
    if any(not 0 < b <= c.data.max_seq_len for b in v):
        return f"{tuple(v)} must lie in [1, max_seq_len={c.data.max_seq_len}]"
    return None


def _datasets_per_batch(v, c, n):
    return None if 1 <= v <= c.batch_size else f"{v} must lie in [1, batch_size={c.batch_size}]"


def _cache_chunk(v, c, n):
    local = c.batch_size // n
    if v < 0 or (v and local % v):
        return f"{v} does not divide the per-device batch {local}"
    return None


def _matryoshka_dims(v, c, n):
    if any(d <= 0 for d in v) or len(set(v)) != len(v):
        return f"{tuple(v)} must be distinct positive ints (or () = off)"
    return None  # their bound, the model's width, is checked once the model is built


def _matryoshka_weights(v, c, n):
    dims = tuple(c.loss.matryoshka_dims)
    if v and len(v) != len(dims):
        return f"{tuple(v)} must give one weight per dim of {dims} (or () = all 1.0)"
    if any(not (w >= 0 and math.isfinite(w)) for w in v):
        return f"{tuple(v)} must be numbers >= 0"
    return None


def _guide(v, c, n):
    if v not in ("", "init") and not os.path.isdir(v):
        return f"{v!r} is not '', 'init' or a model folder"
    return None


def _sts_files(v, c, n):
    for path in v:  # read now: a bad score should stop the run before training, not after it
        if not os.path.exists(path):
            return f"{path!r} does not exist"
        try:
            evaluate.read_sts(path)
        except evaluate.DataFileError as e:
            return str(e)
    return None


def _retrieval_dirs(v, c, n):
    for path in v:
        for name in ("corpus.jsonl.gz", "queries.jsonl.gz", "qrels/test.tsv"):
            if not os.path.exists(os.path.join(path, name)):
                return f"{path!r} has no {name} (BEIR layout)"
    return None


FIELDS: dict[str, Field] = {
    "init_from": Field(KEEP, _init_from),  # the architecture and vocabulary come from it
    "seed": Field(KEEP, _at_least(0)),  # the loader's position is one in this seed's shuffle
    "batch_size": Field(CONTINUES, _batch_size),
    "total_steps": Field(CONTINUES, _positive),
    "warmup_steps": Field(CONTINUES, _warmup),
    "lr": Field(CONTINUES, _positive),
    "weight_decay": Field(CONTINUES, _at_least(0)),
    "grad_clip": Field(CONTINUES, _at_least(0)),
    "log_every": Field(CONTINUES, _positive),
    "eval_every": Field(CONTINUES, _at_least(0)),
    "eval_before": Field(CONTINUES),
    "checkpoint_every": Field(CONTINUES, _positive),
    "keep_checkpoints": Field(CONTINUES, _positive),
    "step_timeout_s": Field(CONTINUES, _at_least(0)),
    "compilation_cache_dir": Field(CONTINUES),
    "model.model_type": Field(KEEP, _one_of(model_lib.MODEL_TYPES), random_init_only=True),
    "model.hidden_size": Field(KEEP, _hidden_size, random_init_only=True),
    "model.num_layers": Field(KEEP, _positive, random_init_only=True),
    "model.num_heads": Field(KEEP, _positive, random_init_only=True),
    "model.intermediate_size": Field(KEEP, _positive, random_init_only=True),
    "model.max_position_embeddings": Field(KEEP, _positive, random_init_only=True),
    "model.tokenizer": Field(KEEP, _tokenizer, random_init_only=True),
    "model.dropout_rate": Field(CONTINUES, _dropout),
    "model.pooling": Field(KEEP, _one_of(model_lib.POOLING_MODES)),
    "model.normalize": Field(KEEP),
    "model.dtype": Field(CONTINUES, _one_of(model_lib.DTYPES)),
    "data.dir": Field(KEEP, _data_dir),  # the loader saved byte offsets into these files
    "data.config_file": Field(KEEP, _config_file),
    "data.temperature": Field(CONTINUES, _positive),
    "data.max_seq_len": Field(CONTINUES, _at_least(2)),
    "data.bucket_lengths": Field(CONTINUES, _buckets),
    "data.datasets_per_batch": Field(CONTINUES, _datasets_per_batch),
    "data.steps_per_dataset": Field(CONTINUES, _at_least(1)),
    "data.shuffle_buffer": Field(CONTINUES, _at_least(1)),  # a saved block keeps its size
    "data.max_negatives": Field(CONTINUES, _at_least(0)),
    "data.prefetch": Field(CONTINUES, _at_least(0)),
    "data.packing": Field(CONTINUES),
    "data.max_segments": Field(CONTINUES, _at_least(1)),
    # text before each column's texts (counted in max_seq_len): what the model is fed, like the
    # data itself, not what the checkpoint depends on; the export names the final prompts
    "data.prompts.anchor": Field(CONTINUES),
    "data.prompts.positive": Field(CONTINUES),
    "data.prompts.negatives": Field(CONTINUES),
    "loss.scale": Field(CONTINUES, _positive),
    "loss.similarity": Field(CONTINUES, _one_of(loss_lib.SIMILARITIES)),
    "loss.symmetric": Field(CONTINUES),
    "loss.gather": Field(CONTINUES),
    "loss.cache_chunk_size": Field(CONTINUES, _cache_chunk),
    # the loss, not the parameters: a resume may change them, as it may loss.scale
    "loss.matryoshka_dims": Field(CONTINUES, _matryoshka_dims),
    "loss.matryoshka_weights": Field(CONTINUES, _matryoshka_weights),
    # The guide (GISTEmbed) is frozen, outside the checkpoints, and 'init' is the same start
    # model on every resume: like loss.scale, a change only changes the loss from here on.
    "loss.guide": Field(CONTINUES, _guide),
    "loss.guide_margin": Field(CONTINUES, _at_least(0)),
    "loss.guide_margin_strategy": Field(CONTINUES, _one_of(loss_lib.MARGIN_STRATEGIES)),
    "loss.guide_contrast_anchors": Field(CONTINUES),
    "loss.guide_contrast_positives": Field(CONTINUES),
    "eval.sts_files": Field(CONTINUES, _sts_files),
    "eval.retrieval_dirs": Field(CONTINUES, _retrieval_dirs),
    "eval.batch_size": Field(CONTINUES, _positive),
}
# Element types of the tuple fields whose default in base.py is empty.
TUPLE_ITEMS = {
    "data.bucket_lengths": int,
    "eval.sts_files": str,
    "eval.retrieval_dirs": str,
    "loss.matryoshka_dims": int,
    "loss.matryoshka_weights": float,
}


def leaves(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """Dotted field name -> value, for every leaf of a (nested) config."""
    out: dict[str, Any] = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, ml_collections.ConfigDict | dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[prefix + key] = value

    walk(config, "")
    return out


def _kind(value: Any, name: str) -> str:
    """Describes a default's type as validate() enforces it."""
    if isinstance(value, tuple):
        item = TUPLE_ITEMS.get(name) or (type(value[0]) if value else str)
        return f"a tuple of {item.__name__}"
    return {bool: "a bool", int: "an int", float: "a float", str: "a string"}[type(value)]


def _type_ok(value: Any, default: Any, name: str) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    if isinstance(default, tuple):
        item = TUPLE_ITEMS.get(name) or (type(default[0]) if default else str)
        return isinstance(value, tuple | list) and all(_type_ok(x, item(), name) for x in value)
    return isinstance(value, type(default))


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises ConfigError naming the first bad field: unknown, missing, wrong type, bad value."""
    defaults, got = leaves(base.base()), leaves(config)
    for name in got:
        if name not in defaults:
            raise ConfigError(f"config field {name}: unknown (not in configs/base.py)")
    for name, default in defaults.items():
        if name not in got:
            raise ConfigError(f"config field {name}: missing (see configs/base.py)")
        if not _type_ok(got[name], default, name):
            raise ConfigError(
                f"config field {name}: {got[name]!r} should be {_kind(default, name)}"
            )
    random_init = config.init_from == ""
    for name, field in FIELDS.items():
        if field.check is None or (field.random_init_only and not random_init):
            continue
        why = field.check(got[name], config, num_devices)
        if why:
            raise ConfigError(f"config field {name}: {why}")


# ----------------------------------------------------------------------------- resume


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as DIR/run_config.json holds it: dotted names, JSON values (tuples as lists)."""
    return json.loads(json.dumps(leaves(config), sort_keys=True))


def read_saved(workdir: str) -> dict[str, Any] | None:
    """DIR/run_config.json, or None for a workdir without one."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise checkpoint.ResumeError(f"{path}: unreadable ({e}); fix or remove it") from e
    if not isinstance(saved, dict):
        raise checkpoint.ResumeError(f"{path}: expected a JSON object of config fields")
    return saved


def changes(saved: dict[str, Any] | None, config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """{field: (saved value, this run's value)} for every field that differs from run_config.json.

    A field one side does not have (a field added or removed by a code update) counts as a
    change with value None on that side.
    """
    if saved is None:
        return {}
    new = as_json(config)
    return {
        k: (saved.get(k), new.get(k))
        for k in sorted(set(saved) | set(new))
        if saved.get(k) != new.get(k)
    }


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> dict[str, tuple]:
    """This run's changes to DIR/run_config.json; ResumeError if the checkpoints depend on one.

    Reads only: nothing in the workdir is written or changed here.
    """
    saved = read_saved(workdir)
    diff = changes(saved, config)
    if not diff or not checkpoint.checkpoint_dirs(workdir):
        return diff
    random_init = "" in (saved.get("init_from"), config.init_from)
    blocking = [
        name
        for name, (old, new) in diff.items()
        if name in FIELDS
        and FIELDS[name].resume == KEEP
        and old is not None
        and new is not None
        and (random_init or not FIELDS[name].random_init_only)
    ]
    if blocking:
        listed = "; ".join(f"{n}: {diff[n][0]!r} -> {diff[n][1]!r}" for n in blocking)
        raise checkpoint.ResumeError(
            f"workdir {workdir}: its checkpoints were written with another config ({listed}), "
            "and they depend on these fields. Nothing was changed: use a new workdir, or run "
            f"with the config in {os.path.join(workdir, CONFIG_FILE)}."
        )
    return diff


def save(workdir: str, config: ml_collections.ConfigDict, step: int) -> str | None:
    """Writes DIR/run_config.json; a different previous one is kept in DIR/run_config_history/.

    Returns the kept file's path relative to the workdir (None when nothing was replaced).
    Every file is written under a temporary name and renamed: no moment without run_config.json.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    saved = read_saved(workdir)
    new = as_json(config)
    if saved == new:
        return None
    kept = None
    if saved is not None:
        os.makedirs(os.path.join(workdir, HISTORY_DIR), exist_ok=True)
        kept, i = os.path.join(HISTORY_DIR, f"{step:09d}.json"), 1
        while os.path.exists(os.path.join(workdir, kept)):
            i += 1
            kept = os.path.join(HISTORY_DIR, f"{step:09d}-{i}.json")
        shutil.copyfile(path, os.path.join(workdir, kept + ".tmp"))
        os.replace(os.path.join(workdir, kept + ".tmp"), os.path.join(workdir, kept))
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(new, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)
    return kept
