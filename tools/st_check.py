"""Check by hand that sentence-transformers loads one of our exported folders and agrees with us.

Two steps, two virtualenvs (torch is never a dependency of this project):

    .venv/bin/python tools/st_check.py ours runs/demo/export /tmp/ours.npy    # our encoder (JAX)
    /tmp/ref/bin/python tools/st_check.py st runs/demo/export /tmp/ours.npy   # torch side

The second prints the max abs difference between the two sets of embeddings of the sentences in
tests/fixtures/minilm_reference.npz (exit 1 if it exceeds 1e-5).
"""

import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def main(mode: str, folder: str, out: str) -> None:
    sentences = list(np.load(os.path.join(FIXTURES, "minilm_reference.npz"))["sentences"])
    if mode == "ours":
        sys.path.insert(0, ROOT)
        import convert
        import evaluate

        np.save(out, evaluate.encode(convert.load_model(folder), sentences, progress=False))
        return
    import sentence_transformers

    st = sentence_transformers.SentenceTransformer(folder, device="cpu")
    theirs = st.encode(sentences, batch_size=8, convert_to_numpy=True)
    diff = float(np.abs(theirs - np.load(out)).max())
    print(
        f"sentence-transformers {sentence_transformers.__version__} loaded {folder}: "
        f"max abs diff to ours {diff:.2e} over {len(sentences)} sentences"
    )
    sys.exit(0 if diff <= 1e-5 else 1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
