"""Hugging Face / sentence-transformers folders <-> Haiku params: import, export and the CLI.

    python convert.py --model=PATH --out=DIR

PATH is a model folder (config.json, model.safetensors, tokenizer.json and, where present, the
sentence-transformers files modules.json, 1_Pooling/config.json, sentence_bert_config.json, in the
layout of the published models or the one sentence-transformers 6 saves) or a training workdir
(its latest checkpoint). DIR becomes a sentence-transformers folder that
`SentenceTransformer(DIR)` loads. Every problem with an input folder is reported, before any
compute, as a `ModelFolderError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import haiku as hk
import jax
import numpy as np
import safetensors.numpy
import tokenizers
from absl import app, flags, logging

import checkpoint
import model as model_lib
import model_card

# Files of a tokenizer that export copies verbatim (whichever of them the source folder has).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spm.model",
)
# Constant buffers that transformers saves in some checkpoints and rebuilds itself.
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
MODEL_PREFIXES = ("", "bert.", "roberta.", "distilbert.", "mpnet.", "model.", "0.auto_model.")


class ModelFolderError(ValueError):
    """A model folder that cannot be imported; the message names the file and field."""


@dataclasses.dataclass
class LoadedModel:
    """Everything needed to embed text with, and to export, one model."""

    config: model_lib.EncoderConfig  # architecture
    params: hk.Params  # float32 Haiku params
    tokenizer: tokenizers.Tokenizer  # no padding, truncation at max_seq_length
    pooling: str  # mean | cls | max
    normalize: bool  # L2-normalise the pooled embedding
    max_seq_length: int  # tokens per text, special tokens included
    hf_config: dict[str, Any]  # config.json as read; export updates the architecture fields
    tokenizer_files: dict[str, bytes]  # copied verbatim on export
    extra_tensors: dict[str, np.ndarray]  # tensors we do not use (e.g. the pooler), kept on export
    path: str = ""  # where it was loaded from
    # config_sentence_transformers.json: prompt name -> text prepended before tokenization
    # ("query", "document", ...), the prompt `encode` uses by default, the default truncation.
    prompts: dict[str, str] = dataclasses.field(default_factory=dict)
    default_prompt_name: str | None = None
    truncate_dim: int | None = None  # embeddings cut to their first N dims; None = all D
    readme: bytes | None = None  # the source folder's README.md, re-exported when no card_info
    card_info: dict[str, Any] | None = None  # training facts for the model card (model_card.py)

    @property
    def pad_id(self) -> int:
        return pad_id_of(self.tokenizer, self.config.pad_token_id)

    # sentence-transformers' resolution: encode_query and encode_document take the "query" and
    # "document" prompts ("" when absent), encode the one named by default_prompt_name.
    @property
    def query_prompt(self) -> str:
        return self.prompts.get("query", "")

    @property
    def document_prompt(self) -> str:
        return self.prompts.get("document", "")

    @property
    def default_prompt(self) -> str:
        return self.prompts.get(self.default_prompt_name, "") if self.default_prompt_name else ""

    def embed_fn(self, num_segments: int = 1) -> hk.Transformed:
        return model_lib.make_embed_fn(self.config, self.pooling, self.normalize, num_segments)


def _read_json(path: str) -> Any:
    if not os.path.exists(path):
        raise ModelFolderError(f"{path}: file is missing")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path}: not valid JSON ({e})") from e


def _field(cfg: Mapping[str, Any], key: str, source: str, kind: type = int, default: Any = None):
    if key not in cfg:
        if default is not None:
            return default
        raise ModelFolderError(f"{source}: field {key!r} is missing")
    value = cfg[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ModelFolderError(f"{source}: field {key!r} should be {kind.__name__}, got {value!r}")
    return value


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> model_lib.EncoderConfig:
    """An EncoderConfig from a Hugging Face config.json dict of a supported `model_type`."""
    model_type = hf.get("model_type")
    if model_type not in model_lib.MODEL_TYPES:
        raise ModelFolderError(
            f"{source}: model_type {model_type!r} is not supported (supported: "
            f"{', '.join(model_lib.MODEL_TYPES)})"
        )
    defaults = model_lib.FAMILY_DEFAULTS[model_type]
    act_key = "activation" if model_type == "distilbert" else "hidden_act"
    if hf.get(act_key, "gelu") != "gelu":
        raise ModelFolderError(f"{source}: field {act_key!r} is {hf[act_key]!r}; only 'gelu'")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ModelFolderError(
            f"{source}: field 'position_embedding_type' is "
            f"{hf['position_embedding_type']!r}; only 'absolute'"
        )
    if model_type == "distilbert":
        if hf.get("sinusoidal_pos_embds", False):
            raise ModelFolderError(f"{source}: field 'sinusoidal_pos_embds' true is not supported")
        cfg = model_lib.family_config(  # LayerNorm eps and no token types: fixed in transformers
            model_type,
            vocab_size=_field(hf, "vocab_size", source),
            hidden_size=_field(hf, "dim", source),
            num_layers=_field(hf, "n_layers", source),
            num_heads=_field(hf, "n_heads", source),
            intermediate_size=_field(hf, "hidden_dim", source),
            max_position_embeddings=_field(hf, "max_position_embeddings", source),
            dropout_rate=_field(hf, "dropout", source, float, 0.1),
            attention_dropout_rate=_field(hf, "attention_dropout", source, float, 0.1),
            pad_token_id=_field(hf, "pad_token_id", source, int, defaults["pad_token_id"]),
        )
    else:
        # transformers' MPNetEncoder buckets relative positions into 32 (its default argument),
        # whatever relative_attention_num_buckets says; that field only sizes the table.
        if model_type == "mpnet" and hf.get("relative_attention_num_buckets", 32) != 32:
            raise ModelFolderError(
                f"{source}: field 'relative_attention_num_buckets' is "
                f"{hf['relative_attention_num_buckets']!r}; only 32 (transformers' MPNet always "
                "uses 32 buckets)"
            )
        cfg = model_lib.family_config(  # the position offset follows from pad_token_id
            model_type,
            vocab_size=_field(hf, "vocab_size", source),
            hidden_size=_field(hf, "hidden_size", source),
            num_layers=_field(hf, "num_hidden_layers", source),
            num_heads=_field(hf, "num_attention_heads", source),
            intermediate_size=_field(hf, "intermediate_size", source),
            max_position_embeddings=_field(hf, "max_position_embeddings", source),
            type_vocab_size=(0 if model_type == "mpnet" else _field(hf, "type_vocab_size", source)),
            layer_norm_eps=_field(hf, "layer_norm_eps", source, float),
            dropout_rate=_field(hf, "hidden_dropout_prob", source, float, 0.1),
            attention_dropout_rate=_field(hf, "attention_probs_dropout_prob", source, float, 0.1),
            pad_token_id=_field(hf, "pad_token_id", source, int, defaults["pad_token_id"]),
        )
    try:
        cfg.validate()
    except ValueError as e:
        raise ModelFolderError(f"{source}: {e}") from e
    return cfg


def hf_config_for(cfg: model_lib.EncoderConfig, base: Mapping[str, Any] | None = None) -> dict:
    """config.json contents for `cfg`, keeping the other fields of `base` (the imported file)."""
    out = dict(base or {})
    out["model_type"] = cfg.model_type
    if cfg.model_type == "distilbert":
        out.update(
            architectures=["DistilBertModel"],
            vocab_size=cfg.vocab_size,
            dim=cfg.hidden_size,
            n_layers=cfg.num_layers,
            n_heads=cfg.num_heads,
            hidden_dim=cfg.intermediate_size,
            max_position_embeddings=cfg.max_position_embeddings,
            dropout=cfg.dropout_rate,
            attention_dropout=cfg.attention_dropout_rate,
            activation="gelu",
            sinusoidal_pos_embds=False,
            pad_token_id=cfg.pad_token_id,
        )
        return out
    arch = {"bert": "BertModel", "roberta": "RobertaModel", "mpnet": "MPNetModel"}
    out.update(
        architectures=[arch[cfg.model_type]],
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_dropout_prob=cfg.dropout_rate,
        attention_probs_dropout_prob=cfg.attention_dropout_rate,
        hidden_act="gelu",
        pad_token_id=cfg.pad_token_id,
    )
    if cfg.model_type == "mpnet":
        out["relative_attention_num_buckets"] = cfg.relative_attention_num_buckets
    else:
        out["type_vocab_size"] = cfg.type_vocab_size
        out.setdefault("position_embedding_type", "absolute")
    return out


def load_tokenizer(path: str, max_length: int) -> tokenizers.Tokenizer:
    """A model folder's (or a tokenizer.json file's) fast tokenizer: no padding, truncation.

    Padding is turned off (many tokenizer.json files pin a fixed length, which would make us
    embed padding; our code pads per batch) and texts are truncated at `max_length` tokens.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.exists(path):
        raise ModelFolderError(f"{path}: file is missing (only fast-tokenizer folders are read)")
    try:
        tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise ModelFolderError(f"{path}: not a valid tokenizer file ({e})") from e
    tok.no_padding()
    tok.enable_truncation(max_length=max_length, strategy="longest_first")
    return tok


