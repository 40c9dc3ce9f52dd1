"""A folder in the layout sentence-transformers 6 writes, with its own embeddings.

Run once, in the separate virtualenv of tools/make_family_fixtures.py (torch, transformers,
sentence-transformers; never dependencies of this project), after that script:

    /tmp/ref/bin/python tools/make_st6_fixture.py

sentence-transformers 6 saves a model differently from the published folders (which
tests/fixtures/tiny_<family>/ copy): `1_Pooling/config.json` holds one `pooling_mode` string instead
of the `pooling_mode_*_tokens` booleans, `sentence_bert_config.json` has no `max_seq_length` (the
limit lives in tokenizer_config.json's `model_max_length`), and modules.json names the modules by
their new import paths. This script loads tests/fixtures/tiny_bert/ with sentence-transformers
6.2.0, re-assembles it as Transformer (max_seq_length 24, so the long text is truncated) + CLS
pooling + Normalize, saves that with sentence-transformers' own `save` as
tests/fixtures/tiny_bert_st6/, reloads the saved folder and writes reference.npz next to it:

    texts           the texts of tiny_bert/reference.npz
    embeddings      float32 [B, D], SentenceTransformer.encode of the reloaded folder
    max_seq_length  int, what the reloaded SentenceTransformer reports

tests/convert_test.py imports the folder and must reproduce all three.
"""

import json
import os
import shutil

import numpy as np
import sentence_transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SOURCE = os.path.join(FIXTURES, "tiny_bert")
OUT = os.path.join(FIXTURES, "tiny_bert_st6")


def main() -> None:
    assert sentence_transformers.__version__ == "6.2.0", sentence_transformers.__version__
    with np.load(os.path.join(SOURCE, "reference.npz")) as f:
        texts = [str(t) for t in f["texts"]]
    transformer = Transformer(SOURCE, max_seq_length=24)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    shutil.rmtree(OUT, ignore_errors=True)
    model.save(OUT)
    os.remove(os.path.join(OUT, "README.md"))  # a generated model card, not read by anyone

    with open(os.path.join(OUT, "1_Pooling", "config.json")) as f:
        assert json.load(f)["pooling_mode"] == "cls"  # the new single-key form
    with open(os.path.join(OUT, "sentence_bert_config.json")) as f:
        assert "max_seq_length" not in json.load(f)  # the limit moved to the tokenizer config

    reloaded = SentenceTransformer(OUT, device="cpu")
    embeddings = reloaded.encode(texts, convert_to_numpy=True, batch_size=len(texts))
    np.savez(
        os.path.join(OUT, "reference.npz"),
        texts=np.array(texts),
        embeddings=embeddings.astype(np.float32),
        max_seq_length=np.int64(reloaded.max_seq_length),
    )
    print(OUT, reloaded, "max_seq_length", reloaded.max_seq_length)


if __name__ == "__main__":
    main()
