"""The model card (README.md) that every exported model folder gets.

convert.export_model writes it into each export and each checkpoint's model/ folder. A trained
model's card comes from `m.card_info`, the facts the trainer collects with `training_facts`:
base model, training data (datasets, lines, sampling shares), the config fields that differ from
the base recipe (configs/base.py), steps, batch, wall time, the latest evaluation scores,
Matryoshka dims and prompts. Without them (convert.py on a downloaded model) the source folder's
own README.md is kept, or a card of the architecture alone is written. The section names follow
sentence-transformers' generated cards (Model Details, Usage, Evaluation, Training Details).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # convert imports this module
    import convert

ROOT = os.path.dirname(os.path.abspath(__file__))
# More datasets than this go into a collapsed <details> block (the seed's mixture has 290).
_SHOWN_DATASETS = 20


def _rel(path: str) -> str:
    """A path inside this repository relative to it (cards should not carry /home/... paths)."""
    if isinstance(path, str) and os.path.isabs(path):
        rel = os.path.relpath(path, ROOT)
        if not rel.startswith(".."):
            return rel
    return path


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_diff(config: Any) -> dict[str, Any]:
    """Fields of `config` (a ConfigDict) whose value differs from configs/base.py's base()."""
    from configs import base

    ours, recipe = _flatten(config.to_dict()), _flatten(base.base().to_dict())
    return {k: _rel(v) for k, v in ours.items() if recipe.get(k, object()) != v}


def source_name(readme: bytes | None) -> str:
    """A model folder's name from its README.md: the first '# ' heading outside code blocks."""
    if not readme:
        return ""
    text = readme.decode("utf-8", "replace")
    if text.startswith("---"):  # YAML front matter
        text = text.split("\n---", 1)[-1]
    fenced = False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("# "):
            return line[2:].strip()
    return ""


def training_facts(
    config: Any,
    *,
    base_readme: bytes | None,
    step: int,
    start_step: int,
    wall_s: float,
    datasets: Sequence[tuple[str, int, float]],
    examples: dict[str, int] | None,
    evals: Sequence[dict],
    evals_step: int,
    evals_before: Sequence[dict] = (),
) -> dict[str, Any]:
    """The trainer's facts for the card, JSON-able. `datasets` is (name, lines, share) per dataset
    of the mixture; `examples` the pairs drawn from each (None while the loader is busy)."""
    p = config.data.prompts
    return {
        "base_model": _rel(config.init_from),
        "base_model_name": source_name(base_readme) if config.init_from else "",
        "data_dir": _rel(config.data.config_file or config.data.dir),
        "datasets": [
            {"name": n, "lines": lines, "share": share, "examples": (examples or {}).get(n)}
            for n, lines, share in datasets
        ],
        "step": step,
        "start_step": start_step,
        "total_steps": config.total_steps,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seed": config.seed,
        "max_seq_len": config.data.max_seq_len,
        "wall_s": round(wall_s, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loss": {
            "scale": config.loss.scale,
            "similarity": config.loss.similarity,
            "symmetric": config.loss.symmetric,
            "gather": config.loss.gather,
            "max_negatives": config.data.max_negatives,
            "matryoshka_dims": list(config.loss.matryoshka_dims),
            "matryoshka_weights": list(config.loss.matryoshka_weights)
            or [1.0] * len(config.loss.matryoshka_dims),
        },
        "prompts": {"anchor": p.anchor, "positive": p.positive, "negatives": p.negatives},
        "config_diff": config_diff(config),
        "evals": [dict(r, task=_rel(r["task"])) for r in evals],
        "evals_step": evals_step,
        "evals_before": [dict(r, task=_rel(r["task"])) for r in evals_before],
    }


def _loss_name(facts: dict) -> str:  # sentence-transformers' class for our loss options
    symmetric = "Symmetric" if facts["loss"]["symmetric"] else ""
    return f"MultipleNegatives{symmetric}RankingLoss"


def _front_matter(m: convert.LoadedModel, facts: dict | None) -> str:
    tags = ["sentence-transformers", "sentence-similarity", "feature-extraction"]
    lines = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity"]
    if facts:
        tags.append(f"loss:{_loss_name(facts)}")
        if facts["loss"]["matryoshka_dims"]:
            tags.append("loss:MatryoshkaLoss")
        if facts["base_model_name"]:
            lines.append(f"base_model: {json.dumps(facts['base_model_name'])}")
    lines.append("tags:")
    lines += [f"- {t}" for t in tags]
    lines.append("---")
    return "\n".join(lines)