def pad_id_of(tokenizer: tokenizers.Tokenizer, default: int | None = None) -> int:
    """The id of the tokenizer's padding token ([PAD] = 0 for BERT, <pad> = 1 for RoBERTa).

    A tokenizer without a known padding token gives `default`, or raises when there is none.
    """
    if tokenizer.padding is not None:
        return tokenizer.padding["pad_id"]
    for tok in ("[PAD]", "<pad>", "<|padding|>", "<|pad|>", "[pad]"):
        if (i := tokenizer.token_to_id(tok)) is not None:
            return i
    if default is not None:
        return default
    raise ValueError("tokenizer has no known padding token: pass pad_id explicitly")


def _pooling_mode(pool_cfg: Any, pool_path: str) -> str:
    """'mean', 'cls' or 'max' from a 1_Pooling/config.json of any sentence-transformers version.

    Version 6 writes one `pooling_mode` (a name, or a list of names to concatenate) and, like it,
    we then ignore the older `pooling_mode_*` booleans that earlier versions wrote.
    """
    if not isinstance(pool_cfg, dict):
        raise ModelFolderError(f"{pool_path}: expected a JSON object")
    if "pooling_mode" in pool_cfg:
        mode = pool_cfg["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else mode
        if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
            raise ModelFolderError(
                f"{pool_path}: field 'pooling_mode' should be a name or a list of names"
            )
        if len(modes) != 1 or modes[0] not in model_lib.POOLING_MODES:
            raise ModelFolderError(
                f"{pool_path}: field 'pooling_mode' {mode!r} is not supported "
                f"(one of {', '.join(model_lib.POOLING_MODES)})"
            )
        return modes[0]
    modes = [
        m
        for m, key in (
            ("mean", "pooling_mode_mean_tokens"),
            ("cls", "pooling_mode_cls_token"),
            ("max", "pooling_mode_max_tokens"),
        )
        if pool_cfg.get(key)
    ]
    for key in (
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ):
        if pool_cfg.get(key):
            raise ModelFolderError(f"{pool_path}: field {key!r} is not supported")
    if len(modes) != 1:
        raise ModelFolderError(
            f"{pool_path}: exactly one of pooling_mode_mean_tokens / _cls_token / "
            f"_max_tokens must be true, got {modes or 'none'}"
        )
    return modes[0]


def _read_st_config(path: str, hidden_size: int) -> tuple[dict[str, str], str | None, int | None]:
    """(prompts, default_prompt_name, truncate_dim) of a config_sentence_transformers.json."""
    cfg = _read_json(path) if os.path.exists(path) else {}
    if not isinstance(cfg, dict):
        raise ModelFolderError(f"{path}: expected a JSON object")
    prompts = cfg.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(
        isinstance(k, str) and isinstance(v, str | None) for k, v in prompts.items()
    ):
        raise ModelFolderError(f"{path}: field 'prompts' should map prompt names to strings")
    prompts = {k: v or "" for k, v in prompts.items()}  # null: no prompt, as in ST
    default = cfg.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise ModelFolderError(
            f"{path}: field 'default_prompt_name' {default!r} is not one of the prompts "
            f"{sorted(prompts)}"
        )
    truncate_dim = cfg.get("truncate_dim")
    if truncate_dim is not None and (
        not isinstance(truncate_dim, int) or not 0 < truncate_dim <= hidden_size
    ):
        raise ModelFolderError(
            f"{path}: field 'truncate_dim' {truncate_dim!r} should be an int in [1, {hidden_size}]"
        )
    return prompts, default, truncate_dim


def _read_pooling(folder: str, modules: list[dict]) -> tuple[str, bool, str]:
    """(pooling mode, normalize, transformer sub-folder) from modules.json and 1_Pooling."""
    modules_path = os.path.join(folder, "modules.json")
    transformer_dir, pooling, normalize = "", "mean", False
    if not modules:  # a plain HF folder: sentence-transformers' default is mean pooling
        return pooling, normalize, transformer_dir
    for i, mod in enumerate(modules):
        kind = str(mod.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Transformer":
            transformer_dir = mod.get("path", "")
        elif kind == "Pooling":
            pool_path = os.path.join(folder, mod.get("path", "1_Pooling"), "config.json")
            pool_cfg = _read_json(pool_path)
            pooling = _pooling_mode(pool_cfg, pool_path)
            if pool_cfg.get("include_prompt", True) is not True:
                # We pool over every token, prompt included: sentence-transformers' default.
                raise ModelFolderError(
                    f"{pool_path}: field 'include_prompt' false (prompt tokens left out of the "
                    "pooling) is not supported"
                )
        elif kind == "Normalize":
            normalize = True
        else:
            raise ModelFolderError(
                f"{modules_path}: module {i} type {mod.get('type')!r} is not supported "
                "(Transformer, Pooling, Normalize)"
            )
    return pooling, normalize, transformer_dir


def resolve_model_dir(path: str) -> str:
    """A model folder, or a training workdir's latest checkpoint (then its export)."""
    if not os.path.exists(path):
        raise ModelFolderError(f"{path}: no such model folder or workdir")
    if os.path.exists(os.path.join(path, "config.json")) or os.path.exists(
        os.path.join(path, "modules.json")
    ):
        return path
    ckpt = checkpoint.latest_dir(path)
    if ckpt is not None:
        return os.path.join(ckpt, "model")
    if os.path.exists(os.path.join(path, "export", "config.json")):
        return os.path.join(path, "export")
    raise ModelFolderError(
        f"{path}: neither a model folder (config.json) nor a training workdir "
        f"({checkpoint.CHECKPOINTS}/ or export/)"
    )


def load_model(path: str) -> LoadedModel:
    """Import a HF / sentence-transformers folder or a training workdir's latest checkpoint."""
    folder = resolve_model_dir(path)
    modules_path = os.path.join(folder, "modules.json")
    modules = _read_json(modules_path) if os.path.exists(modules_path) else []
    if not isinstance(modules, list):
        raise ModelFolderError(f"{modules_path}: expected a JSON list of modules")
    pooling, normalize, sub = _read_pooling(folder, modules)
    tdir = os.path.join(folder, sub)

    config_path = os.path.join(tdir, "config.json")
    hf = _read_json(config_path)
    if not isinstance(hf, dict):
        raise ModelFolderError(f"{config_path}: expected a JSON object")
    cfg = config_from_hf(hf, config_path)

    st_path = os.path.join(folder, "sentence_bert_config.json")
    st_cfg = _read_json(st_path) if os.path.exists(st_path) else {}
    max_len, source = st_cfg.get("max_seq_length"), f"{st_path}: field 'max_seq_length'"
    if max_len is None:  # sentence-transformers 6 keeps the limit in the tokenizer config
        positions = cfg.max_position_embeddings - cfg.position_offset
        tok_path = os.path.join(tdir, "tokenizer_config.json")
        tok_cfg = _read_json(tok_path) if os.path.exists(tok_path) else {}
        tok_max = tok_cfg.get("model_max_length") if isinstance(tok_cfg, dict) else None
        if isinstance(tok_max, int) and tok_max <= positions:
            max_len, source = tok_max, f"{tok_path}: field 'model_max_length'"
        else:  # absent, or transformers' ~1e30 for "no limit": the position table's, <= 512
            max_len = min(512, positions)
    if not isinstance(max_len, int) or max_len <= 0:
        raise ModelFolderError(f"{source} should be a positive int")
    if max_len + cfg.position_offset > cfg.max_position_embeddings:
        raise ModelFolderError(
            f"{source} {max_len} exceeds the position table "
            f"({cfg.max_position_embeddings} rows, offset {cfg.position_offset}) of {config_path}"
        )
    tokenizer = load_tokenizer(tdir, max_len)

    weights_path = os.path.join(tdir, "model.safetensors")
    if not os.path.exists(weights_path):
        raise ModelFolderError(f"{weights_path}: file is missing (only safetensors are read)")
    try:
        tensors = safetensors.numpy.load_file(weights_path)
    except Exception as e:  # safetensors raises its own error types
        raise ModelFolderError(f"{weights_path}: not a valid safetensors file ({e})") from e
    first = next(iter(model_lib.hf_name_table(cfg).values()))[0]
    prefix = next((p for p in MODEL_PREFIXES if p + first in tensors), None)
    if prefix is None:
        raise ModelFolderError(f"{weights_path}: tensor {first!r} is missing")
    unprefixed = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        params = model_lib.params_from_hf(unprefixed, cfg, source=weights_path)
    except ValueError as e:
        raise ModelFolderError(str(e)) from e
    used = {name for name, _ in model_lib.hf_name_table(cfg).values()}
    # float16 / bfloat16 files (common on the Hub) are upcast: params and extras are float32.
    extra = {
        k: v.astype(np.float32) if v.dtype.name in ("float16", "bfloat16") else v
        for k, v in unprefixed.items()
        if k not in used and k not in _BUFFERS
    }
    # Other tensors (a pooler, a head) are kept for export; one inside the encoder that the
    # config does not describe (a seventh layer for six) means weights and config disagree.
    encoder_parts = {name.split(".")[0] for name in used}
    stray = sorted(k for k in extra if k.split(".")[0] in encoder_parts)
    if stray:
        raise ModelFolderError(
            f"{weights_path}: tensor {prefix + stray[0]!r} is not part of the encoder that "
            f"{config_path} describes ({cfg.model_type}, {cfg.num_layers} layers)"
            + (f"; {len(stray) - 1} more such tensors" if len(stray) > 1 else "")
        )

    tok_files = {}
    for name in TOKENIZER_FILES:
        p = os.path.join(tdir, name)
        if os.path.exists(p):
            with open(p, "rb") as f:
                tok_files[name] = f.read()
    prompts, default_prompt, truncate_dim = _read_st_config(
        os.path.join(folder, "config_sentence_transformers.json"), cfg.hidden_size
    )
    readme = None
    if os.path.exists(os.path.join(folder, "README.md")):
        with open(os.path.join(folder, "README.md"), "rb") as f:
            readme = f.read()
    return LoadedModel(
        config=cfg,
        params=jax.tree.map(np.asarray, params),
        tokenizer=tokenizer,
        pooling=pooling,
        normalize=normalize,
        max_seq_length=max_len,
        hf_config=hf,
        tokenizer_files=tok_files,
        extra_tensors=extra,
        path=folder,
        prompts=prompts,
        default_prompt_name=default_prompt,
        truncate_dim=truncate_dim,
        readme=readme,
    )


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def export_model(m: LoadedModel, out_dir: str, params: hk.Params | None = None) -> str:
    """Write a sentence-transformers folder of `params` (default `m.params`); returns out_dir.

    With it a README.md: the model card of `m.card_info` (set by the trainer), else the source
    folder's own README.md, else a card of the architecture alone (model_card.py).
    """
    params = m.params if params is None else params
    os.makedirs(out_dir, exist_ok=True)
    tensors = dict(m.extra_tensors)
    tensors.update(model_lib.params_to_hf(jax.device_get(params), m.config))
    safetensors.numpy.save_file(
        tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"}
    )
    _write_json(os.path.join(out_dir, "config.json"), hf_config_for(m.config, m.hf_config))
    for name, data in m.tokenizer_files.items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if m.normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    _write_json(os.path.join(out_dir, "modules.json"), modules)
    os.makedirs(os.path.join(out_dir, "1_Pooling"), exist_ok=True)
    _write_json(
        os.path.join(out_dir, "1_Pooling", "config.json"),
        {
            "word_embedding_dimension": m.config.hidden_size,
            "pooling_mode_cls_token": m.pooling == "cls",
            "pooling_mode_mean_tokens": m.pooling == "mean",
            "pooling_mode_max_tokens": m.pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    _write_json(
        os.path.join(out_dir, "sentence_bert_config.json"),
        {"max_seq_length": m.max_seq_length, "do_lower_case": False},
    )
    st_config = {
        "__version__": {"sentence_transformers": "2.0.0", "exported_by": "jax-sentence-embed"},
        "model_type": "SentenceTransformer",
        # sentence-transformers saves both keys always ("" = none); other names are kept.
        "prompts": {"query": m.query_prompt, "document": m.document_prompt, **m.prompts},
        "default_prompt_name": m.default_prompt_name,
        "similarity_fn_name": "cosine",
    }
    if m.truncate_dim is not None:
        st_config["truncate_dim"] = m.truncate_dim
    _write_json(os.path.join(out_dir, "config_sentence_transformers.json"), st_config)
    with open(os.path.join(out_dir, "README.md"), "wb") as f:
        f.write(model_card.readme_for(m, out_dir))
    return out_dir


def main(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:  # JAX's INFO lines (backend probe) on request
        logging.set_verbosity(logging.WARNING)
    del argv
    model_path, out = flags.FLAGS.model, flags.FLAGS.out
    if not model_path or not out:
        raise app.UsageError("--model and --out are required")
    try:
        if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
            raise ModelFolderError(
                f"--out {out}: already exists and is not empty; nothing is "
                "overwritten: give a new folder"
            )
        m = load_model(model_path)
    except ModelFolderError as e:
        sys.exit(f"error: {e}")
    export_model(m, out)
    print(json.dumps({"model": m.path, "out": out, "model_type": m.config.model_type}))


if __name__ == "__main__":
    # Flags are defined only when run as a program: evaluate.py and main.py import this module.
    flags.DEFINE_string("model", None, "model folder or training workdir to export")
    flags.DEFINE_string("out", None, "output sentence-transformers folder")
    app.run(main)