def _usage(m: convert.LoadedModel, path: str) -> str:
    q = json.dumps(m.query_prompt)
    d = json.dumps(m.document_prompt)
    dims = (m.card_info or {}).get("loss", {}).get("matryoshka_dims") or []
    small = min(dims) if dims else None
    st = [
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{path}")',
        'queries = model.encode_query(["How many people live in Berlin?"])'
        + (f"  # prompt {q}" if m.query_prompt else ""),
        'documents = model.encode_document(["Berlin has 3.7 million inhabitants."])'
        + (f"  # prompt {d}" if m.document_prompt else ""),
        "print(model.similarity(queries, documents))",
    ]
    if small:
        st += [
            "",
            f"# Matryoshka: the first {small} of {m.config.hidden_size} dims work on their own",
            f'small = SentenceTransformer("{path}", truncate_dim={small})',
        ]
    st.append("```")
    ours = [
        "```",
        f"python evaluate.py --model={path} --sts=sample_data/stsb/test.tsv.gz",
        f"python evaluate.py --model={path} --retrieval=sample_data/retrieval/scifact"
        + (f" --truncate_dim={','.join(map(str, sorted(dims, reverse=True)))}" if dims else ""),
        f'python apps.py qa --model={path} --query="How many people live in Berlin?" '
        '"Berlin has 3.7 million inhabitants." "London has 9 million."',
        "```",
        "",
        "```python",
        "import convert, evaluate",
        "",
        f'm = convert.load_model("{path}")',
        'queries = evaluate.encode(m, ["How many people live in Berlin?"], prompt=m.query_prompt)',
        'documents = evaluate.encode(m, ["Berlin has 3.7 million inhabitants."], '
        "prompt=m.document_prompt)",
        "```",
    ]
    return "\n".join(
        [
            "## Usage",
            "",
            "### sentence-transformers",
            "",
            *st,
            "",
            "### This repository (JAX)",
            "",
            *ours,
        ]
    )


def _details(m: convert.LoadedModel, facts: dict | None) -> str:
    base = "none (random initialisation)"
    if facts and facts["base_model"]:
        name = facts["base_model_name"]
        base = f"{name} (`{facts['base_model']}`)" if name else f"`{facts['base_model']}`"
    prompts = {k: v for k, v in m.prompts.items() if v}
    lines = [
        "## Model Details",
        "",
        "- **Model Type:** Sentence Transformer (trained with JAX + Haiku)",
        f"- **Base model:** {base}" if facts else f"- **Exported from:** `{_rel(m.path)}`",
        f"- **Architecture:** {m.config.model_type}, {m.config.num_layers} layers, "
        f"{m.config.num_heads} heads, hidden size {m.config.hidden_size}",
        f"- **Maximum Sequence Length:** {m.max_seq_length} tokens",
        f"- **Output Dimensionality:** {m.config.hidden_size} dimensions"
        + (f" (truncated to {m.truncate_dim} by default)" if m.truncate_dim else ""),
        f"- **Pooling:** {m.pooling}{', L2-normalised' if m.normalize else ''}",
        "- **Similarity Function:** Cosine Similarity",
    ]
    dims = facts["loss"]["matryoshka_dims"] if facts else []
    if dims:
        lines.append(
            f"- **Matryoshka dimensions:** {', '.join(map(str, sorted(dims, reverse=True)))} "
            "(truncate to any of them: `truncate_dim=`)"
        )
    if prompts:
        shown = ", ".join(f"`{k}`: {json.dumps(v)}" for k, v in prompts.items())
        lines.append(f"- **Prompts:** {shown} (prepended to the text before tokenization)")
        if m.default_prompt_name:
            lines.append(f"- **Default prompt:** `{m.default_prompt_name}`")
    return "\n".join(lines)


def _evaluation(facts: dict) -> str:
    if not facts["evals"] and not facts["evals_before"]:
        return ""
    before = {(r["task"], r.get("truncate_dim")): r["score"] for r in facts["evals_before"]}
    lines = [
        "## Evaluation",
        "",
        f"At step {facts['evals_step']} (x100):" if facts["evals"] else "Before training (x100):",
        "",
        "| task | metric | before training | score |",
        "|---|---|---|---|",
    ]
    for r in facts["evals"] or facts["evals_before"]:
        was = before.get((r["task"], r.get("truncate_dim")), "")
        score = r["score"] if facts["evals"] else ""
        lines.append(f"| `{r['task']}` | {r['metric']} | {was} | {score} |")
    return "\n".join(lines)


def _training(facts: dict) -> str:
    loss = facts["loss"]
    wall = facts["wall_s"]
    resumed = f", resumed at step {facts['start_step']}" if facts["start_step"] else ""
    lines = [
        "## Training Details",
        "",
        f"- **Steps:** {facts['step']} of {facts['total_steps']}, "
        f"batch {facts['batch_size']} pairs (global), lr {facts['lr']}, seed {facts['seed']}",
        f"- **Wall time:** {wall / 60:.1f} min in this run{resumed} (card written {facts['date']})",
        f"- **Sequence length:** up to {facts['max_seq_len']} tokens per text (prompt included)",
        f"- **Loss:** {_loss_name(facts)}, scale {loss['scale']}, {loss['similarity']} "
        "similarity, in-batch negatives "
        f"{'gathered from all devices' if loss['gather'] else 'per device'}, "
        f"{loss['max_negatives']} hard negative(s) per example",
    ]
    if loss["matryoshka_dims"]:
        pairs = ", ".join(
            f"{d}: {w}"
            for d, w in zip(loss["matryoshka_dims"], loss["matryoshka_weights"], strict=True)
        )
        lines.append(f"- **MatryoshkaLoss:** dims and weights {pairs}")
    prompts = {k: v for k, v in facts["prompts"].items() if v}
    if prompts:
        shown = ", ".join(f"{k} {json.dumps(v)}" for k, v in prompts.items())
        lines.append(f"- **Training prompts:** {shown}")
    data = facts["datasets"]
    total = sum(d["lines"] for d in data)
    lines += [
        "",
        f"### Training Data ({len(data)} dataset{'s' * (len(data) != 1)}, {total:,} lines, "
        f"from `{facts['data_dir']}`)",
        "",
    ]
    table = ["| dataset | lines | share of the batches | pairs drawn |", "|---|---|---|---|"]
    for d in data:
        drawn = "" if d["examples"] is None else f"{d['examples']:,}"
        table.append(f"| `{d['name']}` | {d['lines']:,} | {100 * d['share']:.2f}% | {drawn} |")
    if len(data) > _SHOWN_DATASETS:
        table = ["<details><summary>All datasets</summary>", "", *table, "", "</details>"]
    lines += table
    lines += ["", "### Config fields that differ from the base recipe (`configs/base.py`)", ""]
    diff = facts["config_diff"]
    lines += [f"- `{k}`: `{json.dumps(v)}`" for k, v in sorted(diff.items())] or ["- none"]
    return "\n".join(lines)


def render(m: convert.LoadedModel, path: str) -> str:
    """The card text of `m` exported to `path`."""
    facts = m.card_info
    parts = os.path.normpath(path).split(os.sep)
    name = parts[-1] or "model"
    if name == "export" and len(parts) > 1:  # DIR/export: the run's name
        name = parts[-2]
    elif name == "model" and len(parts) > 3 and parts[-3] == "checkpoints":  # DIR/checkpoints/N
        step = facts["step"] if facts else int(parts[-2]) if parts[-2].isdigit() else None
        name = f"{parts[-4]} (checkpoint at step {step})" if step is not None else parts[-4]
    if facts and facts.get("base_model_name"):
        intro = f"A sentence-transformers model fine-tuned from {facts['base_model_name']}"
    elif facts:
        intro = "A sentence-transformers model trained"
    else:
        intro = "A sentence-transformers model exported"
    intro += (
        f" with this repository's JAX trainer. It maps text to {m.config.hidden_size}-dimensional "
        "embeddings for semantic similarity, search and clustering."
        if facts
        else f" by this repository's convert.py from `{_rel(m.path)}`; it maps text to "
        f"{m.config.hidden_size}-dimensional embeddings."
    )
    parts = [_front_matter(m, facts), f"# {name}", intro, _details(m, facts), _usage(m, path)]
    if facts:
        parts += [_evaluation(facts), _training(facts)]
    return "\n\n".join(p for p in parts if p) + "\n"


def readme_for(m: convert.LoadedModel, path: str) -> bytes:
    """README.md bytes for an export of `m` to `path` (see the module docstring)."""
    if m.card_info is None and m.readme is not None:
        return m.readme
    return render(m, _rel(path)).encode("utf-8")
